"""The precise prompt path's bf16 panel GEMM (engine/kernels/panel_gemm.h, AVX512-BF16): a GGUF file's groups unpacked 32
output columns at a time into a panel in cache and multiplied there, instead of a whole bf16 copy for oneDNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gguf_tiny import write_tiny
from kernelfit.engine.weights import dot_available
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from test_packed_gguf import TYPES, _tokens
from test_prefill_kernels import _ops, _weight

def _panel_available() -> bool:
    return dot_available() and bool(_ops().panel_available())

needs_panel = pytest.mark.skipif(not _panel_available(), reason="no AVX512-BF16 panel GEMM in this build")

@needs_panel
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows,m", [(40, 29), (13, 12), (72, 1)])  # partial last panels (8, 13 of 32), row tails
def test_the_panel_gemm_is_a_float_sum_of_bf16_products(qtype, rows, m):
    """Every type and layout: equal (float32 sums, 1e-5) to float64 arithmetic on the bf16-rounded input and the
    file's values rounded to bf16 — what oneDNN's product of the unpacked copy computes — and within bf16's
    rounding of gguf-py's own values."""
    cols = 512
    w, ref = _weight(qtype, rows, cols, 7)
    torch.manual_seed(1)
    x = torch.randn(m, cols) * torch.linspace(0.01, 3, cols)
    got = _ops().panel_gemm_parts(x, [w.codes], [w.scale], [w.mins], [w.format], [rows]).double().numpy()
    assert got.shape == (m, rows)
    w16 = w.dequantize(bf16=True).double().numpy()[:rows]
    same = x.bfloat16().double().numpy() @ w16.T
    assert np.abs(got - same).max() <= 1e-5 * np.abs(same).max()
    want = x.double().numpy() @ ref.T
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 6e-3

@needs_panel
def test_panel_gemm_parts_write_each_weights_columns_and_carry_a_nan():
    (wq, _), (wk, _), (wv, _) = _weight("Q5_0", 24, 256, 1), _weight("Q4_K", 13, 256, 2), _weight("Q6_K", 40, 256, 3)
    ws, ns = (wq, wk, wv), [24, 13, 40]
    x = torch.randn(30, 256)
    x[7, 100] = float("nan")
    got = _ops().panel_gemm_parts(x, [w.codes for w in ws], [w.scale for w in ws], [w.mins for w in ws],
                                  [w.format for w in ws], ns)
    want = torch.cat([_ops().panel_gemm_parts(x, [w.codes], [w.scale], [w.mins], [w.format], [n])
                      for w, n in zip(ws, ns)], 1)
    assert got.shape == (30, 77) and got.dtype == torch.float32
    assert torch.equal(got[torch.arange(30) != 7], want[torch.arange(30) != 7])
    assert torch.isnan(got[7]).all() and torch.isfinite(got[torch.arange(30) != 7]).all()
    with pytest.raises(RuntimeError, match="shapes do not match"):
        _ops().panel_gemm_parts(torch.randn(3, 128), [wq.codes], [wq.scale], [wq.mins], [wq.format], [24])

@needs_panel
@pytest.mark.parametrize("arch,qtype", [("llama", "Q4_1"), ("gemma3", "Q4_K"), ("qwen2", "Q8_0")])
def test_a_prompt_through_the_panels_matches_the_unpack_and_onednn_path(tmp_path, arch, qtype, monkeypatch):
    """The whole prompt forward, panels against the former path (KERNELFIT_PANEL_GEMM=0: each weight unpacked to a
    bf16 copy for oneDNN): the same products, float32 outputs instead of bf16 ones."""
    path = write_tiny(tmp_path / "m.gguf", qtype, arch)
    ids = _tokens(60)
    b = build_lean(path)
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("KERNELFIT_PANEL_GEMM", mode)
        assert bool(_ops().panel_available()) == (mode == "1")
        reset_cache(b, 64)
        out[mode] = (forward(b, ids, 0, True), b.model.k_cache.clone())
    reset_cache(b, 64)  # the exact reference: one position at a time through the decode step's dot products
    exact = torch.cat([forward(b, ids[i:i + 1], i) for i in range(len(ids))])
    err = {mode: float((o[0] - exact).abs().mean()) for mode, o in out.items()}
    print("mean |logit - exact|: panels", err["1"], "unpack + oneDNN", err["0"])
    assert err["1"] <= err["0"]  # float32 products instead of bf16-rounded ones
    cos = F.cosine_similarity(out["1"][0], out["0"][0], -1)
    assert float(cos.min()) > 0.9998
    k1, k0 = out["1"][1], out["0"][1]
    assert float((k1 - k0).abs().max()) <= 2e-2 * float(k0.abs().max())
    assert not torch.equal(k1, k0)  # the switch really changed the path


