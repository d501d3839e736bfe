"""Memory maths as plain functions over shapes and dtypes (accelerate's `utils/modeling.py`
style): weights, KV cache, activation workspace, framework overhead, and device budgets.

All sizes are bytes; `gib()` converts for display. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.dtypes import BYTES
from ..hardware.machine import Device
from ..model.params import checkpoints_kept
from ..model.spec import ModelSpec, SubModel

GIB = 1024**3

# Fixed costs, measured rather than derived (each is a floor, not a fraction):
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # CUDA context + cuBLAS/cuDNN workspaces on first matmul
# python + torch + transformers imported (0.23 GiB measured here) + tokenizer, generation state and
# allocator arenas (~0.12 GiB): SmolLM2 runs on this 2-core CPU, see tests/test_memory.py
CPU_RUNTIME_BYTES = int(0.35 * GIB)
# Measured peak / the per-layer sum below, for SmolLM2 prefill at 1k and 4k tokens on CPU: the
# sum counts the tensors a layer keeps; matmul outputs, norms and rotary copies live beside them
# in glibc's arenas. Not measured on CUDA (no GPU here), where the caching allocator reuses
# freed blocks: accelerators keep the plain sum until a GPU measurement says otherwise.
CPU_ACTIVATION_FACTOR = 2.0
# Fraction of nominal memory a device can really use when not probed: ECC reservation and
# the driver take a few % (T4: 16 GB nominal, ~14.6-15 GiB usable; H100 80GB: ~79 GiB).
NOMINAL_USABLE_FRACTION = 0.94
# Host RAM a plan may take when the free amount is unknown (the OS and other processes keep the rest).
HOST_USABLE_FRACTION = 0.85
# Free disk a plan may fill with offloaded weights (accelerate writes them under kernelfit's cache;
# safetensors weights are read in place, but other formats and the OS need room too).
DISK_USABLE_FRACTION = 0.8
# Unified-memory GPUs (Apple, Jetson) share RAM with the OS; macOS caps a process's GPU working
# set near 75% of RAM (MTLDevice.recommendedMaxWorkingSetSize).
UNIFIED_USABLE_FRACTION = 0.75


def gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 3)


def weight_bytes(params: int, dtype: str) -> int:
    return params * BYTES[dtype]


def unquantized_params(model: ModelSpec) -> int:
    """Parameters that weight quantizers leave in the compute dtype: the input embedding and the
    LM head (bitsandbytes skips lm_head; AWQ/GPTQ checkpoints keep both in fp16)."""
    t = model.text
    embedding = (t.vocab_size or 0) * t.hidden_size
    return embedding if t.tie_embeddings else 2 * embedding


def quantized_weight_bytes(model: ModelSpec, dtype: str, method: str, bits: int, group_size: int | None) -> int:
    from ..catalog.quantization import effective_bits

    keep = unquantized_params(model)
    quantized = max(model.params - keep, 0)
    return int(quantized * effective_bits(method, bits, group_size) / 8) + keep * BYTES[dtype]


# transformers' QuantizedCache keeps the newest tokens in full precision (residual_length=128)
KV_RESIDUAL_TOKENS = 128


def kv_cache_bytes(sub: SubModel, context: int, batch: int, dtype: str, kv_bits: int | None = None,
                   value_bytes: float | None = None) -> int:
    """Keys and values for every layer, KV head and token (GQA-aware); sliding-window layers keep
    at most `sliding_window` tokens (transformers' sliding caches). `kv_bits` (4 or 2): a
    quantized cache, with a scale and zero point per group of 64 and a full-precision residual.
    `value_bytes`: kernelfit's engine cache, whose elements are not `dtype`'s (catalog/kv_cache.py) and whose
    sliding-window layers hold every position as the others do (engine/kv_cache.py: one [layers, ...] tensor).
    Recurrent layers (a hybrid's) keep no keys and values, only a fixed state a sequence (sub.state_values) — and in
    kernelfit's engine (value_bytes given) up to checkpoints_kept copies of it a sequence (engine/recurrent.py)."""
    if not sub.causal:
        return 0
    # per token per layer: a key and a value a KV head; DeepSeek's latent row once (it is both)
    values = (1 if sub.latent_kv else 2) * sub.num_kv_heads * sub.head_dim * batch
    state = sub.state_values * 4 * batch  # recurrent layers (LFM2's convolutions): float32, the same at any context
    kv_layers = sub.num_layers - sub.recurrent_layers
    if value_bytes is not None:
        copies = checkpoints_kept(sub.state_values * 4) * state
        return int(values * kv_layers * context * value_bytes) + state + copies
    full_layers = kv_layers - sub.sliding_layers
    window_tokens = min(context, sub.sliding_window) if sub.sliding_window else context
    tokens = full_layers * context + sub.sliding_layers * window_tokens
    if kv_bits is None:
        return values * tokens * BYTES[dtype] + state
    residual = min(KV_RESIDUAL_TOKENS, context) * kv_layers
    quantized = max(tokens - residual, 0)
    return int(values * quantized * (kv_bits + 2 * 16 / 64) / 8) + values * residual * BYTES[dtype] + state


def materialises_scores(attention: str, sdpa_kernel: str | None) -> bool:
    """eager and SDPA's math kernel build the full (heads x q x k) score matrix; flash-style kernels don't."""
    return attention == "eager" or (attention == "sdpa" and sdpa_kernel == "math")


def activation_bytes(sub: SubModel, tokens: int, batch: int, dtype: str, scores: bool, factor: float = 1.0) -> int:
    """Peak transient memory of one prefill of `tokens` tokens, one layer alive at a time."""
    b = BYTES[dtype]
    s = sub.seq_len or tokens
    hidden = 4 * batch * s * sub.hidden_size * b  # residual, normed input, attention output, MLP output
    qkv = batch * s * (sub.num_heads + 2 * sub.num_kv_heads) * sub.head_dim * b
    mlp = 3 * batch * s * sub.intermediate_size * b  # gate, up, activation
    attn = 0
    if scores:
        # eager upcasts softmax to float32: scores in dtype plus probabilities in fp32
        attn = batch * sub.num_heads * s * s * (b + 4)
    logits = batch * (sub.vocab_size or 0) * 4  # generate() keeps the last position's logits, in fp32
    return int(factor * (hidden + qkv + max(mlp, attn))) + logits


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    budget: int
    # the memory-mapped checkpoint a dtype-converting load touches (host RAM only): resident while
    # loading, but clean page cache the kernel can reclaim, so it counts in peak_rss, not in `fits`
    mapped_checkpoint: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def peak_rss(self) -> int:
        """Resident-set peak a process monitor would show: generating, or loading with the
        mapped checkpoint resident, whichever is higher."""
        return max(self.total, self.weights + self.mapped_checkpoint + self.overhead)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_dict(self) -> dict:
        return {
            "weights_gib": gib(self.weights),
            "kv_cache_gib": gib(self.kv_cache),
            "activations_gib": gib(self.activations),
            "overhead_gib": gib(self.overhead),
            "peak_rss_gib": gib(self.peak_rss),
            "total_gib": gib(self.total),
            "budget_gib": gib(self.budget),
            "fits": self.fits,
        }


def estimate(model: ModelSpec, dtype: str, context: int, batch: int, scores_by_role: dict[str, bool],
             budget: int, accelerator: bool, quant: tuple[str, int, int | None] | None = None,
             kv_bits: int | None = None, storage_dtype: str | None = None,
             kv_value_bytes: float | None = None) -> MemoryEstimate:
    """quant: (method, bits, group_size) for quantized weights; None for dense weights in `dtype`.
    storage_dtype: the checkpoint's on-disk dtype, when the load happens in host RAM (CPU
    placement): converting it keeps the (memory-mapped) source resident until the load ends.
    kv_value_bytes: the bytes of a cached key or value element on kernelfit's engine (its --kv-cache kind)."""
    if quant and quant[0] == "gguf":  # the file's own tensors, packed for the CPU (catalog.packed_kernels)
        from ..catalog.packed_kernels import packed_gguf_bytes

        weights = packed_gguf_bytes(model.extra.get("gguf_numel_by_type") or {})
    else:
        weights = quantized_weight_bytes(model, dtype, *quant) if quant else weight_bytes(model.params, dtype)
    kv = sum(kv_cache_bytes(s, context, batch, dtype, kv_bits, kv_value_bytes) for s in model.sub_models)
    factor = 1.0 if accelerator else CPU_ACTIVATION_FACTOR
    acts = max(activation_bytes(s, context, batch, dtype, scores_by_role.get(s.role, False), factor)
               for s in model.sub_models)
    overhead = CUDA_CONTEXT_BYTES if accelerator else CPU_RUNTIME_BYTES
    transient = 0
    if not accelerator and storage_dtype in BYTES and (quant or storage_dtype != dtype):
        transient = weight_bytes(model.params, storage_dtype)
    return MemoryEstimate(weights, kv, acts, overhead, budget, transient)


def sequences_that_fit(memory: MemoryEstimate, batch: int) -> int:
    """How many sequences of the plan's context fit beside the weights, activations and runtime: the KV cache of
    one is the plan's over its batch (the server's slots: `kernelfit serve --max-batch`)."""
    per = memory.kv_cache / max(batch, 1)
    room = memory.budget - (memory.total - memory.kv_cache)
    return max(0, int(room // per)) if per > 0 else batch


def device_budget(device: Device, override_gib: float | None = None) -> int:
    """Bytes a plan may use on `device`: an explicit --max-memory, else probed free memory,
    else the usable share of the nominal capacity."""
    if override_gib is not None:
        return int(override_gib * GIB)
    if device.kind == "cpu":
        if device.memory_free_gib is not None:
            return int(device.memory_free_gib * GIB)
        return int(device.memory_gib * HOST_USABLE_FRACTION * GIB)
    if device.unified_memory:
        return int(device.memory_gib * UNIFIED_USABLE_FRACTION * GIB)
    if device.memory_free_gib is not None:
        return int(device.memory_free_gib * GIB)
    return int(device.memory_gib * NOMINAL_USABLE_FRACTION * GIB)
