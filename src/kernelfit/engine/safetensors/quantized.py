"""A pre-quantized checkpoint's linears, from their tensors in the shards (engine/safetensors/reader.py Stored),
checked against their format: AWQ / GPTQ / compressed-tensors int codes become packed.PackedLinear (run as stored by
the dot products), fp8 weights widened.WidenedLinear (bf16 rows made at load). Each refusal is one line that says
what to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...catalog.engine_checkpoints import CT_PACKED_SUFFIXES, PACKED_SUFFIXES, SCALED_SUFFIXES
from ...errors import UsageError
from ..gguf import blocks as gb
from . import packed as pk
from .widened import WidenedLinear, widened

NONE_HINT = "--quantization none loads it through transformers"


def linear_leaves(quant) -> tuple[str, ...]:
    """The names (after the module's) of a quantized linear's tensors in this checkpoint's format."""
    if quant.method in ("awq", "gptq"):
        return PACKED_SUFFIXES
    return ("weight",) + SCALED_SUFFIXES + (CT_PACKED_SUFFIXES if quant.method == "compressed-tensors" else ())


def quantized_prefixes(names, quant) -> set[str]:
    """The modules whose tensors are a quantized linear's (a scale or codes beside them); the others are dense — a
    compressed-tensors checkpoint keeps its config's `ignore` modules so."""
    marks = tuple(leaf for leaf in linear_leaves(quant) if leaf != "weight")
    return {n.rpartition(".")[0] for n in names if n.rpartition(".")[2] in marks}


def _column_order(where: str, g, cols: int, group: int) -> np.ndarray | None:
    """The input columns in group order where g_idx (GPTQ's desc_act, compressed-tensors' actorder "group") puts them
    out of it — each group's `group` columns then side by side, the product's input gathered the same way (the
    C++ step's per-product permutation): exact, no dequantization. None where the groups are already in input order."""
    idx = g.data[g.offset:g.offset + g.nbytes].view(np.int32)
    if len(idx) == cols and np.array_equal(idx, np.arange(cols, dtype=np.int32) // group):
        return None
    if len(idx) != cols or idx.min(initial=0) < 0 or idx.max(initial=0) >= cols // group or \
            not (np.bincount(idx, minlength=cols // group) == group).all():
        raise UsageError(f"{where}: g_idx does not give each of the {cols // group} groups {group} columns; re-save the "
                         f"checkpoint ({NONE_HINT})")
    return np.argsort(idx, kind="stable").astype(np.int64)


def _awq_gptq(where: str, parts: dict, quant) -> pk.PackedLinear:
    missing = [p for p in ("qweight", "qzeros", "scales") if p not in parts]
    if missing:
        raise UsageError(f"{where} has no {missing[0]}; re-save the checkpoint ({NONE_HINT})")
    qw, qz, sc = parts["qweight"], parts["qzeros"], parts["scales"]
    if qw.type_name != "I32" or qz.type_name != "I32" or sc.type_name not in ("F16", "BF16", "F32") or \
            len(qw.shape) != 2 or len(sc.shape) != 2:
        raise UsageError(f"{where}: qweight/qzeros must be int32 and scales float ({qw.type_name}, {qz.type_name}, "
                         f"{sc.type_name}); re-save the checkpoint")
    bits, per = quant.bits, 32 // quant.bits
    rows, cols = (qw.shape[1] * per, qw.shape[0]) if quant.method == "awq" else (qw.shape[1], qw.shape[0] * per)
    group = cols if quant.group_size in (None, -1) else quant.group_size
    if sc.shape != (cols // group, rows) or cols % group or group % gb.QK:
        raise UsageError(f"{where}: scales {list(sc.shape)} do not fit a [{rows}, {cols}] weight in groups of "
                         f"{group}; re-save the checkpoint")
    order = _column_order(where, parts["g_idx"], cols, group) if "g_idx" in parts else None
    return pk.PackedLinear(quant.method, bits, group, quant.format == "gptq_v2", qw, qz, sc, rows, cols, perm=order)


def _dense_shape(where: str, s) -> tuple[int, int]:
    """compressed-tensors' weight_shape: the dense [out, in] (int64 or int32)."""
    raw = s.data[s.offset:s.offset + s.nbytes].view({"I64": np.int64, "I32": np.int32}.get(s.type_name, np.uint8))
    if s.type_name not in ("I64", "I32") or len(raw) != 2:
        raise UsageError(f"{where}: weight_shape must be two whole numbers; re-save the checkpoint")
    return int(raw[0]), int(raw[1])


def _ct_int(where: str, parts: dict, quant) -> pk.PackedLinear:
    """compressed-tensors' pack-quantized (weight_packed int32) or naive/int-quantized (weight int8) linear."""
    codes, scale = parts.get("weight_packed", parts.get("weight")), parts.get("weight_scale")
    if codes is None or scale is None:
        raise UsageError(f"{where} has no {'weight_scale' if codes is not None else 'weight_packed'}; re-save the "
                         f"checkpoint ({NONE_HINT})")
    per = 32 // quant.bits
    if codes.type_name == "I32" and len(codes.shape) == 2:
        rows, cols = _dense_shape(where, parts["weight_shape"]) if "weight_shape" in parts else \
            (codes.shape[0], codes.shape[1] * per)
        fits = rows == codes.shape[0] and -(-cols // per) == codes.shape[1]
    elif codes.type_name == "I8" and len(codes.shape) == 2:
        (rows, cols), fits = codes.shape, True
    else:
        raise UsageError(f"{where}: compressed-tensors int codes must be an int32 weight_packed or an int8 weight "
                         f"matrix ({codes.type_name} {list(codes.shape)}); re-save the checkpoint")
    group = quant.group_size if quant.strategy == "group" else cols
    groups = cols // group if group else 0
    want = (1,) if quant.strategy == "tensor" else (rows, groups)
    have = (int(np.prod(scale.shape)),) if quant.strategy == "tensor" else tuple(scale.shape)
    if not fits or not group or cols % group or group % gb.QK or have != want or scale.type_name not in \
            ("F16", "BF16", "F32"):
        raise UsageError(f"{where}: codes {list(codes.shape)} and scale {list(scale.shape)} ({scale.type_name}) do "
                         f"not fit a [{rows}, {cols}] weight with a scale per {quant.strategy}"
                         + (f" of {group}" if quant.strategy == "group" else "") + " in whole groups of 32 columns; "
                         "re-save the checkpoint")
    zp = parts.get("weight_zero_point")
    if zp is not None and tuple(zp.shape) not in ((-(-rows // per), groups), (rows, groups)):
        raise UsageError(f"{where}: weight_zero_point {list(zp.shape)} does not fit {rows} rows in {groups} groups; "
                         "re-save the checkpoint")
    order = _column_order(where, parts["weight_g_idx"], cols, group) if "weight_g_idx" in parts else None
    return pk.PackedLinear("compressed-tensors", quant.bits, group, False, codes, zp, scale, rows, cols, perm=order)


def quantized_linear(directory: Path, prefix: str, parts: dict, quant) -> pk.PackedLinear | WidenedLinear:
    """One quantized linear from its tensors, checked against the checkpoint's format."""
    where = f"{directory.name}: {prefix}"
    if quant.float_values:  # transformers' block fp8 (weight_scale_inv), compressed-tensors' float (weight_scale)
        scale = "weight_scale_inv" if quant.method == "fp8" else "weight_scale"
        if scale not in parts or "weight" not in parts:
            raise UsageError(f"{where} has no weight or {scale}; re-save the checkpoint ({NONE_HINT})")
        block = quant.block if quant.method == "fp8" or quant.strategy == "block" else None
        return widened(where, parts["weight"], parts[scale], block)
    if quant.method == "compressed-tensors":
        return _ct_int(where, parts, quant)
    return _awq_gptq(where, parts, quant)
