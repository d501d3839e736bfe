"""kernelfit bench: measure every configuration the catalog says runs here, keep the fastest.

Candidates: attention implementation x dtype x KV cache (dynamic / static) x torch.compile (only
with compile=True: on a 2-core CPU each compile costs minutes), plus — when the model must be
quantized to fit — every other installed quantizer at the same or fewer bits (and at 8 bits where the
plan chose nf4 over an 8-bit that fits, for speed). Each is warmed up once, then
timed `trials` times; prefill and decode are measured separately (decode from the streamer's
first-token time) and reported as medians with their spread. A candidate that fails is reported
with its error. The winner minimises the time of one request of the measured shape
(context/prefill + new_tokens/decode) — but replaces the static plan only when its gain exceeds
the measured spread — and is saved to the tune cache.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..planner.types import Plan
from ..planner.quantization import otf_choice


@dataclass(frozen=True)
class Candidate:
    attention: str
    dtype: str
    cache: str  # "dynamic" or "static"
    compile: bool = False
    quantization: str = "none"  # a --quantization value: "none", or e.g. "bitsandbytes-8bit", "quanto-4bit"


@dataclass
class Result:
    candidate: Candidate
    prefill_tokens_per_s: float | None = None
    prefill_spread: float | None = None  # (max - min) / median over the trials
    decode_tokens_per_s: float | None = None
    decode_spread: float | None = None
    error: str | None = None

    def seconds(self, context: int, new_tokens: int) -> float:
        if self.error or not self.prefill_tokens_per_s or not self.decode_tokens_per_s:
            return float("inf")
        return context / self.prefill_tokens_per_s + new_tokens / self.decode_tokens_per_s

    def to_dict(self) -> dict:
        return {**asdict(self.candidate), "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "prefill_spread": self.prefill_spread, "decode_tokens_per_s": self.decode_tokens_per_s,
                "decode_spread": self.decode_spread, "error": self.error}


def quantization_candidates(plan: Plan) -> list[str]:
    """When the static plan quantizes on load (the model does not fit otherwise): every installed
    on-the-fly quantizer that runs on the plan's devices, at its bits or fewer (fewer bits fit too),
    and at the bits it passed over for speed although they fit (CUDA's LLM.int8: measured, not assumed)."""
    from ..catalog.quantization import ON_THE_FLY, why_not_backend

    static = otf_choice(plan.quantization)
    if static == "none":
        return []
    devices = plan.placement_devices
    fit = max(plan.quantization.bits, plan.quantization.passed_over_bits or 0)
    out = []
    for b in ON_THE_FLY:
        for bits in sorted(b.bits, reverse=True):
            name = f"{b.method}-{bits}bit"
            if bits <= fit and name != static and name not in out and not any(
                    why_not_backend(b, d, plan.machine.software, plan.dtype.value, bits) for d in devices):
                out.append(name)
    return out


def candidates(plan: Plan, compile: bool = False) -> list[Candidate]:
    """Every attention and dtype the static plan found runnable here (never one the catalog rejects),
    and, for a model that must be quantized to fit, the other quantizers with the static attention/dtype."""
    attns = [a for a in plan.runnable_attentions() if a != "flex_attention" or compile]  # uncompiled flex is slow
    dtypes = plan.runnable_dtypes()
    q = otf_choice(plan.quantization)
    out = [Candidate(a, d, c, False, q) for d in dtypes for a in attns for c in ("dynamic", "static")]
    if compile:
        out += [Candidate(a, d, "static", True, q) for d in dtypes for a in attns if a != "eager"]
    out += [replace(static_candidate(plan), quantization=other) for other in quantization_candidates(plan)]
    return out


def static_candidate(plan: Plan) -> Candidate:
    return Candidate(plan.text_attention.value, plan.dtype.value, "dynamic", False, otf_choice(plan.quantization))


def _spread(values: list[float]) -> float:
    med = statistics.median(values)
    return round((max(values) - min(values)) / med, 3) if med else 0.0


def _measure(model, cand: Candidate, ids: torch.Tensor, new_tokens: int, trials: int) -> Result:
    model.set_attn_implementation(cand.attention)
    if cand.compile:
        from ..loader.generate import compile_forward

        compile_forward(model)
    try:
        return _trials(model, cand, ids, new_tokens, trials)
    finally:
        if cand.compile:
            del model.forward


def _trials(model, cand: Candidate, ids: torch.Tensor, new_tokens: int, trials: int) -> Result:
    from ..loader.generate import _TimingStreamer, no_grad_for

    forward = model.forward
    prefill, decode = [], []
    gen_kw = {"cache_implementation": "static"} if cand.cache == "static" else {}
    prompt = ids[:, :16]
    for i in range(trials + 1):  # the first round is warm-up
        with no_grad_for(model):
            t = time.perf_counter()
            forward(input_ids=ids, use_cache=False)
            p = time.perf_counter() - t
            streamer = _TimingStreamer(None, None)
            t = time.perf_counter()
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=0, streamer=streamer, **gen_kw)
            end = time.perf_counter()
        if i:
            prefill.append(ids.shape[1] / p)
            decode.append((new_tokens - 1) / max(end - (streamer.first_token_at or t), 1e-9))
    return Result(cand, round(statistics.median(prefill), 1), _spread(prefill),
                  round(statistics.median(decode), 2), _spread(decode))


