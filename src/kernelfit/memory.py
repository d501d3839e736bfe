"""Memory maths as plain functions over shapes and dtypes (accelerate's `utils/modeling.py`
style): weights, KV cache, activation workspace, framework overhead, and device budgets.

All sizes are bytes; `gib()` converts for display. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass

from .catalog.dtypes import BYTES
from .machine import Device
from .modelspec import ModelSpec, SubModel

GIB = 1024**3

# Fixed costs, measured rather than derived (each is a floor, not a fraction):
CUDA_CONTEXT_BYTES = int(0.5 * GIB)  # CUDA context + cuBLAS/cuDNN workspaces on first matmul
CPU_RUNTIME_BYTES = int(0.6 * GIB)  # python + torch + transformers resident set before weights
# Fraction of nominal memory a device can really use when not probed: ECC reservation and
# the driver take a few % (T4: 16 GB nominal, ~14.6-15 GiB usable; H100 80GB: ~79 GiB).
NOMINAL_USABLE_FRACTION = 0.94
# Host RAM a plan may take when the free amount is unknown (the OS and other processes keep the rest).
HOST_USABLE_FRACTION = 0.85
# Unified-memory GPUs (Apple, Jetson) share RAM with the OS; macOS caps a process's GPU working
# set near 75% of RAM (MTLDevice.recommendedMaxWorkingSetSize).
UNIFIED_USABLE_FRACTION = 0.75


def gib(n_bytes: float) -> float:
    return round(n_bytes / GIB, 3)


def weight_bytes(params: int, dtype: str) -> int:
    return params * BYTES[dtype]


def kv_cache_bytes(sub: SubModel, context: int, batch: int, dtype: str) -> int:
    """Keys and values for every layer, KV head and token (GQA-aware); sliding-window layers keep
    at most `sliding_window` tokens (transformers' sliding caches)."""
    if not sub.causal:
        return 0
    per_token_layer = 2 * sub.num_kv_heads * sub.head_dim * BYTES[dtype]
    full_layers = sub.num_layers - sub.sliding_layers
    window_tokens = min(context, sub.sliding_window) if sub.sliding_window else context
    return batch * per_token_layer * (full_layers * context + sub.sliding_layers * window_tokens)


def materialises_scores(attention: str, sdpa_kernel: str | None) -> bool:
    """eager and SDPA's math kernel build the full (heads x q x k) score matrix; flash-style kernels don't."""
    return attention == "eager" or (attention == "sdpa" and sdpa_kernel == "math")


def activation_bytes(sub: SubModel, tokens: int, batch: int, dtype: str, scores: bool) -> int:
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
    return hidden + qkv + max(mlp, attn) + logits


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    activations: int
    overhead: int
    budget: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def to_dict(self) -> dict:
        return {
            "weights_gib": gib(self.weights),
            "kv_cache_gib": gib(self.kv_cache),
            "activations_gib": gib(self.activations),
            "overhead_gib": gib(self.overhead),
            "total_gib": gib(self.total),
            "budget_gib": gib(self.budget),
            "fits": self.fits,
        }


def estimate(model: ModelSpec, dtype: str, context: int, batch: int, scores_by_role: dict[str, bool],
             budget: int, accelerator: bool) -> MemoryEstimate:
    weights = weight_bytes(model.params, dtype)
    kv = sum(kv_cache_bytes(s, context, batch, dtype) for s in model.sub_models)
    acts = max(activation_bytes(s, context, batch, dtype, scores_by_role.get(s.role, False)) for s in model.sub_models)
    overhead = CUDA_CONTEXT_BYTES if accelerator else CPU_RUNTIME_BYTES
    return MemoryEstimate(weights, kv, acts, overhead, budget)


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