@needs_panel
def test_panel_attention_keeps_a_nan_to_its_own_row_and_head():
    """A NaN query makes that position's head NaN (as ATen's softmax does), and nothing else: the panels' zero
    padding and the rows sharing a block stay finite."""
    nq, nkv, d, t = 4, 2, 64, 40
    torch.manual_seed(3)
    k, v = torch.randn(nkv, 48, d), torch.randn(nkv, 48, d)
    q = torch.randn(t, nq, d)
    q[17, 3, 5] = float("nan")
    got = _ops().prompt_attention(q, k, v, 0, 0, 0, d ** -0.5, 64).view(t, nq, d)
    assert torch.isnan(got[17, 3]).all()
    bad = torch.zeros(t, nq, dtype=torch.bool)
    bad[17, 3] = True
    assert torch.isfinite(got[~bad]).all()
    ref = _ops().blocked_attention(q, k, v, 0, 0, 0, d ** -0.5, 64).view(t, nq, d)
    assert float((got[~bad] - ref[~bad]).abs().max()) < 0.03


def _cpu_has(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except OSError:
        return False


@needs_panel
def test_the_panels_run_on_amx_tiles_where_the_cpu_has_them(monkeypatch):
    """On a CPU with AMX-BF16 the panel GEMM takes the tiles (amx_tiles.h), and KERNELFIT_AMX=0 takes them away."""
    assert bool(_ops().panel_tiles()) == _cpu_has("amx_bf16")
    monkeypatch.setenv("KERNELFIT_AMX", "0")
    assert not _ops().panel_tiles()


@needs_panel
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0"])
def test_a_prompt_split_into_calls_gets_the_same_bits_and_both_kernels_agree(qtype, monkeypatch):
    """Each row is computed alone: rows split into calls of 1, 16, 17 and 33 rows give one call's bits (the server's
    cached prefixes rely on it); the tile kernel and the AVX512-BF16 one are the same sums to float32 rounding."""
    rows, cols = 77, 1024
    w, _ = _weight(qtype, rows, cols, 5)
    torch.manual_seed(2)
    x = torch.randn(67, cols)
    args = ([w.codes], [w.scale], [w.mins], [w.format], [rows])
    one = _ops().panel_gemm_parts(x, *args)
    cuts = [0, 1, 17, 50, 67]
    parts = torch.cat([_ops().panel_gemm_parts(x[a:b], *args) for a, b in zip(cuts, cuts[1:])])
    assert torch.equal(one, parts)
    monkeypatch.setenv("KERNELFIT_AMX", "0")
    other = _ops().panel_gemm_parts(x, *args)
    assert float((one - other).abs().max()) <= 1e-5 * float(other.abs().max())


@needs_panel
def test_bf16_weights_prompt_products_are_split_alike_and_agree_across_kernels(monkeypatch):
    """A bf16 checkpoint's prompt products (bf16_rows.h through the same panels, tiles where present): calls of any
    rows give one call's bits, and the tile and AVX512-BF16 kernels agree to float32 rounding."""
    torch.manual_seed(4)
    w = torch.randn(100, 512).to(torch.bfloat16)
    x = torch.randn(45, 512)
    one = _ops().bf16_rows_mm(x, w)
    want = x.bfloat16().double() @ w.double().T
    assert float((one.double() - want).abs().max()) <= 1e-5 * float(want.abs().max())
    assert torch.equal(torch.cat([_ops().bf16_rows_mm(x[:13], w), _ops().bf16_rows_mm(x[13:], w)]), one)
    monkeypatch.setenv("KERNELFIT_AMX", "0")
    other = _ops().bf16_rows_mm(x, w)
    assert float((one - other).abs().max()) <= 1e-5 * float(other.abs().max())


@needs_panel
@pytest.mark.parametrize("group", [1, 4])
def test_panel_attention_split_into_calls_gets_the_same_bits_and_both_kernels_agree(group, monkeypatch):
    """A prompt's attention in two calls (the second at its position, over the keys the first wrote) equals one call
    bit for bit, on the tiles and on the AVX512-BF16 micro-kernel; the two kernels agree to the bf16 rounding of the
    softmax weights (a score's last float32 bit can move a weight by one bf16 step)."""
    nkv, d, t = 2, 64, 80
    torch.manual_seed(5)
    k, v = torch.randn(nkv, 96, d), torch.randn(nkv, 96, d)
    q = torch.randn(t, nkv * group, d)
    out = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("KERNELFIT_AMX", mode)
        one = _ops().prompt_attention(q, k, v, 0, 0, 0, d ** -0.5, 64)
        two = torch.cat([_ops().prompt_attention(q[:33], k, v, 0, 0, 0, d ** -0.5, 64),
                         _ops().prompt_attention(q[33:], k, v, 33, 0, 0, d ** -0.5, 64)])
        assert torch.equal(one, two)
        out[mode] = one
    assert float((out["1"] - out["0"]).abs().max()) <= 1e-4 * float(out["0"].abs().max())
