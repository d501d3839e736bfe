"""compressed-tensors and fp8 checkpoints on kernelfit's engine (issue 27). Before, the planner refused any
compressed-tensors checkpoint ("quantized with 'compressed-tensors', which kernelfit's planner does not handle yet")
and an fp8 one ran only dequantized through transformers (--allow-dequantize).

- compressed-tensors int weights (llm-compressor's W4A16 / W8A16 "pack-quantized", W8A8 "int-quantized"): their codes,
  scales and zero points run as stored by the exact dot products (engine/safetensors/packed.py);
- fp8 weights (transformers' block fp8, compressed-tensors' float-quantized FP8_DYNAMIC): widened to bf16 rows at
  load (engine/safetensors/widened.py), as transformers does where no fp8 kernel runs.

The checkpoints are packed here from the compressed-tensors layouts (compressors/pack_quantized: codes + 2^(bits-1)
packed along the input, low bits first; zero points packed along the output), independently of the reader; the
reference is transformers' float32 model on the dense weights they stand for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from kernelfit import Preferences, load_model_spec, load_profile, plan
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.errors import UsageError
from quantized_checkpoints import pack_gptq_rows, quantize_fp8
from test_packed_checkpoints_engine import DECODE_TIE, PROMPT_TIE, _agree
from test_packed_gguf import _tokens
from test_safetensors_engine import _checkpoint


def _int_codes(w: torch.Tensor, bits: int, group: int, sym: bool):
    """Signed codes q [out, in], zero points zp and scales s [out, in/group] (bf16 values) with w ~ (q - zp) * s, as
    compressed-tensors' calculate_qparams makes them (symmetric: zp 0)."""
    o, i = w.shape
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    wg = w.float().view(o, i // group, group)
    if sym:
        s = (wg.abs().amax(-1) / hi).clamp(min=1e-8)
        zp = torch.zeros_like(s)
    else:
        mx, mn = wg.amax(-1).clamp(min=0), wg.amin(-1).clamp(max=0)
        s = ((mx - mn) / (hi - lo)).clamp(min=1e-8)
        zp = (lo - mn / s.to(torch.bfloat16).float()).round().clamp(lo, hi)
    s = s.to(torch.bfloat16).float()  # stored as bf16, the checkpoint's dtype: the reference uses those values
    q = (wg / s[..., None] + zp[..., None]).round().clamp(lo, hi)
    dense = ((q - zp[..., None]) * s[..., None]).view(o, i)
    return q.view(o, i).to(torch.int32), zp.to(torch.int32), s.to(torch.bfloat16), dense


def _scheme(bits: int, kind: str, strategy: str, group, sym: bool, fmt: str, act: dict | None = None) -> dict:
    weights = {"num_bits": bits, "type": kind, "symmetric": sym, "strategy": strategy, "group_size": group,
               "dynamic": False, "actorder": None, "block_structure": None, "observer": "minmax"}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": act,
                                          "output_activations": None, "format": fmt}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}


