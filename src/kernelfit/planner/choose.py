"""plan(Machine, ModelSpec, Preferences) -> Plan. Pure: no probing, no torch, no I/O.

Order of decisions: which devices this torch build can use at all, then per device the compute
dtype (native first, memory fallbacks after), the attention implementation per sub-model, and
the memory estimate; the first placement that fits wins: one accelerator, several, accelerators
with CPU offload, then the CPU alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..hardware.capability import build_covers
from ..catalog.attention import BACKENDS, PLAIN_GENERATE, AttentionQuery, priority_for, why_not
from ..catalog.dtypes import BYTES, DtypeVerdict, dtype_verdicts
from ..catalog.torch_builds import legacy_install_command
from ..errors import PlanError, UsageError
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec, SubModel
from .types import DEFAULT_CONTEXT, DTYPE_CHOICES, Choice, Plan, Preferences, Rejected

MAX_CONTEXT = 10_000_000


def attention_names() -> list[str]:
    return ["auto", *BACKENDS]


def resolve(model: ModelSpec, prefs: Preferences) -> Preferences:
    """Fill in defaults that depend on the model, then validate. Returns the effective preferences."""
    if prefs.context is None:
        limit = model.text.max_positions
        prefs = replace(prefs, context=min(DEFAULT_CONTEXT, limit) if isinstance(limit, int) and limit > 0
                        else DEFAULT_CONTEXT)
    validate(model, prefs)
    return prefs


def validate(model: ModelSpec, prefs: Preferences) -> None:
    if not isinstance(prefs.context, int) or prefs.context < 1 or prefs.context > MAX_CONTEXT:
        raise UsageError(f"--context must be a whole number of tokens between 1 and {MAX_CONTEXT:,}, not {prefs.context!r}")
    if not isinstance(prefs.batch, int) or prefs.batch < 1:
        raise UsageError(f"--batch must be a positive whole number, not {prefs.batch!r}")
    limit = model.text.max_positions
    if isinstance(limit, int) and prefs.context > limit:
        raise UsageError(f"--context {prefs.context} exceeds {model.name}'s max_position_embeddings ({limit}); "
                         f"use --context {limit} or less")
    if prefs.dtype not in DTYPE_CHOICES:
        raise UsageError(f"unknown dtype '{prefs.dtype}'; choose one of {', '.join(DTYPE_CHOICES)}")
    if prefs.attention not in attention_names():
        raise UsageError(f"unknown attention implementation '{prefs.attention}'; choose one of {', '.join(attention_names())}")


# -- devices --------------------------------------------------------------------------
def device_blockers(device: Device, machine: Machine) -> list[str]:
    """Why torch, as installed/assumed, cannot use this device at all (the build, not the chip)."""
    sw = machine.software
    if device.kind == "cpu":
        return [] if sw.torch else ["torch is not installed"]
    if sw.torch is None:
        return ["torch is not installed"]
    if device.kind == "cuda":
        if not sw.torch_cuda:
            return [f"torch {sw.torch} is a CPU-only build; install a CUDA build to use {device.name}"]
        cap = device.capability
        if cap is not None and sw.torch_cuda_arch_list and not build_covers(sw.torch_cuda_arch_list, cap):
            return [f"this torch build (torch {sw.torch}) was not compiled for {cap.sm} "
                    f"(it has {', '.join(sw.torch_cuda_arch_list)}); {device.name} itself is fine — "
                    f"install a build that has it: {legacy_install_command(sw.torch)}"]
    if device.kind == "rocm" and not sw.torch_hip:
        return [f"torch {sw.torch} is not a ROCm build; install the ROCm build to use {device.name}"]
    return []


def _rank(device: Device) -> tuple:
    cap = device.capability
    return (cap or (0, 0), device.memory_gib)


def candidate_devices(machine: Machine, prefs: Preferences) -> tuple[list[Device], list[Rejected]]:
    usable, rejected = [], []
    want = prefs.device
    for d in machine.devices:
        name = d.torch_device
        if want not in ("auto", name, d.kind, name.split(":")[0]):
            continue
        blockers = device_blockers(d, machine)
        if blockers:
            rejected.append(Rejected(name, "; ".join(blockers)))
        else:
            usable.append(d)
    if want != "auto" and not usable and not rejected:
        known = ", ".join(d.torch_device for d in machine.devices)
        raise UsageError(f"--device {want} matches no device of {machine.name} (it has {known})")
    accelerators = sorted((d for d in usable if d.is_accelerator), key=_rank, reverse=True)
    return accelerators + [d for d in usable if not d.is_accelerator], rejected


# -- dtype ----------------------------------------------------------------------------
def dtype_order(device: Device, model: ModelSpec, prefs: Preferences, verdicts: dict[str, DtypeVerdict]) -> list[str]:
    """Preferred dtypes, best first: the checkpoint's half dtype on accelerators (no conversion
    loss), then bf16 (fp32 range), fp16, fp32. CPUs: bf16, then fp32 (CPU fp16 kernels are few)."""
    if device.kind == "cpu":
        order = ["bfloat16", "float32", "float16"]
    else:
        order = ["bfloat16", "float16", "float32"]
        ckpt = model.checkpoint_dtype
        if ckpt in ("float16", "bfloat16") and verdicts[ckpt].native:
            order.remove(ckpt)
            order.insert(0, ckpt)
    return order


@dataclass
class DtypeCandidates:
    ordered: list[tuple[str, str]]  # (dtype, reason) that may be chosen, best first
    rejected: dict[str, str]  # dtype -> reason it is not a normal choice
    sources: dict[str, tuple[str, ...]]


def dtype_candidates(device: Device, machine: Machine, model: ModelSpec, prefs: Preferences) -> DtypeCandidates:
    verdicts = {v.dtype: v for v in dtype_verdicts(device, machine.cpu, machine.software)}
    order = dtype_order(device, model, prefs, verdicts)
    native = [t for t in order if verdicts[t].native]
    # a trade-off dtype (fast decode, slow prefill) "runs": `bench` measures it, a request is honoured
    rejected = {t: (f"runs, but {verdicts[t].reason}" if verdicts[t].tradeoff else verdicts[t].reason)
                for t in order if not verdicts[t].native}
    ordered: list[tuple[str, str]] = []
    if prefs.dtype != "auto":
        if verdicts[prefs.dtype].native or verdicts[prefs.dtype].tradeoff:
            ordered.append((prefs.dtype, f"requested; {verdicts[prefs.dtype].reason}"))
            if prefs.dtype in native:
                native.remove(prefs.dtype)
            rejected.pop(prefs.dtype, None)
        else:
            rejected[prefs.dtype] = f"requested, but {verdicts[prefs.dtype].reason}"
    for t in native:
        why = verdicts[t].reason
        if t == model.checkpoint_dtype:
            why += "; the checkpoint's own dtype (no conversion)"
        elif model.checkpoint_dtype == "bfloat16" and t == "float16":
            why += "; the bf16 checkpoint is cast to fp16 (values beyond ±65504 would overflow — rare in inference)"
        ordered.append((t, why))
    # Memory fallbacks: runnable but slow, smallest first, used only if nothing native fits.
    # fp16 before bf16 among equals: below sm80 bf16 is emulated, and SDPA's fused kernels refuse it
    slow = sorted((t for t in order if not verdicts[t].native and verdicts[t].runnable and t != prefs.dtype),
                  key=lambda t: (BYTES[t], t != "float16"))
    for t in slow:
        if BYTES[t] < min(BYTES[n] for n, _ in ordered):
            ordered.append((t, f"memory fallback: {verdicts[t].reason}"))
    return DtypeCandidates(ordered, rejected, {t: v.sources for t, v in verdicts.items()})


# -- attention ------------------------------------------------------------------------
def choose_attention(sub: SubModel, devices: list[Device], machine: Machine, dtype: str, prefs: Preferences) -> Choice:
    """First implementation in the lead device's priority list that runs on every device used."""
    order = priority_for(devices[0])
    if prefs.attention != "auto" and prefs.attention not in order:
        order = (prefs.attention, *order)
    reasons: dict[str, list[str]] = {}
    for name in order:
        rs: list[str] = []
        for d in devices:
            # a plan is for from_pretrained + generate: ordinary (non-paged) attention calls
            q = AttentionQuery(d, machine.software, dtype, sub.head_dim, frozenset(sub.features) | {PLAIN_GENERATE})
            rs += [r for r in why_not(BACKENDS[name], q) if r not in rs]
        reasons[name] = rs
    valid = [n for n in order if not reasons[n]]
    if not valid:  # eager runs everywhere torch does; reaching here is a catalog bug
        raise PlanError(f"no attention implementation runs {sub.role} model on {devices[0].name}")
    chosen = valid[0]
    if prefs.attention != "auto" and prefs.attention in valid:
        chosen = prefs.attention
        why = f"requested, and it runs on {devices[0].name}"
    else:
        why = f"first in the priority list for {devices[0].kind} {devices[0].compute_capability or ''}".rstrip()
        why += f" ({' > '.join(order)}) that runs here with {dtype}, head_dim {sub.head_dim}"
        if prefs.attention != "auto":
            why = f"requested {prefs.attention} cannot run: {'; '.join(reasons[prefs.attention])} — using {chosen}, " + why
    rejected = []
    for n in order:
        if n == chosen:
            continue
        rejected.append(Rejected(n, "; ".join(reasons[n]) if reasons[n]
                                 else f"runs here, but {chosen} comes first in the priority list"))
    return Choice(chosen, why, tuple(rejected), BACKENDS[chosen].sources)


def plan(machine: Machine, model: ModelSpec, prefs: Preferences | None = None) -> Plan:
    """The plan for `model` on `machine`: see placement.search for the order things are tried in."""
    from .search import search

    prefs = resolve(model, prefs or Preferences())
    devices, rejected_devices = candidate_devices(machine, prefs)
    if not devices:
        raise PlanError(f"no device of {machine.name} can run torch: "
                        + "; ".join(f"{r.name}: {r.reason}" for r in rejected_devices))
    return search(machine, model, prefs, devices, rejected_devices)
