"""The hardware gate every kernel row shares: which platforms it runs on, and the compute-capability
window on NVIDIA GPUs. Attention backends and quantization kernels both ask it, so a rule is written
(and worded) once."""

from __future__ import annotations

from ..hardware.capability import Capability
from ..hardware.machine import Device


def hardware_gate(device: Device, platforms: frozenset[str], min_cc: Capability | None = None,
                  max_cc: Capability | None = None) -> list[str]:
    """Why a kernel for `platforms` with this capability window cannot run on `device` ([] if it can).
    `max_cc` is inclusive; a kernel built for one arch family has min_cc..max_cc."""
    if device.kind not in platforms:
        return [f"not available on {device.kind} devices (runs on {', '.join(sorted(platforms))})"]
    cap = device.compute_capability
    if device.kind != "cuda" or cap is None:
        return []
    if min_cc and cap < min_cc:
        return [f"needs compute capability >= {min_cc}; {device.name} has compute capability {cap}"]
    if max_cc and cap > max_cc:
        return [f"built for compute capability {min_cc}..{max_cc}; {device.name} has {cap}"]
    return []
