"""Pre-quantized checkpoints built in the tests: a tiny Llama packed as 4-bit AWQ (GEMM) or GPTQ.

The packers here are written from the layout descriptions (AutoAWQ's WQLinear_GEMM, AutoGPTQ's
QuantLinear), independently of kernelfit's unpacker, and checked against gptqmodel's own
kernels when it is installed. Each returns the dense weights the packed ones stand for, which is
the "dequantized reference" the loads are compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
GROUP = 32


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    return (x - ((x >> 31) << 32)).to(torch.int32)  # two's complement of 32-bit words held in int64


def pack_awq_cols(codes: torch.Tensor) -> torch.Tensor:
    """[rows, cols] 4-bit codes -> [rows, cols/8] int32, eight per word in AWQ's interleaved order."""
    r, c = codes.shape
    x = codes.view(r, c // 8, 8)[..., AWQ_ORDER].to(torch.int64)
    out = torch.zeros(r, c // 8, dtype=torch.int64)
    for i in range(8):
        out |= x[..., i] << (4 * i)
    return _to_int32(out)


def pack_gptq_rows(codes: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """[in, out] `bits`-bit codes -> [in*bits/32, out] int32, 32/bits consecutive input rows per word."""
    i, o = codes.shape
    per = 32 // bits
    x = codes.view(i // per, per, o).to(torch.int64)
    out = torch.zeros(i // per, o, dtype=torch.int64)
    for k in range(per):
        out |= x[:, k, :] << (bits * k)
    return _to_int32(out)


def quantize(w: torch.Tensor, group: int = GROUP, sym: bool = False):
    """4-bit per group along the input axis: codes [out, in], zeros/scales [out, in/group].
    Asymmetric (AWQ's zero_point) or symmetric around 8 (GPTQ sym=True, whose v1 format saves zero - 1)."""
    o, i = w.shape
    wg = w.float().view(o, i // group, group)
    mx, mn = wg.amax(-1), wg.amin(-1)
    if sym:
        scale = (2 * torch.maximum(mx.abs(), mn.abs()).clamp(min=1e-5) / 15).half().float()
        zero = torch.full_like(scale, 8)
    else:
        scale = ((mx - mn).clamp(min=1e-5) / 15).half().float()  # stored as fp16: the reference uses those values
        zero = (-mn / scale).round().clamp(0, 15)
    q = (wg / scale[..., None] + zero[..., None]).round().clamp(0, 15)
    dense = ((q - zero[..., None]) * scale[..., None]).view(o, i)
    return q.view(o, i).to(torch.int32), zero.to(torch.int32), scale.half(), dense


FP8_BLOCK = (32, 32)
FP8_MAX = 448.0  # largest float8_e4m3fn value


def quantize_fp8(w: torch.Tensor, block=FP8_BLOCK):
    """Block-wise fp8 (transformers' FineGrainedFP8 layout): weight [out, in] in float8_e4m3fn and
    weight_scale_inv [out/b0, in/b1] fp32; returns (fp8 weight, scale_inv, dense equivalent)."""
    o, i = w.shape
    blocks = w.float().reshape(o // block[0], block[0], i // block[1], block[1])
    scale = (blocks.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)  # [o/b0, i/b1]
    full = scale.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    q = (w.float() / full).to(torch.float8_e4m3fn)
    return q, scale, q.float() * full


def _rewrite(model_dir: Path, method: str) -> dict[str, torch.Tensor]:
    f = model_dir / "model.safetensors"
    sd = load_file(f)
    packed, reference = {}, {}
    if method == "fp8":
        for name, w in sd.items():
            if name.endswith("_proj.weight"):
                q, scale, dense = quantize_fp8(w)
                packed[name], packed[name + "_scale_inv"] = q, scale
                reference[name] = dense.to(torch.bfloat16).float()  # unpacked to bf16
            else:
                packed[name] = w.to(torch.bfloat16)
                reference[name] = packed[name].float()
        save_file(packed, f, metadata={"format": "pt"})
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg["dtype"] = "bfloat16"
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                                      "weight_block_size": list(FP8_BLOCK)}
        (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        return reference
    for name, w in sd.items():
        if not name.endswith("_proj.weight"):
            packed[name] = w.half() if w.is_floating_point() else w
            reference[name] = packed[name].float()  # what the checkpoint holds
            continue
        q, zero, scale, dense = quantize(w, sym=method == "gptq")
        prefix = name[: -len("weight")]
        reference[name] = dense.half().float()  # dense weights in the checkpoint's dtype (fp16)
        if method == "awq":
            packed[prefix + "qweight"] = pack_awq_cols(q.t().contiguous())  # [in, out/8]
            packed[prefix + "qzeros"] = pack_awq_cols(zero.t().contiguous())  # [in/g, out/8]
        else:  # GPTQ v1: zeros saved minus one
            packed[prefix + "qweight"] = pack_gptq_rows(q.t().contiguous())  # [in/8, out]
            packed[prefix + "qzeros"] = pack_awq_cols_plain(zero.t().contiguous() - 1)  # [in/g, out/8]
            packed[prefix + "g_idx"] = torch.arange(w.shape[1], dtype=torch.int32) // GROUP
        packed[prefix + "scales"] = scale.t().contiguous()  # [in/g, out]
    save_file(packed, f, metadata={"format": "pt"})
    declare(model_dir, method)
    return reference


def declare(model_dir: Path, method: str, group: int = GROUP, bits: int = 4, sym: bool = True,
            desc_act: bool = False, v2: bool = False) -> None:
    """config.json's quantization_config (and float16 dtype) for an AWQ (gemm, zero points) or GPTQ checkpoint."""
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["dtype"] = "float16"
    cfg["quantization_config"] = (
        {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}
        if method == "awq" else
        {"quant_method": "gptq", "bits": bits, "group_size": group, "sym": sym, "desc_act": desc_act,
         "checkpoint_format": "gptq_v2" if v2 else "gptq"})
    (model_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def pack_awq_cols_plain(codes: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """GPTQ's qzeros: 32/bits consecutive output columns per word, no interleave."""
    r, c = codes.shape
    per = 32 // bits
    x = (codes.to(torch.int64) & ((1 << bits) - 1)).view(r, c // per, per)
    out = torch.zeros(r, c // per, dtype=torch.int64)
    for i in range(per):
        out |= x[..., i] << (bits * i)
    return _to_int32(out)


def save_tiny_quantized(path: Path, method: str, **model_kw) -> dict[str, torch.Tensor]:
    """A tiny Llama (tests' save_tiny, or one of `model_kw`'s shape with its tokenizer) packed as
    `method` in `path`; returns the dense reference weights."""
    from test_health import save_tiny
    from tiny_models import tiny_llama

    save_tiny(path)
    if model_kw:
        tiny_llama(seed=3, **model_kw).save_pretrained(path)
    return _rewrite(path, method)


def reference_model(reference: dict[str, torch.Tensor], dtype=torch.float32, **model_kw):
    from tiny_models import tiny_llama

    model = tiny_llama(seed=3, **model_kw)
    model.load_state_dict(reference)
    return model.to(dtype).eval()
