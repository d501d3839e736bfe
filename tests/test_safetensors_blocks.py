"""Gemma 2, Gemma 3, Phi-3, Qwen2-MoE and Qwen3-MoE transformers checkpoints (config.json + safetensors) on the packed
engine (issue 27: "other architectures the GGUF engine runs, from config.json"), their tensors read in place through
llama.cpp's converter's layout (catalog/converted_checkpoints.py) and their keys from config.json
(engine/safetensors/config_keys.py), against transformers' own modeling code on the same weights. Before, each was
refused by the engine ("model type 'gemma3_text' is not one the engine reads from config.json") and ran through
transformers."""

from __future__ import annotations

import json

import pytest
import torch

from gguf_tiny import VOCAB
from kernelfit import Preferences, load_model_spec, load_profile, plan
from kernelfit.engine.build import build_lean, forward
from kernelfit.errors import UsageError
from engine_checks import agreement, steps_and_prompt
from test_packed_gguf import _tokens

N = 300  # positions compared (>= 256), past the sliding windows (32) of the Gemma models below
SHAPE = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _config(kind: str):
    import transformers as tf

    gemma = dict(sliding_window=32, query_pre_attn_scalar=48)  # a scale other than head_dim's: config.json's is read
    return {
        # soft-caps low enough to bite on these scores
        "gemma2": lambda: tf.Gemma2Config(**SHAPE, **gemma, num_hidden_layers=4, final_logit_softcapping=30.0,
                                          attn_logit_softcapping=5.0),
        # every other layer global, its rotary scaled linearly; the sliding layers' own base
        "gemma3_text": lambda: tf.Gemma3TextConfig(
            **SHAPE, **gemma, num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 20000.0},
                             "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0}}),
        "phi3": lambda: tf.Phi3Config(**{k: v for k, v in SHAPE.items() if k != "head_dim"}, num_hidden_layers=3,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                       "partial_rotary_factor": 0.5}),
        # LongRoPE (Phi-3.5-mini, Phi-4-mini): short factors within the original context of 512, the attention factor
        # from max_position_embeddings / original; a partial rotary of 3/4 of a head (24 pairs)
        "phi3-longrope": lambda: tf.Phi3Config(
            **{k: v for k, v in SHAPE.items() if k != "head_dim"}, num_hidden_layers=3,
            original_max_position_embeddings=512,
            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                             "original_max_position_embeddings": 512,
                             "short_factor": [1.0 + 0.05 * i for i in range(24)],
                             "long_factor": [2.0 + 0.5 * i for i in range(24)]}),
        # every 4th layer without rotary (layer 3)
        "smollm3": lambda: tf.SmolLM3Config(**{k: v for k, v in SHAPE.items() if k != "head_dim"}, num_hidden_layers=4),
        # Granite 3's multipliers (its 8B's embedding and logit scales; a residual and attention scale)
        "granite": lambda: tf.GraniteConfig(**{k: v for k, v in SHAPE.items() if k != "head_dim"}, num_hidden_layers=3,
                                            embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=8.0,
                                            attention_multiplier=0.03),
        # a dense layer among the MoE ones (mlp_only_layers)
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**SHAPE, num_hidden_layers=3, moe_intermediate_size=256,
                                               num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                                               mlp_only_layers=[1]),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**{k: v for k, v in SHAPE.items() if k != "head_dim"},
                                               num_hidden_layers=3, moe_intermediate_size=256,
                                               shared_expert_intermediate_size=512, num_experts=4,
                                               num_experts_per_tok=2),
    }[kind]()


def tiny_model(kind: str, seed: int = 0):
    """A random model of `kind` with weights of a trained model's sizes (Gemma's norms stored as w of 1 + w)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(kind)).eval()
    gemma = kind.startswith("gemma")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((0 if gemma else 1) + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight") or "shared_expert_gate" in name:  # routers
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                std = 1.0 if "embed" in name else 0.03 if ("o_proj" in name or "down_proj" in name) else 0.08
                p.copy_(std * torch.randn_like(p))
    return model


def _saved(path, kind: str):
    """The model saved by save_pretrained in bf16, and transformers' float32 load of what was written."""
    from transformers import AutoModelForCausalLM

    tiny_model(kind).to(torch.bfloat16).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


ARCHS = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "phi3-longrope": "phi3", "qwen3_moe": "qwen3moe",
         "qwen2_moe": "qwen2moe", "smollm3": "smollm3", "granite": "granite"}


