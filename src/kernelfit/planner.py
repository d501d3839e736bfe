"""plan(Machine, ModelSpec, Preferences) -> Plan. Pure: no probing, no torch, no I/O.

Order of decisions: which devices this torch build can use at all, then per device the compute
dtype (native first, memory fallbacks after), the attention implementation per sub-model, and
the memory estimate; the first placement that fits wins: one accelerator, several, accelerators
with CPU offload, then the CPU alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .capability import build_covers
from .catalog.attention import BACKENDS, PLAIN_GENERATE, AttentionQuery, priority_for, sdpa_kernels, why_not
from .catalog.dtypes import BYTES, DtypeVerdict, dtype_verdicts
from .catalog.torch_builds import legacy_install_command
from .errors import PlanError, UsageError
from .machine import Device, Machine
from .memory import device_budget, estimate, gib, materialises_scores
from .modelspec import ModelSpec, SubModel
from .plan import DEFAULT_CONTEXT, DTYPE_CHOICES, Choice, Placement, Plan, Preferences, Rejected

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
    rejected = {t: verdicts[t].reason for t in order if not verdicts[t].native}
    ordered: list[tuple[str, str]] = []
    if prefs.dtype != "auto":
        if verdicts[prefs.dtype].native:
            ordered.append((prefs.dtype, f"requested; {verdicts[prefs.dtype].reason}"))
            native.remove(prefs.dtype)
        else:
            rejected[prefs.dtype] = f"requested, but {verdicts[prefs.dtype].reason}"
    for t in native:
        why = verdicts[t].reason
        if t == model.checkpoint_dtype:
            why += f"; the checkpoint's own dtype (no conversion)"
        elif model.checkpoint_dtype == "bfloat16" and t == "float16":
            why += "; the bf16 checkpoint is cast to fp16 (values beyond ±65504 would overflow — rare in inference)"
        ordered.append((t, why))
    # Memory fallbacks: runnable but slow, smallest first, used only if nothing native fits.
    slow = sorted((t for t in order if not verdicts[t].native and verdicts[t].runnable and t != prefs.dtype),
                  key=lambda t: BYTES[t])
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


# -- placement ------------------------------------------------------------------------
def _sdpa_kernel(sub: SubModel, device: Device, machine: Machine, dtype: str) -> list[tuple[str, list[str]]]:
    return sdpa_kernels(AttentionQuery(device, machine.software, dtype, sub.head_dim, frozenset(sub.features)))


def _override(prefs: Preferences, device: Device) -> float | None:
    mm = prefs.max_memory or {}
    for key in (device.torch_device, str(device.index) if device.is_accelerator else "cpu", device.kind):
        if key in mm:
            return mm[key]
    return None


@dataclass
class Attempt:
    devices: list[Device]
    dtype: str
    dtype_reason: str
    attention: dict[str, Choice]
    kernels: dict[str, list[tuple[str, list[str]]]]
    memory: object


def _try(model: ModelSpec, machine: Machine, prefs: Preferences, devices: list[Device], compute: list[Device],
         dtype: str, why: str) -> Attempt:
    attention = {s.role: choose_attention(s, compute, machine, dtype, prefs) for s in model.sub_models}
    kernels = {s.role: _sdpa_kernel(s, compute[0], machine, dtype) for s in model.sub_models}
    scores = {}
    for s in model.sub_models:
        usable = next((k for k, r in kernels[s.role] if not r), "math")
        scores[s.role] = materialises_scores(attention[s.role].value, usable)
    budget = sum(device_budget(d, _override(prefs, d)) for d in devices)
    accel = any(d.is_accelerator for d in devices)
    mem = estimate(model, dtype, prefs.context, prefs.batch, scores, budget, accel)
    if len([d for d in devices if d.is_accelerator]) > 1:  # one CUDA context per GPU
        mem = type(mem)(mem.weights, mem.kv_cache, mem.activations, mem.overhead * len(compute), mem.budget)
    return Attempt(devices, dtype, why, attention, kernels, mem)


def _first_fit(model, machine, prefs, devices, compute) -> tuple[Attempt | None, Attempt | None, DtypeCandidates]:
    """First dtype (in preference order) that fits; also the smallest attempt, for error messages.
    Dtypes tried before the winner are recorded in `cands.rejected` with their figures."""
    cands = dtype_candidates(compute[-1] if len(compute) > 1 else compute[0], machine, model, prefs)
    if len(compute) > 1:  # a dtype must be native on every device used
        for d in compute[:-1]:
            other = {t for t, _ in dtype_candidates(d, machine, model, prefs).ordered}
            cands.ordered = [(t, r) for t, r in cands.ordered if t in other]
    smallest = None
    for dtype, why in cands.ordered:
        att = _try(model, machine, prefs, devices, compute, dtype, why)
        if att.memory.fits:
            return att, att, cands
        cands.rejected.setdefault(dtype, f"does not fit: needs {gib(att.memory.total):.2f} GiB, "
                                         f"budget {gib(att.memory.budget):.2f} GiB")
        if smallest is None or att.memory.total < smallest.memory.total:
            smallest = att
    return None, smallest, cands


def _mm(devices: list[Device], prefs: Preferences) -> dict[str, str]:
    out = {}
    for d in devices:
        key = str(d.index) if d.is_accelerator else "cpu"
        out[key] = f"{gib(device_budget(d, _override(prefs, d))):.2f}GiB"
    return out


def plan(machine: Machine, model: ModelSpec, prefs: Preferences | None = None) -> Plan:
    prefs = resolve(model, prefs or Preferences())
    devices, rejected_devices = candidate_devices(machine, prefs)
    if not devices:
        raise PlanError(f"no device of {machine.name} can run torch: "
                        + "; ".join(f"{r.name}: {r.reason}" for r in rejected_devices))
    accels = [d for d in devices if d.is_accelerator]
    cpu = [d for d in devices if not d.is_accelerator]
    attempts: list[tuple[str, list[Device], list[Device]]] = []
    attempts += [(f"fits on {d.torch_device} ({d.name})", [d], [d]) for d in accels]
    same_kind = [d for d in accels if d.kind == accels[0].kind] if accels else []
    if len(same_kind) > 1:
        attempts.append((f"split across {len(same_kind)} GPUs by accelerate", same_kind, same_kind))
    if accels and cpu:
        attempts.append(("too big for GPU memory alone: the layers that do not fit are offloaded to CPU RAM and "
                         "streamed to the GPU per forward (slow, but runs)", same_kind + cpu, same_kind))
    if cpu:
        attempts.append(("CPU" if not accels else "CPU only (GPU placements do not fit)", cpu, cpu))
    tried: list[Rejected] = []
    smallest_seen = None
    for why, place, compute in attempts:
        att, smallest, cands = _first_fit(model, machine, prefs, place, compute)
        if att is None:
            if smallest is not None:
                tried.append(Rejected("+".join(d.torch_device for d in place),
                                      f"needs {gib(smallest.memory.total):.2f} GiB in {smallest.dtype}, "
                                      f"has {gib(smallest.memory.budget):.2f} GiB"))
                if smallest_seen is None or smallest.memory.total < smallest_seen.memory.total:
                    smallest_seen = smallest
            continue
        return _build_plan(machine, model, prefs, att, why, cands, rejected_devices + tried, place)
    need = f"{gib(smallest_seen.memory.total):.1f} GiB" if smallest_seen else "more memory"
    raise PlanError(f"{model.name} does not fit {machine.name} at context {prefs.context} (needs at least {need}; "
                    + "; ".join(f"{r.name}: {r.reason}" for r in tried) + "). Ways out: a smaller --context, "
                    "a quantized checkpoint (4-bit needs about a quarter of the fp16 weights), or a bigger machine")


def _build_plan(machine, model, prefs, att: Attempt, why: str, cands: DtypeCandidates, rejected, place) -> Plan:
    dtype_rejected = [Rejected(t, r) for t, r in cands.rejected.items()]
    dtype_rejected += [Rejected(t, f"runs, but {att.dtype} comes first in the preference order")
                       for t, _ in cands.ordered if t != att.dtype and t not in cands.rejected]
    seen, uniq = set(), []
    for r in dtype_rejected:
        if r.name not in seen:
            seen.add(r.name)
            uniq.append(r)
    names = tuple(d.torch_device for d in place)
    if len(place) == 1:
        device_map, max_memory = {"": names[0]}, None
    else:
        device_map, max_memory = "auto", _mm(place, prefs)
    warnings = []
    if att.dtype_reason.startswith("memory fallback"):
        warnings.append(f"{att.dtype} chosen only to fit memory: {att.dtype_reason}")
    if "CPU RAM" in why:
        warnings.append("part of the model is offloaded to CPU RAM: expect decode to be limited by host-to-GPU transfers")
    return Plan(
        model=model, machine=machine, preferences=prefs,
        placement=Placement(names, device_map, max_memory, why, tuple(rejected)),
        dtype=Choice(att.dtype, att.dtype_reason, tuple(uniq), cands.sources.get(att.dtype, ())),
        attention=att.attention, sdpa_kernels=att.kernels, memory=att.memory, warnings=tuple(warnings),
    )
