"""THE one translation of a Plan into transformers' arguments: `from_pretrained(**...)` and
`generate(**...)`. `kernelfit plan` shows these, the loader passes them (replacing only the dtype name
by the torch dtype and the quantization dict by transformers' config object). Plain data, no torch."""

from __future__ import annotations

from ..paths import cache_root
from .quantization import generation_config, quantization_config
from .types import Plan


def attn_implementation(plan: Plan, override: str | None = None) -> str | dict[str, str]:
    """from_pretrained's `attn_implementation`: one name, or one per sub-config of a composite model.
    `override` (e.g. "kernelfit", "sdpa") replaces every sub-model's choice."""
    if len(plan.model.sub_models) == 1:
        return override or plan.text_attention.value
    return {(s.config_key or ""): (override or plan.attention[s.role].value) for s in plan.model.sub_models}


def max_memory(plan: Plan) -> dict | None:
    """accelerate's max_memory: bytes by GPU index (an int) or "cpu"."""
    mm = plan.placement.max_memory
    return {(int(k) if k.isdigit() else k): v for k, v in mm.items()} if mm else None


def offload_folder(plan: Plan) -> str:
    """Where accelerate writes offloaded weights that are not safetensors (kernelfit's cache)."""
    return str(cache_root() / "offload" / plan.model.name.replace("/", "--"))


def from_pretrained_kwargs(plan: Plan, attention: str | None = None, dtype: str | None = None) -> dict:
    """The arguments `kernelfit.load` passes to from_pretrained, with the dtype as its name.
    `attention` / `dtype` replace the plan's (the loader's fallback chain)."""
    kw: dict = {"dtype": dtype or plan.dtype.value, "attn_implementation": attn_implementation(plan, attention),
                "device_map": plan.placement.device_map}
    mm = max_memory(plan)
    if mm:
        kw["max_memory"] = mm
    if plan.model.gguf_file:
        kw["gguf_file"] = plan.model.gguf_file
    if plan.offload.get("disk_gib"):
        kw["offload_folder"] = offload_folder(plan)
    if plan.quantization is not None:
        qc = quantization_config(plan.quantization, plan.compute_dtype)
        if qc:
            kw["quantization_config"] = qc
    return kw


def generate_kwargs(plan: Plan) -> dict:
    """What generate() gets from the plan: a quantized KV cache, or the static cache a bench winner chose."""
    kw = generation_config(plan.quantization) if plan.quantization else {}
    if plan.tuned and plan.tuned.get("cache") == "static" and "cache_implementation" not in kw:
        kw["cache_implementation"] = "static"
    return kw


def lean_runner(plan: Plan) -> bool:
    """A GGUF file running packed, or a safetensors checkpoint on the engine, goes to kernelfit's own runner
    (engine/), not from_pretrained."""
    return plan.quantization is not None and plan.quantization.method in ("gguf", "engine")
