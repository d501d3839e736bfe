"""A GGUF file's weights, packed for the CPU straight from its memory map (no float32 copy; engine/tile_cache.py keeps
the tiles in a file of the user's cache, and a later load reads them from it instead).

Linear weights of an int4 type (Q4_0, Q4_1, Q4_K) become torch int4 weights group for group; Q8_0
and Q6_K weights are re-gridded to int8 per row when the measured error of doing so is within
catalog.packed_kernels.REGRID_MAX_ERROR, else unpacked to bf16; float tensors stay float. Q/K/V and
gate/up are fused into one product each where their layouts agree. Tensors are converted in row
chunks, so the transient memory is a chunk, not a model.

Which architectures: the families lean_lm.py runs (LEAN_ARCHS); the names follow llama.cpp's
(gguf-py constants.py MODEL_TENSORS).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...catalog.packed_kernels import REGRID_MAX_ERROR
from ...errors import UsageError
from ...model.gguf_header import read_gguf_header
from . import blocks as gb
from ..weights import TILE, DotWeight, HugeArena
from ..torch_weights import DenseWeight, Int4Weight, Int8Weight, PackedWeight, can_int4, concat_int4

CHUNK_ROWS = 2048  # rows converted at a time (a multiple of the int4 tile): ~5 MB of float32 for SmolLM2's table


@dataclass
class Conversion:
    """What one tensor became, and what that cost in accuracy (reported by `run --json`)."""

    name: str
    gguf_type: str
    layout: str  # "int4", "int8", "bf16", "f32"
    rel_error: float  # ||packed - file|| / ||file||, measured at load


@dataclass
class GgufTensors:
    """A GGUF file's tensors over one read-only memory map (model/gguf_header.py reads the table: gguf-py's
    GGUFReader also builds every metadata array, ~150 MB of objects for a 49k-token vocabulary)."""

    path: str
    data: np.memmap
    by_name: dict
    conversions: list[Conversion] = field(default_factory=list)
    arena: HugeArena = field(default_factory=HugeArena)  # where the dot weights are carved (on huge pages)
    problems: list[str] = field(default_factory=list)  # damage seen while packing (the health check reports it)

    @classmethod
    def open(cls, path: str | Path, header=None) -> "GgufTensors":
        """`header`: the file's, when the caller has read it already."""
        h = header or read_gguf_header(path)
        return cls(str(path), np.memmap(path, dtype=np.uint8, mode="r"), {t.name: t for t in h.tensors})

    def has(self, name: str) -> bool:
        return name in self.by_name

    def qtype(self, name: str) -> str:
        return self.by_name[name].type_name

    def shape(self, name: str) -> tuple[int, int]:
        """(rows, cols) as torch sees the matrix: GGUF lists dimensions innermost first."""
        dims = [int(d) for d in self.by_name[name].shape]
        return int(np.prod(dims[1:])) if len(dims) > 1 else 1, dims[0]

    def _raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of a tensor: uint8 block bytes for quantized types, the values for float types."""
        t = self.by_name[name]
        rows, cols = self.shape(name)
        raw = self.data[t.offset:t.offset + t.nbytes]
        if t.type_name in gb.FLOAT_TYPES:
            dtype = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}[t.type_name]
            return raw.view(dtype).reshape(rows, cols)[start:stop]
        return raw.reshape(rows, -1)[start:stop]

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Drop a converted tensor's file pages (or those of its rows start..stop) from this process
        (MADV_DONTNEED): they stay in the page cache, but no longer count in the resident set, so packing peaks
        at the packed model plus one chunk of rows, not plus the whole file (Gemma 3's 178 MB token table)."""
        t = self.by_name[name]
        first, last = t.offset, t.offset + t.nbytes
        if rows is not None:
            row_bytes = t.nbytes // self.shape(name)[0]
            first, last = t.offset + rows[0] * row_bytes, t.offset + rows[1] * row_bytes
        drop_pages(self.data, first, last)

    def conversion(self, name: str, bits: int, grid: int = 0) -> Conversion:
        """What a tensor packed into dot groups became: the file's own groups, exact (grid: codes of IQ4_NL's or
        MXFP4's non-uniform values)."""
        return Conversion(name, self.qtype(name), f"{bits}-bit {'grid ' if grid else ''}groups (exact)", 0.0)

    def float_tensor(self, name: str) -> torch.Tensor:
        """A small float tensor (norms, biases) as float32, flat."""
        rows, cols = self.shape(name)
        w = gb.dequantize(self._raw_rows(name, 0, rows), self.qtype(name), rows, cols)
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(-1)

    def int4_groups(self, name: str, order: np.ndarray | None = None) -> gb.Int4Groups:
        rows, cols = self.shape(name)
        g = gb.int4_groups(self._raw_rows(name, 0, rows), self.qtype(name), rows, cols)
        if order is not None:
            g = gb.Int4Groups(g.codes[order], g.scale[order], g.zero[order])
        return g

    def dot_groups(self, name: str, order: np.ndarray | None = None, start: int = 0,
                   stop: int | None = None) -> gb.DotGroups:
        """Rows start..stop (after `order`) as the file's groups."""
        rows, cols = self.shape(name)
        stop = rows if stop is None else stop
        raw = self._raw_rows(name, 0, rows)[order[start:stop]] if order is not None else self._raw_rows(name, start, stop)
        return gb.dot_groups(raw, self.qtype(name), stop - start, cols, _native(), tiles=True)

    def column_order(self, name: str) -> np.ndarray | None:
        """A GGUF file's columns are as stored (SafetensorsTensors.column_order: an act-order checkpoint's are not)."""
        return None

    def dot_layout(self, name: str) -> tuple:
        """(bits, group, scale dtype) of a tensor's dot groups, from its first row."""
        return self.dot_groups(name, None, 0, 1).layout

    def dequantized(self, name: str, start: int, stop: int, order: np.ndarray | None = None) -> torch.Tensor:
        rows, cols = self.shape(name)
        raw = self._raw_rows(name, 0, rows)[order[start:stop]] if order is not None else self._raw_rows(name, start, stop)
        return torch.from_numpy(np.ascontiguousarray(gb.dequantize(raw, self.qtype(name), stop - start, cols)))


