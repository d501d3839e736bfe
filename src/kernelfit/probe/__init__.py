"""probe: what is on this computer, as a `Machine`.

Never initialises CUDA: NVIDIA GPUs come from NVML, software from package metadata. torch is
consulted only if the caller already imported it (then ROCm and MPS devices come from it).
"""

from __future__ import annotations

import platform
import socket
import sys
from dataclasses import replace

from ..hardware.machine import Device, Machine, cpu_device_for
from .cpu import probe_cpu, probe_memory
from .nvml import NvmlResult, probe_nvml
from .software import probe_software

GIB = 1024**3


def _torch_devices(existing: list[Device]) -> tuple[list[Device], list[str]]:
    """ROCm and MPS devices through torch, only when torch is already imported."""
    torch = sys.modules.get("torch")
    notes: list[str] = []
    if torch is None:
        return [], notes
    found: list[Device] = []
    try:
        if getattr(torch.version, "hip", None) and not existing and torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                arch = getattr(props, "gcnArchName", "").split(":")[0] or None
                found.append(Device(kind="rocm", name=props.name, index=i, arch=arch,
                                    memory_gib=round(props.total_memory / GIB, 2), sources=("torch",)))
            notes.append("AMD GPUs read through torch (ROCm build)")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            found.append(Device(kind="mps", name="Apple GPU (MPS)", arch="apple", unified_memory=True,
                                sources=("torch",)))
    except Exception as exc:  # a broken driver must not break the doctor
        notes.append(f"torch device query failed: {exc}")
    return found, notes


def _disk_free_gib() -> float | None:
    """Free space under kernelfit's cache dir (where disk offload and conversions are written); None when
    it cannot be read (e.g. the cache dir lies inside a folder this user cannot enter)."""
    import shutil

    from ..paths import cache_root

    try:
        p = cache_root()
        while not p.exists() and p != p.parent:
            p = p.parent
        return round(shutil.disk_usage(p).free / 2**30, 1)
    except OSError:  # PermissionError from stat() on an unenterable parent, among others
        return None


def probe_machine(nvml=None) -> Machine:
    """Probe this computer. `nvml` replaces the pynvml module (tests pass a fake)."""
    cpu = probe_cpu()
    total, available = probe_memory()
    gpus: NvmlResult = probe_nvml(nvml)
    notes: list[str] = []
    if gpus.error:
        notes.append(gpus.error)
    devices: list[Device] = list(gpus.devices)
    extra, torch_notes = _torch_devices(devices)
    notes += torch_notes
    for d in extra:
        devices.append(replace(d, memory_gib=d.memory_gib or total) if d.kind == "mps" else d)
    if not any(d.kind == "mps" for d in devices) and platform.system() == "Darwin" and cpu.arch == "arm64":
        devices.append(Device(kind="mps", name="Apple GPU (MPS)", arch="apple", memory_gib=total,
                              unified_memory=True, sources=("platform",)))
    devices.append(cpu_device_for(cpu, total, available))
    return Machine(
        name=socket.gethostname() or "this-machine",
        description="probed",
        cpu=cpu,
        memory_gib=total,
        memory_available_gib=available,
        disk_free_gib=_disk_free_gib(),
        software=probe_software(gpus.driver, gpus.cuda_driver),
        devices=tuple(devices),
        origin="probe",
        notes=tuple(notes),
    )
