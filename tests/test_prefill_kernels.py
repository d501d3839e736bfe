"""A prompt's kernels in the C++ extension: the int8 GEMM over a GGUF file's codes (`--prefill int8`, AVX512-VNNI)
and the one-pass glue between products (RMS norm, residual add through a post-norm, the gated activation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, quants

from gguf_tiny import write_tiny
from kernelfit.engine.gguf import blocks as gb
from kernelfit.engine.weights import DotWeight, dot_available, gemm_available
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.reference import _norm
from test_packed_gguf import TYPES, _random_blocks, _tokens

needs_gemm = pytest.mark.skipif(not gemm_available(), reason="no AVX512-VNNI int8 GEMM in this build")


def _ops():
    from kernelfit.engine.native import native_module

    return native_module()


def _weight(qtype: str, rows: int, cols: int, seed: int):
    raw = _random_blocks(qtype, rows, cols, np.random.default_rng(seed))
    ref = quants.dequantize(raw, getattr(GGMLQuantizationType, qtype)).astype(np.float64)
    return DotWeight.from_groups(gb.dot_groups(raw, qtype, rows, cols)), ref


@needs_gemm
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows,m", [(40, 29), (13, 12), (24, 1)])  # odd tile counts, partial blocks of 16 and 12
def test_int8_gemm_is_the_file_values_times_one_digit_activations(qtype, rows, m):
    """Every type and layout (4/8-bit codes, groups of 32/16, with or without a minimum) against the float64
    product of gguf-py's values: within one int8 digit's error (~5e-3 here, bf16 activations ~3e-3), and equal
    to the same product done in float64 from the quantized activation — so the error is the activation's
    rounding only, not the kernel's."""
    cols = 512
    w, ref = _weight(qtype, rows, cols, 7)
    torch.manual_seed(1)
    x = torch.randn(m, cols) * torch.linspace(0.01, 3, cols)
    got = _ops().gemm_mm(x, w.codes, w.scale, w.mins, w.format, rows).double().numpy()
    want = x.double().numpy() @ ref.T
    assert got.shape == (m, rows)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1.5e-2
    # llama.cpp's Q8_1 rounding of the activation, per group of 32, then exact arithmetic
    g = x.double().reshape(m, -1, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    xq = (torch.round(g / torch.where(d > 0, d, 1)) * d).reshape(m, cols).numpy()
    assert np.abs(got - xq @ ref.T).max() <= 1e-4 * np.abs(want).max()


@needs_gemm
def test_int8_gemm_carries_a_non_finite_activation_and_refuses_bad_shapes():
    w, _ = _weight("Q4_K", 16, 256, 4)
    x = torch.randn(14, 256)
    x[5, 70] = float("nan")
    y = _ops().gemm_mm(x, w.codes, w.scale, w.mins, w.format, 16)
    assert torch.isnan(y[5]).all() and torch.isfinite(y[torch.arange(14) != 5]).all()
    with pytest.raises(RuntimeError, match="shapes do not match"):
        _ops().gemm_mm(torch.randn(14, 128), w.codes, w.scale, w.mins, w.format, 16)


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
def test_the_glue_kernels_equal_atens_ops():
    ops = _ops()
    torch.manual_seed(0)
    x, y, w = torch.randn(37, 640) * 3, torch.randn(37, 640), torch.randn(640)
    assert torch.allclose(ops.rms_norm(x, w, 1e-6), _norm(x, w, 1e-6), rtol=1e-5, atol=1e-5)
    heads = torch.randn(37, 4, 64)[:, 1:]  # a non-contiguous slice of heads
    assert torch.allclose(ops.rms_norm(heads, w[:64], 1e-6), _norm(heads, w[:64], 1e-6), rtol=1e-5, atol=1e-5)
    # Q (2 heads) and K (1 head) of each position with their own weights, in one call
    qn, kn = torch.randn(64), torch.randn(64)
    qk = torch.randn(37, 3, 64)
    want = torch.cat([_norm(qk[:, :2], qn, 1e-6), _norm(qk[:, 2:], kn, 1e-6)], 1)
    assert torch.allclose(ops.rms_norm(qk, torch.cat([qn, qn, kn]), 1e-6), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="weight of N floats"):
        ops.rms_norm(qk, torch.randn(65), 1e-6)
    for post in (torch.empty(0), w):
        got = x.clone()
        ops.residual_add(got, y, post, 1e-6)
        want = x + (_norm(y, post, 1e-6) if post.numel() else y)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    gu = torch.randn(37, 2 * 300) * 4
    gu[3, 7] = -100.0  # far tails: the exp argument is clamped, not overflowed
    gu[4, 8] = 100.0
    for gelu, act in ((True, lambda g: F.gelu(g, approximate="tanh")), (False, F.silu)):
        assert torch.allclose(ops.gated(gu, 300, gelu), act(gu[:, :300]) * gu[:, 300:], rtol=1e-5, atol=1e-5)
    # a bf16 product's output is read as it is (no cast pass): the same as casting it first
    gb16, yb16 = gu.bfloat16(), y.bfloat16()
    assert torch.equal(ops.gated(gb16, 300, True), ops.gated(gb16.float(), 300, True))
    a, b = x.clone(), x.clone()
    ops.residual_add(a, yb16, w, 1e-6)
    ops.residual_add(b, yb16.float(), w, 1e-6)
    assert torch.equal(a, b)
    gu[2, 5] = float("nan")
    assert torch.isnan(ops.gated(gu, 300, True)[2, 5])


@needs_gemm
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("gemma3", "Q5_0"), ("qwen3", "Q6_K")])
def test_int8_prefill_runs_the_whole_model_close_to_the_exact_one(tmp_path, arch, qtype):
    """--prefill int8 end to end on tiny files: the prompt's logits stay close to the bf16 path's (lossy, as
    declared), decode steps are unchanged (they keep the two-digit dot products)."""
    path = write_tiny(tmp_path / "m.gguf", qtype, arch)
    ids = _tokens(60)
    exact, int8 = build_lean(path), build_lean(path, prefill_int8=True)
    assert int8.int8_prefill and not exact.int8_prefill
    for b in (exact, int8):
        reset_cache(b, 64)
    a, b = forward(exact, ids, 0, True), forward(int8, ids, 0, True)
    cos = F.cosine_similarity(a, b, -1)
    assert float(cos.min()) > 0.995 and float((a.argmax(-1) == b.argmax(-1)).float().mean()) >= 0.9
    assert not torch.equal(a, b)  # the GEMM ran
    reset_cache(exact, 64)
    reset_cache(int8, 64)
    assert torch.equal(forward(exact, ids[:1], 0), forward(int8, ids[:1], 0))


