"""gpt-oss on the packed engine: attention sinks, biases on every projection, every other layer sliding, YaRN without
truncation, experts chosen by a biased router with a softmax over the top k, the clamped SwiGLU, MXFP4 experts —
checked against transformers' own GptOss modeling code on the same weights (tests/gguf_gptoss.py), and the sinks in
each attention kernel against a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from gguf_gptoss import WINDOW, tiny_model, write_gptoss
from kernelfit.engine.build import batch_step, build_lean, forward
from kernelfit.engine.kv_cache import empty, grown, reset_cache
from kernelfit.engine.recipe import RotaryKind, inverse_frequencies
from kernelfit.engine.weights import dot_available
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="an MoE file runs in the C++ step only (no compiler here)")
N = 300  # positions compared (>= 256), past the sliding window of 48 six times


@pytest.fixture(scope="module")
def gptoss(tmp_path_factory):
    """The model, its file, transformers' logits for N tokens, and each row's smallest gap between the chosen and the
    first unchosen expert's router logit over the layers."""
    model = tiny_model()
    path = write_gptoss(tmp_path_factory.mktemp("gptoss") / "m.gguf", model)
    ids = _tokens(N)
    inputs = []
    hooks = [layer.mlp.router.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach())))
             for layer in model.model.layers]
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
    for h in hooks:
        h.remove()
    gap = torch.full((N,), math.inf)
    for router, x in inputs:
        top = (x.reshape(N, -1) @ router.weight.detach().T + router.bias.detach()).topk(3, -1).values
        gap = torch.minimum(gap, top[:, 1] - top[:, 2])
    return model, path, ids, want, gap


def agree(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    return float((want.argmax(-1) == got.argmax(-1)).float().mean()), float(cos.min())


def test_gptoss_agrees_with_transformers(gptoss):
    """Teacher-forced over 300 positions: a decode step a token (exact products) top-1 >= 99%, logit cosine >= 0.999
    at every position, past the window too. One 300-row prompt (bf16 panels): top-1 >= 99%, and a row below 0.999
    only where a layer's chosen and first unchosen expert are within 0.05 (the panels' rounding can flip that
    choice). Without its sinks transformers' model is another one: the test can tell."""
    model, path, ids, want, gap = gptoss
    b = build_lean(path)
    c = b.cfg
    assert (c.arch, c.experts, c.top_k, c.norm_topk, c.sliding_window, c.clamped_swiglu, c.attention_sinks) == \
        ("gpt-oss", 4, 2, True, WINDOW, (1.702, 7.0), True)
    assert [c.sliding(i) for i in range(c.layers)] == [True, False, True, False]
    assert c.rotary.kind is RotaryKind.YARN and not c.rotary.truncate
    reset_cache(b, N + 8)
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:1], 0)
    steps = torch.cat([prompt[:1]] + [forward(b, ids[i:i + 1], i) for i in range(1, N)])
    top1, cos = agree(want, steps)
    assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    low = torch.nn.functional.cosine_similarity(want, prompt, dim=-1) < 0.999
    assert agree(want, prompt)[0] >= 0.99 and bool((gap[low] < 0.05).all()), low.nonzero().flatten().tolist()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.fill_(-math.inf)
        without = model(ids[None], use_cache=False).logits[0]
    assert agree(without, steps)[1] < 0.99


def test_batched_steps_and_chunked_server_prompts_are_exact(gptoss):
    """Three sequences' next tokens in one batched step equal each one's own decode step, bit for bit; the server's
    prompt in chunks (3, 27, 50 rows, past the window) leaves the KV cache and logits one 80-row prefill leaves."""
    _, path, ids, _, _ = gptoss
    b = build_lean(path)
    reset_cache(b, 96)
    lengths = (20, 53, 61)
    caches, alone = [], []
    for n in lengths:
        c = grown(b, None, 64)
        forward(b, ids[:n], 0, False, cache=c, panel_rows=True)
        caches.append(c)
        c2 = grown(b, None, 64)
        forward(b, ids[:n], 0, False, cache=c2, panel_rows=True)
        alone.append(forward(b, ids[n:n + 1], n, False, cache=c2)[-1])
    got = batch_step(b, [int(ids[n]) for n in lengths], list(lengths), [0, 1, 2], caches)
    for s in range(3):
        assert torch.equal(got[s], alone[s])
    one, parts = empty(b.cfg, b.kv_cache, 96), empty(b.cfg, b.kv_cache, 96)
    whole = forward(b, ids[:80], 0, cache=one, panel_rows=True)
    for start, end in ((0, 3), (3, 30), (30, 80)):
        last = forward(b, ids[start:end], start, cache=parts, panel_rows=True)
    assert torch.equal(whole, last)
    assert all(torch.equal(x, y) for x, y in zip((one.k, one.v), (parts.k, parts.v)))


