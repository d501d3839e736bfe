"""DeepSeek's multi-head latent attention (GGUF architecture "deepseek2": DeepSeek-V2/V2-Lite/V3, Moonlight, Kimi,
GLM-4.7-Flash) on the packed engine, absorbed as llama.cpp runs it: one cached latent row a token and layer (rope +
kv_rank values, its keys and values alike), each query head's q_nope taken into the latent's space by k_b and each
head's output out of it by v_b — checked against transformers' own DeepseekV3 and DeepseekV2 modeling code (which
decompress the latents into full heads) on the same weights (tests/gguf_deepseek2.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from gguf_deepseek2 import SHAPE, tiny_model, write_deepseek2
from engine_checks import batched_steps_equal_alone
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.recipe import Latent, RouterKind
from kernelfit.engine.recipe_gguf import recipe_from_gguf
from kernelfit.engine.weights import dot_available
from kernelfit.errors import UsageError
from test_packed_gguf import _tokens

pytestmark = pytest.mark.skipif(not dot_available(), reason="MLA and experts run in the C++ step only (no compiler)")
N = 300
TOP = SHAPE["num_experts_per_tok"]


def _reference(variant: str, tmp_path_factory):
    """The model, its file, transformers' logits for N tokens, and each row's smallest gap over the MoE layers between
    the last chosen and the first unchosen expert (in what the router ranks them by: the logits for softmax, sigmoid +
    bias for sigmoid routing): a gap below the engine's rounding (its float16 KV cache: ~0.5% of a hidden state) can
    choose the other expert."""
    model = tiny_model(variant)
    path = write_deepseek2(tmp_path_factory.mktemp(f"deepseek2-{variant}") / "m.gguf", model)
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
        score = x.reshape(N, -1) @ router.weight.detach().T
        if hasattr(router, "e_score_correction_bias"):
            score = torch.sigmoid(score) + router.e_score_correction_bias
        top = score.topk(TOP + 1, -1).values
        gap = torch.minimum(gap, top[:, TOP - 1] - top[:, TOP])
    return path, ids, want, gap


@pytest.fixture(scope="module")
def v3(tmp_path_factory):
    return _reference("v3", tmp_path_factory)


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return _reference("v2", tmp_path_factory)


def _agrees(want, got, gap, close: float) -> None:
    """top-1 >= 99%, and a row's logit cosine below 0.999 only where an expert choice was within `close`."""
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    assert float((want.argmax(-1) == got.argmax(-1)).float().mean()) >= 0.99
    low = cos < 0.999
    assert bool((gap[low] < close).all()), [(int(r), float(cos[r]), float(gap[r])) for r in low.nonzero().flatten()]
    assert float(cos.mean()) >= 0.999


@pytest.mark.parametrize("variant", ["v3", "v2"])
def test_latent_attention_agrees_with_transformers(variant, request):
    """Teacher-forced over 300 positions (past YaRN's original context of 64 for v3): decode steps (exact products)
    and one 300-row prompt (bf16 panels), top-1 >= 99%, logit cosine >= 0.999 but where an expert choice was a near
    tie. The recipe reads the file's latent sizes, one KV head of rope + kv_rank values, the scores' scale with YaRN's
    mscale^2 (v3) and the routing."""
    path, ids, want, gap = request.getfixturevalue(variant)
    b = build_lean(path)
    c = b.cfg
    assert c.latent == Latent(96 if variant == "v3" else 0, 128, 32, 32, 64)
    assert (c.kv_heads, c.head_dim, c.rotary.dims) == (1, 160, 32)
    if variant == "v3":
        assert (c.router, c.norm_topk, c.routed_scale) == (RouterKind.SIGMOID, True, 2.5)
        assert c.rotary.magnitude == pytest.approx(1.0) and \
            c.query_scale == pytest.approx(64 ** -0.5 * (0.1 * 0.707 * math.log(4) + 1) ** 2, rel=1e-6)
    else:  # no gating key: llama.cpp's default for V2 files, softmax
        assert (c.router, c.norm_topk, c.routed_scale, c.query_scale) == (RouterKind.SOFTMAX, False, 1.0, 64 ** -0.5)
    reset_cache(b, N + 8)
    prompt = forward(b, ids, 0, True)
    forward(b, ids[:1], 0)
    steps = torch.cat([prompt[:1]] + [forward(b, ids[i:i + 1], i) for i in range(1, N)])
    close = 0.01 if variant == "v3" else 0.05  # sigmoid scores / logits
    _agrees(want, steps, gap, close)
    _agrees(want, prompt, gap, close)


def test_the_cache_holds_one_latent_row_a_token_and_layer(v3):
    """The KV cache of an MLA model is one tensor [layers, 1, 1 head, positions, rope + kv_rank] under both names (a
    token's latent row is its key and its value, as llama.cpp holds it): 160 values a token a layer here, where
    transformers' decompressed heads hold 4 x (64 + 64) keys and 4 x 64 values (768); the plan's memory counts it
    once (it counted a key and a value: twice the cache)."""
    from kernelfit.engine.kv_cache import empty, grown
    from kernelfit.model.spec import spec_from_gguf
    from kernelfit.planner.memory import kv_cache_bytes

    b = build_lean(v3[0])
    cache = empty(b.cfg, "f16", 64)
    assert tuple(cache.k.shape) == (SHAPE["num_hidden_layers"], 1, 1, 64, 160) and cache.v is cache.k
    assert cache.nbytes == SHAPE["num_hidden_layers"] * 64 * 160 * 2
    assert kv_cache_bytes(spec_from_gguf(v3[0], "v3").text, 64, 1, "bfloat16", value_bytes=2) == cache.nbytes
    bigger = grown(b, cache, 128)
    assert bigger.v is bigger.k and bigger.capacity == 128


def test_batched_steps_equal_each_sequence_alone(v3):
    batched_steps_equal_alone(build_lean(v3[0]), v3[1])


def test_a_deepseek2_file_plans_packed(v3):
    from kernelfit import Preferences, load_model_spec, load_profile, plan

    spec = load_model_spec(str(v3[0]))
    assert spec.model_type == "deepseek_v2" and (spec.text.num_kv_heads, spec.text.head_dim) == (1, 160)
    q = plan(load_profile("cpu-spr-amx"), spec, Preferences()).quantization
    assert q.method == "gguf", q


@pytest.mark.parametrize("names,keys,words", [
    (["blk.0.attn_norm.weight", "blk.0.attn_kv_b.weight"], {}, "reconvert"),
    (["blk.0.attn_norm.weight", "blk.0.attn_k_b.weight"], {"expert_group_count": 8}, "within groups"),
])
def test_what_the_engine_does_not_run_is_refused_in_one_line(names, keys, words):
    """An old file with the unsplit attn_kv_b, and experts chosen within groups (DeepSeek-V3's 8 groups)."""
    keys = {f"deepseek2.{k}": v for k, v in keys.items()}
    h = SimpleNamespace(architecture="deepseek2", path="/models/DeepSeek.gguf",
                        tensors=[SimpleNamespace(name=n) for n in names],
                        arch_key=lambda k, d=None: keys.get(f"deepseek2.{k}", d), metadata=keys)
    with pytest.raises(UsageError, match=words) as e:
        recipe_from_gguf(h)
    assert "\n" not in str(e.value)
