"""`--allow-dequantize`: unpack an AWQ, GPTQ or block-fp8 checkpoint into dense safetensors, in pure torch.

For a device where no AWQ/GPTQ kernel runs, or where gptqmodel is not installed, the packed
weights are turned back into the dense matrices they stand for, W = (q - zero) * scale per
group, and the model then loads like any dense one (in a dtype the device runs). The result is
cached like a GGUF conversion: keyed by the shards' content (paths.files_key), written to a
temporary directory and renamed into place.

Layouts (as gptqmodel packs them, gptqmodel/quantization/awq/utils/packing_utils.py and
nn_modules/qlinear): 4-bit AWQ "gemm" stores qweight [in, out/8] and qzeros [in/group, out/8],
eight codes per int32 along the output axis in the interleaved order 0 2 4 6 1 3 5 7, and
scales [in/group, out]. GPTQ stores qweight [in*bits/32, out] packed along the input axis,
qzeros [groups, out*bits/32] along the output axis, scales [groups, out] and g_idx [in]; the
original ("gptq", v1) format saves zero - 1, "gptq_v2" saves the zero itself. fp8 ("quant_method":
"fp8") stores float8_e4m3fn weights with one fp32 `weight_scale_inv` per weight_block_size block;
they are unpacked to bf16. compressed-tensors (compressed_tensors/compressors/pack_quantized and naive_quantized)
stores weight_packed [out, in*bits/32] int32 (codes + 2^(bits-1), packed along the input, low bits first), or the
codes as an int8 / float8 weight, with weight_scale per group [out, in/g], channel [out, 1], tensor [1] or block,
weight_zero_point (asymmetric: packed along the output, or int8) and weight_g_idx (actorder); W = (q - zp) * scale.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..catalog.engine_checkpoints import CT_PACKED_SUFFIXES
from ..errors import UsageError
from ..model.quantization import AWQ_ORDER, CheckpointQuant
from ..model.spec import ModelSpec
from ..cache_entry import build_entry, verified_entry
from ..paths import files_key, writable_cache_root

FORMAT_VERSION = 1


def _codes(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unpack `bits`-bit codes stored 32//bits per int32 along `dim` (low bits first)."""
    per = 32 // bits
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    x = packed.to(torch.int32).unsqueeze(-1 if dim == 1 else 1)
    shape = [1] * x.dim()
    shape[-1 if dim == 1 else 1] = per
    codes = torch.bitwise_right_shift(x, shifts.view(shape)) & ((1 << bits) - 1)
    if dim == 1:
        return codes.reshape(packed.shape[0], packed.shape[1] * per)
    return codes.reshape(packed.shape[0] * per, packed.shape[1])


def awq_gemm_weight(qweight, qzeros, scales, group_size: int, bits: int = 4) -> torch.Tensor:
    """Dense [out, in] weight of a 4-bit AWQ GEMM layer."""
    if bits != 4:
        raise UsageError(f"dequantizing {bits}-bit AWQ is not supported (only the 4-bit GEMM layout)")
    order = torch.tensor(AWQ_ORDER)
    inverse = torch.argsort(order)

    def unpack(t):
        c = _codes(t, bits, dim=1)
        return c.view(c.shape[0], -1, 8)[..., inverse].reshape(c.shape[0], -1)

    w, z = unpack(qweight), unpack(qzeros)
    g = group_size if group_size > 0 else w.shape[0]
    s = scales.float().repeat_interleave(g, dim=0)[: w.shape[0]]
    dense = (w - z.repeat_interleave(g, dim=0)[: w.shape[0]]).float() * s
    return dense.t().contiguous().to(scales.dtype)


def gptq_weight(qweight, qzeros, scales, g_idx, group_size: int, bits: int, v2: bool) -> torch.Tensor:
    """Dense [out, in] weight of a GPTQ layer (v1 zeros are stored minus one)."""
    if 32 % bits:
        raise UsageError(f"dequantizing {bits}-bit GPTQ is not supported (bits must divide 32)")
    w = _codes(qweight, bits, dim=0)  # [in, out]
    z = _codes(qzeros, bits, dim=1)[:, : w.shape[1]] + (0 if v2 else 1)  # [groups, out]
    if g_idx is None:
        g = group_size if group_size > 0 else w.shape[0]
        g_idx = torch.arange(w.shape[0]) // g
    g_idx = g_idx.long()
    dense = (w - z[g_idx]).float() * scales.float()[g_idx]
    return dense.t().contiguous().to(scales.dtype)


