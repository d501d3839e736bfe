"""GGUF quantized blocks, read as (codes, scale, zero) groups instead of floats.

A GGUF tensor of N rows and K columns is stored row by row, each row as blocks of 32 (Q4_0, Q4_1,
Q8_0) or 256 (Q4_K, Q6_K) values. Every type supported here is a grid per group of the row:

    Q4_0  w = d * (q - 8)              q in 0..15, one fp16 d per 32
    Q4_1  w = d * q + m                q in 0..15, fp16 d and m per 32
    Q4_K  w = (d*sc) * q - (dmin*mn)   q in 0..15, 6-bit sc and mn per 32, fp16 d and dmin per 256
    Q5_0  w = d * (q - 16)             q in 0..31, one fp16 d per 32
    Q5_1  w = d * q + m                q in 0..31, fp16 d and m per 32
    Q8_0  w = d * q                    q in -128..127, one fp16 d per 32
    Q6_K  w = (d*sc) * q               q in -32..31, int8 sc per 16, fp16 d per 256
    Q5_K  w = (d*sc) * q - (dmin*mn)   q in 0..31, 6-bit sc and mn per 32, fp16 d and dmin per 256
    Q3_K  w = (d*sc) * q               q in -4..3, 6-bit sc (- 32) per 16, fp16 d per 256
    Q2_K  w = (d*sc) * q - (dmin*mn)   q in 0..3, 4-bit sc and mn per 16, fp16 d and dmin per 256

so the int4 types map exactly onto torch's group-32 asymmetric int4 layout (w = (q - 8) * s + z),
and the others are re-gridded or unpacked (engine/torch_weights.py decides, by measurement). The bit
layouts follow gguf-py's reference dequantizers (gguf/quants.py), which the tests check against.

All functions are numpy over the file's memory map: nothing here copies a whole model to float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK = 32  # values per Q4_0/Q4_1/Q8_0 block; also the int4 group size used for every int4 type
QK_K = 256  # values per K-quant super-block
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24, "Q8_0": 34, "Q4_K": 144, "Q6_K": 210,
               "Q2_K": 84, "Q3_K": 110, "Q5_K": 176, "IQ4_NL": 18, "IQ4_XS": 136, "MXFP4": 17}
# 4-bit codes of a non-uniform grid (kernels/dot_kernels.h Grid): ggml-common.h kvalues_iq4nl, kvalues_mxfp4 (e2m1
# values, doubled); the kernels read them as unsigned bytes value + 128 with the minimum -128 * scale
GRIDS = {"IQ4_NL": 1, "IQ4_XS": 1, "MXFP4": 2}
GRID_VALUES = {1: np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int16),
               2: np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int16)}
INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")  # exactly group-32 asymmetric int4
# no torch kernel with their grid: int8 per row, or unpacked (the C++ dot products read them all as stored)
REGRID_TYPES = ("Q5_0", "Q5_1", "Q8_0", "Q6_K", "Q2_K", "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS", "MXFP4")
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED = INT4_TYPES + REGRID_TYPES + FLOAT_TYPES
PACKED_CHECKPOINT_TYPES = ("AWQ", "GPTQ", "CT-INT")  # a safetensors checkpoint's packed linears (safetensors/packed.py)
WIDENED_TYPES = ("FP8",)  # a safetensors checkpoint's fp8 linears, widened to bf16 rows (engine/safetensors/widened.py)
DENSE_TYPES = FLOAT_TYPES + WIDENED_TYPES  # tensors the engine runs as 16-bit rows


@dataclass
class Int4Groups:
    """w[n, k] = (codes[n, k] - 8) * scale[n, k // 32] + zero[n, k // 32] (torch's int4 convention)."""

    codes: np.ndarray  # uint8 [N, K], 0..15
    scale: np.ndarray  # float32 [N, K/32]
    zero: np.ndarray  # float32 [N, K/32]


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _blocks(raw: np.ndarray, qtype: str, rows: int) -> np.ndarray:
    """The file's bytes of a tensor as [rows * blocks_per_row, block_bytes] uint8."""
    return np.asarray(raw, dtype=np.uint8).reshape(-1, BLOCK_BYTES[qtype])


def _nibbles32(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 codes: low nibbles are values 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q6_k(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q6_K blocks -> (codes 0..63 [n, 256], scale d * sc per 16 [n, 16] float32); w = scale * (code - 32)."""
    ql, qh = b[:, 0:128], b[:, 128:192]
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    lo = np.stack([ql.reshape(-1, 2, 64) & 0x0F, ql.reshape(-1, 2, 64) >> 4], axis=2).reshape(-1, 8, 32)
    hi = (qh.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 0x03
    return (lo | (hi.reshape(-1, 8, 32) << 4)).reshape(-1, 256), _f16(b[:, 208:210]) * sc


def k_scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes of 6-bit scales and mins -> ([n, 8], [n, 8]) (gguf-py Q4_K.get_scale_min)."""
    s = scales.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc, mn


def int4_groups(raw: np.ndarray, qtype: str, rows: int, cols: int) -> Int4Groups:
    """Codes, scales and zeros of a Q4_0 / Q4_1 / Q4_K tensor of shape [rows, cols]."""
    b = _blocks(raw, qtype, rows)
    if qtype == "Q4_0":
        d = _f16(b[:, 0:2])[:, 0]
        codes = _nibbles32(b[:, 2:18])
        scale, zero = d, np.zeros_like(d)
    elif qtype == "Q4_1":
        d, m = _f16(b[:, 0:2])[:, 0], _f16(b[:, 2:4])[:, 0]
        codes = _nibbles32(b[:, 4:20])
        scale, zero = d, m + 8 * d
    elif qtype == "Q4_K":
        d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])  # [n, 1]
        sc, mn = k_scale_min(b[:, 4:16])
        qs = b[:, 16:144].reshape(-1, 4, 32)  # 4 chunks of 32 bytes -> 2 groups each (low, high nibbles)
        codes = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(-1, 8, 32)
        scale = d * sc.astype(np.float32)  # [n, 8]
        zero = 8 * scale - dmin * mn.astype(np.float32)
    else:
        raise ValueError(f"{qtype} is not an int4 GGUF type")
    g = cols // QK
    return Int4Groups(codes.reshape(rows, cols), scale.reshape(rows, g).astype(np.float32),
                      zero.reshape(rows, g).astype(np.float32))


def dequantize(raw: np.ndarray, qtype: str, rows: int, cols: int) -> np.ndarray:
    """float32 [rows, cols] of any supported type (the reference the packed forms are measured against)."""
    if qtype in FLOAT_TYPES:
        if qtype == "BF16":
            u = np.asarray(raw).view(np.uint16).astype(np.uint32) << 16
            return u.view(np.float32).reshape(rows, cols)
        return np.asarray(raw).astype(np.float32).reshape(rows, cols)
    if qtype in INT4_TYPES:
        g = int4_groups(raw, qtype, rows, cols)
        w = (g.codes.reshape(rows, -1, QK).astype(np.float32) - 8) * g.scale[..., None] + g.zero[..., None]
        return w.reshape(rows, cols)
    b = _blocks(raw, qtype, rows)
    if qtype in ("Q5_0", "Q5_1"):
        off = 2 if qtype == "Q5_0" else 4
        d = _f16(b[:, 0:2])
        qh = np.ascontiguousarray(b[:, off:off + 4]).view(np.uint32)  # bit j: the 5th bit of value j
        hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        q = (_nibbles32(b[:, off + 4:off + 20]) | (hi << 4)).astype(np.float32)
        w = d * (q - 16) if qtype == "Q5_0" else d * q + _f16(b[:, 2:4])
        return w.reshape(rows, cols)
    if qtype == "Q8_0":
        d = _f16(b[:, 0:2])
        return (d * b[:, 2:34].view(np.int8).astype(np.float32)).reshape(rows, cols)
    if qtype == "Q6_K":
        codes, scale = _q6_k(b)
        q = codes.astype(np.int8) - 32
        return (scale.reshape(-1, 16, 1) * q.reshape(-1, 16, 16).astype(np.float32)).reshape(rows, cols)
    if qtype in GRIDS:  # d * value, as gguf-py (scale * (value + 128) - 128 * scale rounds differently)
        g = dot_groups(raw, qtype, rows, cols)
        values = GRID_VALUES[g.grid][g.codes].reshape(rows, -1, g.group).astype(np.float32)
        return (g.float_scales()[0][..., None] * values).reshape(rows, cols)
    if qtype in ("Q2_K", "Q3_K", "Q5_K"):
        g = dot_groups(raw, qtype, rows, cols)
        codes = g.codes.reshape(rows, -1, g.group).astype(np.float32)
        scale, mins = g.float_scales()
        scale = scale[..., None]
        mins = scale * np.float32(mins) if isinstance(mins, float) else mins[..., None]
        return (codes * scale + mins).reshape(rows, cols)
    raise ValueError(f"GGUF type {qtype} is not supported by the packed path")


@dataclass
class DotGroups:
    """w[n, k] = scale[n, k // group] * codes[n, k] + mins[n, k // group], every value exactly the file's.
    codes unsigned (an int8 code c is stored as c + 128 with the minimum -128 * scale); bits 4 (0..15), 6 (Q6_K's
    0..63, held as the file's 6 bits a weight) or 8.
    mins is a number f for the symmetric types (every minimum is f * its scale: Q4_0 -8, Q5_0 -16, Q8_0 -128,
    Q6_K -32).

    K-quants keep the file's two levels (super_scale set): scale and mins are then the integer sub-scales and
    sub-minimums (uint8; Q6_K's scales int8) and super_scale / super_min the float16 d and dmin per 256 weights:
    scale = d * sub, minimum = -(dmin * sub_min), in float32 (float_scales) — 4.6 bits a Q4_K weight in the
    kernels' layout instead of 6 with float32 scales (engine/kernels/dot_kernels.h TileScales)."""

    codes: np.ndarray | None  # uint8 [N, K]; None where `blocks` are tiled by the C++ decoder instead
    scale: np.ndarray  # float16 (the file's own scales), or the K-quants' integer sub-scales [N, K/group]
    mins: np.ndarray | float  # same dtype and shape as scale, or the factor f
    bits: int
    group: int
    super_scale: np.ndarray | None = None  # float16 [N, K/256]: a K-quant's d
    super_min: np.ndarray | None = None  # float16 [N, K/256]: its dmin (None where mins is a factor)
    # the file's Q4_K / Q6_K blocks [N, bytes] (contiguous) where codes is None: kernels/repack_kernels.h block_tiles
    # decodes them straight into the weight's tiles (no [N, K] array of codes: a byte a weight)
    blocks: np.ndarray | None = None
    grid: int = 0  # codes of a non-uniform grid (GRIDS): w = scale * (GRID_VALUES[grid][code] + 128) + mins

    @property
    def rows(self) -> int:
        return len(self.codes) if self.codes is not None else len(self.blocks)

    @property
    def layout(self) -> tuple:
        """Weights with equal layouts can be one fused product."""
        return (self.bits, self.group, self.scale.dtype.str, self.mins if isinstance(self.mins, float) else "per group",
                self.grid)

    def float_scales(self) -> tuple[np.ndarray, np.ndarray | float]:
        """(scale, mins) as float32 per group (the factor stays a number): what the kernels compute with."""
        if self.grid == GRIDS["MXFP4"]:
            return e8m0_half(self.scale), self.mins
        if self.super_scale is None:
            return self.scale.astype(np.float32), self.mins if isinstance(self.mins, float) else \
                self.mins.astype(np.float32)
        per = SUPER // self.group
        d = np.repeat(self.super_scale.astype(np.float32), per, axis=1)
        scale = d * self.scale.astype(np.float32)
        if isinstance(self.mins, float):
            return scale, self.mins
        return scale, -(np.repeat(self.super_min.astype(np.float32), per, axis=1) * self.mins.astype(np.float32))

    def finite(self) -> bool:
        """False where the file holds a NaN or infinite scale (the health check then refuses the model)."""
        arrays = [self.scale, self.super_scale, self.super_min] + ([] if isinstance(self.mins, float) else [self.mins])
        return all(bool(np.isfinite(a).all()) for a in arrays if a is not None)


SUPER = 256  # weights per K-quant superblock (one d and dmin)


def _scales(*arrays: np.ndarray, exact_f16: bool) -> list[np.ndarray]:
    """float16 for types whose scales and minimums are float16 values of the file, float32 for the K-quants'
    products of two: exact either way, float16 halves the bytes. Fixed per type, so every chunk of a tensor gets
    the same. (A NaN or inf the file holds is kept: the runner's health check refuses it, with advice.)"""
    return [a.astype(np.float16 if exact_f16 else np.float32) for a in arrays]


def _supers(b: np.ndarray, rows: int, with_min: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Q4_K / Q5_K blocks' d and dmin (their first 4 bytes; IQ4_XS's d) as float16 [rows, blocks a row]."""
    d = np.ascontiguousarray(b[:, 0:2]).view(np.float16).reshape(rows, -1)
    return d, np.ascontiguousarray(b[:, 2:4]).view(np.float16).reshape(rows, -1) if with_min else None


def _native_codes(decode, b: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A K-quant's codes unpacked by the C++ decoder `decode` (kernels/repack_kernels.h: one pass, no temporaries)."""
    import torch

    b = np.ascontiguousarray(b)
    codes = np.empty((rows, cols), np.uint8)
    decode(b.ctypes.data, torch.from_numpy(codes))
    return codes


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """MXFP4's exponent bytes as float32 scales of the doubled grid (ggml_e8m0_to_fp32_half: 2^(e - 128), denormal
    below e = 2; kernels/dot_kernels.h e8m0_half)."""
    e = e.astype(np.uint32)
    return np.where(e < 2, np.uint32(0x00200000) << e, (e - 1) << np.uint32(23)).view(np.float32)


def _grid_groups(b: np.ndarray, qtype: str, rows: int, cols: int) -> DotGroups:
    """IQ4_NL (a float16 d and 16 bytes of nibbles a 32), MXFP4 (an e8m0 exponent and 16 bytes a 32) and IQ4_XS (a
    float16 d, 6-bit sub-scales a 32, 128 bytes of nibbles a 256) as grid codes: gguf-py quants.py's layouts, each 32
    values' low nibbles first."""
    if qtype == "IQ4_NL":
        codes = _nibbles32(b[:, 2:18]).reshape(rows, cols)
        return DotGroups(codes, _scales(_f16(b[:, 0:2])[:, 0], exact_f16=True)[0].reshape(rows, -1), -128.0, 4, QK,
                         grid=1)
    if qtype == "MXFP4":  # the scales stay the file's exponent bytes (e8m0_half: what they mean)
        codes = _nibbles32(b[:, 1:17]).reshape(rows, cols)
        return DotGroups(codes, np.ascontiguousarray(b[:, 0]).reshape(rows, -1), -128.0, 4, QK, grid=2)
    scales_h = np.ascontiguousarray(b[:, 2:4]).view(np.uint16)  # IQ4_XS
    low = (b[:, 4:8, None] >> np.array([0, 4], dtype=np.uint8)).reshape(-1, 8) & 0x0F
    high = (scales_h >> (2 * np.arange(8, dtype=np.uint16))).astype(np.uint8) & 0x03
    sub = ((low | (high << 4)).astype(np.int16) - 32).astype(np.int8).reshape(rows, -1)
    codes = _nibbles32(b[:, 8:136].reshape(-1, 16)).reshape(rows, cols)
    return DotGroups(codes, sub, -128.0, 4, QK, _supers(b, rows, False)[0], grid=1)


def dot_groups(raw: np.ndarray, qtype: str, rows: int, cols: int, native=None, tiles: bool = False) -> DotGroups:
    """The codes, scales and minimums of a quantized tensor [rows, cols] for engine/kernels/dot_kernels.h. native:
    the C++ module, whose decoders unpack Q4_K's and Q6_K's codes in one pass (numpy's below are the reference);
    tiles (with native): Q4_K's and Q6_K's codes left in their blocks (DotGroups.blocks) for DotWeight.fill to decode
    straight into its tiles."""
    b = _blocks(raw, qtype, rows)
    tiles = tiles and native is not None and qtype in ("Q4_K", "Q6_K")
    if tiles:
        b = np.ascontiguousarray(b)  # [rows * blocks a row, bytes a block]
    if qtype in ("Q4_0", "Q4_1"):
        d = _f16(b[:, 0:2])[:, 0]
        codes = _nibbles32(b[:, 2:18] if qtype == "Q4_0" else b[:, 4:20]).reshape(rows, cols)
        if qtype == "Q4_0":
            return DotGroups(codes, _scales(d, exact_f16=True)[0].reshape(rows, -1), -8.0, 4, QK)
        scale, mins = _scales(d, _f16(b[:, 2:4])[:, 0], exact_f16=True)
        return DotGroups(codes, scale.reshape(rows, -1), mins.reshape(rows, -1), 4, QK)
    if qtype == "Q4_K":
        sc, mn = k_scale_min(b[:, 4:16])
        if tiles:
            codes = None
        elif native is not None:
            codes = _native_codes(native.q4_k_codes, b, rows, cols)
        else:
            qs = b[:, 16:144].reshape(-1, 4, 32)
            codes = np.stack([qs & 0x0F, qs >> 4], axis=2).reshape(rows, cols)
        return DotGroups(codes, sc.reshape(rows, -1), mn.reshape(rows, -1), 4, QK, *_supers(b, rows, True),
                         blocks=b.reshape(rows, -1) if tiles else None)
    if qtype in ("Q5_0", "Q5_1"):
        off = 2 if qtype == "Q5_0" else 4
        d = _f16(b[:, 0:2])[:, 0]
        qh = np.ascontiguousarray(b[:, off:off + 4]).view(np.uint32)
        hi = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)
        codes = _nibbles32(b[:, off + 4:off + 20]) | (hi << 4)
        if qtype == "Q5_0":
            return DotGroups(codes.reshape(rows, cols), _scales(d, exact_f16=True)[0].reshape(rows, -1), -16.0, 8, QK)
        scale, mins = _scales(d, _f16(b[:, 2:4])[:, 0], exact_f16=True)
        return DotGroups(codes.reshape(rows, cols), scale.reshape(rows, -1), mins.reshape(rows, -1), 8, QK)
    if qtype in GRIDS:
        return _grid_groups(b, qtype, rows, cols)
    if qtype == "Q8_0":
        d = _f16(b[:, 0:2])[:, 0]
        codes = b[:, 2:34] ^ np.uint8(0x80)  # int8 c -> c + 128, without an int16 copy of the table
        return DotGroups(codes.reshape(rows, cols), _scales(d, exact_f16=True)[0].reshape(rows, -1), -128.0, 8, QK)
    if qtype == "Q6_K":
        # w = d * sc * (q - 32)
        codes = None if tiles else \
            (_native_codes(native.q6_k_codes, b, rows, cols) if native is not None else _q6_k(b)[0]).reshape(rows, cols)
        sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).reshape(rows, -1)
        d = np.ascontiguousarray(b[:, 208:210]).view(np.float16).reshape(rows, -1)
        return DotGroups(codes, sc, -32.0, 6, 16, d, blocks=b.reshape(rows, -1) if tiles else None)
    if qtype == "Q5_K":
        sc, mn = k_scale_min(b[:, 4:16])
        qh, qs = b[:, 16:48], b[:, 48:176]
        lo = (qs.reshape(-1, 4, 1, 32) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        hi = (qh.reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 0x01
        codes = (lo.reshape(-1, 8, 32) | (hi << 4)).reshape(rows, cols)
        return DotGroups(codes, sc.reshape(rows, -1), mn.reshape(rows, -1), 8, QK, *_supers(b, rows, True))
    if qtype == "Q3_K":
        hmask, qs, sb = b[:, 0:32], b[:, 32:96], b[:, 96:108]
        d = _f16(b[:, 108:110])
        low = (sb[:, 0:8].reshape(-1, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1)).reshape(-1, 16)
        high = (sb[:, 8:12].reshape(-1, 1, 4) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)).reshape(-1, 16)
        sc = ((low & 0x0F) | ((high & 0x03) << 4)).astype(np.float32) - 32
        ql = (qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 0x03
        hb = (hmask.reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 0x01
        codes = ql.reshape(-1, 8, 32) | (hb << 2)  # q + 4: the high bit set means no -4 offset
        return DotGroups(codes.reshape(rows, cols), (d * sc).reshape(rows, -1).astype(np.float32), -4.0, 4, 16)
    if qtype == "Q2_K":
        sb, qs = b[:, 0:16], b[:, 16:80]
        d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
        codes = (qs.reshape(-1, 2, 1, 32) >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 0x03
        scale = (d * (sb & 0x0F).astype(np.float32)).reshape(rows, -1).astype(np.float32)
        mins = (-(dmin * (sb >> 4).astype(np.float32))).reshape(rows, -1).astype(np.float32)
        return DotGroups(codes.reshape(rows, cols), scale, mins, 4, 16)
    raise ValueError(f"GGUF type {qtype} has no dot layout")
