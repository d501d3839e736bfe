"""Compute capability as a comparable value, and every threshold kernelfit uses, named.

Rules compare `Capability` values (`cap >= SM80_AMPERE`) rather than strings or packed ints.
Each constant says what it is the minimum for, as llama.cpp's `ggml-cuda/common.cuh` does;
the catalog cites the source of each rule that uses one.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class Capability(NamedTuple):
    major: int
    minor: int

    @classmethod
    def parse(cls, text: "str | Capability | tuple[int, int]") -> "Capability":
        """Accept "8.0", "sm_80", "sm_90a", "compute_120", "80", (8, 0)."""
        if isinstance(text, tuple):
            return cls(int(text[0]), int(text[1]))
        s = str(text).strip().lower()
        m = re.fullmatch(r"(\d+)\.(\d+)", s)
        if m:
            return cls(int(m.group(1)), int(m.group(2)))
        m = re.fullmatch(r"(?:sm_|compute_)?(\d+?)(\d)[af]?", s)
        if m:
            return cls(int(m.group(1)), int(m.group(2)))
        raise ValueError(f"not a compute capability: {text!r} (expected e.g. '8.6' or 'sm_86')")

    def to_int(self) -> int:
        return self.major * 10 + self.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def sm(self) -> str:
        return f"sm_{self.major}{self.minor}"


# --- NVIDIA thresholds: what each compute capability is the minimum for -------------------
SM50_MAXWELL = Capability(5, 0)  # oldest arch in any current torch wheel (cu126 only); SDPA mem-efficient minimum
SM53_FP16_ARITH = Capability(5, 3)  # native fp16 arithmetic at all
SM60_PASCAL = Capability(6, 0)  # P100: fast fp16 (2x fp32), no tensor cores
SM70_FP16_TENSOR_CORES = Capability(7, 0)  # Volta: fp16 tensor cores; Triton/Inductor minimum
SM75_INT8_TENSOR_CORES = Capability(7, 5)  # Turing: int8 tensor cores (IMMA); AWQ GEMM; FlashInfer
SM80_AMPERE = Capability(8, 0)  # bf16 tensor cores, FlashAttention-2, SDPA flash/cuDNN, Marlin
SM89_FP8 = Capability(8, 9)  # Ada: fp8 tensor cores
SM90_HOPPER = Capability(9, 0)  # FlashAttention-3 (sm90 only), wgmma/TMA
SM100_BLACKWELL_DC = Capability(10, 0)  # tcgen05/TMEM; FlashAttention-4 target with sm90
SM121_SDPA_MAX = Capability(12, 1)  # newest arch PyTorch's SDPA flash/mem-efficient kernels accept


def binary_runs_on(compiled: Capability, device: Capability) -> bool:
    """Whether SASS compiled for `compiled` runs on `device`.

    CUDA binary compatibility: cubin for sm_XY runs on sm_XZ with Z >= Y (same major only).
    That is why torch 2.6+ cu126 wheels run on sm_61 through their sm_60 code.
    """
    return compiled.major == device.major and compiled.minor <= device.minor


def ptx_runs_on(compiled: Capability, device: Capability) -> bool:
    """PTX for compute_XY is JIT-compiled by the driver for any device >= XY."""
    return device >= compiled


def build_covers(arch_list: "list[str] | tuple[str, ...]", device: Capability) -> bool:
    """Whether a CUDA build compiled for `arch_list` (torch.cuda.get_arch_list() style:
    'sm_80', 'compute_120', or '8.0') has code that runs on `device`."""
    for entry in arch_list:
        e = str(entry).strip().lower()
        is_ptx = e.startswith("compute_") or e.endswith("+ptx")
        try:
            cap = Capability.parse(e.removesuffix("+ptx"))
        except ValueError:
            continue
        if ptx_runs_on(cap, device) if is_ptx else binary_runs_on(cap, device):
            return True
    return False
