"""plan(Machine, ModelSpec, Preferences) -> Plan: where the model goes, in what dtype, and how much it
is quantized — the first that fits wins. Pure: no probing, no torch, no I/O.

Search order (least quality loss first, then least speed loss):
  for dtype tier in (native dtypes, memory-fallback dtypes such as fp16 on consumer Pascal):
    for level in the quantization ladder (unquantized, int4 KV cache, 8-bit, 8-bit + int4 KV,
                                          4-bit, 4-bit + int4 KV; or the checkpoint's own format):
      for placement in (each accelerator, best first; all accelerators of one kind split):
        for dtype in the placement's dtypes of that tier: estimate memory; fits -> plan
          (an automatic 8-bit whose kernel decodes slower than nf4 there gives way to 4-bit if that fits)
  then accelerators + CPU RAM offload (unquantized), then the CPU alone (whole ladder), then, with
  free disk, the weights that fit in neither spill to disk (unquantized; bitsandbytes cannot offload).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..catalog.attention import AttentionQuery, sdpa_kernels
from ..catalog.engine_checkpoints import packed_bytes_per_weight
from ..catalog.kv_cache import KV_CACHE_KINDS
from ..catalog.quantization import SLOW_8BIT_WHY, slow_8bit_decode
from ..errors import PlanError
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec
from .attention import choose_attention
from .devices import candidate_devices, resolve, validate_memory
from .dtype import DtypeCandidates, DtypeOption, dtype_candidates
from .phases import kv_cache_choice, phase_kernels
from .memory import DISK_USABLE_FRACTION, GIB, MemoryEstimate, device_budget, estimate, gib, materialises_scores
from .quantization import KV_BITS, Level, QuantOption, ladder, resolve_level
from .types import Choice, ChoiceKind, Placement, PlacementKind, Plan, Preferences, RejectKind, Rejected


@dataclass
class Place:
    why: str
    kind: PlacementKind
    devices: list[Device]  # where weights live
    compute: list[Device]  # where the math runs

    @property
    def offload(self) -> bool:
        return self.kind in (PlacementKind.CPU_OFFLOAD, PlacementKind.DISK_OFFLOAD)

    @property
    def disk(self) -> bool:  # weights that fit nowhere else stay on disk (accelerate disk offload)
        return self.kind is PlacementKind.DISK_OFFLOAD

    @property
    def name(self) -> str:
        return "+".join(d.torch_device for d in self.devices)


@dataclass
class Attempt:
    place: Place
    dtype: DtypeOption
    quant: QuantOption
    attention: dict[str, Choice]
    kernels: dict
    memory: MemoryEstimate
    cands: DtypeCandidates | None = None


@dataclass
class Log:
    tried: list[Rejected] = field(default_factory=list)  # placements that did not fit, with figures
    quant: list[Rejected] = field(default_factory=list)  # quantization levels passed over
    smallest: Attempt | None = None
    uninstalled: QuantOption | None = None  # a packed kernel passed over for --allow-dequantize

    def miss(self, att: Attempt, level: Level) -> None:
        need, budget = gib(att.memory.total), gib(att.memory.budget)
        why = f"{level.label()} in {att.dtype.dtype} needs {need:.2f} GiB, budget {budget:.2f} GiB"
        tried = dict(needs_gib=need, budget_gib=budget, dtype=att.dtype.dtype, bits=level.bits, kv_bits=level.kv_bits)
        self.tried.append(Rejected(att.place.name, RejectKind.DOES_NOT_FIT, why, **tried))
        q = att.quant
        self.quant.append(Rejected(f"{q.method}:{q.backend or '-'}", RejectKind.DOES_NOT_FIT,
                                   f"does not fit on {att.place.name}: {why}", method=q.method, backend=q.backend,
                                   place=att.place.name, **tried))
        if self.smallest is None or att.memory.total < self.smallest.memory.total:
            self.smallest = att


def _override(prefs: Preferences, device: Device) -> float | None:
    mm = prefs.max_memory or {}
    for key in (device.torch_device, str(device.index) if device.is_accelerator else "cpu", device.kind):
        if key in mm:
            return mm[key]
    return None


def _ram(place: Place, prefs: Preferences) -> int:
    """Bytes of GPU memory and RAM the place may use."""
    return sum(device_budget(d, _override(prefs, d)) for d in place.devices)


def _disk_budget(machine: Machine, prefs: Preferences) -> int:
    """Disk for offloaded weights: --max-memory disk=..., else a share of the probed free space."""
    if "disk" in (prefs.max_memory or {}):
        return int(prefs.max_memory["disk"] * GIB)
    return int((machine.disk_free_gib or 0) * DISK_USABLE_FRACTION * GIB)


def _fits(att: Attempt, prefs: Preferences) -> bool:
    # only weights can live on disk: KV cache, activations and the runtime need RAM/GPU memory
    return att.memory.fits and (not att.place.disk or att.memory.total - att.memory.weights <= _ram(att.place, prefs))


def _try(model: ModelSpec, machine: Machine, prefs: Preferences, place: Place, option: DtypeOption,
         quant: QuantOption) -> Attempt:
    lead, dtype = place.compute[0], option.dtype
    attention = {s.role: choose_attention(s, place.compute, machine, dtype, prefs) for s in model.sub_models}
    kernels = {s.role: sdpa_kernels(AttentionQuery(lead, machine.software, dtype, s.head_dim, frozenset(s.features)))
               for s in model.sub_models}
    scores = {s.role: materialises_scores(attention[s.role].value, next((k for k, r in kernels[s.role] if not r), "math"))
              for s in model.sub_models}
    budget = _ram(place, prefs) + (_disk_budget(machine, prefs) if place.disk else 0)
    accel = any(d.is_accelerator for d in place.devices)
    # a GGUF file is dequantized into a float32 safetensors cache, which is what loads — unless it runs packed:
    # then the file is mapped and read once (its pages count while loading), and the runner keeps activations
    # in float32 and the KV cache in the plan's kind (float16 unless asked: phases.kv_cache_choice)
    storage = "float32" if model.format == "gguf" else (model.checkpoint_dtype or "float32")
    lean = quant.method in ("gguf", "engine")
    kv_value = KV_CACHE_KINDS[kv_cache_choice(model, prefs).value].bytes_per_value if lean else None
    mem = estimate(model, "float32" if lean else dtype, prefs.context, prefs.batch, scores, budget, accel,
                   None if quant.method == "engine" else quant.memory_key, quant.kv_bits,
                   storage_dtype=None if lean else storage, kv_value_bytes=kv_value)
    if quant.method == "gguf":
        mem = replace(mem, mapped_checkpoint=model.quantization.file_bytes or 0)
    elif quant.method == "engine":  # 16-bit rows, Q8_0 blocks or packed groups (engine/safetensors/);
        mem = replace(mem, weights=_engine_weight_bytes(model, quant))
    gpus = len([d for d in place.devices if d.is_accelerator])
    if gpus > 1:  # one CUDA context per GPU
        mem = MemoryEstimate(mem.weights, mem.kv_cache, mem.activations, mem.overhead * gpus, mem.budget,
                             mem.mapped_checkpoint)
    return Attempt(place, option, quant, attention, kernels, mem)


def _engine_weight_bytes(model: ModelSpec, quant: QuantOption) -> int:
    """The engine's weights: bf16 / float16 rows, Q8_0 blocks (--quantization q8_0, every matrix), or an AWQ / GPTQ
    checkpoint's dot groups (catalog/engine_checkpoints.py packed_bytes_per_weight), fp8 weights widened to bf16, beside
    16-bit embeddings."""
    if quant.bits:
        return model.params * 34 // 32
    pre = model.quantization if model.quantization is not None and model.quantization.prequantized else None
    if pre is None:
        return model.params * 2
    t = model.text
    embed = min(model.params, t.vocab_size * t.hidden_size * (1 if t.tie_embeddings else 2)) if t.vocab_size else 0
    per = 2 if pre.float_values else \
        packed_bytes_per_weight(pre.bits, pre.method in ("gptq", "compressed-tensors") and bool(pre.sym), pre.group_size)
    return int(embed * 2 + (model.params - embed) * per)


def _cands(place: Place, machine: Machine, model: ModelSpec, prefs: Preferences) -> DtypeCandidates:
    cands = dtype_candidates(place.compute[0], machine, model, prefs)
    for d in place.compute[1:]:  # a dtype must be usable on every device that computes
        cands.keep({o.dtype for o in dtype_candidates(d, machine, model, prefs).ordered})
    return cands


def _places(devices: list[Device]) -> tuple[list[Place], Place | None, Place | None, Place | None]:
    """GPU placements, GPU + CPU offload, CPU alone, and disk offload (None where impossible)."""
    accels = [d for d in devices if d.is_accelerator]
    cpu = [d for d in devices if not d.is_accelerator]
    gpu = [Place(f"fits on {d.torch_device} ({d.name})", PlacementKind.ONE_DEVICE, [d], [d]) for d in accels]
    same = [d for d in accels if accels and d.kind == accels[0].kind]
    if len(same) > 1:
        gpu.append(Place(f"split across {len(same)} GPUs by layer (accelerate device_map='auto')",
                         PlacementKind.SPLIT, same, same))
    offload = (Place("too big for GPU memory: the layers that do not fit are offloaded to CPU RAM and streamed to "
                     "the GPU each forward pass (slow, but runs)", PlacementKind.CPU_OFFLOAD, same + cpu, same)
               if accels and cpu else None)
    only_cpu = (Place("CPU" if not accels else "CPU only (no GPU placement fits)", PlacementKind.ONE_DEVICE, cpu, cpu)
                if cpu else None)
    disk = (Place("too big for GPU memory and RAM: the weights that fit nowhere else stay on disk (accelerate disk "
                  "offload) and are read on every forward pass (expect seconds per token)", PlacementKind.DISK_OFFLOAD,
                  same + cpu, same or cpu) if cpu else None)
    return gpu, offload, only_cpu, disk


def _run(model, machine, prefs, places: list[Place], levels: list[Level], log: Log) -> Attempt | None:
    cands = {id(p): _cands(p, machine, model, prefs) for p in places}
    for fallback in (False, True):
        for level in levels:
            for place in places:
                for option in cands[id(place)].tier(fallback):
                    q = resolve_level(level, model, place.compute, machine, option.dtype)
                    if not isinstance(q, Rejected) and q.install and level.kind == "pre" and prefs.allow_dequantize:
                        # --allow-dequantize: what runs now beats a faster kernel that must be installed first
                        log.uninstalled = log.uninstalled or q
                        q = Rejected(f"{q.method}:{q.backend}", RejectKind.NOT_INSTALLED,
                                     f"runs here, but is not installed ({q.install}); "
                                     "--allow-dequantize unpacks the weights instead", install=q.install,
                                     method=q.method, backend=q.backend)
                    if isinstance(q, Rejected):
                        log.quant.append(q)
                        continue
                    att = _try(model, machine, prefs, place, option, q)
                    if _fits(att, prefs):
                        att.cands = cands[id(place)]
                        return _faster_4bit(model, machine, prefs, att, level) or att
                    log.miss(att, level)
    return None


def _faster_4bit(model, machine, prefs, att: Attempt, level: Level) -> Attempt | None:
    """The 4-bit attempt that replaces an automatic 8-bit choice whose kernel decodes slower than nf4 on
    these devices (catalog SLOW_8BIT_DECODE), when 4-bit fits the same place and dtype; else None."""
    q = att.quant
    if prefs.quantization != "auto" or not slow_8bit_decode(q.method, q.backend, att.place.compute):
        return None  # (only an on-the-fly or re-quantized 8-bit level resolves to a slow 8-bit kernel)
    for kv_bits in (None, KV_BITS):
        four = resolve_level(Level(level.kind, 4, kv_bits), model, att.place.compute, machine, att.dtype.dtype)
        if isinstance(four, Rejected) or four.method != "bitsandbytes":
            continue
        alt = _try(model, machine, prefs, att.place, att.dtype, four)
        if not _fits(alt, prefs):
            continue
        need, budget = gib(att.memory.total), gib(att.memory.budget)
        slow = Rejected(f"{q.method}:{q.backend}", RejectKind.SLOWER_HERE, (
            f"8-bit fits ({need:.2f} of {budget:.2f} GiB) and loses the least quality, "
            f"but {SLOW_8BIT_WHY}; --quantization 8bit keeps it"), needs_gib=need, budget_gib=budget,
            method=q.method, backend=q.backend)
        alt.quant = replace(four, reason=f"{four.reason}; preferred to 8-bit, which also fits, for decode speed",
                            rejected=(slow, *four.rejected), passed_over_bits=q.bits)
        alt.cands = att.cands
        return alt
    return None


def search(machine: Machine, model: ModelSpec, prefs: Preferences, devices: list[Device], rejected_devices) -> Plan:
    levels = ladder(model, prefs.quantization, prefs.allow_dequantize, prefs.dtype)
    gpu, offload, cpu, disk = _places(devices)
    log = Log()
    att = _run(model, machine, prefs, gpu, levels, log) if gpu else None
    if att is None and offload is not None:
        att = _run(model, machine, prefs, [offload], levels[:1], log)
    if att is None and cpu is not None:
        att = _run(model, machine, prefs, [cpu], levels, log)
    if att is None and disk is not None and _disk_budget(machine, prefs) > 0:
        att = _run(model, machine, prefs, [disk], levels[:1], log)
    if att is None and log.smallest is None and log.quant:  # no kernel runs the checkpoint's format anywhere here
        pre = levels[0].kind == "pre"
        first = {}  # one reason per place: the best dtype's
        for r in log.quant:
            first.setdefault(r.name, r.reason)
        why = "; ".join(dict.fromkeys(first.values()))  # each reason once, however many levels it stopped
        raise PlanError(f"nothing on {machine.name} runs {model.name}'s "
                        f"{model.quantization.method if model.quantization else 'quantized'} weights ({why})"
                        + (". Pass --allow-dequantize to unpack them into a dtype this machine runs" if pre
                           and not prefs.allow_dequantize else ""))
    if att is None:
        need = f"{gib(log.smallest.memory.total):.1f} GiB" if log.smallest else "more memory"
        tried = "; ".join(dict.fromkeys(f"{r.name}: {r.reason}" for r in log.tried[-4:]))
        raise PlanError(f"{model.name} does not fit {machine.name} at context {prefs.context} (the smallest "
                        f"configuration needs {need}; {tried}). Ways out: a smaller --context, --quantization 4bit, "
                        f"--max-memory with more CPU RAM, or a bigger machine")
    return build(machine, model, prefs, att, rejected_devices, log)


def _max_memory(place: Place, prefs: Preferences) -> dict[str, int]:
    """accelerate's max_memory in bytes, by its keys ("0", "cpu")."""
    return {(str(d.index) if d.is_accelerator else "cpu"): device_budget(d, _override(prefs, d)) for d in place.devices}


