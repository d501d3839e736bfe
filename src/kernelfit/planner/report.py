"""`kernelfit plan --json`: the Plan as plain data. Every choice and every rejected item carries its
`kind` (planner.types.ChoiceKind / RejectKind) beside its human `reason`."""

from __future__ import annotations

from .hf_args import from_pretrained_kwargs, generate_kwargs, lean_runner
from .memory import gib
from .types import Choice, Plan


def _choice(c: Choice, key: str) -> dict:
    return {key: c.value, "kind": c.kind.value, "reason": c.reason,
            "rejected": [r.to_dict(key) for r in c.rejected], "sources": list(c.sources)}


def quantization_dict(plan: Plan) -> dict:
    q = plan.quantization
    if q is None:
        return {"method": "none", "bits": None, "backend": None, "kv_cache_bits": None, "reason": "", "rejected": []}
    return {"method": q.method, "bits": q.bits, "backend": q.backend, "group_size": q.group_size,
            "kv_cache_bits": q.kv_bits, "reason": q.reason, "install": q.install,
            "rejected": [dict(r.to_dict("name"), method=r.method, backend=r.backend)
                         for r in plan.quantization_rejected]}


def plan_dict(plan: Plan) -> dict:
    attention = _choice(plan.text_attention, "implementation")
    if len(plan.attention) > 1:
        attention["sub_models"] = {(s.config_key or s.role): _choice(plan.attention[s.role], "implementation")
                                   for s in plan.model.sub_models}
    if plan.text_attention.value == "sdpa" and "text" in plan.sdpa_kernels:
        attention["sdpa_kernels"] = [{"kernel": k, "usable": not r, "reasons": r} for k, r in plan.sdpa_kernels["text"]]
    m, prefs, place = plan.machine, plan.preferences, plan.placement
    return {
        "model": plan.model.to_dict(),
        "machine": {"name": m.name, "origin": m.origin,
                    "devices": [{"kind": d.kind, "name": d.name, "index": d.index,
                                 "compute_capability": str(d.compute_capability) if d.compute_capability else None,
                                 "memory_gib": d.memory_gib} for d in m.devices],
                    "software": {"torch": m.software.torch, "torch_cuda": m.software.torch_cuda,
                                 "packages": dict(m.software.packages)}},
        "preferences": {"dtype": prefs.dtype, "attention": prefs.attention, "context": prefs.context,
                        "batch": prefs.batch, "device": prefs.device, "quantization": prefs.quantization,
                        "prefill": prefs.prefill},
        "device": {"devices": list(place.devices), "kind": place.kind.value, "reason": place.reason,
                   "rejected": [r.to_dict("device") for r in place.rejected]},
        "attention": attention,
        "dtype": _choice(plan.dtype, "value"),
        "device_map": place.device_map,
        "max_memory": {k: f"{gib(v):.2f}GiB" for k, v in place.max_memory.items()} if place.max_memory else None,
        "memory": plan.memory.to_dict(),
        "quantization": quantization_dict(plan),
        "offload": dict(plan.offload),
        "kernels": {phase: _choice(c, "kernel") for phase, c in plan.kernels.items()},
        "runner": "kernelfit packed CPU runner (engine/reference.py)" if lean_runner(plan) else "transformers",
        "from_pretrained": None if lean_runner(plan) else from_pretrained_kwargs(plan),
        "generate": generate_kwargs(plan),
        "warnings": list(plan.warnings),
        "tuned": plan.tuned,
        "decode_fastpath": {"enabled": plan.decode_fastpath is not None, "reason": plan.decode_fastpath,
                            "attention": plan.decode_attention},
    }
