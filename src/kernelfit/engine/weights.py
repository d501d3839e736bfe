"""GGUF weights kept as the file's own groups (codes, scale and minimum per 32 or 16 weights), read by the
C++ group dot products of engine/kernels/dot_kernels.h — every value exactly the file's, no re-grid, no bf16 scale.

The kernels need the C++ extension (engine/native.py); without a compiler, engine/torch_weights.py's torch
kernels run instead. Rows are stored in tiles of 8 (dot_kernels.h says why and how); a tensor whose row count
is not a multiple of 8 is padded with zero rows, which the products drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import glibc
from .gguf.blocks import GRIDS, DotGroups
from .torch_weights import PackedWeight

TILE = 8  # dot_kernels.h TILE
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14  # linux/mman.h
# Weights read whole every token sit on 2 MiB pages where the kernel allows it (transparent huge pages in madvise
# mode, the common default): Gemma 3's 178 MB output head took 4.7 instead of 5.2 ms here (fewer TLB misses).


def tile_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [N, K] codes -> [N/8, K*bits] bytes in dot_kernels.h's tile order (N padded to whole tiles)."""
    n, k = codes.shape
    t = -(-n // TILE)
    c = np.zeros((t * TILE, k), np.uint8)
    c[:n] = codes
    if bits == 8:  # per 4 columns: 8 rows x 4 bytes
        return np.ascontiguousarray(c.reshape(t, TILE, k // 4, 4).transpose(0, 2, 1, 3)).reshape(t, k * 8)
    low = (c & 0x0F).reshape(t, TILE, k // 8, 2, 4)  # per 8 columns: 8 rows x 4 bytes, columns c+b low, c+4+b high
    b = low[:, :, :, 0, :] | (low[:, :, :, 1, :] << 4)
    nibbles = np.ascontiguousarray(b.transpose(0, 2, 1, 3))  # [t, k/8, 8 rows, 4]
    if bits == 4:
        return nibbles.reshape(t, k * 4)
    # 6 bits: per 16 columns the two 8 columns' nibbles (64 bytes), then 8 rows x 4 bytes of high bit pairs, columns
    # c+b+4j at bits 2j
    h = (c >> 4).reshape(t, TILE, k // 16, 4, 4)
    p = h[:, :, :, 0, :] | (h[:, :, :, 1, :] << 2) | (h[:, :, :, 2, :] << 4) | (h[:, :, :, 3, :] << 6)
    pairs = np.ascontiguousarray(p.transpose(0, 2, 1, 3)).reshape(t, k // 16, 32)
    return np.concatenate([nibbles.reshape(t, k // 16, 64), pairs], axis=2).reshape(t, k * 6)


def tile_groups(values: np.ndarray) -> np.ndarray:
    """[N, K/G] scales or minimums -> [N/8, K/G, 8] (one vector load per tile and group)."""
    n, g = values.shape
    t = -(-n // TILE)
    v = np.zeros((t * TILE, g), values.dtype)
    v[:n] = values
    return np.ascontiguousarray(v.reshape(t, TILE, g).transpose(0, 2, 1))


SUPER, SUPER_BYTES = 256, 2 * TILE  # dot_kernels.h: a superblock's weights; its 8 rows' float16 d in bytes


def tile_two_level(supers: np.ndarray, subs: np.ndarray) -> np.ndarray:
    """A K-quant's float16 [N, K/256] d (or dmin) and integer [N, K/G] sub-scales -> [N/8, K/256 * 16 + K/G * 8]
    bytes a tile (dot_kernels.h TileScales): the superblocks' 8 rows of d, then each group's 8 rows of sub-scales.
    int8 where the sub-scales are signed (Q6_K)."""
    d = tile_groups(np.ascontiguousarray(supers, dtype=np.float16))  # [t, K/256, 8]
    s = tile_groups(subs)  # [t, K/G, 8]
    t = d.shape[0]
    out = np.concatenate([d.view(np.uint8).reshape(t, -1), s.view(np.uint8).reshape(t, -1)], axis=1)
    return out.view(np.int8) if subs.dtype == np.int8 else out


class HugeArena:
    """Zeroed tensors carved from 32 MiB chunks on transparent huge pages (the madvise is made before first
    touch), so that a model's many ~1 MB products sit on 2 MiB pages too. A chunk's untouched tail is never
    resident; a chunk lives as long as any tensor carved from it."""

    CHUNK = 32 << 20
    replay = False  # its tensors already hold their values (a FileArena reading the tile cache): nothing to fill

    def __init__(self):
        self.buf, self.used = None, 0

    def _region(self, nbytes: int) -> torch.Tensor:
        """Where a chunk or a large tensor comes from (engine/tile_cache.py FileArena: a file's region)."""
        return _huge_region(nbytes)

    def zeros(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return self.empty(shape, dtype).zero_()

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """Not zeroed: for arrays their filler writes whole (DotWeight.fill's tiles, padding included), whose pages are
        then first touched on the reader's threads, all cores at once (zeroing 1.1 GB of a 1.5B file's weights on one
        thread took ~0.6-1.3 s of its load, and fill wrote every byte again)."""
        nbytes = int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size()
        nbytes_aligned = -(-nbytes // 64) * 64
        if nbytes_aligned > self.CHUNK // 4:  # large: a region of its own
            return self._region(nbytes)[:nbytes].view(dtype).view(shape)
        if self.buf is None or self.used + nbytes_aligned > len(self.buf):
            self.buf, self.used = self._region(self.CHUNK), 0
        out = self.buf[self.used:self.used + nbytes].view(dtype).view(shape)
        self.used += nbytes_aligned
        return out


def _huge_region(nbytes: int) -> torch.Tensor:
    """uint8 [>= nbytes] starting on a 2 MiB boundary, advised MADV_HUGEPAGE (refused on non-Linux or THP off:
    4 KiB pages, same results)."""
    buf = torch.empty(nbytes + HUGE_PAGE, dtype=torch.uint8)
    start = -(-buf.data_ptr() // HUGE_PAGE) * HUGE_PAGE
    libc = glibc.libc()
    if libc is not None and nbytes >= HUGE_PAGE:
        import ctypes

        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise(start, nbytes // HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE)
    off = start - buf.data_ptr()
    return buf[off:off + nbytes]


@dataclass(eq=False)
class DotWeight(PackedWeight):
    codes: torch.Tensor  # uint8 [N/8, K*bits]
    scale: torch.Tensor  # float16 / float32 [N/8, K/G, 8] (MXFP4: its exponent bytes, uint8), or a K-quant's two
    # levels: uint8/int8 [N/8, bytes]
    mins: torch.Tensor  # as scale, or a 0-d float32 factor of the scales (symmetric types)
    bits: int  # a code's bits: 4, 6 or 8
    out_features: int
    in_features: int
    group: int = 32
    grid: int = 0  # 4-bit codes of a non-uniform grid: 1 IQ4_NL's values, 2 MXFP4's (kernels/dot_kernels.h Grid)
    perm: torch.Tensor | None = None  # int64 [K]: the input's columns in the codes' order (an act-order checkpoint's)

    @property
    def format(self) -> int:
        """The kernels' code format: bits | grid << 8."""
        return self.bits | self.grid << 8

    @property
    def kernel(self) -> str:
        levels = ", the file's two-level scales" if self.two_level else ""
        grid = {1: " IQ4_NL-grid", 2: " MXFP4-grid"}.get(self.grid, "")
        return f"{self.bits}-bit{grid} group-{self.group} dot (kernelfit C++, two int8 activation digits{levels})"

    @property
    def two_level(self) -> bool:
        return self.scale.dtype in (torch.uint8, torch.int8) and self.scale.dim() == 2

    @classmethod
    def from_groups(cls, g: DotGroups) -> "DotWeight":
        n, k = g.rows, g.scale.shape[1] * g.group
        w = cls.empty(n, k, g.bits, g.group, g.scale.dtype, g.mins if isinstance(g.mins, float) else None, grid=g.grid)
        w.fill(0, g)
        return w

    @classmethod
    def empty(cls, rows: int, cols: int, bits: int, group: int, dtype: np.dtype, factor: float | None = None,
              arena: HugeArena | None = None, grid: int = 0) -> "DotWeight":
        """A weight to be filled tile by tile (fill); factor: the minimums are factor * scale (no array). dtype: the
        groups' scale dtype — uint8 / int8 are a K-quant's integer sub-scales (two levels, dot_kernels.h)."""
        t = -(-rows // TILE)
        arena = arena or HugeArena()
        if np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.int8)) and grid != GRIDS["MXFP4"]:
            shape = (t, cols // SUPER * SUPER_BYTES + cols // group * TILE)
            sdt, mdt = (torch.uint8 if np.dtype(dtype) == np.uint8 else torch.int8), torch.uint8
        else:
            shape = (t, cols // group, TILE)
            sdt = mdt = torch.float16 if dtype == np.float16 else \
                torch.uint8 if np.dtype(dtype) == np.uint8 else torch.float32  # MXFP4: its exponent bytes
        # every tile is written whole by fill (the reader fills all of a weight's rows, padding rows as zeros)
        mins = torch.tensor(factor, dtype=torch.float32) if factor is not None else arena.empty(shape, mdt)
        return cls(arena.empty((t, cols * bits), torch.uint8), arena.empty(shape, sdt), mins, bits, rows, cols, group,
                   grid)

    def fill(self, tile0: int, g: DotGroups) -> int:
        """Write groups `g` (whole tiles, or the weight's last rows) from tile `tile0`; returns the tiles written."""
        n = -(-g.rows // TILE)
        two = g.super_scale is not None
        if two != self.two_level or g.grid != self.grid:
            raise ValueError("a weight filled with another type's groups")
        # the codes in one C++ pass (kernels/repack_kernels.h; tile_codes above is its reference), the GIL released
        # (K-quant blocks decoded and tiled in that pass: DotGroups.blocks);
        # the scales as numpy copies into the tensors' memory, no torch op: the reader fills chunks from worker threads,
        # and a torch copy there starts an OpenMP team of that thread's, which then competed with the decode step's
        # (4x slower)
        if g.codes is None:  # Q4_K / Q6_K blocks decoded straight into the tiles
            _ops().block_tiles(g.blocks.ctypes.data, g.rows, self.in_features, self.codes, tile0, g.bits)
        else:
            _ops().tile_codes(torch.from_numpy(np.ascontiguousarray(g.codes)), self.codes, tile0, g.bits)
        self.scale[tile0:tile0 + n].numpy()[...] = tile_two_level(g.super_scale, g.scale) if two else \
            tile_groups(g.scale)
        if self.mins.dim():
            self.mins[tile0:tile0 + n].numpy()[...] = tile_two_level(g.super_min, g.mins) if two else \
                tile_groups(g.mins)
        elif float(self.mins) != g.mins:
            raise ValueError("a symmetric weight filled with another type's groups")
        return n

    def mm(self, x: torch.Tensor) -> torch.Tensor:  # x: [M, K] any float -> [M, N] float32
        x = x if self.perm is None else x.index_select(-1, self.perm)
        return _ops().dot_mm(x, self.codes, self.scale, self.mins, self.format, self.out_features)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 [len(ids), K]: the weight's rows `ids` (an embedding lookup)."""
        return _ops().dot_dequant(self.codes, self.scale, self.mins, self.format, self.out_features, ids, False)

    def dequantize(self, bf16: bool = False) -> torch.Tensor:
        """[N, K] float32 (bf16: a prefill copy) of exactly what the products compute with."""
        return _ops().dot_dequant(self.codes, self.scale, self.mins, self.format, self.out_features,
                                  torch.empty(0, dtype=torch.long), bf16)

    def nbytes(self) -> int:
        mins = self.mins.numel() * self.mins.element_size() if self.mins.dim() else 0  # a factor: no array
        return self.codes.numel() + self.scale.numel() * self.scale.element_size() + mins


def _ops():
    from .native import native_module

    module = native_module()
    if module is None:  # DotWeights are built only when it loaded (dot_available)
        raise RuntimeError("the C++ dot kernels are not built")
    return module


def dot_available() -> bool:
    """True where the C++ extension built with a vector dot path (AVX2 or better) and KERNELFIT_DOT is not 0
    (which runs torch's packed kernels instead: the benchmarks compare the two)."""
    import os

    from .native import native_module

    if os.environ.get("KERNELFIT_DOT", "1") == "0":
        return False
    module = native_module()
    return module is not None and bool(module.fast_dot())


def gemm_available() -> bool:
    """True where the dot path runs and the extension has the int8 GEMM (built for AVX512-VNNI: gemm_kernels.h)."""
    from .native import native_module

    return dot_available() and bool(native_module().fast_gemm())


__all__ = ["TILE", "DotWeight", "HugeArena", "dot_available", "gemm_available", "tile_codes", "tile_groups",
           "tile_two_level"]
