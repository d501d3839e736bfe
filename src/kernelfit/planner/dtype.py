"""The compute dtype per device: native ones in preference order, then memory fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.dtypes import BYTES, DtypeVerdict, dtype_verdicts
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec
from .types import ChoiceKind, Preferences, RejectKind, Rejected


def dtype_order(device: Device, model: ModelSpec, verdicts: dict[str, DtypeVerdict]) -> list[str]:
    """Preferred dtypes, best first: the checkpoint's half dtype on accelerators (no conversion
    loss), then bf16 (fp32 range), fp16, fp32. CPUs: bf16, then fp32 (CPU fp16 kernels are few)."""
    if device.kind == "cpu":
        return ["bfloat16", "float32", "float16"]
    order = ["bfloat16", "float16", "float32"]
    ckpt = model.checkpoint_dtype
    if ckpt in ("float16", "bfloat16") and verdicts[ckpt].native:
        order.remove(ckpt)
        order.insert(0, ckpt)
    return order


@dataclass(frozen=True)
class DtypeOption:
    dtype: str
    kind: ChoiceKind  # PRIORITY / REQUESTED: a native tier; MEMORY_FALLBACK: only when nothing native fits
    reason: str


@dataclass
class DtypeCandidates:
    ordered: list[DtypeOption]  # dtypes that may be chosen, best first
    rejected: dict[str, Rejected]  # dtype -> why it is not a normal choice
    sources: dict[str, tuple[str, ...]]

    def tier(self, fallback: bool) -> list[DtypeOption]:
        return [o for o in self.ordered if (o.kind is ChoiceKind.MEMORY_FALLBACK) == fallback]

    def keep(self, dtypes: set[str]) -> None:
        self.ordered = [o for o in self.ordered if o.dtype in dtypes]


def _not_native(v: DtypeVerdict, reason: str) -> Rejected:
    kind = RejectKind.TRADE_OFF if v.tradeoff else RejectKind.MEMORY_FALLBACK if v.runnable else RejectKind.NOT_RUNNABLE
    return Rejected(v.dtype, kind, reason)


def dtype_candidates(device: Device, machine: Machine, model: ModelSpec, prefs: Preferences) -> DtypeCandidates:
    verdicts = {v.dtype: v for v in dtype_verdicts(device, machine.cpu, machine.software)}
    order = dtype_order(device, model, verdicts)
    native = [t for t in order if verdicts[t].native]
    # a trade-off dtype (fast decode, slow prefill) "runs": `bench` measures it, a request is honoured
    rejected = {t: _not_native(verdicts[t], f"runs, but {verdicts[t].reason}" if verdicts[t].tradeoff
                               else verdicts[t].reason)
                for t in order if not verdicts[t].native}
    ordered: list[DtypeOption] = []
    if prefs.dtype != "auto":
        v = verdicts[prefs.dtype]
        if v.native or v.tradeoff:
            ordered.append(DtypeOption(prefs.dtype, ChoiceKind.REQUESTED, f"requested; {v.reason}"))
            if prefs.dtype in native:
                native.remove(prefs.dtype)
            rejected.pop(prefs.dtype, None)
        else:
            rejected[prefs.dtype] = _not_native(v, f"requested, but {v.reason}")
    for t in native:
        why = verdicts[t].reason
        if t == model.checkpoint_dtype:
            why += "; the checkpoint's own dtype (no conversion)"
        elif model.checkpoint_dtype == "bfloat16" and t == "float16":
            why += "; the bf16 checkpoint is cast to fp16 (values beyond ±65504 would overflow — rare in inference)"
        ordered.append(DtypeOption(t, ChoiceKind.PRIORITY, why))
    # Memory fallbacks: runnable but slow, smallest first, used only if nothing native fits.
    # fp16 before bf16 among equals: below sm80 bf16 is emulated, and SDPA's fused kernels refuse it
    slow = sorted((t for t in order if not verdicts[t].native and verdicts[t].runnable and t != prefs.dtype),
                  key=lambda t: (BYTES[t], t != "float16"))
    for t in slow:
        if BYTES[t] < min(BYTES[o.dtype] for o in ordered):
            ordered.append(DtypeOption(t, ChoiceKind.MEMORY_FALLBACK, f"memory fallback: {verdicts[t].reason}"))
    return DtypeCandidates(ordered, rejected, {t: v.sources for t, v in verdicts.items()})
