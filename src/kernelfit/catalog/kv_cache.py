"""The element kinds of kernelfit's engine KV cache (engine/kernels/kv_cache.h), as rows.

float16 is the default, as llama.cpp's (`--cache-type-k/-v f16`): half of float32's bytes, which is what a decode
step at a long context reads besides the weights. Q8_0 (llama.cpp's block_q8_0: a float16 scale and 32 int8 codes,
34 bytes per 32 values) is opt-in (`--kv-cache q8_0`): 0.53x float16's bytes for a measured loss. float32 is what
the engine held before (`--kv-cache f32`): the reference the others are measured against.

Pure data and functions: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

KV_CACHE_CHOICES = ("auto", "f16", "f32", "q8_0")
DEFAULT_KV_CACHE = "f16"
SOURCES = ("llama-cpp-cache-type", "kernelfit-kv-cache")


@dataclass(frozen=True)
class KvCacheKind:
    name: str  # the --kv-cache value
    label: str  # for people
    bytes_per_value: float  # per cached key or value element
    block: int  # the head size must be a multiple of this
    loss: str  # measured against float32 on the same weights (tests/test_kv_cache.py), "" for float32 itself


# teacher-forced on both bundled models, a 96-token prompt and 160 decode steps each, against a float32 cache on the
# same build (tests/test_kv_cache.py prints the figures; source "kernelfit-kv-cache")
KV_CACHE_KINDS = {k.name: k for k in (
    KvCacheKind("f32", "float32", 4.0, 1, ""),
    KvCacheKind("f16", "float16", 2.0, 1, "decode steps keep every top-1 of a float32 cache on both bundled models "
                "(logit cosine >= 0.99998)"),
    KvCacheKind("q8_0", "Q8_0 blocks", 34 / 32, 32, "decode top-1 98.8% (SmolLM2) and 100% (Gemma 3 270M) of a "
                "float32 cache's, logit cosine mean 0.99988 / 0.99997; prompt rows 96.9% top-1"),
)}


def why_not_kv_cache(name: str, head_dim: int) -> str | None:
    """Why a cache kind cannot hold this model's heads, or None."""
    kind = KV_CACHE_KINDS[name]
    if head_dim % kind.block:
        return f"{kind.label} holds blocks of {kind.block} values; this model's head size {head_dim} is not a multiple"
    return None