def fp8_block_weight(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int] | None,
                     dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Dense [out, in] weight of an fp8 layer: each block of `block` fp8 values times its scale (transformers'
    FineGrainedFP8 `weight_scale_inv`; block None: compressed-tensors' per tensor / channel / group `weight_scale`, the
    block read from its shape)."""
    return (weight.float() * _broadcast(scale_inv.float(), tuple(weight.shape), block)).to(dtype)


def _broadcast(scale: torch.Tensor, shape: tuple[int, int], block: tuple[int, int] | None,
               g_idx: torch.Tensor | None = None) -> torch.Tensor:
    """A compressed-tensors scale (or zero point) [rows', cols'] spread over a [out, in] weight: per tensor, channel,
    group (by g_idx where given) or block."""
    out_f, in_f = shape
    s = scale.reshape(1, 1) if scale.numel() == 1 else scale.reshape(scale.shape[0], -1)
    if g_idx is not None:
        return s[:, g_idx.long()].expand(out_f, in_f)
    rows = block[0] if block else -(-out_f // s.shape[0])
    cols = block[1] if block else -(-in_f // s.shape[1])
    return s.repeat_interleave(rows, 0).repeat_interleave(cols, 1)[:out_f, :in_f]


def compressed_tensors_weight(t: dict, q: CheckpointQuant) -> torch.Tensor:
    """Dense [out, in] weight of one compressed-tensors linear from its tensors `t` (weight_packed or weight,
    weight_scale, and where saved weight_zero_point, weight_shape, weight_g_idx), in the scale's dtype."""
    scale = t["weight_scale"]
    block = q.block if q.strategy == "block" else None
    if q.float_values:
        return fp8_block_weight(t["weight"], scale, block, scale.dtype)
    offset = 1 << (q.bits - 1)
    if t.get("weight_packed") is not None:
        codes = _codes(t["weight_packed"], q.bits, dim=1)
        shape = tuple(int(v) for v in t["weight_shape"]) if t.get("weight_shape") is not None else tuple(codes.shape)
        w = codes[:shape[0], :shape[1]] - offset
    else:
        w = t["weight"].to(torch.int32)
    zp = t.get("weight_zero_point")
    if zp is not None and zp.dtype == torch.int32:  # packed along the output axis, offset as the codes
        zp = _codes(zp, q.bits, dim=0)[: w.shape[0]] - offset
    g_idx = t.get("weight_g_idx")
    g_idx = g_idx if g_idx is not None and bool((g_idx >= 0).all()) else None
    dense = w.float()
    if zp is not None:
        dense = dense - _broadcast(zp.float(), tuple(w.shape), block, g_idx)
    return (dense * _broadcast(scale.float(), tuple(w.shape), block, g_idx)).to(scale.dtype)


CT_DROPPED = ("input_scale", "input_zero_point")  # static activation scales: the dense model runs unquantized


def _dense_ct(f, names: set[str], q: CheckpointQuant) -> dict[str, torch.Tensor]:
    prefixes = {n.rpartition(".")[0] for n in names if n.endswith((".weight_scale", ".weight_packed"))}
    dense = {}
    for name in sorted(names):
        prefix, _, leaf = name.rpartition(".")
        if prefix in prefixes and leaf in CT_PACKED_SUFFIXES + CT_DROPPED + ("weight",):
            if leaf == "weight_scale":
                t = {k: f.get_tensor(f"{prefix}.{k}") if f"{prefix}.{k}" in names else None
                     for k in CT_PACKED_SUFFIXES + ("weight",)}
                dense[f"{prefix}.weight"] = compressed_tensors_weight(t, q)
            continue
        dense[name] = f.get_tensor(name)
    return dense