@pytest.mark.slow
def test_run_prefill_int8_says_what_ran():
    import json

    from conftest import run_cli

    r = run_cli("run", "--prompt", "Name three colours.", "--max-new-tokens", "4", "--prefill", "int8", "--json",
                timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["packing"]["prefill"] == ("int8" if gemm_available() else "packed")
    assert "int8" in json.dumps(out["plan"]["kernels"]["prefill"])


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
@pytest.mark.parametrize("pos,window", [(0, 0), (5, 0), (30, 16), (0, 16)])
def test_the_prompt_softmax_masks_by_position(pos, window):
    """Rows are query positions pos + r // 2 (two query heads a kv head, side by side), columns key positions from
    the window's start: equal to ATen's scale + mask + softmax over the same bf16 scores."""
    t, group, kv = 24, 2, 3
    start = max(0, pos - window + 1) if window else 0
    length = pos + t - start
    torch.manual_seed(0)
    scores = (torch.randn(kv, t * group, length) * 4).bfloat16()
    q = torch.arange(pos, pos + t).repeat_interleave(group).unsqueeze(1)
    k = torch.arange(start, pos + t).unsqueeze(0)
    visible = (k <= q) & ((k > q - window) if window else True)
    want = torch.softmax((scores.float() * 0.125).masked_fill(~visible, float("-inf")), -1)
    got = _ops().masked_softmax(scores, 0.125, pos, group, start, window)
    assert got.dtype == torch.bfloat16 and torch.equal(got == 0, ~visible.expand_as(got))
    assert torch.allclose(got.float(), want, rtol=1e-2, atol=1e-3)
    scores[1, 6, pos + 3 - start] = float("nan")  # query 3's own key (row 6: its first head): visible, so NaN
    out = _ops().masked_softmax(scores, 0.125, pos, group, start, window)
    assert torch.isnan(out[1, 6][visible[6]]).all() and torch.isfinite(out[1, 8]).all()


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
@pytest.mark.parametrize("pos,t,window,block", [(0, 100, 0, 64), (7, 50, 16, 16), (40, 30, 16, 7), (0, 5, 0, 64)])
@pytest.mark.parametrize("kernel", ["prompt_attention", "blocked_attention"])
def test_the_prompt_attention_in_query_blocks_equals_the_full_square(pos, t, window, block, kernel):
    """Blocks of queries over only the keys they see, GQA heads stacked: the float32 reference's output — through
    the bf16 panels (prompt_attention, where AVX512-BF16 builds them) and oneDNN in query blocks."""
    nq, nkv, d, cap = 6, 2, 32, 160
    torch.manual_seed(1)
    k, v = torch.randn(nkv, cap, d), torch.randn(nkv, cap, d)
    q = torch.randn(t, nq + nkv, d)[:, :nq]  # a slice, as the runner passes it
    start = max(0, pos - window + 1) if window else 0
    got = getattr(_ops(), kernel)(q, k, v, pos, start, window, d ** -0.5, block)
    qi = torch.arange(pos, pos + t).unsqueeze(1)
    ki = torch.arange(start, pos + t).unsqueeze(0)
    visible = (ki <= qi) & ((ki > qi - window) if window else True)
    kk = k[:, start:pos + t].repeat_interleave(nq // nkv, 0)
    vv = v[:, start:pos + t].repeat_interleave(nq // nkv, 0)
    s = torch.einsum("thd,hkd->htk", q, kk) * d ** -0.5
    want = torch.einsum("htk,hkd->thd", torch.softmax(s.masked_fill(~visible, float("-inf")), -1), vv)
    assert got.shape == (t, nq * d)
    assert float((got - want.reshape(t, -1)).abs().max()) < 0.03  # bf16 operands
    assert float(F.cosine_similarity(got, want.reshape(t, -1), -1).min()) > 0.999


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
def test_the_first_token_comes_from_the_exact_step_after_the_prompts_prefill(tmp_path):
    """A prompt's last token runs through the decode step: the logits that pick the first token are computed with
    exact products, closer to all-exact steps than the prefill's last row (bf16 products) gets (the K/V rows of the
    prompt keep the prefill's rounding; on SmolLM2 the top logit moves 0.2 from the exact one through a prefill, 0.01
    this way)."""
    from kernelfit.engine.runner import LeanRunner

    path = write_tiny(tmp_path / "m.gguf", "Q4_K", "llama")
    ids = _tokens(60).tolist()
    b = build_lean(path)
    runner = LeanRunner(b, None)
    reset_cache(b, 64)
    exact = torch.cat([forward(b, torch.tensor([t]), i) for i, t in enumerate(ids)])[-1]
    reset_cache(b, 64)
    prefill_row = forward(b, torch.tensor(ids), 0)[-1]
    reset_cache(b, 64)
    got = runner.prompt_logits(ids)
    from kernelfit.engine.native import native_module

    if native_module().bf16_native():
        assert (got - exact).abs().max() < 0.8 * (prefill_row - exact).abs().max()  # 0.42 vs 0.70 here
    else:  # no AVX512-BF16: float32 prompt products, as close as the step's (0.016 and 0.015 on an AVX2 EPYC)
        assert (got - exact).abs().max() < 0.05 and (prefill_row - exact).abs().max() < 0.05
    tokens, _, _ = runner.generate_ids(ids, 3, stop_at_eos=False)
    assert tokens[0] == int(got.argmax())


@needs_gemm
def test_int8_gemm_parts_write_each_weights_columns_from_one_quantized_input():
    (wq, _), (wk, _), (wv, _) = _weight("Q5_0", 24, 256, 1), _weight("Q4_K", 13, 256, 2), _weight("Q6_K", 8, 256, 3)
    x = torch.randn(30, 256)
    got = _ops().gemm_parts(x, [w.codes for w in (wq, wk, wv)], [w.scale for w in (wq, wk, wv)],
                            [w.mins for w in (wq, wk, wv)], [w.format for w in (wq, wk, wv)], [24, 13, 8])
    want = torch.cat([_ops().gemm_mm(x, w.codes, w.scale, w.mins, w.format, n) for w, n in ((wq, 24), (wk, 13), (wv, 8))],
                     1)
    assert got.shape == (30, 45) and torch.equal(got, want)


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
def test_dot_weights_unpack_into_one_bf16_matrix():
    parts = [_weight("Q5_0", 24, 256, 1)[0], _weight("Q4_K", 13, 256, 2)[0], _weight("Q6_K", 8, 256, 3)[0]]
    got = _ops().dot_dequant_parts([w.codes for w in parts], [w.scale for w in parts], [w.mins for w in parts],
                                   [w.format for w in parts], [24, 13, 8])
    assert torch.equal(got, torch.cat([w.dequantize(bf16=True) for w in parts]))
    with pytest.raises(RuntimeError, match="shapes do not match"):
        _ops().dot_dequant_parts([parts[0].codes], [parts[0].scale], [parts[0].mins], [parts[0].format], [30])


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("gemma3", "Q5_0"), ("qwen2", "Q8_0"), ("qwen3", "Q6_K")])
@pytest.mark.parametrize("int8", [False, True])
def test_the_c_prompt_forward_is_the_torchscript_one(tmp_path, arch, qtype, int8):
    """Step.prefill (C++) against LeanLM.forward (TorchScript, the reference and the fallback) on the same build:
    the last logits of 60 tokens, then of a second prompt continuing the cache (pos > 0, gemma3's window of 16), and
    the KV cache they wrote. (Every row's logits too, where the C++ head is exact and TorchScript's bf16.)"""
    if int8 and not gemm_available():
        pytest.skip("no AVX512-VNNI int8 GEMM in this build")
    path = write_tiny(tmp_path / "m.gguf", qtype, arch)
    ids = _tokens(90)
    b = build_lean(path, prefill_int8=int8)
    assert b.native.prefill_ok
    native = b.native
    out = {}
    for name in ("c", "torchscript"):
        b.native = native if name == "c" else None
        reset_cache(b, 96)
        b.model.k_cache.zero_()
        b.model.v_cache.zero_()
        first = forward(b, ids[:60], 0)
        second = forward(b, ids[60:], 60)
        out[name] = (first, second, b.model.k_cache.clone(), b.model.v_cache.clone())
        reset_cache(b, 96)
        out[name + " all"] = forward(b, ids[:60], 0, True)
    # the same math, but float sums in another order may flip a bf16 input's last bit: then one row drifts by
    # ~0.1% (gemma3: one K row of 90 in layer 1), nothing more
    for c, ts in zip(out["c"], out["torchscript"]):
        scale = float(ts.abs().max())
        assert float((c - ts).abs().max()) <= 3e-3 * scale and float((c - ts).abs().mean()) <= 1e-4 * scale
    cos = F.cosine_similarity(out["c all"], out["torchscript all"], -1)
    assert out["c all"].shape == (60, out["c"][0].shape[-1]) and float(cos.min()) > 0.9999


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
def test_a_long_prompt_is_prefilled_a_chunk_at_a_time(tmp_path, monkeypatch):
    """`kernelfit run`'s prompt goes through the prefill PROMPT_CHUNK tokens a call (its activations bounded, not
    growing with the prompt), and gives the first token one call gives (a short last chunk takes the exact products,
    so the logits differ in the last digits, not in their pick)."""
    from kernelfit.engine import runner as runner_mod
    from kernelfit.engine.runner import LeanRunner

    monkeypatch.setattr(runner_mod, "PROMPT_CHUNK", 16)
    path = write_tiny(tmp_path / "m.gguf", "Q4_K", "llama")
    ids = _tokens(60).tolist()
    b = build_lean(path)
    run = LeanRunner(b, None)
    calls = []
    real = run.logits
    monkeypatch.setattr(run, "logits", lambda x, pos, all_logits=False: calls.append((pos, len(x))) or
                        real(x, pos, all_logits))
    reset_cache(b, 64)
    got = run.prompt_logits(ids)
    assert calls == [(0, 16), (16, 16), (32, 16), (48, 11), (59, 1)]
    reset_cache(b, 64)
    forward(b, torch.tensor(ids[:-1]), 0)
    one = forward(b, torch.tensor(ids[-1:]), 59)[-1]
    assert int(got.argmax()) == int(one.argmax())
    assert float(torch.nn.functional.cosine_similarity(got, one, dim=0)) > 0.9999


@pytest.mark.skipif(not dot_available(), reason="no C++ compiler here")
@pytest.mark.parametrize("qtype", TYPES)
def test_tiles_taken_two_at_a_time_give_one_tiles_bits(qtype):
    """The dot products take two tiles (16 rows) in one 512-bit register where the CPU has AVX-512 VNNI
    (kernels/dot_tiles.h Zmm): a tile's rows taken in a pair equal, bit for bit, the same tile taken alone. A weight of
    3 tiles runs tiles 0-1 as a pair and tile 2 alone; its tiles 1-2 as a weight of their own run as a pair."""
    rows, cols = 24, 512
    w, _ = _weight(qtype, rows, cols, 11)
    torch.manual_seed(3)
    x = torch.randn(5, cols)
    m = _ops()

    def tiles(t, first, n):
        return t.narrow(0, first, n) if t.dim() else t

    full = m.dot_mm(x, w.codes, w.scale, w.mins, w.format, rows)
    tail = m.dot_mm(x, tiles(w.codes, 1, 2), tiles(w.scale, 1, 2), tiles(w.mins, 1, 2), w.format, 16)
    assert torch.equal(full[:, 16:], tail[:, 8:]) and torch.equal(full[:, 8:16], tail[:, :8])
    ref = x.double().numpy() @ w.dequantize().double().numpy()[:rows].T
    assert np.abs(full.double().numpy() - ref).max() <= 1e-3 * np.abs(ref).max()
