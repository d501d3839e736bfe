"""Post-load health check: a silently broken model is never returned.

Checks: every tensor the checkpoint should provide was loaded (transformers' loading info:
missing / unexpected / mismatched keys — a renamed tensor shows up as missing, i.e. randomly
initialised), nothing left on the meta device, a quantized checkpoint really loaded into
quantized modules, and a smoke forward pass gives finite logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import HealthCheckError
from ..model.spec import ModelSpec
from .generate import no_grad_for

# Module class names that hold quantized weights, by quantization method (lower-case substrings).
QUANTIZED_MODULES = {
    "awq": ("awq", "wqlinear", "quantlinear", "marlin", "gemm", "gemv", "exllama"),
    "gptq": ("quantlinear", "marlin", "exllama", "gptq", "triton", "torchquant"),
    "bitsandbytes": ("linear8bitlt", "linear4bit"),
    "quanto": ("qlinear",),
    "gguf": ("gguf",),
    "fp8": ("fp8",),
    "compressed-tensors": ("compressedlinear",),
}
MAX_LISTED = 12


@dataclass
class HealthReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    # the values themselves are wrong (non-finite output, or not the checkpoint's): skipping the check
    # would not help, re-downloading would
    weights_broken: bool = False


def _listed(names, what: str) -> list[str]:
    names = sorted(names)
    more = f" (+{len(names) - MAX_LISTED} more)" if len(names) > MAX_LISTED else ""
    return [f"{what}: {', '.join(names[:MAX_LISTED])}{more}"] if names else []


def quantization_problems(model: torch.nn.Module, spec: ModelSpec, dequantized: bool,
                          quant_method: str | None = None) -> list[str]:
    """`quant_method`: quantization applied at load (bitsandbytes, quanto); else the checkpoint's own."""
    method = (quant_method or (spec.quantization.method if spec.quantization else "")).lower()
    if not method or dequantized or method not in QUANTIZED_MODULES:
        return []
    needles = QUANTIZED_MODULES[method]
    linears, quantized = [], 0
    for name, module in model.named_modules():
        cls = type(module).__name__.lower()
        if any(n in cls for n in needles):
            quantized += 1
        elif isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            linears.append(name)
    if quantized == 0 and linears:
        return _listed(linears, f"checkpoint is {method}-quantized but these layers loaded as plain Linear "
                                f"(quantized weights ignored, layers randomly initialised)")
    return []


def smoke_forward(model: torch.nn.Module) -> tuple[list[str], bool]:
    """One tiny forward pass; logits must be finite. Returns (problems, whether the output was non-finite)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    if vocab <= 0 or not hasattr(model, "generate"):
        return [], False
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), torch.device("cpu"))
    # text tokens only: a VLM's image / video placeholder ids would make it ask for pixels
    reserved = {v for k, v in model.config.to_dict().items() if isinstance(v, int) and not isinstance(v, bool)
                and any(w in k for w in ("image", "video", "vision", "boi", "eoi", "audio"))}
    ids = torch.tensor([[t for t in range(1, min(vocab, 64)) if t not in reserved][:8]], device=device)
    try:
        with no_grad_for(model):
            out = model(input_ids=ids)
    except Exception as exc:  # noqa: BLE001 - reported as a problem with its message
        return [f"smoke forward pass raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"], False
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = getattr(out, "last_hidden_state", None)
    if logits is not None and not torch.isfinite(logits.float()).all():
        bad = (~torch.isfinite(logits.float())).sum().item()
        return [f"smoke forward pass produced {bad} non-finite values (NaN/inf): wrong dtype for this model or broken "
                "weights"], True
    return [], False


SAMPLED_TENSORS = 3  # first, middle and last tensor of the checkpoint


def sampled_source_problems(model: torch.nn.Module, directory: str | None) -> list[str]:
    """Compare a few loaded tensors with the same tensors in the safetensors files they came from
    (memory-mapped: only those tensors are read). Catches weights that are finite but not the checkpoint's."""
    from pathlib import Path

    if not directory:
        return []
    shards = sorted(Path(directory).glob("*.safetensors"))
    if not shards:
        return []
    from safetensors import safe_open

    params = dict(model.named_parameters())
    problems = []
    for shard in shards[:: max(1, len(shards) // SAMPLED_TENSORS)][:SAMPLED_TENSORS]:
        with safe_open(str(shard), framework="pt") as f:
            names = [n for n in f.keys() if n in params and params[n].device.type != "meta"
                     and params[n].dtype.is_floating_point]
            for name in names[:: max(1, len(names) // SAMPLED_TENSORS)][:SAMPLED_TENSORS]:
                loaded = params[name].detach()
                source = f.get_tensor(name)
                if source.shape != loaded.shape:
                    continue  # fused or re-laid-out on load: not comparable element by element
                want = source.to(loaded.device, loaded.dtype).float()
                if not torch.allclose(loaded.float(), want, rtol=1e-3, atol=1e-3, equal_nan=True):
                    problems.append(f"{name} differs from {shard.name} (the loaded values are not the checkpoint's)")
    return problems


def check_health(model: torch.nn.Module, spec: ModelSpec, loading_info: dict | None, smoke: bool = True,
                 dequantized: bool = False, quant_method: str | None = None,
                 source_dir: str | None = None) -> HealthReport:
    problems: list[str] = []
    checked = ["loading info", "meta tensors", "quantized modules"]
    info = loading_info or {}
    problems += _listed(info.get("missing_keys", ()), "missing from the checkpoint (randomly initialised)")
    problems += _listed(info.get("unexpected_keys", ()), "in the checkpoint but not used by the model")
    problems += _listed([str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys", ())],
                        "shape mismatch (randomly initialised)")
    problems += [f"load error: {e}" for e in info.get("error_msgs", ())]
    # accelerate keeps disk-offloaded weights on the meta device and loads them in its forward hooks
    on_disk = tuple(k for k, v in (getattr(model, "hf_device_map", None) or {}).items() if v == "disk")
    meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"
            and not any(k == "" or n == k or n.startswith(k + ".") for k in on_disk)]
    problems += _listed(meta, "left on the meta device (never loaded)")
    problems += quantization_problems(model, spec, dequantized and quant_method is None, quant_method)
    broken = False
    if not problems and not quant_method:
        checked.append("sampled tensors against the checkpoint")
        differs = sampled_source_problems(model, source_dir)
        problems += differs
        broken = bool(differs)
    if smoke and not problems:
        checked.append("smoke forward")
        smoke_problems, nonfinite = smoke_forward(model)
        problems += smoke_problems
        broken = broken or nonfinite
    return HealthReport(not problems, problems, checked, broken)


def raise_if_unhealthy(report: HealthReport, name: str) -> None:
    if report.ok:
        return
    advice = ("the weights themselves are broken: re-download or re-save the checkpoint (a damaged kernelfit cache "
              "entry is rebuilt on the next run)" if report.weights_broken else "pass --no-health-check to load it anyway")
    raise HealthCheckError(f"{name} did not load correctly ({len(report.problems)} problem(s); {advice})",
                           report.problems)
