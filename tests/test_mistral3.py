"""Mistral 3 (Ministral 3, GGUF architecture "mistral3") on the packed engine: Llama's block with YaRN whose attention
factor comes from the file's log multiplier (1.0 for Mistral 3, where the plain YaRN factor would be 1.28 at factor
16), and Llama 4's query temperature past the original context — checked against transformers' own Ministral3
modeling code on the same weights (tests/gguf_mistral3.py), on the C++ step and on the no-compiler reference."""

from __future__ import annotations

import math

import pytest
import torch

from gguf_mistral3 import BETA, ORIGINAL, rope, tiny_model, write_mistral3
from kernelfit import Preferences, load_model_spec, load_profile, plan
from engine_checks import batched_steps_equal_alone
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import Rotary, RotaryKind
from kernelfit.engine.weights import dot_available
from test_packed_gguf import _tokens

N = 300  # positions compared (>= 256): past the original context of 64 four times


@pytest.fixture(scope="module")
def mistral3(tmp_path_factory):
    """The file, the tokens, transformers' logits, and transformers' logits for the same weights without the query
    temperature."""
    model = tiny_model()
    path = write_mistral3(tmp_path_factory.mktemp("mistral3") / "m.gguf", model)
    ids = _tokens(N)
    with torch.no_grad():
        want = model(ids[None], use_cache=False).logits[0]
        cold = tiny_model(beta=0.0)(ids[None], use_cache=False).logits[0]
    return path, ids, want, cold


def agree(want: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    return float((want.argmax(-1) == got.argmax(-1)).float().mean()), float(cos.min())


def test_the_log_multiplier_gives_transformers_attention_factor():
    """YaRN's magnitude with mscale = 1 and mscale_all_dim = m is mscale(f, 1) / mscale(f, m) (1.0 at m = 1), as
    transformers' _compute_yarn_parameters and llama.cpp's yarn_attn_factor compute it; without m, 0.1 ln f + 1."""
    from transformers import Ministral3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    for m in (1.0, 0.707):
        cfg = Ministral3Config(head_dim=64, rope_parameters={**rope(), "mscale_all_dim": m})
        _, attention = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
        r = Rotary(1e6, RotaryKind.YARN, 16.0, None, ORIGINAL, log_multiplier=m)
        assert r.magnitude == pytest.approx(attention, rel=1e-9), m
    assert Rotary(1e6, RotaryKind.YARN, 16.0, None, ORIGINAL).magnitude == pytest.approx(0.1 * math.log(16) + 1)


@pytest.mark.skipif(not dot_available(), reason="the C++ step (no compiler here)")
def test_mistral3_agrees_with_transformers(mistral3):
    """Teacher-forced over 300 positions: a decode step a token and one 300-row prompt, top-1 >= 99% and logit cosine
    >= 0.999 at every position; without the temperature transformers' model is another one past position 64."""
    path, ids, want, cold = mistral3
    b = build_lean(path)
    c = b.cfg
    assert (c.arch, c.query_temperature, c.rotary.kind, c.rotary.log_multiplier) == \
        ("mistral3", (pytest.approx(BETA), ORIGINAL), RotaryKind.YARN, 1.0)
    assert c.rotary.magnitude == 1.0 and c.temperature(ORIGINAL - 1) == 1.0 and c.temperature(2 * ORIGINAL) > 1.3
    reset_cache(b, N + 8)
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:1], 0)
    steps = torch.cat([prompt[:1]] + [forward(b, ids[i:i + 1], i) for i in range(1, N)])
    for got in (steps, prompt):
        top1, cos = agree(want, got)
        assert top1 >= 0.99 and cos >= 0.999, (top1, cos)
    assert agree(want[:ORIGINAL], cold[:ORIGINAL])[1] > 0.99999  # the temperature is 1 below the original context
    assert agree(cold[ORIGINAL:], steps[ORIGINAL:])[1] < 0.99  # and past it, the test can tell


@pytest.mark.skipif(not dot_available(), reason="the C++ step (no compiler here)")
def test_batched_steps_scale_each_query_at_its_own_position(mistral3):
    """Sequences at different positions in one batched step (below the original context and past it twice) give
    what each one's own decode step gives, bit for bit."""
    batched_steps_equal_alone(build_lean(mistral3[0]), mistral3[1], (30, 70, 200), 256)


def test_the_reference_model_runs_the_temperature(mistral3):
    """Where no C++ step is built, the reference model (TorchScript) scales its queries alike."""
    path, ids, want, _ = mistral3
    b = build_lean(path, kv_cache="f32")
    b.native = None
    reset_cache(b, N + 8)
    top1, cos = agree(want, forward(b, ids, 0, True))
    assert top1 >= 0.99 and cos >= 0.999, (top1, cos)


def test_a_mistral3_file_plans_packed(mistral3):
    path = mistral3[0]
    spec = load_model_spec(str(path))
    assert spec.model_type == "ministral3" and spec.extra["gguf_rope_scaling"] == "yarn"
    q = plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization
    assert q.method == "gguf", q