def _native():
    """The C++ module (loaded before any dot weight is built), whose decoders unpack K-quant codes in one pass."""
    from ..native import native_module

    return native_module()


def drop_pages(data: np.memmap, first: int, last: int) -> None:
    """MADV_DONTNEED on the pages of bytes first..last of a read-only map (GgufTensors.release says why)."""
    mm = getattr(data, "_mmap", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = first // page * page
    end = -(-last // page) * page  # a page shared with the next rows is read again from the page cache
    mm.madvise(mmap.MADV_DONTNEED, start, min(end, len(mm)) - start)


def interleave_order(rows: int, head_dim: int, rotary_dims: int = 0) -> np.ndarray:
    """Row order that puts rotary pairs side by side: within each head, rows i and i + rot/2 (the halves layout
    transformers and qwen2/gemma3 files use; rot the rotated dimensions, head_dim unless the rotary is partial)
    become rows 2i and 2i+1 (the layout llama.cpp gives Llama/Mistral files, convert_hf_to_gguf.py
    LlamaModel.permute); rows from rot on stay where they are. Q and K get the same order, so q.k is unchanged;
    rotary then is one complex product per pair. A row permutation: exact."""
    heads, rot = rows // head_dim, rotary_dims or head_dim
    within = np.concatenate([np.arange(rot).reshape(2, rot // 2).T.reshape(-1), np.arange(rot, head_dim)])
    return (np.arange(heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def dense(t: GgufTensors, name: str, order: np.ndarray | None = None, f16: bool = False) -> DenseWeight:
    """A tensor as bf16 rows, written chunk by chunk into one tensor on huge pages: BF16 bytes copied as they are
    (exact), F16 / F32 rounded to bf16 (its measured error recorded) — or, with f16 (a product the C++ rows kernel
    runs, kernels/bf16_rows.h), F16 bytes copied as they are too (exact). No float32 copy of a BF16 tensor and no
    second copy to join the chunks: a safetensors SmolLM2 loaded in 4.4 s at 689 MiB peak RSS that way."""
    rows, cols = t.shape(name)
    qtype = t.qtype(name)
    as_stored = qtype == "BF16" or (f16 and qtype == "F16")
    dtype = torch.float16 if as_stored and qtype == "F16" else torch.bfloat16
    if t.arena.replay:  # its rows are already in the mapped cache (engine/tile_cache.py)
        return DenseWeight(t.arena.empty((rows, cols), dtype), rows, cols)
    out = t.arena.zeros((rows, cols), dtype)
    dst = out.view(torch.int16).numpy()
    err2 = norm2 = 0.0
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        if as_stored:
            raw = t._raw_rows(name, 0, rows)[order[start:stop]] if order is not None else t._raw_rows(name, start, stop)
            dst[start:stop] = raw.view(np.int16)
            if order is None:  # the copied rows' file pages leave the resident set now, not after the whole tensor
                t.release(name, (start, stop))
            continue
        w = t.dequantized(name, start, stop, order)
        b = w.to(torch.bfloat16)
        dst[start:stop] = b.view(torch.int16).numpy()
        err2 += float(((b.float() - w) ** 2).sum())
        norm2 += float((w ** 2).sum())
    t.release(name)
    layout = "f16" if out.dtype == torch.float16 else "bf16"
    t.conversions.append(Conversion(name, qtype, layout, (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0))
    return DenseWeight(out, rows, cols)


def regrid(t: GgufTensors, name: str, order: np.ndarray | None = None, keep_dense: bool = False,
           f16: bool = False) -> PackedWeight:
    """int8 per row when its measured error is small enough, else bf16; built chunk by chunk. f16: see dense()."""
    if keep_dense and t.qtype(name) in gb.DENSE_TYPES:
        return dense(t, name, order, f16)
    rows, cols = t.shape(name)
    chunks, err2, norm2 = [], 0.0, 0.0
    for start in range(0, rows, CHUNK_ROWS):
        w = t.dequantized(name, start, min(rows, start + CHUNK_ROWS), order)
        c = DenseWeight.from_float(w) if keep_dense else Int8Weight.from_float(w)[0]
        back = c.dequantize()
        err2 += float(((back - w) ** 2).sum())
        norm2 += float((w ** 2).sum())
        chunks.append(c)
        del back, w
    rel = (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0
    t.release(name)
    if not keep_dense and rel > REGRID_MAX_ERROR:
        return regrid(t, name, order, keep_dense=True)
    t.conversions.append(Conversion(name, t.qtype(name), "bf16" if keep_dense else "int8", rel))
    if keep_dense:
        return DenseWeight(torch.cat([c.weight for c in chunks]), rows, cols)
    return Int8Weight(torch.cat([c.weight for c in chunks]), torch.cat([c.scale for c in chunks]), rows, cols)


def regridded(t: GgufTensors, name: str, order: np.ndarray | None = None, f16: bool = False) -> PackedWeight:
    """A tensor no int4 product takes (a float, Q5/Q8/Q6_K type, or a shape off the int4 tiles), and the token
    table (its rows are looked up, and a tied output product reads it): float tensors bf16, others re-gridded."""
    return regrid(t, name, order, keep_dense=t.qtype(name) in gb.DENSE_TYPES, f16=f16)


def _int4(t: GgufTensors, names: list[str], orders: dict) -> Int4Weight:
    """One int4 product of the named tensors' rows, stacked (a fused product when several)."""
    groups = [t.int4_groups(n, orders.get(n)) for n in names]
    weight, errors = Int4Weight.from_groups(concat_int4(groups) if len(groups) > 1 else groups[0],
                                            [len(g.codes) for g in groups])
    for n, e in zip(names, errors):
        t.conversions.append(Conversion(n, t.qtype(n), "int4", e))
        t.release(n)
    return weight


def dot(t: GgufTensors, names: list[str], orders: dict) -> list[PackedWeight]:
    """The file's own groups for the C++ dot products: one fused product where the layouts agree, else one each.
    Tiled CHUNK_ROWS rows at a time into the product's arrays, so the transient memory is a chunk (the token
    table's codes were held three times over: decoded, padded, tiled)."""
    layouts = {n: t.dot_layout(n) for n in names}  # (bits, group, scale dtype, minimums or their factor, grid)
    columns = {n: t.column_order(n) for n in names}  # act-order: each product gathers its input in its columns' order
    same_columns = all(c is None for c in columns.values()) or \
        all(c is not None and np.array_equal(c, columns[names[0]]) for c in columns.values())
    fused = len(set(layouts.values())) == 1 and same_columns and \
        not (len(names) > 1 and any(t.shape(n)[0] % TILE for n in names))
    parts = [names] if fused else [[n] for n in names]  # fused parts must be whole tiles, to be stacked as tiles
    out = []
    for part in parts:
        rows = sum(t.shape(n)[0] for n in part)
        cols = t.shape(part[0])[1]
        bits, group, dtype, mins, grid = layouts[part[0]]
        factor = mins if isinstance(mins, float) else None
        w = DotWeight.empty(rows, cols, bits, group, np.dtype(dtype), factor, t.arena, grid=grid)
        if columns[part[0]] is not None:
            w.perm = torch.from_numpy(columns[part[0]])
        out.append(w)
        if t.arena.replay:  # its tiles are already in the mapped cache (engine/tile_cache.py)
            continue
        tile0 = 0
        for n in part:
            n_rows = t.shape(n)[0]

            def chunk(start: int, n=n, tile0=tile0) -> bool:  # rows start.. into their own tiles; True if finite
                stop = min(n_rows, start + CHUNK_ROWS)
                g = t.dot_groups(n, orders.get(n), start, stop)
                w.fill(tile0 + start // TILE, g)
                if orders.get(n) is None:
                    t.release(n, (start, stop))
                return g.finite()

            # chunks fill disjoint tiles and numpy releases the GIL: the CPU's cores repack a tensor together (a
            # Qwen2.5-1.5B Q4_K_M file took 11 s on one). Numpy only in these threads (DotWeight.fill), and they end
            # with the tensor: a torch op on another thread starts an OpenMP team that slowed every decode step 4x.
            with _pool() as pool:
                finite = all(pool.map(chunk, range(0, n_rows, CHUNK_ROWS)))
            tile0 += -(-n_rows // TILE)
            if not finite:  # a NaN scale in Q does not even reach the logits: torch's CPU SDPA drops NaN scores
                t.problems.append(f"{n}: non-finite block scales in the file")
            t.conversions.append(t.conversion(n, bits, grid))
            t.release(n)
    return out


def _pool():
    """Threads that repack a tensor's chunks at once, one a core this process may use."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return ThreadPoolExecutor(max_workers=max(1, cores), thread_name_prefix="kernelfit-repack")


def linear(t: GgufTensors, names: list[str], orders: dict[str, np.ndarray] | None = None,
           exact: bool = False) -> list[PackedWeight]:
    """The products for `names`. exact (the C++ dot kernels are built): the file's groups as stored; else torch's
    kernels: one fused int4 product where all are int4 and tile-aligned, else one each."""
    orders = orders or {}
    for n in names:
        if t.qtype(n) not in gb.SUPPORTED + gb.PACKED_CHECKPOINT_TYPES + gb.WIDENED_TYPES:
            raise UsageError(f"GGUF tensor {n} has type {t.qtype(n)}; the packed CPU path runs "
                             f"{', '.join(gb.SUPPORTED)} (--quantization none runs the dequantized model)")
    if exact and not any(t.qtype(n) in gb.DENSE_TYPES for n in names):
        return dot(t, names, orders)
    int4 = {n: t.qtype(n) in gb.INT4_TYPES and can_int4(*t.shape(n)) for n in names}
    if all(int4.values()):
        return [_int4(t, names, orders)]
    # a float16 product stays float16 where the C++ rows kernel runs it (exact); the token table is looked up as bf16
    return [_int4(t, [n], orders) if int4[n] else regridded(t, n, orders.get(n), f16=exact) for n in names]
