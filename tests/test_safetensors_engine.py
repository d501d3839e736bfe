"""transformers safetensors checkpoints on kernelfit's engine (issue 27): the recipe from config.json, the weights read
as stored (bf16 rows, engine/safetensors/reader.py), products with float32 activations (kernels/bf16_rows.h).
Before, a safetensors checkpoint always loaded through transformers, 5-8x slower than the same model's GGUF file."""

from __future__ import annotations

import json

import pytest
import torch

from kernelfit import Preferences, load_model_spec, load_profile, plan
from kernelfit.engine.build import batch_step, build_lean, forward
from kernelfit.engine.kv_cache import grown, reset_cache
from kernelfit.errors import UsageError
from kernelfit.planner.types import RejectKind
from test_packed_gguf import _tokens

LLAMA3 = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
SHAPE = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


def _checkpoint(path, model_type: str, dtype=torch.bfloat16, seed: int = 0, **kw):
    """A tiny random model of `model_type` written by transformers' save_pretrained (weights large enough that the
    logits have margins), and transformers' float32 load of what was written: the reference on the same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**SHAPE, **kw})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    model.to(dtype).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _agree(want: torch.Tensor, got: torch.Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(want, got, dim=-1)
    top1 = float((want.argmax(-1) == got.argmax(-1)).float().mean())
    assert top1 >= 0.99 and float(cos.mean()) >= 0.999 and float(cos.min()) >= 0.998, (top1, float(cos.min()))


@pytest.mark.parametrize("model_type,kw", [("llama", {}), ("qwen2", {}), ("qwen3", {"head_dim": 32}),
                                           ("mistral", {"sliding_window": None}), ("llama", {"rope_parameters": LLAMA3}),
                                           ("llama", {"tie_word_embeddings": True})])
def test_safetensors_checkpoints_agree_with_transformers_on_the_same_weights(tmp_path, model_type, kw):
    """300 positions teacher-forced, prompt logits and decode steps: top-1 >= 99%, cosine >= 0.999 against
    transformers' float32 load of the same checkpoint. The KV cache is float32 here, as transformers' is: these random
    tiny models have near-ties that a float16 cache's rounding flips (1-2%; tests/test_kv_cache.py measures float16
    on the bundled models)."""
    ref = _checkpoint(tmp_path, model_type, **kw)
    ids = _tokens()
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    b = build_lean(tmp_path, kv_cache="f32")
    assert {c.layout for c in b.conversions} == {"bf16"} and all(c.rel_error == 0 for c in b.conversions)
    reset_cache(b, len(ids) + 8)
    _agree(want, forward(b, ids, 0, True))
    reset_cache(b, len(ids) + 8)
    forward(b, ids[:44], 0, False)
    steps = torch.stack([forward(b, ids[i:i + 1], i, False)[-1] for i in range(44, 300)])
    _agree(want[44:], steps)


def test_float32_checkpoints_are_rounded_to_bf16_once_and_say_what_it_cost(tmp_path):
    ref = _checkpoint(tmp_path, "llama", dtype=torch.float32)
    b = build_lean(tmp_path, kv_cache="f32")  # as transformers' cache (see the test above)
    errors = [c.rel_error for c in b.conversions if c.gguf_type == "F32"]
    assert errors and all(0 < e < 0.01 for e in errors)  # bf16's 8-bit mantissa: ~0.2% a weight
    ids = _tokens(120)
    reset_cache(b, len(ids))
    with torch.no_grad():
        _agree(ref(ids[None]).logits[0], forward(b, ids, 0, True))


def test_float16_checkpoints_run_their_products_as_stored(tmp_path):
    """A float16 checkpoint's projections and output head stay float16 rows, widened exactly by the rows kernel
    (vcvtph2ps) — no bf16 rounding, so no measured error; its token table is looked up as bf16 (rounded, reported)."""
    ref = _checkpoint(tmp_path, "llama", dtype=torch.float16)
    b = build_lean(tmp_path)
    by = {c.name: c for c in b.conversions}
    products = [c for n, c in by.items() if n != "token_embd.weight"]
    assert products and all((c.gguf_type, c.layout, c.rel_error) == ("F16", "f16", 0.0) for c in products)
    assert by["token_embd.weight"].layout == "bf16" and 0 < by["token_embd.weight"].rel_error < 0.01
    ids = _tokens()
    with torch.no_grad():
        want = ref(ids[None]).logits[0]
    reset_cache(b, len(ids) + 8)
    _agree(want, forward(b, ids, 0, True))
    reset_cache(b, len(ids) + 8)
    forward(b, ids[:44], 0, False)
    _agree(want[44:], torch.stack([forward(b, ids[i:i + 1], i, False)[-1] for i in range(44, 300)]))
    from kernelfit.engine.native import native_module

    w = torch.randn(200, 328).half()
    x = torch.randn(5, 328)
    y = native_module().bf16_rows_mm(x, w)  # decode rows: float32 sums of the exact float16 values
    assert torch.allclose(y.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)
    many = torch.randn(40, 328)  # a prompt: bf16 panels of the rounded rows; without them float32, exact
    got = native_module().bf16_rows_mm(many, w).double()
    if native_module().panel_available():
        bf = many.to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T
        assert torch.allclose(got, bf, rtol=1e-3, atol=1e-3)
    else:
        assert torch.allclose(got, many.double() @ w.double().T, rtol=1e-5, atol=1e-4)


def test_bf16_rows_products_compute_each_row_alone_and_in_float32():
    """Up to 12 rows: each row's products equal its own one-row call bit for bit (so a batched step equals one decode
    step a sequence) and float64 over the same bf16 weights; a prompt's many rows through the bf16 panels."""
    from kernelfit.engine.native import native_module

    ops = native_module()
    torch.manual_seed(0)
    w = torch.randn(200, 328).to(torch.bfloat16)  # rows not a multiple of the blocks, columns not of 16
    x = torch.randn(12, 328)
    y = ops.bf16_rows_mm(x, w)
    want = x.double() @ w.double().T
    assert y.dtype == torch.float32 and torch.allclose(y.double(), want, rtol=1e-5, atol=1e-4)
    for r in range(12):
        assert torch.equal(ops.bf16_rows_mm(x[r:r + 1], w)[0], y[r])
    many = torch.randn(40, 328)
    got = ops.bf16_rows_mm(many, w)
    if ops.panel_available():  # the bf16 panels: bf16 inputs, float32 sums
        bf = many.to(torch.bfloat16).double() @ w.double().T
        assert torch.allclose(got.double(), bf, rtol=1e-3, atol=1e-3)
    else:  # no AVX512-BF16: a float32 product of the exact weights (a bf16 one rounded the outputs to bf16)
        assert torch.allclose(got.double(), many.double() @ w.double().T, rtol=1e-5, atol=1e-4)


