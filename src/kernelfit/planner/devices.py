"""Preferences made concrete for a model, and which of the machine's devices this torch build can use."""

from __future__ import annotations

from dataclasses import replace

from ..catalog.attention import BACKENDS
from ..catalog.torch_builds import device_blockers
from ..errors import UsageError
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec
from .types import DEFAULT_CONTEXT, DTYPE_CHOICES, Preferences, RejectKind, Rejected

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
    from .quantization import QUANT_CHOICES

    if prefs.quantization not in QUANT_CHOICES:
        raise UsageError(f"unknown quantization {prefs.quantization!r}; choose one of {', '.join(QUANT_CHOICES)}")
    if not isinstance(prefs.allow_dequantize, bool):
        raise UsageError(f"allow_dequantize must be True or False, not {prefs.allow_dequantize!r}")
    if not isinstance(prefs.device, str) or not prefs.device.strip():
        raise UsageError(f"device must be a name such as auto, cpu, cuda or cuda:0, not {prefs.device!r}")


def memory_keys(machine: Machine) -> list[str]:
    """The --max-memory keys this machine understands: accelerate's ("0", "cpu", "disk") and torch's names."""
    keys = ["cpu", "disk"]
    for d in machine.accelerators:
        keys += [str(d.index), d.torch_device, d.kind]
    return list(dict.fromkeys(keys))


def validate_memory(machine: Machine, prefs: Preferences) -> None:
    mm = prefs.max_memory
    if mm is None:
        return
    if not isinstance(mm, dict):
        raise UsageError(f"max_memory must map devices to sizes, e.g. {{'cpu': '8GiB', 0: '20GiB'}}, not {mm!r}")
    known = memory_keys(machine)
    for key, value in mm.items():
        if key not in known:
            raise UsageError(f"--max-memory names '{key}', which {machine.name} does not have; use "
                             f"{', '.join(known)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
            raise UsageError(f"--max-memory for {key} must be a positive size, not {value!r}")


def _rank(device: Device) -> tuple:
    return (device.compute_capability or (0, 0), device.memory_gib)


def candidate_devices(machine: Machine, prefs: Preferences) -> tuple[list[Device], list[Rejected]]:
    """Devices torch can use here, accelerators first (best first), then the CPU; and the ones it cannot."""
    usable, rejected = [], []
    want = prefs.device
    for d in machine.devices:
        name = d.torch_device
        if want not in ("auto", name, d.kind, name.split(":")[0]):
            continue
        blockers = device_blockers(d, machine.software)
        if blockers:
            rejected.append(Rejected(name, RejectKind.NOT_RUNNABLE, "; ".join(b.message for b in blockers),
                                     install=blockers[0].fix))
        else:
            usable.append(d)
    if want != "auto" and not usable and not rejected:
        known = ", ".join(d.torch_device for d in machine.devices)
        raise UsageError(f"--device {want} matches no device of {machine.name} (it has {known})")
    accelerators = sorted((d for d in usable if d.is_accelerator), key=_rank, reverse=True)
    return accelerators + [d for d in usable if not d.is_accelerator], rejected
