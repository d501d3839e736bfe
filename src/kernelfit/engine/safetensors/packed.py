"""AWQ and GPTQ linears as the engine's dot groups, unpacked from the shards' int32 words: the checkpoint's codes,
scales and zeros run as stored, with no dequantization.

Layouts (AutoAWQ's WQLinear_GEMM and AutoGPTQ's QuantLinear, as loader/dequantize.py reads them for transformers):
- AWQ "gemm": qweight [in, out/8] int32, eight 4-bit codes a word along the output axis in the order 0 2 4 6 1 3 5 7;
  qzeros [in/g, out/8] packed the same; scales [in/g, out] float16; w = (q - z) * s.
- GPTQ: qweight [in*bits/32, out] packed along the input axis (low bits first); qzeros [in/g, out*bits/32] along the
  output axis, stored minus one in the original format ("gptq"), as they are in "gptq_v2"; scales [in/g, out]; g_idx
  [in], a column's group: in input order (i // g) unless desc_act, whose columns are then read in group order and
  the product's input gathered the same way (PackedLinear.perm).
- compressed-tensors (compressors/pack_quantized, naive_quantized): weight_packed [out, in*bits/32] int32 packed along
  the input axis (low bits first), each code stored as q + 2^(bits-1) — or weight [out, in] int8 holding q itself
  (naive-/int-quantized); weight_scale [out, in/g] (group), [out, 1] (channel) or [1] (tensor); weight_zero_point,
  saved only where asymmetric, packed along the output axis ([out*bits/32, groups], the same offset) or int8 [out,
  groups]; w = (q - zp) * s. Here codes and zeros are kept with the offset (unsigned), as the others are.

The dot products take a float16 scale (and minimum) per 128 weights, or per 32 (engine/kernels/dot_kernels.h; the
activations in blocks of 32 either way): a group of 128m weights becomes m groups of 128 with its scale, exactly —
4.125 bits a 4-bit weight — and other multiples of 32 groups of 32 (4.5 bits). A symmetric GPTQ tensor (every zero
2^(bits-1)) has the minimum -2^(bits-1) * scale: exact. A zero per group (AWQ, asymmetric GPTQ) becomes a float16
minimum -z * s: z * s can need 15 significant bits and float16 keeps 11, so the minimum is rounded (measured per
tensor and reported, ~4e-4 relative on the tests' weights); 4.25 bits a 4-bit weight in groups of 128. A tensor
whose scales float16 cannot hold exactly (bf16 scales below float16's normal range, or float32 ones) keeps float32
scales per 32 instead (5 bits a 4-bit weight, exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...model.quantization import AWQ_ORDER
from ..gguf import blocks as gb

AWQ_NIBBLE = np.argsort(AWQ_ORDER)  # output column j % 8 -> its nibble (model/quantization.py AWQ_ORDER)
DOT_GROUP = 128  # the dot products' largest group (engine/kernels/dot_kernels.h: float16 scales, activation blocks of 32)


@dataclass
class PackedLinear:
    """One packed linear's tensors in the shards (engine/safetensors/reader.py Stored), and its format."""

    method: str  # "awq", "gptq" or "compressed-tensors"
    bits: int
    group: int  # input weights a scale
    v2: bool  # GPTQ zeros stored as they are (else minus one)
    qweight: object  # compressed-tensors: weight_packed (int32) or weight (int8)
    qzeros: object  # None: symmetric without stored zeros (compressed-tensors)
    scales: object
    rows: int  # output features
    cols: int  # input features
    perm: np.ndarray | None = None  # act-order: the input columns in group order (codes() gives them so), else None
    _symmetric: bool | None = None
    _f16_scales: bool | None = None

    @property
    def type_name(self) -> str:
        return "CT-INT" if self.method == "compressed-tensors" else self.method.upper()

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.cols

    def parts(self) -> list:
        return [t for t in (self.qweight, self.qzeros, self.scales) if t is not None]