def _ct_checkpoint(path, bits: int = 4, group: int | None = 128, sym: bool = True, fmt: str = "pack-quantized",
                   scale_by: float = 1.0, act: dict | None = None, act_order: bool = False):
    """A tiny Llama written as a compressed-tensors int checkpoint (group None: a scale per channel); returns
    transformers' float32 model on the dense weights the codes stand for. scale_by: the projections' weights times
    this (1e-4: scales below float16's normal range)."""
    ref = _checkpoint(path, "llama", dtype=torch.bfloat16, hidden_size=256, intermediate_size=512)
    f = path / "model.safetensors"
    stored, dense = {}, {}
    per = 32 // bits
    for name, w in load_file(f).items():
        if not name.endswith("_proj.weight"):
            stored[name], dense[name] = w, w.float()
            continue
        w = w.float() * scale_by
        cols = w.shape[1]
        # actorder "group" (GPTQ's act-order): groups of columns in another order, weight_g_idx a column's group
        order = torch.randperm(cols, generator=torch.Generator().manual_seed(sum(name.encode()))) if act_order else \
            torch.arange(cols)
        q, zp, s, d = _int_codes(w[:, order], bits, group or cols, sym)
        q, d = q.clone(), d.clone()
        q[:, order], d[:, order] = q.clone(), d.clone()
        prefix = name[: -len("weight")]
        dense[name] = d
        if act_order:
            stored[prefix + "weight_g_idx"] = torch.empty(cols, dtype=torch.int32)
            stored[prefix + "weight_g_idx"][order] = torch.arange(cols, dtype=torch.int32) // group
        if fmt == "pack-quantized":
            stored[prefix + "weight_packed"] = pack_gptq_rows((q + (1 << (bits - 1))).t().contiguous(), bits).t() \
                .contiguous()
            stored[prefix + "weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int64)
            if not sym:
                stored[prefix + "weight_zero_point"] = pack_gptq_rows(zp + (1 << (bits - 1)), bits)
        else:  # int-quantized: the codes themselves, int8
            stored[prefix + "weight"] = q.to(torch.int8)
            if not sym:
                stored[prefix + "weight_zero_point"] = zp.to(torch.int8)
        stored[prefix + "weight_scale"] = s
    save_file(stored, f, metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = _scheme(bits, "int", "group" if group else "channel", group, sym, fmt, act)
    if act_order:
        cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["actorder"] = "group"
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(dense[name])
    return ref


DYNAMIC_TOKEN = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


def _run_and_agree(path, ref, prompt_only: bool = False) -> None:
    """The KV cache float32, as transformers' (a float16 cache's rounding flips these random models' near-ties,
    tests/test_safetensors_engine.py)."""
    b = build_lean(path, kv_cache="f32")
    ids = _tokens()
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    reset_cache(b, len(ids) + 8)
    _agree(want, forward(b, ids, 0, True), PROMPT_TIE)
    if prompt_only:
        return
    reset_cache(b, len(ids) + 8)
    forward(b, ids[:44], 0, False)
    _agree(want[44:], torch.stack([forward(b, ids[i:i + 1], i, False)[-1] for i in range(44, 300)]), DECODE_TIE)


@pytest.mark.parametrize("kw,exact", [
    ({}, True),  # W4A16: 4-bit, symmetric, groups of 128 (llm-compressor's default scheme)
    ({"group": 32, "sym": False}, False),  # asymmetric: zero points packed along the output axis
    ({"bits": 8, "group": None}, True),  # W8A16: 8-bit, a scale per channel
    ({"bits": 8, "group": None, "fmt": "int-quantized", "act": DYNAMIC_TOKEN}, True),  # W8A8: int8 weights
])
def test_compressed_tensors_int_checkpoints_run_as_stored_and_agree_with_transformers(tmp_path, kw, exact):
    """300 positions teacher-forced, prompt and decode steps: cosine >= 0.999 and the same top-1 wherever the
    reference's answer is not a near-tie, against transformers' float32 model on the dense weights."""
    ref = _ct_checkpoint(tmp_path, **kw)
    b = build_lean(tmp_path)
    packed = [c for c in b.conversions if c.gguf_type.startswith("CT-INT")]
    assert len(packed) == 2 * 7, [c.gguf_type for c in b.conversions]
    assert all(c.layout.startswith(f"{kw.get('bits', 4)}-bit groups") for c in packed)
    if exact:
        assert all(c.rel_error == 0 for c in packed)
    # each product is the exact dot product over the dense weights (float64), to the kernels' ~15-bit activations
    from kernelfit.engine.native import native_module

    bits = kw.get("bits", 4)
    w = ref.model.layers[0].mlp.down_proj.weight.detach().double()
    down = next(i for i, a in enumerate(b.native.a) if b.native.n[i] == w.shape[0] and a.shape[1] == w.shape[1] * bits)
    x = torch.randn(1, w.shape[1])
    got = native_module().dot_mm(x, b.native.a[down], b.native.b[down], b.native.c[down], bits, w.shape[0])
    want = x.double() @ w.T
    assert float((got.double() - want).norm() / want.norm()) < (2e-4 if exact else 2e-3)
    _run_and_agree(tmp_path, ref)


def test_scales_float16_cannot_hold_keep_float32_and_stay_exact(tmp_path):
    """bf16 scales below float16's normal range (weights ~1e-5): before, the reader refused the checkpoint ("scales
    outside float16's values"); now those tensors' dot groups keep float32 scales per 32, exact."""
    ref = _ct_checkpoint(tmp_path, scale_by=1e-4)
    b = build_lean(tmp_path)
    packed = [c for c in b.conversions if c.gguf_type.startswith("CT-INT")]
    assert packed and all(c.rel_error == 0 for c in packed)
    from kernelfit.engine.native import native_module

    w = ref.model.layers[0].mlp.down_proj.weight.detach().double()
    o = next(i for i, a in enumerate(b.native.a) if b.native.n[i] == w.shape[0] and a.shape[1] == w.shape[1] * 4)
    assert b.native.b[o].dtype == torch.float32 and b.native.b[o].shape[1] == w.shape[1] // 32  # float32 per 32
    x = torch.randn(1, w.shape[1])
    got = native_module().dot_mm(x, b.native.a[o], b.native.b[o], b.native.c[o], 4, w.shape[0])
    want = x.double() @ w.T
    assert float((got.double() - want).norm() / want.norm()) < 2e-4


def _fp8_checkpoint(path, how: str):
    """A tiny Llama whose projections are fp8: transformers' block fp8 ("hf", blocks of 32 x 32, weight_scale_inv)
    or compressed-tensors' FP8_DYNAMIC ("ct": a bf16 scale per channel, activations dynamic per token); returns
    transformers' float32 model on value * scale rounded to bf16 (what transformers' dequantizing path loads)."""
    ref = _checkpoint(path, "llama", dtype=torch.bfloat16, hidden_size=256, intermediate_size=512)
    f = path / "model.safetensors"
    stored, dense = {}, {}
    for name, w in load_file(f).items():
        if not name.endswith("_proj.weight"):
            stored[name], dense[name] = w, w.float()
            continue
        if how == "hf":
            q, scale, d = quantize_fp8(w)
            stored[name], stored[name + "_scale_inv"] = q, scale
        else:
            scale = (w.float().abs().amax(1, keepdim=True) / 448.0).to(torch.bfloat16)
            q = (w.float() / scale.float()).to(torch.float8_e4m3fn)
            stored[name], stored[name[: -len("weight")] + "weight_scale"] = q, scale
            d = q.float() * scale.float()
        dense[name] = d.to(torch.bfloat16).float()  # widened to bf16, as the engine and transformers' dequantizer do
    save_file(stored, f, metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [32, 32]} \
        if how == "hf" else _scheme(8, "float", "channel", None, True, "float-quantized",
                                    {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token",
                                     "dynamic": True})
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(dense[name])
    return ref


@pytest.mark.parametrize("how", ["hf", "ct"])
def test_fp8_checkpoints_run_widened_to_bf16_and_agree_with_transformers(tmp_path, how):
    ref = _fp8_checkpoint(tmp_path, how)
    b = build_lean(tmp_path)
    fp8 = [c for c in b.conversions if c.gguf_type == "FP8"]
    assert len(fp8) == 2 * 7 and all(c.layout == "bf16" for c in fp8)
    assert all(0 < c.rel_error < 4e-3 for c in fp8)  # value * scale rounded to bf16 once: measured, reported
    _run_and_agree(tmp_path, ref)


def test_the_plan_sends_compressed_tensors_and_fp8_checkpoints_to_the_engine_and_says_why(tmp_path):
    cpu = load_profile("cpu-spr-amx")
    _ct_checkpoint(tmp_path / "w4", act=None)
    spec = load_model_spec(str(tmp_path / "w4"))
    assert spec.quantization.label() == "4-bit int compressed-tensors (pack-quantized)"
    p = plan(cpu, spec, Preferences())
    q = p.quantization
    assert (q.method, q.backend) == ("engine", "kernelfit-cpu") and "run as stored" in q.reason
    held = build_lean(tmp_path / "w4").weight_bytes
    assert abs(p.memory.weights - held) < 0.1 * held, (p.memory.weights, held)
    # on a GPU: transformers with the compressed-tensors package (named to install), the engine rejected with why
    gpu = plan(load_profile("t4"), spec, Preferences())
    assert gpu.quantization.method == "compressed-tensors" and "compressed-tensors" in (gpu.quantization.install or "")
    _ct_checkpoint(tmp_path / "w8a8", bits=8, group=None, fmt="int-quantized", act=DYNAMIC_TOKEN)
    why = plan(cpu, load_model_spec(str(tmp_path / "w8a8")), Preferences()).quantization.reason
    assert "quantizes activations, 8-bit int dynamic per token" in why
    _fp8_checkpoint(tmp_path / "fp8", "hf")
    p = plan(cpu, load_model_spec(str(tmp_path / "fp8")), Preferences())
    assert p.quantization.method == "engine" and "widened to bf16" in p.quantization.reason
    held = build_lean(tmp_path / "fp8").weight_bytes
    assert abs(p.memory.weights - held) < 0.1 * held, (p.memory.weights, held)


def _edit_config(path, **quant) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"].update(quant)
    (path / "config.json").write_text(json.dumps(cfg))


def test_compressed_tensors_schemes_the_engine_does_not_read_are_refused_with_the_reason(tmp_path):
    cpu = load_profile("cpu-spr-amx")
    _ct_checkpoint(tmp_path)
    groups = json.loads((tmp_path / "config.json").read_text())["quantization_config"]["config_groups"]
    other = json.loads(json.dumps(groups["group_0"]))
    other["weights"]["num_bits"], other["targets"] = 8, ["re:.*down_proj"]
    _edit_config(tmp_path, config_groups={**groups, "group_1": other})
    p = plan(cpu, load_model_spec(str(tmp_path)), Preferences())
    assert p.quantization.method != "engine"
    assert "differ in weight scheme" in next(r for r in p.quantization_rejected if r.method == "engine").reason
    with pytest.raises(UsageError, match="differ in weight scheme"):
        build_lean(tmp_path)
    groups["group_0"]["format"] = "nvfp4-pack-quantized"
    _edit_config(tmp_path, config_groups=groups, format="nvfp4-pack-quantized")
    with pytest.raises(UsageError, match="'nvfp4-pack-quantized' packing"):
        build_lean(tmp_path)


def test_act_order_checkpoints_run_as_stored_with_each_product_s_input_gathered(tmp_path):
    """actorder "group": weight_g_idx puts the groups out of input order (before: refused, "g_idx puts the input
    columns' groups out of order"); the codes are read in group order and each product gathers its input so."""
    ref = _ct_checkpoint(tmp_path, act_order=True)
    spec = load_model_spec(str(tmp_path))
    assert spec.quantization.act_order
    assert "act-order" in plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization.reason
    b = build_lean(tmp_path)
    n = b.native  # every layer product's input gathered: one order a product (Q, K, V apart: each its own)
    layer = [i for i, k in enumerate(n.kinds) if k == 4]
    assert len(layer) == 2 * 7 and all(n.perms[i].numel() == n.a[i].shape[1] // 4 for i in layer)
    _run_and_agree(tmp_path, ref)
    f = tmp_path / "model.safetensors"
    t = load_file(f)
    t["model.layers.0.mlp.up_proj.weight_g_idx"] = torch.zeros(256, dtype=torch.int32)  # every column in group 0
    save_file(t, f, metadata={"format": "pt"})
    with pytest.raises(UsageError, match="g_idx does not give each of the 2 groups 128 columns"):
        build_lean(tmp_path)


def test_allow_dequantize_unpacks_compressed_tensors_to_the_dense_weights(tmp_path, monkeypatch):
    """--allow-dequantize (a device where neither the engine nor the compressed-tensors package runs it): the dense
    checkpoint written for transformers holds exactly (q - zp) * s."""
    from kernelfit.loader.dequantize import dequantized_dir

    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(tmp_path / "cache"))
    ref = _ct_checkpoint(tmp_path / "ckpt", group=32, sym=False)
    out = dequantized_dir(load_model_spec(str(tmp_path / "ckpt")), progress=lambda *a: None)
    dense = load_file(out / "model.safetensors")
    assert not any(n.endswith(("weight_packed", "weight_scale", "weight_zero_point")) for n in dense)
    for name, p in ref.named_parameters():  # the library's own arithmetic: (q - zp) * s in the scale's dtype
        assert torch.equal(dense[name], p.detach().to(dense[name].dtype)), name
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    np.testing.assert_array_equal(dense["model.embed_tokens.weight"].float().numpy(),
                                  ref.model.embed_tokens.weight.detach().numpy())