def build(machine, model, prefs, att: Attempt, rejected_devices, log: Log) -> Plan:
    cands = att.cands
    chosen = att.dtype.dtype
    order = [o.dtype for o in cands.ordered]
    dtype_rejected = {t: r for t, r in cands.rejected.items() if t != chosen}
    for t in order:
        if t == chosen or t in dtype_rejected:
            continue
        if order.index(t) < order.index(chosen):
            dtype_rejected[t] = Rejected(t, RejectKind.DOES_NOT_FIT,
                                         "does not fit at any quantization level tried before this one")
        else:
            dtype_rejected[t] = Rejected(t, RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                         f"runs, but {chosen} comes first in the preference order")
    place = att.place
    names = tuple(d.torch_device for d in place.devices)
    if len(place.devices) == 1 and not place.disk:
        device_map, max_memory = {"": names[0]}, None
    else:
        device_map, max_memory = "auto", _max_memory(place, prefs)
    gpu_budget = sum(device_budget(d, _override(prefs, d)) for d in place.devices if d.is_accelerator)
    on_disk = max(att.memory.total - _ram(place, prefs), 0) if place.disk else 0
    offload = {"cpu_gib": gib(max(att.memory.total - on_disk - gpu_budget, 0)) if place.offload else 0.0,
               "disk_gib": round(on_disk / GIB, 6)}  # not gib(): a small spill must not round to "no disk"
    if place.disk:  # accelerate's max_memory counts weights only: leave the compute device room for the rest
        lead = place.compute[0]
        key = str(lead.index) if lead.is_accelerator else "cpu"
        room = device_budget(lead, _override(prefs, lead)) - (att.memory.total - att.memory.weights)
        max_memory = dict(max_memory, **{key: max(room, GIB // 100)})
    warnings = []
    if att.dtype.kind is ChoiceKind.MEMORY_FALLBACK:
        warnings.append(f"{chosen} chosen only to fit memory: {att.dtype.reason}")
    if place.disk:
        warnings.append(f"{offload['disk_gib']:.1f} GiB of weights stay on disk and are read on every forward pass: "
                        "expect seconds per token (more RAM, --quantization 4bit on a GPU, or a smaller model avoid it)")
    elif place.offload:
        warnings.append(f"{offload['cpu_gib']:.1f} GiB of the model is offloaded to CPU RAM: expect decode to be "
                        "limited by host-to-GPU transfers")
    if att.quant.install:
        warnings.append(f"this plan needs a package that is not installed: {att.quant.install}")
    if slow_8bit_decode(att.quant.method, att.quant.backend, place.compute):
        # 8-bit as asked (the automatic ladder takes nf4 here); say what the speed costs and how to trade it
        warnings.append(f"8-bit stays closest to the checkpoint, but {SLOW_8BIT_WHY}: --quantization 4bit trades "
                        "a little quality for speed")
    skipped = log.uninstalled
    if skipped is not None and att.quant.method == "dequantize":
        warnings.append(f"dequantized because {skipped.method}:{skipped.backend} is not installed; it would run the "
                        f"checkpoint packed (less memory, usually faster): {skipped.install}")
    tried = [r for r in log.tried if r.name != place.name]
    q = att.quant
    kernels, memory = phase_kernels(model, prefs, q, att.memory, machine.cpu)
    if q.method in ("gguf", "engine"):  # kernelfit's engine: its KV cache kind, which the memory above counted
        kernels["kv_cache"] = kv_cache_choice(model, prefs)
    quant_rejected = list(q.rejected) + list(log.quant)
    return Plan(
        model=model, machine=machine, preferences=prefs,
        placement=Placement(names, place.kind, device_map, max_memory, place.why, tuple(rejected_devices) + tuple(
            dict.fromkeys(tried))),
        dtype=Choice(chosen, att.dtype.kind, att.dtype.reason, tuple(dtype_rejected.values()),
                     cands.sources.get(chosen, ())),
        attention=att.attention, sdpa_kernels=att.kernels, memory=memory, warnings=tuple(warnings),
        quantization=q, quantization_rejected=tuple(dict.fromkeys(quant_rejected)), offload=offload, kernels=kernels,
    )


def plan(machine: Machine, model: ModelSpec, prefs: Preferences | None = None) -> Plan:
    """The plan for `model` on `machine`: see the module docstring for the order things are tried in."""
    prefs = resolve(model, prefs or Preferences())
    validate_memory(machine, prefs)
    devices, rejected_devices = candidate_devices(machine, prefs)
    if not devices:
        raise PlanError(f"no device of {machine.name} can run torch: "
                        + "; ".join(f"{r.name}: {r.reason}" for r in rejected_devices))
    return search(machine, model, prefs, devices, rejected_devices)