def bench(model_ref: str, plan: Plan, context: int = 256, new_tokens: int = 32, trials: int = 3,
          compile: bool = False, progress=None) -> tuple[list[Result], Result | None]:
    """Measure every candidate; returns (results, winner)."""
    from ..loader.load import load

    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    cands = candidates(plan, compile)
    vocab = plan.model.text.vocab_size or 1000
    ids = torch.randint(min(100, vocab - 1), vocab, (1, context), generator=torch.Generator().manual_seed(0))
    results: list[Result] = []
    models: dict[tuple[str, str], object] = {}
    prefs = plan.preferences
    for i, cand in enumerate(cands, 1):
        say(f"[{i}/{len(cands)}] {cand.attention}, {cand.dtype}, {cand.cache} cache{', compiled' if cand.compile else ''}"
            + (f", {cand.quantization}" if cand.quantization != "none" else ""))
        try:
            key = (cand.dtype, cand.quantization)
            if key not in models:
                models.clear()  # one model in memory at a time
                models[key] = load(model_ref, dtype=cand.dtype, machine=plan.machine, dispatch=False,
                                   health_check=False, context=prefs.context, batch=prefs.batch,
                                   max_memory=prefs.max_memory, use_tune_cache=False,
                                   quantization=prefs.quantization if cand.quantization == "none" else cand.quantization,
                                   allow_dequantize=prefs.allow_dequantize).model
            results.append(_measure(models[key], cand, ids, new_tokens, trials))
        except Exception as exc:  # noqa: BLE001 - a failed candidate is a result, reported with its error
            results.append(Result(cand, error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"))
    ok = [r for r in results if r.error is None]
    winner = min(ok, key=lambda r: r.seconds(context, new_tokens)) if ok else None
    static = next((r for r in ok if r.candidate == static_candidate(plan)), None)
    if winner is not None and static is not None and winner is not static:
        # replace the static choice only when the gain is larger than the measurement noise
        noise = max(winner.prefill_spread, winner.decode_spread, static.prefill_spread, static.decode_spread)
        gain = static.seconds(context, new_tokens) / winner.seconds(context, new_tokens) - 1
        if gain <= noise:
            say(f"best measured ({winner.candidate.attention}, {winner.candidate.dtype}, {winner.candidate.cache}) "
                f"is {gain:.0%} faster, within the {noise:.0%} noise: keeping the static plan")
            winner = static
    return results, winner
