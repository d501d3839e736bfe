"""The packed GGUF runner as a loaded model: tokenizer, greedy generation with honest timing, health check.

`load_plan` returns this in `Loaded.model` when the plan runs a GGUF file packed (planner.hf_args.lean_runner);
`loader.generate.generate` drives it like a transformers model, and `kernelfit serve` one request at a time
(serve/engine.py: batch 1, one KV cache whose prompt prefix the next request reuses where it starts the same).
"""

from __future__ import annotations


import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..cache_entry import build_entry, verified_entry
from ..errors import HealthCheckError, UsageError
from ..model.generation import generation_defaults
from ..model.spec import ModelSpec
from ..paths import files_key, writable_cache_root
from .build import LeanBuild, build_lean, forward, native_all_logits
from .kv_cache import kv_bytes, kv_capacity, reset_cache
from .safetensors.tokenizer import json_tokenizer
from .gguf.tokenizer import gguf_tokenizer
from .native import native_status
from .reference import DOT_MAX_ROWS
from .recurrent import Checkpoints
from .draft_model import DraftModel, ModelDrafter
from .speculative import DraftGate, PromptLookup, accepted_tokens

TOKENIZER_FORMAT = 1
SMOKE_TOKENS = 8
# A prompt's prefill runs this many tokens a call: its activations (a call's rows times the widest product) stop
# growing with the prompt — a 4,096-token prompt on Qwen3.5-0.8B peaked 416 MiB over the loaded model in one call,
# 156 MiB in chunks; llama.cpp takes prompts 512 at a time (its default ubatch)
PROMPT_CHUNK = 512


