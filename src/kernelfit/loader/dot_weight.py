"""GGUF weights kept as the file's own groups (codes, scale and minimum per 32 or 16 weights), read by the
C++ group dot products of loader/dot_kernels.h — every value exactly the file's, no re-grid, no bf16 scale.

The kernels need the C++ extension (loader/lean_native.py); without a compiler, loader/packed.py's torch
kernels run instead. Rows are stored in tiles of 8 (dot_kernels.h says why and how); a tensor whose row count
is not a multiple of 8 is padded with zero rows, which the products drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .gguf_blocks import DotGroups
from .packed import PackedWeight

TILE = 8  # dot_kernels.h TILE


def tile_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [N, K] codes -> [N/8, K*bits] bytes in dot_kernels.h's tile order (N padded to whole tiles)."""
    n, k = codes.shape
    t = -(-n // TILE)
    c = np.zeros((t * TILE, k), np.uint8)
    c[:n] = codes
    if bits == 8:  # per 4 columns: 8 rows x 4 bytes
        return np.ascontiguousarray(c.reshape(t, TILE, k // 4, 4).transpose(0, 2, 1, 3)).reshape(t, k * 8)
    c = c.reshape(t, TILE, k // 8, 2, 4)  # per 8 columns: 8 rows x 4 bytes, columns c+b low and c+4+b high nibble
    b = c[:, :, :, 0, :] | (c[:, :, :, 1, :] << 4)
    return np.ascontiguousarray(b.transpose(0, 2, 1, 3)).reshape(t, k * 4)


def tile_groups(values: np.ndarray) -> np.ndarray:
    """[N, K/G] scales or minimums -> [N/8, K/G, 8] (one vector load per tile and group)."""
    n, g = values.shape
    t = -(-n // TILE)
    v = np.zeros((t * TILE, g), values.dtype)
    v[:n] = values
    return np.ascontiguousarray(v.reshape(t, TILE, g).transpose(0, 2, 1))


@dataclass(eq=False)
class DotWeight(PackedWeight):
    codes: torch.Tensor  # uint8 [N/8, K*bits]
    scale: torch.Tensor  # float16 / float32 [N/8, K/G, 8]
    mins: torch.Tensor  # as scale
    bits: int
    out_features: int
    in_features: int

    @property
    def kernel(self) -> str:
        g = self.in_features // self.scale.shape[1]
        return f"{self.bits}-bit group-{g} dot (kernelfit C++, two int8 activation digits)"

    @classmethod
    def from_groups(cls, g: DotGroups) -> "DotWeight":
        n, k = g.codes.shape
        return cls(torch.from_numpy(tile_codes(g.codes, g.bits)), torch.from_numpy(tile_groups(g.scale)),
                   torch.from_numpy(tile_groups(g.mins)), g.bits, n, k)

    @classmethod
    def empty(cls, rows: int, cols: int, bits: int, group: int, dtype: np.dtype) -> "DotWeight":
        """A weight to be filled tile by tile (fill)."""
        t = -(-rows // TILE)
        sdt = torch.float16 if dtype == np.float16 else torch.float32
        return cls(torch.zeros(t, cols * bits, dtype=torch.uint8), torch.zeros(t, cols // group, TILE, dtype=sdt),
                   torch.zeros(t, cols // group, TILE, dtype=sdt), bits, rows, cols)

    def fill(self, tile0: int, g: DotGroups) -> int:
        """Write groups `g` (whole tiles, or the weight's last rows) from tile `tile0`; returns the tiles written."""
        n = -(-len(g.codes) // TILE)
        self.codes[tile0:tile0 + n] = torch.from_numpy(tile_codes(g.codes, g.bits))
        self.scale[tile0:tile0 + n] = torch.from_numpy(tile_groups(g.scale))
        self.mins[tile0:tile0 + n] = torch.from_numpy(tile_groups(g.mins))
        return n

    def mm(self, x: torch.Tensor) -> torch.Tensor:  # x: [M, K] any float -> [M, N] float32
        return _ops().dot_mm(x, self.codes, self.scale, self.mins, self.bits, self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 [len(ids), K]: the weight's rows `ids` (an embedding lookup)."""
        return _ops().dot_dequant(self.codes, self.scale, self.mins, self.bits, self.out_features, ids, False)

    def dequantize(self, bf16: bool = False) -> torch.Tensor:
        """[N, K] float32 (bf16: a prefill copy) of exactly what the products compute with."""
        return _ops().dot_dequant(self.codes, self.scale, self.mins, self.bits, self.out_features,
                                  torch.empty(0, dtype=torch.long), bf16)

    def nbytes(self) -> int:
        return self.codes.numel() + (self.scale.numel() + self.mins.numel()) * self.scale.element_size()


def _ops():
    from .lean_native import native_module

    module = native_module()
    if module is None:  # DotWeights are built only when it loaded (dot_available)
        raise RuntimeError("the C++ dot kernels are not built")
    return module


def dot_available() -> bool:
    """True where the C++ extension built with a vector dot path (AVX2 or better) and KERNELFIT_DOT is not 0
    (which runs torch's packed kernels instead: the benchmarks compare the two)."""
    import os

    from .lean_native import native_module

    if os.environ.get("KERNELFIT_DOT", "1") == "0":
        return False
    module = native_module()
    return module is not None and bool(module.fast_dot())


__all__ = ["TILE", "DotWeight", "dot_available", "tile_codes", "tile_groups"]
