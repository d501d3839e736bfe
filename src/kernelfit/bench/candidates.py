"""Bench candidates: every configuration the static plan says runs here, as data (no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..planner.quantization import otf_choice, quantization_preference
from ..planner.search import plan as make_plan
from ..planner.types import Plan


@dataclass(frozen=True)
class Candidate:
    attention: str
    dtype: str
    cache: str  # "dynamic" or "static"
    compile: bool = False
    quantization: str = "none"  # a --quantization value: "none", or e.g. "bitsandbytes-8bit", "quanto-4bit";
    # "gguf": a GGUF file run packed by kernelfit's runner; "engine": a safetensors checkpoint on it
    prefill: str = "auto"  # packed weights: "packed" or "dense" (a bf16 copy for prefill)


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
    if static in ("none", "engine") or plan.quantization.packed:
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
    packed = []
    if q == "q8_0":  # asked for: the engine's re-quantized weights, nothing else to compare them with
        return [static_candidate(plan)]
    if q == "gguf":  # the packed runner, per prefill kernel; then the dequantized model's own candidates
        packed = [replace(static_candidate(plan), prefill=p) for p in ("packed", "dense")]
        q = "none"
    elif q == "engine":  # the checkpoint on the engine (bf16 rows: no prefill copy to weigh); then transformers'
        packed, q = [static_candidate(plan)], "none"
    out = packed + [Candidate(a, d, c, False, q) for d in dtypes for a in attns for c in ("dynamic", "static")]
    if compile:
        out += [Candidate(a, d, "static", True, q) for d in dtypes for a in attns if a != "eager"]
    out += [replace(static_candidate(plan), quantization=other) for other in quantization_candidates(plan)]
    return out


def static_candidate(plan: Plan) -> Candidate:
    q = otf_choice(plan.quantization)
    if q in ("gguf", "engine", "q8_0"):  # the runner has a static cache and uses SDPA
        prefill = plan.kernels["prefill"].value if "prefill" in plan.kernels else "auto"
        return Candidate(plan.text_attention.value, plan.dtype.value, "static", False, q, prefill)
    return Candidate(plan.text_attention.value, plan.dtype.value, "dynamic", False, q)


def candidate_plan(plan: Plan, cand: Candidate) -> Plan:
    """The plan a candidate is loaded with: the static plan's preferences (device, context, memory budget,
    ...) with the candidate's dtype and quantizer. Attention is switched per candidate on the loaded model."""
    prefs = replace(plan.preferences, dtype=cand.dtype, attention="auto",
                    quantization=quantization_preference(plan.model, plan.preferences.quantization, cand.quantization,
                                                         otf_choice(plan.quantization)),
                    prefill=cand.prefill if cand.prefill != "auto" else plan.preferences.prefill)
    return make_plan(plan.machine, plan.model, prefs)
