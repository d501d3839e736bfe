"""Which GPU architectures each official torch wheel carries SASS for.

A device missing from this list cannot run that torch build at all ("no kernel image is
available for execution on the device"), whatever the device itself supports. That is a
different finding from "the device lacks the feature", and the doctor reports it with the
exact fix: a wheel built for an older CUDA.

Used when torch is not imported (the probe never imports it just to ask); when it is,
`torch._C._cuda_getArchFlags()` gives the exact list instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hardware.capability import build_covers
from ..hardware.machine import Device, Software

# (torch (major, minor) range, CUDA tag) -> arch list, from cuobjdump of the wheels
# (moi90/pytorch_compute_capabilities), the build script .ci/manywheel/build_cuda.sh, and RFC
# pytorch/pytorch#172352; each row names its source id.
_ROWS: tuple[tuple[tuple[int, int], tuple[int, int], str, tuple[str, ...], str], ...] = (
    ((2, 0), (2, 5), "cu118", ("sm_37", "sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch-wheel-archs"),
    ((2, 0), (2, 5), "cu121", ("sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch-wheel-archs"),
    ((2, 0), (2, 5), "cu124", ("sm_50", "sm_60", "sm_61", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch-wheel-archs"),
    ((2, 6), (2, 6), "cu124", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch-wheel-archs"),
    ((2, 6), (2, 99), "cu126", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"), "pytorch-build-cuda-sh"),
    ((2, 7), (2, 7), "cu128", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-wheel-archs"),
    ((2, 8), (2, 9), "cu128", ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-pr-158700"),
    ((2, 8), (2, 9), "cu129", ("sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-pr-158700"),
    ((2, 10), (2, 99), "cu128", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-rfc-172352"),
    ((2, 10), (2, 99), "cu129", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-rfc-172352"),
    ((2, 9), (2, 99), "cu130", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"), "pytorch-rfc-172352"),
)

# The wheel to suggest to owners of pre-Turing GPUs: the last CUDA line that still ships
# Maxwell/Pascal/Volta code ("Only 12.6 includes Legacy Maxwell/Pascal").
LEGACY_CUDA_TAG = "cu126"


def _version_tuple(version: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def cuda_tag(cuda_version: str | None) -> str | None:
    """'12.6' -> 'cu126'."""
    m = re.match(r"(\d+)\.(\d+)", cuda_version or "")
    return f"cu{m.group(1)}{m.group(2)}" if m else None


def known_arch_list(torch_version: str | None, cuda_version: str | None) -> tuple[tuple[str, ...], str] | None:
    """(arch list, source id) for an official wheel, or None when the table has no row."""
    tv = _version_tuple(torch_version or "")
    tag = cuda_tag(cuda_version)
    if tv is None or tag is None:
        return None
    for lo, hi, row_tag, archs, source in _ROWS:
        if row_tag == tag and lo <= tv <= hi:
            return archs, source
    return None


def cuda_install_command(cuda_driver: str | None) -> str:
    """The CUDA wheel matching the driver's CUDA version (12.8 when unknown)."""
    return f"pip install torch --index-url https://download.pytorch.org/whl/cu{(cuda_driver or '12.8').replace('.', '')}"


def legacy_install_command(torch_version: str | None) -> str:
    v = (torch_version or "").split("+")[0]
    pin = f"torch=={v} " if v else "torch "
    return f"pip install {pin}--index-url https://download.pytorch.org/whl/{LEGACY_CUDA_TAG}"


@dataclass(frozen=True)
class Blocker:
    """Why torch, as installed (or as a profile assumes it), cannot use a device at all: the build, not
    the chip. `reason` says what is wrong, `advice` what to do, `fix` is the exact command when there is one."""

    reason: str
    advice: str = ""
    fix: str | None = None

    @property
    def message(self) -> str:
        return f"{self.reason}; {self.advice}" if self.advice else self.reason


def device_blockers(device: Device, software: Software) -> list[Blocker]:
    """The torch-build rule: a CPU-only build sees no GPU; a CUDA build without code for the device's
    arch cannot launch a kernel on it ("no kernel image is available"), however capable the chip."""
    sw = software
    if sw.torch is None:
        return [Blocker("torch is not installed", "", "pip install torch")]
    if device.kind == "cuda":
        if not sw.torch_cuda:
            return [Blocker(f"torch {sw.torch} is a CPU-only build", f"install a CUDA build to use {device.name}",
                            cuda_install_command(sw.cuda_driver))]
        cap = device.compute_capability
        if cap is not None and sw.torch_cuda_arch_list and not build_covers(sw.torch_cuda_arch_list, cap):
            fix = legacy_install_command(sw.torch)
            return [Blocker(f"this torch build (torch {sw.torch}) was not compiled for {cap.sm} "
                            f"(it has {', '.join(sw.torch_cuda_arch_list)}); {device.name} itself is fine",
                            f"install a build that has it: {fix}", fix)]
    if device.kind == "rocm" and not sw.torch_hip:
        return [Blocker(f"torch {sw.torch} is not a ROCm build", f"install the ROCm build to use {device.name}")]
    return []
