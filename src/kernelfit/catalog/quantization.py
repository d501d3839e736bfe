"""Quantization: which kernel runs a quantized checkpoint on which device, and which on-the-fly
quantizers (bitsandbytes, optimum-quanto) can shrink an unquantized model, as data.

AWQ/GPTQ rows follow gptqmodel's own kernel declarations (SUPPORTS_DEVICES / _BITS /
_GROUP_SIZE / _SYM / _DTYPES, and SUPPORTS_FORMATS priorities for auto-selection, at
ModelCloud/GPTQModel@f4c327a gptqmodel/nn_modules/qlinear/*.py), with compute-capability floors
from the kernels' own checks or, where the Python code has none, from vLLM/AutoAWQ's documented
minimums (sources `vllm-quant-table`, `autoawq-readme`). No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware.capability import (SM60_PASCAL, SM70_FP16_TENSOR_CORES, SM75_INT8_TENSOR_CORES, SM80_AMPERE, SM89_FP8, SM90_HOPPER,
                          Capability)
from ..hardware.machine import Device, Software
from .dtypes import DTYPES, HALF
from .gates import hardware_gate

ANY_DTYPE = frozenset(DTYPES)
# compressed-tensors' weight formats (compressed_tensors/config/base.py CompressionFormat) whose tensors kernelfit
# reads: int codes packed 32/bits an int32 word (pack-quantized), int8 / float8 values one a byte (naive-, int-,
# float-quantized); "mixed-precision": config groups of different formats or schemes
CT_FORMATS = ("pack-quantized", "naive-quantized", "int-quantized", "float-quantized")
CT_MIXED = "mixed-precision"
GROUPS = frozenset({-1, 32, 64, 128})
GROUPS_16 = frozenset({-1, 16, 32, 64, 128})


@dataclass(frozen=True)
class QuantBackend:
    method: str  # "awq", "gptq", "bitsandbytes", "quanto"
    name: str  # backend name as gptqmodel / transformers call it
    platforms: frozenset[str]
    bits: frozenset[int]
    priority: int  # higher first (gptqmodel SUPPORTS_FORMATS priority for AWQ/GPTQ)
    min_cc: Capability | None = None
    max_cc: Capability | None = None
    group_sizes: frozenset[int] | None = None
    sym_only: bool = False
    dtypes: frozenset[str] = HALF
    formats: frozenset[str] | None = None  # AWQ "version": gemm / gemv / gemv_fast
    package: str = "gptqmodel"
    sources: tuple[str, ...] = ()
    note: str = ""
    also_needs: tuple[str, ...] = ()  # further packages the transformers loading path imports


def _awq(name, platforms, priority, min_cc=None, max_cc=None, bits=(4,), groups=GROUPS_16, dtypes=HALF,
         formats=("gemm",), sources=(), note="") -> QuantBackend:
    return QuantBackend("awq", name, frozenset(platforms), frozenset(bits), priority, min_cc, max_cc,
                        frozenset(groups), False, frozenset(dtypes), frozenset(formats), "gptqmodel",
                        ("gptqmodel-kernels", *sources), note)


def _gptq(name, platforms, priority, min_cc=None, max_cc=None, bits=(4,), groups=GROUPS, sym_only=False,
          dtypes=HALF, sources=(), note="") -> QuantBackend:
    # transformers' GPTQ quantizer also imports optimum ("Loading a GPTQ quantized model requires optimum")
    return QuantBackend("gptq", name, frozenset(platforms), frozenset(bits), priority, min_cc, max_cc,
                        frozenset(groups), sym_only, frozenset(dtypes), None, "gptqmodel",
                        ("gptqmodel-kernels", "hf-gptq-quantizer", *sources), note, ("optimum",))


PREQUANTIZED: tuple[QuantBackend, ...] = (
    _awq("machete", {"cuda"}, 100, SM90_HOPPER, SM90_HOPPER, (4, 8), GROUPS, formats=("gemm", "marlin"),
         note="CUTLASS kernel for Hopper ('Machete kernel requires compute capability >= 9.0')"),
    _awq("marlin", {"cuda"}, 90, SM80_AMPERE, None, (4, 8), GROUPS, formats=("gemm", "marlin"),
         sources=("vllm-quant-table",), note="'Marlin kernel only supports compute capability >= 8.0'"),
    _awq("exllama_v2", {"cuda"}, 80, SM60_PASCAL, None, sources=("exllama-pascal",),
         note="compiled for every arch of the torch build; fp16 math, slow on sm_61"),
    _awq("gemm", {"cuda", "rocm"}, 60, SM75_INT8_TENSOR_CORES, None, sources=("autoawq-readme", "vllm-quant-table")),
    _awq("gemv", {"cuda", "rocm"}, 40, SM75_INT8_TENSOR_CORES, None, dtypes=("float16",), formats=("gemv",),
         sources=("autoawq-readme",)),
    _awq("gemv_fast", {"cuda", "rocm"}, 30, SM75_INT8_TENSOR_CORES, None, dtypes=("float16",), formats=("gemv_fast",),
         sources=("autoawq-readme",)),
    _awq("torch_fused", {"cpu", "xpu"}, 20, dtypes=ANY_DTYPE, note="fused CPU/XPU kernel"),
    _awq("torch", {"cuda", "rocm", "cpu", "mps", "xpu"}, 10, note="pure torch dequantize + matmul: runs anywhere"),
    _gptq("machete", {"cuda"}, 100, SM90_HOPPER, SM90_HOPPER, (4, 8), frozenset({-1, 64, 128})),
    _gptq("marlin", {"cuda"}, 90, SM75_INT8_TENSOR_CORES, None, (4, 8), sym_only=True,
          sources=("gptqmodel-marlin-cc",), note="gptqmodel's own check: compute capability >= 7.5"),
    _gptq("exllama_v2", {"cuda"}, 80, SM60_PASCAL, None, sources=("exllama-pascal", "vllm-quant-table")),
    _gptq("torch_fused", {"cpu", "xpu"}, 50, dtypes=ANY_DTYPE),
    _gptq("triton", {"cuda"}, 40, SM70_FP16_TENSOR_CORES, None, (2, 4, 8), frozenset({-1, 16, 32, 64, 128, 256, 512, 1024}),
          sources=("inductor-triton-gate",)),
    _gptq("torch", {"cuda", "rocm", "cpu", "mps", "xpu"}, 20, bits=(2, 3, 4, 5, 6, 7, 8),
          groups=frozenset({-1, 16, 32, 64, 128, 256, 512, 1024})),
    # fp8 checkpoints ("quant_method": "fp8", block-wise weight_scale_inv): transformers' FP8Linear
    # runs the hub kernel kernels-community/finegrained-fp8 (via the `kernels` package) on fp8
    # tensor cores; below sm89 transformers itself falls back to dequantizing to bf16.
    QuantBackend("fp8", "finegrained_fp8", frozenset({"cuda", "xpu"}), frozenset({8}), 100, SM89_FP8, None, None,
                 False, HALF, None, "kernels", ("vllm-fp8", "hf-fp8-quantizer"),
                 "FP8Linear with kernels-community/finegrained-fp8 (fetched from the hub on first use)"),
    # compressed-tensors checkpoints (llm-compressor's W4A16, W8A8, FP8): transformers' CompressedTensorsHfQuantizer
    # installs the library's CompressedLinear, which decompresses each weight in plain torch on any device
    QuantBackend("compressed-tensors", "compressed_tensors", frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}),
                 frozenset({4, 8}), 10, dtypes=ANY_DTYPE, package="compressed-tensors",
                 sources=("compressed-tensors-formats", "hf-compressed-tensors-quantizer"),
                 note="CompressedLinear: each weight decompressed in plain torch (no fused kernel)"),
)

# On-the-fly quantizers for unquantized checkpoints that do not fit (transformers
# BitsAndBytesConfig / QuantoConfig). Effective bits per weight include scales.
ON_THE_FLY: tuple[QuantBackend, ...] = (
    QuantBackend("bitsandbytes", "int8", frozenset({"cuda", "rocm", "cpu", "xpu"}), frozenset({8}), 90,
                 dtypes=ANY_DTYPE, package="bitsandbytes", sources=("bnb-readme", "bnb-multibackend", "bnb-int8-speed"),
                 note="LLM.int8(); the fast int8 matmul needs compute capability >= 7.5, older GPUs dequantize"),
    QuantBackend("quanto", "int8", frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}), frozenset({8}), 50,
                 dtypes=ANY_DTYPE, package="optimum-quanto", sources=("quanto-readme",)),
    QuantBackend("bitsandbytes", "nf4", frozenset({"cuda", "rocm", "cpu", "xpu"}), frozenset({4}), 90,
                 dtypes=ANY_DTYPE, package="bitsandbytes", sources=("bnb-readme", "bnb-multibackend"),
                 note="NF4 with double quantization; compute in the plan's dtype"),
    QuantBackend("quanto", "int4", frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}), frozenset({4}), 50,
                 dtypes=ANY_DTYPE, package="optimum-quanto", sources=("quanto-readme",)),
)

# Where an 8-bit on-the-fly quantizer decodes slower than the 4-bit one, by platform. On CUDA,
# LLM.int8() decodes slower than fp16 and about 2x slower than nf4, whose batch-1 kernels run 2.2-4x
# faster than fp16 matmuls; 4-bit costs little zero-shot accuracy. So when both fit, the automatic
# ladder takes nf4 for speed (--quantization 8bit keeps 8-bit). CPUs have no such measurement here:
# there the ladder keeps least quality loss first.
SLOW_8BIT_DECODE: dict[tuple[str, str], frozenset[str]] = {("bitsandbytes", "int8"): frozenset({"cuda"})}
SLOW_8BIT_SOURCES = ("bnb-int8-speed", "bnb-4bit-inference", "kbit-scaling")
SLOW_8BIT_WHY = (f"LLM.int8() decodes about 2x slower than nf4 here, whose batch-1 kernels beat fp16 "
                 f"({', '.join(SLOW_8BIT_SOURCES)})")


def slow_8bit_decode(method: str, name: str, devices: list[Device]) -> bool:
    """True when this 8-bit quantizer is known to decode slower than 4-bit nf4 on these devices."""
    kinds = SLOW_8BIT_DECODE.get((method, name), frozenset())
    return bool(devices) and all(d.kind in kinds for d in devices)


# Effective storage bits per quantized weight, scales and zero points included.
def effective_bits(method: str, bits: int, group_size: int | None) -> float:
    if method in ("awq", "gptq"):
        g = group_size if group_size and group_size > 0 else 4096  # per-channel: one scale per row
        return bits + (16 + bits) / g  # fp16 scale + packed zero point per group
    if method == "bitsandbytes":
        return 8.03 if bits == 8 else 4 + 8 / 64 + 32 / (64 * 256)  # int8 row scales; nf4 double-quant absmax
    if method == "quanto":
        return bits + (32 / 128 if bits == 4 else 16 / 4096)  # int4: scale+shift per group of 128
    if method == "fp8":
        return bits + 32 / (group_size or 128 * 128)  # one fp32 scale per weight block
    if method == "compressed-tensors":
        g = group_size if group_size and group_size > 0 else 4096  # per channel / tensor: one scale per row or less
        return bits + 16 / g
    if method == "packed":
        from .packed_kernels import packed_dense_bits

        return packed_dense_bits(bits)
    return float(bits)


def why_not_backend(b: QuantBackend, device: Device, software: Software, dtype: str, bits: int,
                    group_size: int | None = None, sym: bool | None = None, fmt: str | None = None,
                    check_package: bool = True) -> list[str]:
    reasons = hardware_gate(device, b.platforms, b.min_cc, b.max_cc)
    if device.kind not in b.platforms:
        return reasons
    if bits not in b.bits:
        reasons.append(f"supports {'/'.join(str(x) for x in sorted(b.bits))}-bit, not {bits}-bit")
    if group_size is not None and b.group_sizes is not None and group_size not in b.group_sizes:
        reasons.append(f"group_size {group_size} unsupported")
    if sym is False and b.sym_only:
        reasons.append("symmetric quantization only (checkpoint is asymmetric)")
    if fmt and b.formats is not None and fmt not in b.formats:
        reasons.append(f"kernel for AWQ {'/'.join(sorted(b.formats))} format, checkpoint is {fmt}")
    if dtype not in b.dtypes:
        reasons.append(f"computes in {'/'.join(sorted(b.dtypes))}, not {dtype}")
    if check_package and missing_packages(b, software):
        reasons.append(f"package {', '.join(missing_packages(b, software))} is not installed")
    return reasons


# transformers' AwqConfig accepts only its AwqBackend values; the CPU kernels carry an _awq suffix
# there (transformers utils/quantization_config.py AwqBackend; GPTQConfig passes gptqmodel's names).
_HF_AWQ_NAMES = {"torch_fused": "torch_fused_awq", "torch": "torch_awq"}


def hf_backend_name(method: str, name: str) -> str:
    """The backend string from_pretrained's quantization config takes for this catalog backend."""
    return _HF_AWQ_NAMES.get(name, name) if method == "awq" else name


def missing_packages(b: QuantBackend, software: Software) -> list[str]:
    """The packages this backend's loading path needs that are not installed."""
    return [p for p in (b.package, *b.also_needs) if not software.has_package(p)]