def words(s) -> np.ndarray:
    """A Stored int32 tensor's words as uint32 (shifts then fill with zeros, not the sign)."""
    return s.data[s.offset:s.offset + s.nbytes].view(np.uint32).reshape(s.shape)


def floats(s) -> np.ndarray:
    """A Stored float tensor (bf16, float16, float32) as float values, shaped as stored."""
    raw = s.data[s.offset:s.offset + s.nbytes]
    if s.type_name == "BF16":
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(s.shape)
    return raw.view({"F16": np.float16, "F32": np.float32}[s.type_name]).reshape(s.shape)


def _along_out(w: np.ndarray, rows: np.ndarray, bits: int, awq: bool) -> np.ndarray:
    """Codes packed along the output axis ([*, out*bits/32] words) for output rows `rows` -> [*, len(rows)]."""
    per = 32 // bits
    shift = (AWQ_NIBBLE[rows % 8] if awq else rows % per) * bits
    return ((w[:, rows // per] >> shift.astype(np.uint32)[None, :]) & np.uint32((1 << bits) - 1)).astype(np.int32)


def _offset(p: PackedLinear) -> int:
    return 1 << (p.bits - 1)


def _ct_codes(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    if p.qweight.type_name == "I8":  # q itself, one a byte
        raw = p.qweight.data[p.qweight.offset:p.qweight.offset + p.qweight.nbytes].view(np.int8)
        return (raw.reshape(p.rows, p.cols)[rows].astype(np.int16) + _offset(p)).astype(np.uint8)
    per = 32 // p.bits
    shifts = (np.arange(per, dtype=np.uint32) * p.bits)[None, None, :]
    c = (words(p.qweight)[rows][:, :, None] >> shifts) & np.uint32((1 << p.bits) - 1)  # [n, in/per, per]
    return np.ascontiguousarray(c.reshape(len(rows), -1)[:, :p.cols].astype(np.uint8))


def codes(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    """uint8 codes [len(rows), in], in group order (p.perm's, where act-order put the groups out of input order)."""
    c = _stored_codes(p, rows)
    return c if p.perm is None else np.ascontiguousarray(c[:, p.perm])


def _stored_codes(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    if p.method == "compressed-tensors":
        return _ct_codes(p, rows)
    w = words(p.qweight)
    if p.method == "awq":
        return np.ascontiguousarray(_along_out(w, rows, 4, True).T.astype(np.uint8))
    per = 32 // p.bits
    shifts = (np.arange(per, dtype=np.uint32) * p.bits)[None, :, None]
    c = (w[:, rows][:, None, :] >> shifts) & np.uint32((1 << p.bits) - 1)  # [in/per, per, n]
    return np.ascontiguousarray(c.reshape(p.cols, len(rows)).T.astype(np.uint8))


def _ct_zeros(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    groups = p.cols // p.group
    if p.qzeros is None:
        return np.full((len(rows), groups), _offset(p), np.int32)
    z = p.qzeros
    if z.type_name == "I32":  # packed along the output axis, offset as the codes
        per = 32 // p.bits
        shift = ((rows % per) * p.bits).astype(np.uint32)[:, None]
        return ((words(z).reshape(-1, groups)[rows // per] >> shift) & np.uint32((1 << p.bits) - 1)).astype(np.int32)
    raw = z.data[z.offset:z.offset + z.nbytes].view(np.int8).reshape(p.rows, groups)
    return raw[rows].astype(np.int32) + _offset(p)


def zeros(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    """int32 zero points [len(rows), in/g], in the codes' (unsigned) range."""
    if p.method == "compressed-tensors":
        return _ct_zeros(p, rows)
    z = _along_out(words(p.qzeros), rows, p.bits, p.method == "awq")
    return np.ascontiguousarray((z + (1 if p.method == "gptq" and not p.v2 else 0)).T)


def scales(p: PackedLinear, rows: np.ndarray) -> np.ndarray:
    """float32 scales [len(rows), in/g], the checkpoint's values."""
    if p.method == "compressed-tensors":  # [out, groups], or one for the tensor
        s = floats(p.scales).astype(np.float32)
        if s.size == 1:
            return np.full((len(rows), 1), s.reshape(-1)[0], np.float32)
        return np.ascontiguousarray(s.reshape(p.rows, -1)[rows])
    return np.ascontiguousarray(floats(p.scales)[:, rows].T.astype(np.float32))


def symmetric(p: PackedLinear) -> bool:
    """Every zero is 2^(bits-1) (GPTQ sym=True): the minimum is a fixed factor of the scale."""
    if p._symmetric is None:
        p._symmetric = p.qzeros is None or bool((zeros(p, np.arange(p.rows)) == _offset(p)).all())
    return p._symmetric


def f16_scales(p: PackedLinear) -> bool:
    """Every scale is a float16 value (float16 checkpoints; bf16 / float32 scales within float16's normal range and
    precision): the dot groups keep float16 scales, else float32 ones."""
    if p._f16_scales is None:
        s = scales(p, np.arange(p.rows))
        p._f16_scales = bool(np.array_equal(s.astype(np.float16).astype(np.float32), s))
    return p._f16_scales


def dot_group(p: PackedLinear) -> int:
    """The dot products' group: 128 where the checkpoint's groups split into 128s and its scales are float16's (read
    as stored, 4.25 bits a 4-bit weight with a minimum), else 32 (each scale repeated; float32 scales take 32)."""
    return DOT_GROUP if p.group % DOT_GROUP == 0 and f16_scales(p) else gb.QK


def _scale_dtype(p: PackedLinear) -> np.dtype:
    return np.dtype(np.float16 if f16_scales(p) else np.float32)


def layout(p: PackedLinear) -> tuple:
    """(bits, group, scale dtype, minimum, grid) of the dot groups (engine/gguf/blocks.py DotGroups.layout)."""
    return (p.bits, dot_group(p), _scale_dtype(p).str, -float(_offset(p)) if symmetric(p) else "per group", 0)


def dot_groups(p: PackedLinear, rows: np.ndarray) -> tuple[gb.DotGroups, float, float]:
    """Rows `rows` as dot groups (dot_group), with the squared error of the float16 minimums and the squared norm of the
    weights (both 0 where the layout is exact)."""
    c = codes(p, rows)
    s = scales(p, rows)
    group = dot_group(p)
    per = p.group // group
    dtype = _scale_dtype(p)
    scale = np.repeat(s.astype(dtype), per, axis=1)
    if symmetric(p):
        return gb.DotGroups(c, scale, -float(_offset(p)), p.bits, group), 0.0, 0.0
    exact = -(zeros(p, rows).astype(np.float32) * s)  # z * s: exact in float32 (bits + 11 significant bits)
    m16 = exact.astype(dtype)
    err2 = float(((m16.astype(np.float32) - exact) ** 2).sum()) * p.group
    w = dense_rows(p, rows, c, s, exact)
    return gb.DotGroups(c, scale, np.repeat(m16, per, axis=1), p.bits, group), err2, float((w ** 2).sum())


def dense_rows(p: PackedLinear, rows: np.ndarray, c: np.ndarray | None = None, s: np.ndarray | None = None,
               mins: np.ndarray | None = None) -> np.ndarray:
    """float32 [len(rows), in]: (q - z) * s exactly, the weights the checkpoint stands for — in group order (p.perm's
    columns: input_order() puts them back)."""
    c = codes(p, rows) if c is None else c
    s = scales(p, rows) if s is None else s
    mins = -(zeros(p, rows).astype(np.float32) * s) if mins is None else mins
    n = len(rows)
    g = c.reshape(n, -1, p.group).astype(np.float32)
    return (g * s[:, :, None] + mins[:, :, None]).reshape(n, p.cols)


def input_order(p: PackedLinear, w: np.ndarray) -> np.ndarray:
    """Rows of dense_rows (group order) with their columns back in input order."""
    if p.perm is None:
        return w
    out = np.empty_like(w)
    out[:, p.perm] = w
    return out