def _shards(model_dir: Path) -> list[Path]:
    return sorted(model_dir.glob("*.safetensors"))


def _convert_shard(path: Path, out: Path, q: CheckpointQuant) -> list[str]:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if q.method == "awq" and q.format != "gemm":
        raise UsageError(f"dequantizing AWQ '{q.format}' checkpoints is not supported (only 'gemm')")
    with safe_open(str(path), framework="pt") as f:
        unpack = {"fp8": _dense_fp8, "compressed-tensors": _dense_ct}.get(q.method, _dense_packed)
        dense = unpack(f, set(f.keys()), q)
        meta = f.metadata() or {}
    save_file(dense, str(out / path.name), metadata={**meta, "format": "pt"})
    return list(dense)


def _dense_fp8(f, names: set[str], q: CheckpointQuant) -> dict[str, torch.Tensor]:
    block = q.block
    dense = {}
    for name in sorted(names):
        if name.endswith(".weight_scale_inv"):
            continue  # folded into its weight
        t = f.get_tensor(name)
        scale = name[: -len("weight")] + "weight_scale_inv" if name.endswith(".weight") else None
        dense[name] = fp8_block_weight(t, f.get_tensor(scale), block) if scale in names else t
    return dense


def _dense_packed(f, names: set[str], q: CheckpointQuant) -> dict[str, torch.Tensor]:
    """AWQ / GPTQ: each layer's qweight, qzeros, scales (and g_idx) become one dense weight."""
    method, bits, group = q.method, q.bits, q.group_size or -1
    v2 = q.format == "gptq_v2"
    prefixes = {n[: -len(".qweight")] for n in names if n.endswith(".qweight")}
    dense = {}
    for name in sorted(names):
        prefix, _, leaf = name.rpartition(".")
        if prefix in prefixes:
            if leaf == "qweight":
                t = {k: f.get_tensor(f"{prefix}.{k}") if f"{prefix}.{k}" in names else None
                     for k in ("qweight", "qzeros", "scales", "g_idx")}
                dense[f"{prefix}.weight"] = (
                    awq_gemm_weight(t["qweight"], t["qzeros"], t["scales"], group, bits) if method == "awq" else
                    gptq_weight(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], group, bits, v2))
            elif leaf == "bias":
                dense[name] = f.get_tensor(name)
            continue  # qzeros / scales / g_idx are folded into the weight
        dense[name] = f.get_tensor(name)
    return dense


def dequantized_dir(spec: ModelSpec, progress=print) -> Path:
    """A directory with the checkpoint's dense equivalent (config, tokenizer, weights)."""
    q = spec.quantization
    method = q.method if q else None
    if q is None or not q.prequantized:
        raise UsageError(f"--allow-dequantize handles AWQ, GPTQ, fp8 and compressed-tensors checkpoints; {spec.name} is "
                         f"'{method}'")
    src = Path(spec.model_dir or "")
    shards = _shards(src)
    if not shards:
        raise UsageError(f"{src} has no *.safetensors shards to dequantize")
    name = f"{src.name}-{files_key(shards, FORMAT_VERSION)}"
    hit = verified_entry(writable_cache_root() / "dequantized" / name)
    if hit is not None:
        return hit
    final = writable_cache_root() / "dequantized" / name
    dense = sum(f.stat().st_size for f in shards) * (16 // (q.bits or 8))  # packed bits -> bf16 weights
    return build_entry(final, lambda tmp: _unpack_into(tmp, src, shards, q), need_bytes=dense,
                       what=f"unpacking {spec.name}'s {method} weights (--allow-dequantize)", progress=progress)


def _unpack_into(tmp: Path, src: Path, shards: list[Path], q: CheckpointQuant) -> dict:
    for f in src.iterdir():  # config, tokenizer, generation config, index: everything but the weights
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy2(f, tmp / f.name)
    weight_map = {name: shard.name for shard in shards for name in _convert_shard(shard, tmp, q)}
    index = tmp / "model.safetensors.index.json"
    if index.is_file():  # the packed names (qweight, scales, ...) are gone: map the dense ones
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2))
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    return {"source": str(src), "format": FORMAT_VERSION, "quantization": q.raw}
