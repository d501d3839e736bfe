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

# (torch (major, minor) range, CUDA tag) -> arch list. Source: shared/hardware "PyTorch wheel
# arch lists" table, from cuobjdump of the wheels (moi90/pytorch_compute_capabilities), the
# build script .ci/manywheel/build_cuda.sh, and RFC pytorch/pytorch#172352.
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


def legacy_install_command(torch_version: str | None) -> str:
    v = (torch_version or "").split("+")[0]
    pin = f"torch=={v} " if v else "torch "
    return f"pip install {pin}--index-url https://download.pytorch.org/whl/{LEGACY_CUDA_TAG}"
