"""Compute dtypes: which a device runs natively, which it only emulates, and which are slow.

Decided from compute capability and CPU ISA, never from `torch.cuda.is_bf16_supported()`,
which answers True on T4/V100 because it counts emulation (source: torch-bf16-emulation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hardware.capability import SM53_FP16_ARITH, SM60_PASCAL, SM70_FP16_TENSOR_CORES, SM80_AMPERE, Capability
from ..hardware.machine import Cpu, Device, Software

# The compute dtypes kernelfit plans with, and the half-precision pair: defined here only.
DTYPES = ("bfloat16", "float16", "float32")
HALF = frozenset({"float16", "bfloat16"})
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}

ROCM_BF16_ARCHS = frozenset({"gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"})


@dataclass(frozen=True)
class DtypeVerdict:
    dtype: str
    native: bool  # runs at full speed on this device
    runnable: bool  # runs at all (possibly emulated or slow) — a memory fallback
    reason: str  # why not native, or what makes it good
    sources: tuple[str, ...] = ()
    # Fast for some phases only (CPU fp16 with F16C: decode yes, prefill no): never chosen
    # automatically over a native dtype, but honoured when asked for and measured by `bench`
    tradeoff: bool = False

    def __post_init__(self) -> None:  # a hook (tests reword every reason to prove no decision reads it)
        pass


def _cpu_verdicts(cpu: Cpu) -> list[DtypeVerdict]:
    bf16 = cpu.has("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
    fp16 = cpu.has("avx512_fp16", "amx_fp16", "neon_fp16")
    src = ("torch-cpu-bf16",)
    if fp16:
        fp16_verdict = DtypeVerdict(
            "float16", True, True,
            "native fp16 arithmetic (" + ", ".join(f for f in ("amx_fp16", "avx512_fp16", "neon_fp16") if cpu.has(f)) + ")",
            src + ("aten-mkldnn-matmul",))
    elif cpu.has("f16c"):
        fp16_verdict = DtypeVerdict(
            "float16", False, True,
            f"{cpu.model} has no fp16 arithmetic (avx512_fp16/amx_fp16): one-row decode products run at memory "
            "speed (ATen's fp16 GEMV converts with F16C), but prefill products are converted and slower than fp32",
            ("aten-reduced-gemv", "kernelfit-cpu-gemv"), tradeoff=True)
    else:
        fp16_verdict = DtypeVerdict(
            "float16", False, True,
            f"{cpu.model} has no native fp16 arithmetic (avx512_fp16/amx_fp16): converted per op, slower than fp32",
            src)
    return [
        DtypeVerdict("bfloat16", bf16, True,
                     ("native bf16 matmul (" + ", ".join(f for f in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16") if cpu.has(f)) + ")")
                     if bf16 else
                     f"{cpu.model} has no avx512_bf16/amx_bf16: bf16 matmuls are converted to fp32 and run slower than fp32",
                     src),
        fp16_verdict,
        DtypeVerdict("float32", True, True, "always native on CPUs", src),
    ]


# A decode step multiplies one row by each weight. oneDNN, which PyTorch uses for bf16 matmuls on
# AVX-512 CPUs, repacks the weight on every call; for one row that costs more than the product.
# ATen's bf16 GEMV reads the weight once. Measured: 1 row 1.8x faster without oneDNN, 2 rows even,
# 3+ rows oneDNN faster; whole-model decode 73 vs 50 tokens/s (source: kernelfit-cpu-gemv) — so only
# single-row steps skip it.
ONEDNN_BF16_MIN_ROWS = 2  # fewest rows per step for which oneDNN's bf16 matmul is worth its packing
ONEDNN_BF16_ISA = ("avx512_bf16", "amx_bf16", "avx512bw")  # where use_mkldnn_bf16_matmul() picks oneDNN


def cpu_decode_gemv(devices: list[Device], cpu: Cpu, dtype: str) -> str | None:
    """Why single-row steps should bypass oneDNN here, or None when it does not apply."""
    if dtype != "bfloat16" or not devices or any(d.kind != "cpu" for d in devices) or not cpu.has(*ONEDNN_BF16_ISA):
        return None
    return ("decode steps (one row) skip oneDNN: its bf16 matmul repacks each weight per call, ATen's bf16 GEMV "
            "reads it once (SmolLM2 decodes about 1.5x faster on a 2-thread EPYC); prefill keeps oneDNN")


def _cuda_verdicts(d: Device, cap: Capability) -> list[DtypeVerdict]:
    if cap >= SM80_AMPERE:
        bf16 = DtypeVerdict("bfloat16", True, True, f"native bf16 tensor cores (compute capability {cap} >= 8.0)",
                            ("cuda-cc-table", "vllm-dtype"))
    else:
        bf16 = DtypeVerdict(
            "bfloat16", False, cap >= SM53_FP16_ARITH,
            f"bfloat16 needs compute capability >= 8.0 for native bf16; {d.name} has {cap} "
            f"(torch.cuda.is_bf16_supported() says True here only because it counts emulation)",
            ("cuda-cc-table", "torch-bf16-emulation", "vllm-dtype"))
    if cap >= SM70_FP16_TENSOR_CORES:
        fp16 = DtypeVerdict("float16", True, True, f"fp16 tensor cores (compute capability {cap} >= 7.0)", ("cuda-cc-table",))
    elif cap == SM60_PASCAL:
        fp16 = DtypeVerdict("float16", True, True, "P100 (sm_60) runs fp16 at 2x its fp32 rate (no tensor cores)",
                            ("nvidia-datasheets",))
    elif cap >= SM53_FP16_ARITH:
        fp16 = DtypeVerdict("float16", False, True,
                            f"compute capability {cap} runs fp16 arithmetic at 1/64 of its fp32 rate — "
                            f"use fp16 only to save memory", ("pascal-fp16-rate", "nvidia-datasheets"))
    else:
        fp16 = DtypeVerdict("float16", False, False, f"compute capability {cap} has no fp16 arithmetic", ("cuda-cc-table",))
    return [bf16, fp16, DtypeVerdict("float32", True, True, "always native", ("cuda-cc-table",))]


def _darwin_major(software: Software) -> int | None:
    m = re.match(r"Darwin (\d+)", software.os or "")
    return int(m.group(1)) if m else None


def dtype_verdicts(device: Device, cpu: Cpu, software: Software) -> list[DtypeVerdict]:
    """One verdict per dtype in DTYPES order, for this device."""
    if device.kind == "cpu":
        return _cpu_verdicts(cpu)
    if device.kind == "cuda" and device.compute_capability is not None:
        return _cuda_verdicts(device, device.compute_capability)
    if device.kind == "rocm":
        bf16 = device.arch in ROCM_BF16_ARCHS
        return [
            DtypeVerdict("bfloat16", bf16, True,
                         f"native bf16 matrix cores ({device.arch})" if bf16 else f"{device.arch} has no native bf16 matrix cores",
                         ("amd-datasheets",)),
            DtypeVerdict("float16", True, True, "native fp16 matrix cores", ("amd-datasheets",)),
            DtypeVerdict("float32", True, True, "always native", ("amd-datasheets",)),
        ]
    if device.kind == "mps":
        darwin = _darwin_major(software)
        bf16 = darwin is None or darwin >= 23  # Darwin 23 = macOS 14 Sonoma
        return [
            DtypeVerdict("bfloat16", False, bf16,
                         "MPS has no bf16 matrix units; bf16 needs macOS 14+ and runs no faster than fp16",
                         ("torch-mps-bf16", "apple-specs")),
            DtypeVerdict("float16", True, True, "fp16 is MPS's native half type", ("torch-mps-bf16",)),
            DtypeVerdict("float32", True, True, "always native", ("apple-specs",)),
        ]
    return [DtypeVerdict(t, t == "float32", True, "unknown device: only float32 assumed native", ()) for t in DTYPES]