@pytest.mark.parametrize("kind", list(ARCHS))
def test_block_checkpoints_agree_with_transformers_on_the_same_weights(tmp_path, kind):
    """300 positions teacher-forced: decode steps after a 100-token prompt top-1 >= 99% and cosine >= 0.99999 at every
    position (the same bf16 weights, float32 activations on both sides: a fact read wrongly from config.json — the
    sliding layers' rotary base, query_pre_attn_scalar, the linear scaling, a soft-cap — measured 0.9998-0.985 on these
    models); one prompt of all 300 (the bf16 panels) top-1 >= 99% and cosine >= 0.999 — for the MoE models top-1 >= 98%
    and the mean cosine: the prompt's bf16 panels flip routing near-ties, as on their GGUF files (measured 99.0%,
    mean cosine 0.99999)."""
    ref = _saved(tmp_path, kind)
    ids = _tokens(N)
    with torch.no_grad():
        want = ref(ids[None], use_cache=False).logits[0]
    b = build_lean(tmp_path, kv_cache="f32")
    assert b.cfg.arch == ARCHS[kind]
    if kind == "phi3-longrope":  # the short factors hold within the original context: the runner's limit (without
        # them, or without the attention factor, cosine measured 0.927 / 0.997 here)
        assert b.cfg.max_positions == 512
    assert {c.layout for c in b.conversions} == {"bf16"} and all(c.rel_error == 0 for c in b.conversions)
    (top1, cos), (prompt_top1, prompt_cos) = steps_and_prompt(b, ids, want)
    assert top1 >= 0.99 and float(cos.min()) >= 0.99999, (top1, float(cos.min()))
    assert prompt_top1 >= (0.98 if b.cfg.experts else 0.99), prompt_top1
    assert float(prompt_cos.mean() if b.cfg.experts else prompt_cos.min()) >= 0.999, float(prompt_cos.min())


@pytest.mark.parametrize("kind", ["gemma3_text", "qwen3_moe"])
def test_kernelfit_run_on_these_checkpoints_uses_the_engine_and_says_the_layout(tmp_path, kind):
    from conftest import run_cli
    from test_safetensors_engine import _word_tokenizer

    tiny_model(kind).to(torch.bfloat16).save_pretrained(tmp_path)
    _word_tokenizer(tmp_path)
    p = plan(load_profile("cpu-spr-amx"), load_model_spec(str(tmp_path)), Preferences())
    assert p.quantization.method == "engine" and f"llama.cpp's {ARCHS[kind]}" in p.quantization.reason
    out = run_cli("run", str(tmp_path), "--prompt", "w5 w6 w7", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["plan"]["quantization"]["method"] == "engine"
    assert d["packing"]["tensors"][0]["gguf_type"] == "BF16"


@pytest.mark.parametrize("change, problem", [
    ({"norm_topk_prob": False}, "norm_topk_prob False on a qwen3_moe model"),
    ({"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
])
def test_a_qwen_moe_config_the_engine_does_not_run_is_refused_with_the_reason(tmp_path, change, problem):
    """llama.cpp's qwen3moe always renormalises the chosen experts' weights: a config that does not would answer
    differently on the engine, so the plan keeps transformers (the reason names the fact) and the reader refuses it in
    one line."""
    tiny_model("qwen3_moe").to(torch.bfloat16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
    p = plan(load_profile("cpu-spr-amx"), load_model_spec(str(tmp_path)), Preferences())
    assert p.quantization.method != "engine"
    why = next(r for r in p.quantization_rejected if r.method == "engine")
    assert problem in why.reason, why.reason
    with pytest.raises(UsageError, match=problem):
        build_lean(tmp_path, kv_cache="f32")


def test_a_gemma3_layer_pattern_llama_cpp_does_not_build_is_refused(tmp_path):
    tiny_model("gemma3_text").to(torch.bfloat16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="layer_types are not every"):
        build_lean(tmp_path, kv_cache="f32")


def test_gemma3_27b_files_scale_queries_by_hidden_over_heads_as_llama_cpp_does():
    """llama.cpp's gemma3 build scales the 27B model's (62 layers) queries by (hidden / heads)^-0.5 = 168^-0.5
    (transformers: its query_pre_attn_scalar 168), every other size's by head_dim^-0.5; the sliding layers' rotary base
    is rope.freq_base_swa where a file stores it. Before, a Gemma 3 27B GGUF file ran with 128^-0.5 (only Gemma 2's 27B
    rule was read)."""
    from kernelfit.engine.recipe_gguf import recipe_from_gguf
    from kernelfit.engine.safetensors.config_keys import ConfigHeader

    def header(layers, **more):
        return ConfigHeader("gemma3", {"embedding_length": 5376, "block_count": layers, "attention.head_count": 32,
                                       "attention.head_count_kv": 16, "attention.key_length": 128,
                                       "feed_forward_length": 21504, "vocab_size": 262208, **more}, "g.gguf")

    assert recipe_from_gguf(header(62)).query_scale == pytest.approx(168 ** -0.5)
    assert recipe_from_gguf(header(48)).query_scale is None  # head_dim^-0.5
    assert recipe_from_gguf(header(48)).local_rotary.base == 10000.0
    assert recipe_from_gguf(header(48, **{"rope.freq_base_swa": 20000.0})).local_rotary.base == 20000.0


def test_a_smollm3_whose_rotary_free_layers_are_not_every_4th_is_refused(tmp_path):
    """llama.cpp's smollm3 build hard-codes every 4th layer without rotary (the recipe too): a config whose
    no_rope_layers say otherwise would answer differently on the engine, so the plan keeps transformers and the reader
    refuses it (without its NoPE layers the tiny SmolLM3 above measured cosine 0.986)."""
    tiny_model("smollm3").to(torch.bfloat16).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "no_rope_layers": [1, 1, 1, 1]}))
    p = plan(load_profile("cpu-spr-amx"), load_model_spec(str(tmp_path)), Preferences())
    assert p.quantization.method != "engine"
    assert "no_rope_layers are not every 4th" in next(r for r in p.quantization_rejected if r.method == "engine").reason
    with pytest.raises(UsageError, match="no_rope_layers are not every 4th"):
        build_lean(tmp_path, kv_cache="f32")