@dataclass
class LeanRunner:
    build: LeanBuild
    spec: ModelSpec
    prefill: str = "packed"
    eos_ids: set[int] = field(default_factory=set)
    tokenizer: str = "transformers"  # GgufTokenizer.kind's value, or "transformers"
    # the tokens whose keys and values fill the cache's first positions, as a prompt's prefill wrote them: a next
    # prompt that starts with them (the usual next chat turn) prefills only the rest (start)
    cached: list[int] = field(default_factory=list)
    steps: int = 0  # decode steps the last greedy() took (fewer than its tokens where drafts were kept)
    # a hybrid's recurrent state where prompts' prefills ended: a next prompt resumes from one (engine/recurrent.py)
    checkpoints: Checkpoints = field(default_factory=Checkpoints)
    # a draft model of the same tokenizer (--draft-model): it drafts instead of prompt lookup (engine/draft_model.py)
    draft: DraftModel | None = None

    def report(self) -> dict:
        """What each tensor became, by GGUF type: layout, count, worst and mean measured error."""
        by: dict[tuple[str, str], list[float]] = {}
        for c in self.build.conversions:
            by.setdefault((c.gguf_type, c.layout), []).append(c.rel_error)
        return {"packed_weights_mib": round(self.build.weight_bytes / 2**20, 1), "decode_step": native_status(),
                "build_seconds": round(self.build.seconds, 2),
                # what ran: "int8" asked for on a build without the GEMM falls back to the bf16 path
                "prefill": "packed" if self.prefill == "int8" and not self.build.int8_prefill else self.prefill,
                "tokenizer": self.tokenizer,
                "kv_cache": self.build.kv_cache, "kv_cache_mib": round(kv_bytes(self.build) / 2**20, 1),
                "tensors": [{"gguf_type": t, "layout": lay, "count": len(e), "max_rel_error": round(max(e), 5),
                             "mean_rel_error": round(sum(e) / len(e), 5)} for (t, lay), e in sorted(by.items())]}

    def logits(self, ids: torch.Tensor, pos: int, all_logits: bool = False) -> torch.Tensor:
        del self.cached[pos:]  # positions from pos on are written now
        return forward(self.build, ids, pos, all_logits)

    def start(self, prompt_ids: list[int], max_new_tokens: int, reuse: bool = True) -> tuple[torch.Tensor, int]:
        """The next token's logits after `prompt_ids` in a cache sized for `max_new_tokens` more, and how many of its
        tokens came from the cache (a prefix the last prompt shares with it: not prefilled again). Only positions a
        prefill wrote are kept for reuse, never the decode step's (its exact products differ from a prefill's in the
        last bits, and a cold run prefills them), so a reused prefix gives the logits a cold prefill gives."""
        n = len(prompt_ids)
        if not n:  # a vocabulary without the text's pieces (or bytes) and a file that adds no BOS token
            raise UsageError("the prompt gives no tokens with this model's tokenizer (nothing of its text is in the "
                             "vocabulary, and the file adds no BOS token); give a prompt the tokenizer can encode")
        reset_cache(self.build, n + max_new_tokens)  # a cache that grows keeps what it holds
        cap = kv_capacity(self.build)
        if n + max_new_tokens > cap:
            raise UsageError(f"the prompt ({n} tokens) plus {max_new_tokens} new tokens exceed the model's "
                             f"{cap} positions")
        same = 0
        if reuse:
            limit = min(len(self.cached), n - 1)  # the last prompt token always runs: its logits are wanted
            while same < limit and self.cached[same] == prompt_ids[same]:
                same += 1
        same = self.checkpoints.restore(self.build.state, same)  # a hybrid: back to where its state was saved
        logits = self.prompt_logits(prompt_ids, same)
        self.cached = list(prompt_ids[:-1])
        return logits, same

    def prompt_logits(self, prompt_ids: list[int], start: int = 0) -> torch.Tensor:
        """The next token's logits after a prompt (the cache reset by the caller; its first `start` positions already
        hold this prompt's keys and values): all but its last token through the prefill kernel, the last one through
        the decode step. The decode step's products are exact (two activation digits); a prefill's last row carries
        its bf16 (or int8) rounding into the logits that pick the first token — enough to swap SmolLM2's top two
        answering "What is the capital of France?" (margin 0.08 in float32)."""
        ids = torch.tensor(prompt_ids)
        if len(prompt_ids) - 1 > start:
            for a in range(start, len(prompt_ids) - 1, PROMPT_CHUNK):  # a long prompt a chunk at a time
                self.logits(ids[a:min(a + PROMPT_CHUNK, len(prompt_ids) - 1)], a)
            self.checkpoints.take(self.build.state)
        return self.logits(ids[-1:], len(prompt_ids) - 1)[-1]

    def generate_ids(self, prompt_ids: list[int], max_new_tokens: int, on_token=None,
                     stop_at_eos: bool = True, speculative: bool = True) -> tuple[list[int], float, float]:
        """Greedy tokens after `prompt_ids`; (tokens, prefill seconds, decode seconds). speculative: prompt-lookup
        drafts checked a step at a time where the C++ step runs (the same tokens, fewer steps)."""
        n = len(prompt_ids)
        t0 = time.perf_counter()
        token = int(self.start(prompt_ids, max_new_tokens, reuse=False)[0].argmax())
        t1 = time.perf_counter()
        out = []
        for token in self.greedy(prompt_ids, token, n, max_new_tokens, speculative):
            out.append(token)
            if on_token is not None:
                on_token(token)
            if stop_at_eos and token in self.eos_ids:
                break
        return out, t1 - t0, time.perf_counter() - t1

    @property
    def can_speculate(self) -> bool:
        """Drafts are checked in one multi-row step whose logits equal the decode step's: the C++ step with the
        file's groups in every product and a dot-group head (forward's all-logits path). A hybrid's too: its recurrent
        state, which cannot be moved back past a rejected draft, is copied before the drafted rows and the kept rows
        run again from the copy (greedy)."""
        return native_all_logits(self.build)

    def drafter(self, tokens: list[int]):
        """What proposes drafts for a sequence of `tokens` (its last not yet in the cache): the draft model, else
        prompt lookup."""
        if self.draft is not None:
            return ModelDrafter(self.draft, tokens, self.build.cfg.vocab)
        return PromptLookup(tokens)

    def greedy(self, prompt_ids: list[int], first: int, pos: int, max_new: int, speculative: bool = True):
        """Yield greedy tokens from `first` (the token after the prompt, not yet in the cache, at position `pos`)
        until `max_new` are out; the caller stops early at an end token. With `speculative` (and can_speculate), each
        step feeds the last token plus a prompt-lookup draft and keeps the draft up to the first token the model's
        own argmax disagrees with, plus that argmax: the same tokens as one step a token. A draft model
        (`draft`) drafts instead of the lookup; the gate counts its time in the drafted steps'."""
        lookup = self.drafter(list(prompt_ids) + [first]) if speculative and self.can_speculate else None
        gate = DraftGate.of(lookup)
        state = self.build.state
        before = state.copy() if lookup and state is not None else None  # one buffer for the state before drafts
        last, out = first, 0
        self.steps = 0
        while True:
            yield last
            out += 1
            if out >= max_new:
                return
            t = time.perf_counter()
            asked = lookup is not None and gate.allow()
            draft = lookup.draft(min(DOT_MAX_ROWS - 1, max_new - out - 1)) if asked else []
            self.steps += 1
            if not draft:
                last = int(self.logits(torch.tensor([last]), pos)[-1].argmax())
                gate.undrafted(time.perf_counter() - t, asked)
                pos += 1
                if lookup:
                    lookup.extend([last])
                continue
            if state is not None:  # a hybrid's recurrent state, which the drafted rows run past a rejected draft
                before.load(state)
            tokens = accepted_tokens(draft, self.logits(torch.tensor([last] + draft), pos, all_logits=True))
            kept = len(tokens) - 1
            if before is not None and kept < len(draft):  # back to before the drafts, then the kept rows again (up
                state.load(before)  # to DOT_MAX_ROWS rows run the decode step's arithmetic: the same state bit
                self.logits(torch.tensor([last] + draft[:kept]), pos)  # for bit as a step a token)
            gate.drafted(kept + 1, time.perf_counter() - t)  # the re-run counted: the gate weighs what drafts cost
            lookup.accepted(len(draft), kept)
            for token in tokens[:-1]:
                yield token
                out += 1
                if out >= max_new:
                    return
            last = tokens[-1]
            pos += kept + 1
            lookup.extend(tokens)

    def check_health(self) -> list[str]:
        """Problems: damage seen while packing (non-finite block scales), non-finite logits on a short smoke forward."""
        reset_cache(self.build, SMOKE_TOKENS)
        out = self.logits(torch.arange(1, SMOKE_TOKENS + 1), 0, all_logits=True)  # (clears `cached`)
        finite = bool(torch.isfinite(out).all())
        return list(self.build.problems) + ([] if finite else ["non-finite logits on an 8-token forward"])


