"""Granite 4.0-H on the packed engine: Mamba-2 layers (engine/kernels/mamba2.h) beside attention without rotary, with
Granite's multipliers, checked against transformers' own GraniteMoeHybrid modeling code on the same weights.
transformers reads no granitehybrid GGUF file: the tests write one from the model as llama.cpp's converter does
(tests/gguf_granitehybrid.py)."""

from __future__ import annotations

import math

import pytest
import torch

from engine_checks import few_rows_and_chunks_carry_the_state, resumes_from_the_prefills_state
from gguf_granitehybrid import LAYER_TYPES, SHAPE, tiny_model, write_granitehybrid
from kernelfit.engine.build import build_lean
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import LayerKind
from kernelfit.engine.weights import dot_available
from test_hybrid_lfm2 import agree, prompt_and_decode_agree, prompt_and_steps
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="a hybrid runs in the C++ step only (no compiler here)")
N = 300


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    d = tmp_path_factory.mktemp("granitehybrid")
    model = tiny_model()
    path = write_granitehybrid(d / "m.gguf", model)
    ids = _tokens(N)
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
        for layer in model.model.layers:  # without D (the skip term): another model, which the test can tell
            if getattr(layer, "mamba", None) is not None:
                layer.mamba.D.zero_()
        other = model(ids[None], use_cache=False).logits[0]
    b = build_lean(path)
    reset_cache(b, N + 8)
    return path, ids, want, other, b


def test_granite_hybrid_prompt_and_decode_agree_with_transformers(granite):
    """300 positions, teacher-forced: one prompt (every row's logits), and 100 prompt tokens then 200 decode steps (each
    Mamba-2 head's [64, 32] state and the conv's last 3 inputs carried a token at a time): top-1 >= 99%, cosine >=
    0.999; no rotary anywhere, Granite's four multipliers."""
    _, ids, want, other, b = granite
    c = b.cfg
    assert c.layer_kinds == tuple(LayerKind.MAMBA2 if t == "mamba" else LayerKind.ATTENTION for t in LAYER_TYPES)
    assert (c.mamba, c.conv_kernel, c.no_rotary_step) == ((8, 64, 2, 32), 4, 1)
    assert (c.embed_scale, c.logit_scale, c.query_scale) == (12.0, 8.0, 0.015625)
    prompt = prompt_and_decode_agree(b, ids, want)
    assert agree(other, prompt)[1] < 0.99  # D matters
    assert b.model.k_cache.shape[0] == LAYER_TYPES.count("attention")


def test_decode_steps_equal_a_few_row_prompt_and_chunks_carry_the_state(granite):
    few_rows_and_chunks_carry_the_state(granite[4], granite[1])


def test_server_sequences_resume_from_the_prefills_state(granite):
    resumes_from_the_prefills_state(granite[4], granite[1])


def test_plan_counts_the_state_not_keys_and_values(granite):
    """The plan's model: 4 Mamba-2 layers whose state (conv inputs and [heads, 64, 32] a layer) does not grow with the
    context, 2 attention layers with keys and values; the file plans packed."""
    from kernelfit import Preferences, load_profile, plan
    from kernelfit.model.spec import spec_from_gguf

    path, _, _, _, b = granite
    s = spec_from_gguf(path, "granite-h")
    t = s.text
    assert (t.model_type, t.num_layers, t.recurrent_layers, t.recurrent_kind) == ("granitemoehybrid", 6, 4, "Mamba-2")
    assert t.state_values == b.state.values.numel() == 4 * (3 * (512 + 2 * 2 * 32) + 8 * 64 * 32)
    assert plan(load_profile("cpu-spr-amx"), s, Preferences()).quantization.method == "gguf"
    assert SHAPE["num_local_experts"] == 0


def test_granite_hybrid_moe_agrees_with_transformers(tmp_path):
    """Granite 4.0-H-Tiny's kind: 4 experts, 2 a token (a softmax over their top-2 logits) beside the shared MLP (an
    ungated shared expert), on every layer. One prompt and decode steps: top-1 >= 99%, and a row's logit cosine below
    0.999 only where a layer's second and third router logits were within 0.05 (the engine's rounding can choose the
    other expert there)."""
    model = tiny_model(moe=True)
    path = write_granitehybrid(tmp_path / "moe.gguf", model)
    ids = _tokens(N)
    inputs = []
    hooks = [layer.block_sparse_moe.router.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach())))
             for layer in model.model.layers]
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
    for h in hooks:
        h.remove()
    gap = torch.full((N,), math.inf)
    for router, x in inputs:
        top = (x.reshape(N, -1) @ router.weight.detach().T).topk(3, -1).values
        gap = torch.minimum(gap, top[:, 1] - top[:, 2])
    b = build_lean(path)
    assert (b.cfg.experts, b.cfg.top_k, b.cfg.norm_topk) == (4, 2, True)
    for got in prompt_and_steps(b, ids):
        cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
        assert agree(want, got)[0] >= 0.99 and bool((gap[cos < 0.999] < 0.05).all())