def test_bf16_row_parts_in_one_call_equal_each_part_s_own_call():
    """Q, K and V (gate and up) over one input in one parallel region, threads taking the next block of rows: each
    output the bits of the part's own call (float16 and bf16 parts mixed, rows not whole blocks), for 1 and 12 rows."""
    from kernelfit.engine.native import native_module

    ops = native_module()
    torch.manual_seed(1)
    ws = [torch.randn(200, 328).to(torch.bfloat16), torch.randn(72, 328).half(), torch.randn(5, 328).to(torch.bfloat16)]
    for rows in (1, 12):
        x = torch.randn(rows, 328)
        assert torch.equal(ops.bf16_rows_mm_parts(x, ws), torch.cat([ops.bf16_rows_mm(x, w) for w in ws], 1))


def test_a_batched_step_equals_each_sequence_s_decode_step(tmp_path):
    _checkpoint(tmp_path, "qwen2")
    b = build_lean(tmp_path)
    ids = _tokens(60)
    caches, alone = [], []
    for s, n in enumerate((20, 33, 47)):
        c = grown(b, None, 64)
        forward(b, ids[:n], 0, False, cache=c, panel_rows=True)
        caches.append(c)
    for s, n in enumerate((20, 33, 47)):
        c = grown(b, None, 64)
        forward(b, ids[:n], 0, False, cache=c, panel_rows=True)
        alone.append(forward(b, ids[n:n + 1], n, False, cache=c)[-1])
    got = batch_step(b, [int(ids[n]) for n in (20, 33, 47)], [20, 33, 47], [0, 1, 2], caches)
    for s in range(3):
        assert torch.equal(got[s], alone[s])


def test_a_checkpoint_with_tensors_the_recipe_does_not_read_is_refused_by_name(tmp_path):
    _checkpoint(tmp_path, "llama", attention_bias=True)  # an o_proj bias: not in the engine's llama block
    with pytest.raises(UsageError, match=r"o_proj\.bias.*--quantization none"):
        build_lean(tmp_path)


def test_the_plan_puts_covered_checkpoints_on_the_engine_and_says_why_not_elsewhere(tmp_path):
    cpu, gpu = load_profile("cpu-spr-amx"), load_profile("t4")
    ok = tmp_path / "llama"
    _checkpoint(ok, "llama")
    p = plan(cpu, load_model_spec(str(ok)), Preferences())
    assert p.quantization.method == "engine" and "safetensors" in p.quantization.reason
    assert plan(cpu, load_model_spec(str(ok)), Preferences(quantization="none")).quantization.method == "none"
    on_gpu = plan(gpu, load_model_spec(str(ok)), Preferences())
    assert on_gpu.quantization.method != "engine"
    assert any(r.method == "engine" and r.kind is RejectKind.NOT_RUNNABLE for r in on_gpu.quantization_rejected)
    other = tmp_path / "olmo2"
    _checkpoint(other, "olmo2", pad_token_id=0)
    p = plan(cpu, load_model_spec(str(other)), Preferences())
    assert p.quantization is None or p.quantization.method != "engine"
    why = next(r for r in p.quantization_rejected if r.method == "engine")
    assert "model type 'olmo2'" in why.reason


