"""GLM-4.5 (GGUF architecture "glm4moe") on the packed engine: a leading dense layer, then experts chosen by their
sigmoid plus a selection bias, renormalised and scaled by the routed scale, beside an ungated shared expert; Q/K/V
biases, per-head QK norms, half of each head rotated; the file's multi-token-prediction block skipped — checked
against transformers' own Glm4Moe modeling code on the same weights (tests/gguf_glm4moe.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gguf_glm4moe import SHAPE, tiny_model, write_glm4moe
from engine_checks import batched_steps_equal_alone
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import RouterKind
from kernelfit.engine.recipe_gguf import recipe_from_gguf
from kernelfit.engine.weights import dot_available
from kernelfit.errors import UsageError
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="an MoE file runs in the C++ step only (no compiler here)")
N = 300
TOP = SHAPE["num_experts_per_tok"]


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """The model, its file, transformers' logits for N tokens, and each row's smallest gap over the MoE layers between
    the last chosen and the first unchosen expert's selection score (sigmoid + bias)."""
    model = tiny_model()
    path = write_glm4moe(tmp_path_factory.mktemp("glm4moe") / "m.gguf", model)
    ids = _tokens(N)
    inputs = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, i, o: inputs.append((m, i[0].detach())))
             for layer in model.model.layers[SHAPE["first_k_dense_replace"]:]]
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
    for h in hooks:
        h.remove()
    gap = torch.full((N,), math.inf)
    for router, x in inputs:
        score = torch.sigmoid(x.reshape(N, -1) @ router.weight.detach().T) + router.e_score_correction_bias
        top = score.topk(TOP + 1, -1).values
        gap = torch.minimum(gap, top[:, TOP - 1] - top[:, TOP])
    return model, path, ids, want, gap


def agree(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    return float((want.argmax(-1) == got.argmax(-1)).float().mean()), float(cos.min())


def test_glm4moe_agrees_with_transformers(glm):
    """Teacher-forced over 300 positions: decode steps (exact products) top-1 >= 99%, logit cosine >= 0.999 at every
    position; one 300-row prompt (bf16 panels) top-1 >= 99%, a row below 0.999 only where a layer's last chosen and
    first unchosen experts are within 0.01. Without the routed scale transformers' model is another one."""
    model, path, ids, want, gap = glm
    b = build_lean(path)
    c = b.cfg
    assert (c.arch, c.layers, c.experts, c.top_k, c.norm_topk, c.routed_scale, c.router, c.rotary.dims) == \
        ("glm4moe", 3, 8, TOP, True, 2.5, RouterKind.SIGMOID, 32)
    reset_cache(b, N + 8)
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:1], 0)
    steps = torch.cat([prompt[:1]] + [forward(b, ids[i:i + 1], i) for i in range(1, N)])
    top1, cos = agree(want, steps)
    assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    low = torch.nn.functional.cosine_similarity(want, prompt, dim=-1) < 0.999
    assert agree(want, prompt)[0] >= 0.99 and bool((gap[low] < 0.01).all()), low.nonzero().flatten().tolist()
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.routed_scaling_factor = 1.0
        unscaled = model(ids[None], use_cache=False).logits[0]
        for layer in model.model.layers[1:]:
            layer.mlp.gate.routed_scaling_factor = SHAPE["routed_scaling_factor"]
    assert agree(unscaled, steps)[1] < 0.99


def test_batched_steps_equal_each_sequence_alone(glm):
    batched_steps_equal_alone(build_lean(glm[1]), glm[2])


def test_a_glm4moe_file_plans_packed_without_its_mtp_block(glm):
    from kernelfit import Preferences, load_model_spec, load_profile, plan

    spec = load_model_spec(str(glm[1]))
    assert spec.model_type == "glm4_moe" and spec.text.num_layers == SHAPE["num_hidden_layers"]
    q = plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization
    assert q.method == "gguf", q


def test_a_file_of_the_mtp_block_alone_is_refused_in_one_line():
    keys = {"glm4moe.block_count": 1, "glm4moe.nextn_predict_layers": 1}
    h = SimpleNamespace(architecture="glm4moe", path="/models/mtp-GLM-4.5-Air.gguf",
                        tensors=[SimpleNamespace(name="blk.46.nextn.eh_proj.weight")],
                        arch_key=lambda k, d=None: keys.get(f"glm4moe.{k}", d), metadata=keys)
    with pytest.raises(UsageError, match="multi-token-prediction block alone") as e:
        recipe_from_gguf(h)
    assert "\n" not in str(e.value)
