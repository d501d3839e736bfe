"""NVIDIA GPUs through NVML (nvidia-ml-py), never through torch.cuda.

NVML talks to the driver, not the CUDA runtime, so probing creates no CUDA context, takes no
GPU memory and does not fix CUDA_VISIBLE_DEVICES for the process (vLLM's `NvmlCudaPlatform`
does the same for the same reason). Every failure becomes a `NvmlResult.error` the doctor can
report: "no driver" is a normal answer, not an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..hardware.machine import Device

GIB = 1024**3


@dataclass
class NvmlResult:
    devices: list[Device] = field(default_factory=list)
    driver: str | None = None
    cuda_driver: str | None = None  # e.g. "12.8"
    error: str | None = None  # why no GPU was found, if none was


def _visible_indices(count: int) -> list[int] | None:
    """NVML sees every GPU; CUDA_VISIBLE_DEVICES limits what torch will use. Honour plain
    integer lists (the common case); UUID forms fall back to all devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return None
    env = env.strip()
    if env == "":
        return []
    out = []
    for part in env.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            return None
        i = int(part)
        if i < 0:
            break  # CUDA stops at the first invalid index
        if i < count:
            out.append(i)
    return out


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe_nvml(nvml=None) -> NvmlResult:
    """Enumerate NVIDIA GPUs. `nvml` is the pynvml module (a fake one in tests)."""
    if nvml is None:
        try:
            import pynvml as nvml  # from nvidia-ml-py
        except ImportError:
            return NvmlResult(error="nvidia-ml-py is not installed, so NVIDIA GPUs cannot be probed")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return NvmlResult(error=f"no NVIDIA driver found ({_text(exc) or type(exc).__name__})")
    try:
        result = NvmlResult()
        try:
            result.driver = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            pass
        try:
            v = int(nvml.nvmlSystemGetCudaDriverVersion())
            result.cuda_driver = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        count = int(nvml.nvmlDeviceGetCount())
        visible = _visible_indices(count)
        indices = list(range(count)) if visible is None else visible
        for torch_index, nvml_index in enumerate(indices):
            handle = nvml.nvmlDeviceGetHandleByIndex(nvml_index)
            name = _text(nvml.nvmlDeviceGetName(handle))
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            result.devices.append(
                Device(
                    kind="cuda",
                    name=name,
                    index=torch_index,
                    compute_capability=f"{major}.{minor}",
                    arch=f"sm_{major}{minor}",
                    memory_gib=round(mem.total / GIB, 2),
                    memory_free_gib=round(mem.free / GIB, 2),
                    unified_memory=False,
                    sources=("nvml",),
                )
            )
        if not result.devices:
            result.error = (
                "the NVIDIA driver reports no GPU"
                if count == 0
                else f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r} hides all {count} GPU(s)"
            )
        return result
    except Exception as exc:
        return NvmlResult(error=f"NVML query failed: {_text(exc) or type(exc).__name__}")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
