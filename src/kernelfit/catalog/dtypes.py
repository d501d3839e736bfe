"""Compute dtypes: which a device runs natively, which it only emulates, and which are slow.

Decided from compute capability and CPU ISA, never from `torch.cuda.is_bf16_supported()`,
which answers True on T4/V100 because it counts emulation (source: torch-bf16-emulation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..capability import SM53_FP16_ARITH, SM60_PASCAL, SM70_FP16_TENSOR_CORES, SM80_AMPERE, SM89_FP8, Capability
from ..machine import Cpu, Device, Software

DTYPES = ("bfloat16", "float16", "float32")
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}

ROCM_BF16_ARCHS = frozenset({"gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1102", "gfx1200", "gfx1201"})


@dataclass(frozen=True)
class DtypeVerdict:
    dtype: str
    native: bool  # runs at full speed on this device
    runnable: bool  # runs at all (possibly emulated or slow) — a memory fallback
    reason: str  # why not native, or what makes it good
    sources: tuple[str, ...] = ()


def _cpu_verdicts(cpu: Cpu) -> list[DtypeVerdict]:
    bf16 = cpu.has("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")
    fp16 = cpu.has("avx512_fp16", "amx_fp16", "neon_fp16")
    src = ("torch-cpu-bf16",)
    return [
        DtypeVerdict("bfloat16", bf16, True,
                     ("native bf16 matmul (" + ", ".join(f for f in ("amx_bf16", "avx512_bf16", "bf16", "sve_bf16") if cpu.has(f)) + ")")
                     if bf16 else
                     f"{cpu.model} has no avx512_bf16/amx_bf16: bf16 matmuls are converted to fp32 and run slower than fp32",
                     src),
        DtypeVerdict("float16", fp16, True,
                     "native fp16 arithmetic (" + ", ".join(f for f in ("amx_fp16", "avx512_fp16", "neon_fp16") if cpu.has(f)) + ")"
                     if fp16 else f"{cpu.model} has no native fp16 arithmetic (avx512_fp16/amx_fp16): converted per op, slower than fp32",
                     src),
        DtypeVerdict("float32", True, True, "always native on CPUs", src),
    ]


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
    if device.kind == "cuda" and device.capability is not None:
        return _cuda_verdicts(device, device.capability)
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


def supports_fp8(device: Device) -> bool:
    """fp8 tensor cores (W8A8 fp8, torch._scaled_mm): sm89+ (source: vllm-fp8, cuda-cc-table)."""
    cap = device.capability
    return device.kind == "cuda" and cap is not None and cap >= SM89_FP8