@pytest.mark.parametrize("kind", [0, 1])  # float32 and float16 cache rows
@pytest.mark.parametrize("window", [0, WINDOW])
def test_sinks_in_every_attention_kernel(kind, window):
    """Decode attention, the panel prompt attention and the blocked oneDNN one, each with a sink logit a head, against
    a float64 softmax over [scores, sink] with the sink's column dropped (transformers' eager_attention_forward)."""
    from kernelfit.engine.native import native_module

    m = native_module()
    g = torch.Generator().manual_seed(0)
    t, nq, nkv, d = 100, 4, 2, 64
    q, sinks = torch.randn(t, nq, d, generator=g), 1 + torch.randn(nq, generator=g)
    k_rows, v_rows = (m.kv_rows(torch.randn(nkv, t + 4, d, generator=g), kind) for _ in range(2))
    k, v = m.kv_float(k_rows).double(), m.kv_float(v_rows).double()

    def reference(i: int, with_sinks: bool) -> torch.Tensor:
        lo, out = max(0, i - window + 1) if window else 0, torch.zeros(nq, d, dtype=torch.float64)
        for h in range(nq):
            s = k[h // (nq // nkv), lo:i + 1] @ q[i, h].double() * d ** -0.5
            p = torch.softmax(torch.cat([s, sinks[h:h + 1].double()]) if with_sinks else s, 0)[:i + 1 - lo]
            out[h] = p @ v[h // (nq // nkv), lo:i + 1]
        return out.reshape(-1)

    for with_sinks in (False, True):
        want = torch.stack([reference(i, with_sinks) for i in range(t)])
        s = sinks if with_sinks else torch.empty(0)
        decode = torch.stack([m.decode_attention(q[i], k_rows[None, None], v_rows[None, None], 0,
                                                 max(0, i - window + 1) if window else 0, i + 1, d ** -0.5, 0.0,
                                                 s).reshape(-1) for i in range(t)])
        assert (decode.double() - want).abs().max() < 1e-5
        for kernel in (m.prompt_attention, m.blocked_attention):  # bf16 inputs
            got = kernel(q, k_rows, v_rows, 0, 0, window, d ** -0.5, 128, 0.0, s)
            assert (got.double() - want).abs().max() < 0.03, kernel
    without = torch.stack([reference(i, False) for i in range(t)])
    assert (decode.double() - without).abs().max() > 0.05  # the sinks change the answer


def test_gptoss_yarn_keeps_the_correction_range_untruncated():
    """gpt-oss's YaRN (rope_parameters truncate: false) gives transformers' frequencies; truncated ones differ."""
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from kernelfit.engine.recipe import Rotary

    cfg = GptOssConfig(head_dim=64)
    want, attention = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    r = Rotary(150000.0, RotaryKind.YARN, 32.0, None, 4096, truncate=False)
    assert torch.allclose(inverse_frequencies(r, 64).float(), want, rtol=1e-5)
    assert r.magnitude == pytest.approx(attention, rel=1e-6)
    truncated = inverse_frequencies(Rotary(150000.0, RotaryKind.YARN, 32.0, None, 4096), 64).float()
    assert not torch.allclose(truncated, want, rtol=1e-3)


def test_a_gptoss_file_plans_packed_and_names_its_types(gptoss):
    """The planner admits gpt-oss for the packed engine (its experts need the C++ step) and names the file by its
    largest tensor type where the writer left general.file_type out."""
    from kernelfit import Preferences, load_model_spec, load_profile, plan

    spec = load_model_spec(str(gptoss[1]))
    assert spec.text.sliding_window == WINDOW and spec.text.sliding_layers == 2
    q = plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization
    assert q.method == "gguf" and "the MXFP4 file" in q.reason and "4-bit grid (MXFP4)" in q.reason


def test_a_prompt_the_tokenizer_encodes_to_nothing_ends_in_one_line(gptoss, capsys):
    """The tiny vocabulary ("t0".."t511", no byte tokens) encodes "hi" to nothing and the file adds no BOS: `run` exits 2
    with one error line after the plan (it used to reach the prefill with no rows and end in a RuntimeError)."""
    from kernelfit.cli import main

    rc = main(["run", str(gptoss[1]), "--prompt", "hi", "--max-new-tokens", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kernelfit: error")]
    assert rc == 2 and len(err) == 1 and "gives no tokens" in err[0], err