def _word_tokenizer(path) -> None:
    """A word-level tokenizer "w0".."w511" saved beside a test checkpoint."""
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"w{i}": i for i in range(SHAPE["vocab_size"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w2", bos_token="w1").save_pretrained(path)


def test_kernelfit_run_on_a_safetensors_directory_uses_the_engine(tmp_path):
    from conftest import run_cli

    _checkpoint(tmp_path, "llama")
    _word_tokenizer(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    out = run_cli("run", str(tmp_path), "--prompt", "w5 w6 w7", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["plan"]["quantization"]["method"] == "engine"
    assert d["packing"]["tensors"][0]["gguf_type"] == "BF16"


def test_a_checkpoint_the_engine_cannot_build_plans_transformers_and_says_which_tensor(tmp_path):
    """Checked at plan time from the shards' headers, so transformers' load and its health check take such a
    checkpoint (a missing tensor is named there, not a KeyError here)."""
    cpu = load_profile("cpu-spr-amx")
    _checkpoint(tmp_path / "bias", "llama", attention_bias=True)
    p = plan(cpu, load_model_spec(str(tmp_path / "bias")), Preferences())
    assert p.quantization is None or p.quantization.method != "engine"
    why = next(r for r in p.quantization_rejected if r.method == "engine")
    assert "model.layers.0.self_attn.o_proj.bias" in why.reason and "transformers loads it instead" in why.reason
    from safetensors.torch import load_file, save_file

    _checkpoint(tmp_path / "gap", "llama")
    f = tmp_path / "gap" / "model.safetensors"
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, f, metadata={"format": "pt"})
    p = plan(cpu, load_model_spec(str(tmp_path / "gap")), Preferences())
    why = next(r for r in p.quantization_rejected if r.method == "engine")
    assert "model.layers.1.mlp.up_proj.weight is missing" in why.reason
    # a dtype the engine does not hold its weights in asks for transformers
    ok = tmp_path / "ok"
    _checkpoint(ok, "llama")
    assert plan(cpu, load_model_spec(str(ok)), Preferences(dtype="float32")).quantization.method == "none"


def test_q8_0_re_quantizes_at_load_into_llama_cpp_s_blocks_and_says_the_loss(tmp_path):
    """--quantization q8_0: each weight becomes llama.cpp's Q8_0 blocks (gguf-py's quantizer, bit-exact with
    ggml's), run by the exact dot products — about half the bytes of bf16 rows, a measured loss in the report."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    from kernelfit.engine.gguf import blocks as gb

    ref = _checkpoint(tmp_path / "ck", "qwen2")
    dense, q8 = build_lean(tmp_path / "ck"), build_lean(tmp_path / "ck", requant="Q8_0")
    assert q8.weight_bytes < 0.6 * dense.weight_bytes
    made = [c for c in q8.conversions if "Q8_0" in c.layout]
    assert made and all(c.gguf_type == "BF16" and 0 < c.rel_error < 0.02 for c in made)
    # the product is the exact dot product over Q8_0 blocks of the stored values
    w = ref.model.layers[0].mlp.down_proj.weight.detach().float().numpy()
    blocks = gb.dequantize(quants.quantize(w, GGMLQuantizationType.Q8_0), "Q8_0", *w.shape)
    x = torch.randn(1, w.shape[1])
    down = next(i for i, a in enumerate(q8.native.a) if q8.native.n[i] == w.shape[0] and a.shape[1] == w.shape[1] * 8)
    from kernelfit.engine.native import native_module

    got = native_module().dot_mm(x, q8.native.a[down], q8.native.b[down], q8.native.c[down], 8, w.shape[0])
    want = x.double() @ torch.from_numpy(np.asarray(blocks)).double().T
    # the dot products' own tolerance (tests/test_packed_gguf.py: ~15-bit activations, the weights exact)
    assert float((got.double() - want).norm() / want.norm()) < 2e-4
    ids = _tokens(200)
    with torch.no_grad():
        truth = ref(ids[None]).logits[0]
    reset_cache(q8, len(ids))
    got = forward(q8, ids, 0, True)
    cos = torch.nn.functional.cosine_similarity(truth, got, dim=-1)
    assert float((truth.argmax(-1) == got.argmax(-1)).float().mean()) >= 0.9 and float(cos.mean()) >= 0.995


def test_q8_0_plans_on_the_engine_and_is_refused_where_it_cannot_run(tmp_path):
    _checkpoint(tmp_path, "llama")
    spec = load_model_spec(str(tmp_path))
    p = plan(load_profile("cpu-spr-amx"), spec, Preferences(quantization="q8_0"))
    assert (p.quantization.method, p.quantization.bits) == ("engine", 8) and "lossy" in p.quantization.reason
    assert p.memory.weights < spec.params * 1.1
    from kernelfit.errors import PlanError

    on_t4 = plan(load_profile("t4"), spec, Preferences(quantization="q8_0"))  # a CPU engine: placed on the host CPU
    assert on_t4.placement.devices == ("cpu",) and on_t4.quantization.method == "engine"
    with pytest.raises(PlanError, match="safetensors checkpoint"):
        plan(load_profile("cpu-spr-amx"), load_model_spec("smollm2-135m"), Preferences(quantization="q8_0"))