def tokenizer_dir(spec: ModelSpec, progress=None) -> Path:
    """The file's tokenizer, saved once (transformers rebuilds it from GGUF metadata in ~10 s)."""
    gguf = Path(spec.model_dir) / spec.gguf_file
    key = f"{gguf.stem}-{files_key([gguf], TOKENIZER_FORMAT)}"
    hit = verified_entry(writable_cache_root() / "gguf-tokenizer" / key)
    if hit is not None:
        return hit

    def write(tmp: Path) -> dict:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(spec.model_dir, gguf_file=spec.gguf_file)
        except Exception as exc:  # noqa: BLE001 - transformers fails in many ways on incomplete tokenizer metadata
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise UsageError(f"cannot build a tokenizer from {gguf.name}'s metadata ({detail}); the file's tokenizer "
                             f"keys are incomplete or of a kind transformers does not read") from None
        tok.save_pretrained(tmp)
        return {"source": str(gguf), "format": TOKENIZER_FORMAT}

    return build_entry(writable_cache_root() / "gguf-tokenizer" / key, write, need_bytes=64 << 20,
                       what=f"reading the tokenizer of {gguf.name}", progress=progress)


def load_tokenizer(spec: ModelSpec, progress=None):
    """The file's own tokenizer tables where they reproduce transformers' tokenizer (engine/gguf/tokenizer.py:
    57 -> 9 MiB resident for SmolLM2, 331 -> 22 MiB for Gemma 3), else transformers' tokenizer built from the file.
    A transformers checkpoint: its own tokenizer.json and chat template read the same way where their kind is covered
    (engine/safetensors/tokenizer.py), else through transformers (imported only then: ~0.7 s of a load here)."""
    if not spec.gguf_file:
        tok = json_tokenizer(spec.model_dir)
        if tok is not None:
            return tok
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(spec.model_dir)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load the tokenizer from {spec.model_dir}: {str(exc).splitlines()[0]}") from None
    tok = gguf_tokenizer(Path(spec.model_dir) / spec.gguf_file)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir(spec, progress)))


def load_lean(spec: ModelSpec, prefill: str, health_check: bool, progress,
              requant: str | None = None, kv_cache: str = "auto") -> tuple[LeanRunner, object]:
    tok = load_tokenizer(spec, progress)
    path = Path(spec.model_dir) / spec.gguf_file if spec.gguf_file else Path(spec.model_dir)  # a file, or a folder
    build = build_lean(path, prefill_dense=prefill == "dense", progress=progress,
                       prefill_int8=prefill == "int8", requant=requant, kv_cache=kv_cache)
    eos = {i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")) if isinstance(i, int)
           and i != tok.unk_token_id}
    eos |= set(generation_defaults(spec.model_dir, spec.gguf_file).eos_token_ids)  # Llama 3's <|eot_id|> and the like
    kind = getattr(tok, "kind", None)
    runner = LeanRunner(build, spec, prefill, eos, kind.value if kind is not None else "transformers")
    if health_check:
        problems = runner.check_health()
        if problems:
            raise HealthCheckError(f"{spec.name} did not load correctly ({len(problems)} problem(s); the weights "
                                   f"themselves are broken: re-download the file)", problems)
    return runner, tok



