"""Drafting with a small model of the same tokenizer (llama.cpp's `--model-draft`, vLLM's draft-model speculation):
the draft model decodes a few tokens greedily ahead of the target, and one multi-row step of the target checks them
(runner.py LeanRunner.greedy, serve/batching.py) exactly as prompt-lookup drafts are checked — the target's own token
at each row (argmax, or its seeded sample) is kept, so the output is the one a token a step gives whatever the draft
proposes (speculative.accepted_tokens). A draft only decides how many tokens a step yields.

The draft model keeps one KV cache, holding the tokens it last saw; drafting for a sequence first feeds it what it does
not hold yet (the common prefix is kept: the next step of the same sequence feeds only the tokens the target kept,
another sequence's prompt is prefilled), then decodes while it is sure enough of its next token: it stops at the
first token whose probability is below P_MIN (llama.cpp's speculative `p_min`), so an unsure draft costs no target
rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .kv_cache import reset_cache

# llama.cpp common/common.h common_params_speculative: p_min 0.75 ("minimum speculative decoding probability
# (greedy)"); SPEC_VOCAB_MAX_SIZE_DIFFERENCE 128 and SPEC_VOCAB_CHECK_START_TOKEN_ID 5 (common/speculative.cpp
# common_speculative_are_compatible: vocabularies may differ in size by 128 and agree from token 5 on)
P_MIN = 0.75
VOCAB_SIZE_SLACK = 128
VOCAB_CHECK_FROM = 5


@dataclass
class DraftModel:
    """A draft model's runner (engine/runner.py LeanRunner) and the tokens its KV cache holds, position by position."""

    runner: object  # LeanRunner
    name: str
    p_min: float = P_MIN
    held: list[int] = field(default_factory=list)
    proposed: int = 0  # drafted tokens offered to the target (reports)
    kept: int = 0  # of them, the ones the target kept

    def propose(self, tokens: list[int], limit: int, vocab: int) -> list[int]:
        """Up to `limit` greedy tokens after `tokens` (the sequence so far, its last token included), stopping before
        one the draft model gives less than p_min, or one outside the target's vocabulary (`vocab` logits)."""
        build = self.runner.build
        if build.cfg.max_positions:  # the draft's own context: past it, no drafts
            limit = min(limit, build.cfg.max_positions - len(tokens))
        if limit <= 0 or not tokens:
            return []
        same, top = 0, min(len(self.held), len(tokens) - 1)  # the last token always runs: its logits are wanted
        while same < top and self.held[same] == tokens[same]:
            same += 1
        reset_cache(build, len(tokens) + limit)  # grown where it lacks room, keeping what it holds
        del self.held[same:]
        logits = self.runner.prompt_logits(tokens, same)
        self.held = list(tokens)
        out: list[int] = []
        while True:
            p = torch.softmax(logits.float(), -1)
            best = int(p.argmax())
            if float(p[best]) < self.p_min or best >= vocab:
                break
            out.append(best)
            if len(out) >= limit:
                break
            logits = self.runner.logits(torch.tensor([best]), len(self.held))[-1]
            self.held.append(best)
        self.proposed += len(out)
        return out


class ModelDrafter:
    """The drafter interface of speculative.PromptLookup (draft, extend, accepted) over a draft model, for one
    sequence. Asking it costs draft-model steps even when it proposes nothing (`costly`): such a step is a drafted
    step for the gate (speculative.DraftGate), which compares them with target steps alone."""

    costly = True
    # A draft model that measures slower once keeps doing so (its cost is the pair's and the CPU's, not the text's, as a
    # lookup's hits are), and each resumption prefills the tokens it missed: the gate pauses it 8x as long. Measured
    # (SmolLM2 F16 drafted by its Q4_1 file, 2-core AVX2 EPYC, 128 tokens): with a lookup's 32-step pause drafting cost
    # 0.5 s of ~2 s in catch-up prefills and vain asks
    cooldown = 256

    def __init__(self, model: DraftModel, tokens: list[int], vocab: int):
        self.model, self.tokens, self.vocab = model, list(tokens), vocab

    def draft(self, limit: int) -> list[int]:
        return self.model.propose(self.tokens, limit, self.vocab)

    def extend(self, tokens: list[int]) -> None:
        self.tokens += tokens

    def accepted(self, proposed: int, kept: int) -> None:
        self.model.kept += kept


def _vocabulary(tok) -> list:
    """Each token's spelling: the GGUF / tokenizer.json tables' bytes, else transformers' token strings."""
    if hasattr(tok, "token_bytes"):
        return tok.token_bytes()
    return tok.convert_ids_to_tokens(list(range(len(tok))))


def size_mismatch(target: int, draft: int) -> str | None:
    """Why vocabularies of these sizes cannot share ids (None: they may), as llama.cpp allows VOCAB_SIZE_SLACK."""
    return f"its vocabulary has {draft} tokens, the model's {target}" if abs(target - draft) > VOCAB_SIZE_SLACK else None


def vocabulary_mismatch(target, draft) -> str | None:
    """Why the draft tokenizer's ids do not mean the target's (None: they do) — as llama.cpp checks a draft model:
    the same kind of vocabulary, sizes within VOCAB_SIZE_SLACK, the same BOS / EOS and every common token from
    VOCAB_CHECK_FROM on spelled alike."""
    a, b = _vocabulary(target), _vocabulary(draft)
    if (why := size_mismatch(len(a), len(b))) is not None:
        return why
    for what in ("bos_token_id", "eos_token_id"):
        if getattr(target, what, None) != getattr(draft, what, None):
            return f"its {what} is {getattr(draft, what, None)}, the model's {getattr(target, what, None)}"
    if type(a[0]) is not type(b[0]):  # bytes against strings: one tokenizer's tables against transformers'
        a, b = [t if isinstance(t, str) else t.decode("utf-8", "replace") for t in a], \
               [t if isinstance(t, str) else t.decode("utf-8", "replace") for t in b]
    for i in range(VOCAB_CHECK_FROM, min(len(a), len(b))):
        if a[i] != b[i]:
            return f"its token {i} is {b[i]!r}, the model's {a[i]!r}"
    return None
