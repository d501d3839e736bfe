"""A sequence's KV cache on the engine: float32, float16 (the default) or Q8_0 rows (catalog/kv_cache.py says which
and why; engine/kernels/kv_cache.h reads and writes them). Each is a pair of tensors [layers, 1, kv heads, positions,
width]: float32 / float16 elements (width = head size) or Q8_0 bytes (width = head size / 32 * 34), over the layers
that attend (a hybrid's recurrent layers keep a fixed state instead, engine/recurrent.py, which the cache carries).
DeepSeek's latent attention keeps one tensor under both names: a token's latent row is its key and its value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .recipe import rotary_table
from .recurrent import State, empty_state

Q8_BLOCK, Q8_BYTES = 32, 34
DTYPES = {"f32": torch.float32, "f16": torch.float16, "q8_0": torch.uint8}
KIND_IDS = {"f32": 0, "f16": 1, "q8_0": 2}  # kv_cache.h Kind


@dataclass
class KvCache:
    """One sequence's keys and values."""
    k: torch.Tensor
    v: torch.Tensor
    state: State | None = None  # the recurrent layers' (None: the model has none)

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3]) if self.k.dim() == 5 else 0

    @property
    def latent(self) -> bool:
        """Keys and values are one tensor (DeepSeek's latent rows: a token's row is its key and its value)."""
        return self.v is self.k

    @property
    def nbytes(self) -> int:
        tensors = 1 if self.latent else 2
        return tensors * self.k.numel() * self.k.element_size() + (self.state.nbytes if self.state is not None else 0)

    def rows_nbytes(self, n: int) -> int:
        """The bytes of its keys and values at n positions."""
        return (1 if self.latent else 2) * self.k[:, :, :, :1].numel() * self.k.element_size() * n

    def copy_rows(self, n: int) -> KvCache:
        """A copy of its first n positions (keys and values still one tensor where they are), the state as it is."""
        k = self.k[:, :, :, :n].clone()
        return KvCache(k, k if self.latent else self.v[:, :, :, :n].clone(), self.state)


def row_width(kind: str, head_dim: int) -> int:
    return head_dim // Q8_BLOCK * Q8_BYTES if kind == "q8_0" else head_dim


def empty(cfg, kind: str, positions: int) -> KvCache:
    """A zeroed cache pair for `positions` tokens of the recipe's attention layers and heads, and a zeroed state."""
    shape = (cfg.kv_layers, 1, cfg.kv_heads, positions, row_width(kind, cfg.head_dim))
    k = torch.zeros(shape, dtype=DTYPES[kind])
    # MLA: a token's latent row is its key and its value (llama.cpp's cache holds it once too): one tensor, both names
    return KvCache(k, k if cfg.latent else torch.zeros(shape, dtype=DTYPES[kind]), empty_state(cfg))


def grown(build, cache: KvCache | None, positions: int) -> KvCache:
    """`cache` (None: an empty one of the build's kind) with room for at least `positions` tokens, up to the model's
    limit: the same object when it has room, else a larger one (at least twice as large, so a sequence growing a token
    or a turn at a time copies it a few times, not every time) holding what it held. The rotary tables grow to match."""
    cfg, m = build.cfg, build.model
    limit = cfg.max_positions or positions
    positions = max(1, min(positions, limit))
    old = cache.capacity if cache is not None else 0
    if old >= positions:
        return cache
    positions = min(max(positions, 2 * old), limit)
    new = empty(cfg, build.kv_cache, positions)
    if old:
        new.k[:, :, :, :old] = cache.k
        if not new.latent:
            new.v[:, :, :, :old] = cache.v
        new.state = cache.state  # the same object: its holder's checkpoints and position stay true
    if m.rope_global.shape[0] < positions:  # shared by every sequence: as long as the longest cache
        m.rope_global = rotary_table(cfg.rotary, cfg.head_dim, positions)
        m.rope_local = rotary_table(cfg.local_rotary, cfg.head_dim, positions) if cfg.local_rotary else \
            torch.empty(0, dtype=torch.complex64)
    return new


def reset_cache(build, positions: int) -> None:
    """The build's own KV cache (the runner's one sequence) grown to at least `positions` tokens: a cache that must
    grow keeps what it holds (a chat's earlier turns, engine/runner.py LeanRunner.start)."""
    m = build.model
    old = own_cache(build) if kv_capacity(build) else None
    new = grown(build, old, positions)
    if new is not old:
        m.k_cache = m.v_cache = torch.empty(0)
        del old  # the old cache is freed once copied
        m.k_cache, m.v_cache, build.state = new.k, new.v, new.state


def own_cache(build) -> KvCache:
    """The build's own cache (the runner's one sequence) as a KvCache."""
    return KvCache(build.model.k_cache, build.model.v_cache, build.state)


def kv_capacity(build) -> int:
    return int(build.model.k_cache.shape[3]) if build.model.k_cache.dim() == 5 else 0


def kv_bytes(build) -> int:
    return own_cache(build).nbytes
