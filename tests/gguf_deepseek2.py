"""Tiny transformers DeepSeek models and their GGUF files as llama.cpp's converter writes them (conversion/deepseek.py
DeepseekV2Model): architecture "deepseek2", one KV head of kv_lora_rank + rope values (key_length), the head sizes
before absorption as key_length_mla / value_length_mla, kv_b_proj split per head into attn_k_b (transposed: [heads,
kv_rank, nope]) and attn_v_b ([heads, value, kv_rank]), Q as one product or q_a / its norm / q_b, the rotary pairs as
trained (side by side), YaRN's mscale_all_dim stored as 0.1 x it in yarn_log_multiplier, the experts' keys.

Two variants: "v3" — DeepseekV3 (the layout of V3, Moonlight, Kimi, GLM-4.7-Flash): low-rank Q, YaRN with mscale =
mscale_all_dim = 0.707 (so the rotary's factor is 1 and the scores scale by mscale(4, 0.707)^2), sigmoid-routed experts
with a selection bias, renormalised, routed scale 2.5; "v2" — DeepseekV2 (V2-Lite's layout): Q one product, no rotary
scaling, softmax routing without renormalisation, no gating key in the file (llama.cpp's default for V2 files).
Linear weights Q8_0 (experts Q4_0), the model's own rounded to those grids first."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

Q4, Q8 = GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
             n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32,
             v_head_dim=64, n_group=1, topk_group=1, max_position_embeddings=4096, tie_word_embeddings=False,
             pad_token_id=0, bos_token_id=1, eos_token_id=2)
VARIANTS = {
    "v3": dict(q_lora_rank=96, routed_scaling_factor=2.5, norm_topk_prob=True,
               rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0,
                                "mscale": 0.707, "mscale_all_dim": 0.707}),
    "v2": dict(q_lora_rank=None, routed_scaling_factor=1.0, norm_topk_prob=False, topk_method="greedy"),
}


def _grid(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return quants.dequantize(quants.quantize(x, qtype), qtype).reshape(x.shape).astype(np.float32)


def tiny_model(variant: str = "v3", seed: int = 0):
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    config, cls = (DeepseekV3Config, DeepseekV3ForCausalLM) if variant == "v3" else \
        (DeepseekV2Config, DeepseekV2ForCausalLM)
    torch.manual_seed(seed)
    model = cls(config(**SHAPE, **VARIANTS[variant])).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith(("norm.weight", "layernorm.weight")):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):  # the router: float32 in the file
                p.copy_(0.3 * torch.randn_like(p))
            else:
                std = 1.0 if "embed_tokens" in name else 0.03 if ("o_proj" in name or "down_proj" in name) else 0.08
                x = (std * rng.standard_normal(tuple(p.shape))).astype(np.float32)
                p.copy_(torch.from_numpy(_grid(x, Q4 if "experts." in name else Q8)))
        for layer in model.model.layers[SHAPE["first_k_dense_replace"]:]:
            if hasattr(layer.mlp.gate, "e_score_correction_bias"):  # V3's selection bias (a buffer)
                layer.mlp.gate.e_score_correction_bias.copy_(0.1 * torch.randn(SHAPE["n_routed_experts"]))
    return model


def add_q4(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    q = quants.quantize(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32), Q4)
    w.add_tensor(name, q.reshape(*x.shape[:-1], -1), raw_dtype=Q4)


def write_deepseek2(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    heads, kv_rank, nope, rope, value = (c.num_attention_heads, c.kv_lora_rank, c.qk_nope_head_dim,
                                         c.qk_rope_head_dim, c.v_head_dim)
    w = GGUFWriter(str(path), "deepseek2")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(1)
    w.add_key_length(kv_rank + rope)
    w.add_value_length(kv_rank)
    w.add_key_length_mla(nope + rope)
    w.add_value_length_mla(value)
    if c.q_lora_rank:
        w.add_q_lora_rank(c.q_lora_rank)
    w.add_kv_lora_rank(kv_rank)
    w.add_rope_dimension_count(rope)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    r = c.rope_parameters
    w.add_rope_freq_base(r["rope_theta"])
    if r.get("rope_type") == "yarn":
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(r["factor"])
        w.add_rope_scaling_orig_ctx_len(r["original_max_position_embeddings"])
        w.add_rope_scaling_yarn_beta_fast(r["beta_fast"])
        w.add_rope_scaling_yarn_beta_slow(r["beta_slow"])
        w.add_rope_scaling_yarn_log_mul(0.1 * r["mscale_all_dim"])  # TAG_DEEPSEEK2_YARN_LOG_MUL_FIX
    w.add_leading_dense_block_count(c.first_k_dense_replace)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_count(c.n_routed_experts)
    w.add_expert_shared_count(c.n_shared_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_weights_scale(c.routed_scaling_factor)
    if c.norm_topk_prob:
        w.add_expert_weights_norm(True)
    if c.model_type == "deepseek_v3":
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32, q4 = partial(add_q8, w), partial(add_f32, w), partial(add_q4, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"])
    q8("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        a = p + "self_attn."
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        f32(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        if c.q_lora_rank:
            q8(b + "attn_q_a.weight", sd[a + "q_a_proj.weight"])
            f32(b + "attn_q_a_norm.weight", sd[a + "q_a_layernorm.weight"])
            q8(b + "attn_q_b.weight", sd[a + "q_b_proj.weight"])
        else:
            q8(b + "attn_q.weight", sd[a + "q_proj.weight"])
        q8(b + "attn_kv_a_mqa.weight", sd[a + "kv_a_proj_with_mqa.weight"])
        f32(b + "attn_kv_a_norm.weight", sd[a + "kv_a_layernorm.weight"])
        kv_b = sd[a + "kv_b_proj.weight"].reshape(heads, nope + value, kv_rank)
        q8(b + "attn_k_b.weight", np.ascontiguousarray(kv_b[:, :nope].transpose(0, 2, 1)))  # [heads, kv_rank, nope]
        q8(b + "attn_v_b.weight", np.ascontiguousarray(kv_b[:, nope:]))  # [heads, value, kv_rank]
        q8(b + "attn_output.weight", sd[a + "o_proj.weight"])
        m = p + "mlp."
        if i < c.first_k_dense_replace:
            for x in ("gate", "up", "down"):
                q8(b + f"ffn_{x}.weight", sd[m + f"{x}_proj.weight"])
            continue
        f32(b + "ffn_gate_inp.weight", sd[m + "gate.weight"])
        if m + "gate.e_score_correction_bias" in sd:
            f32(b + "exp_probs_b.bias", sd[m + "gate.e_score_correction_bias"])
        gate_up = sd[m + "experts.gate_up_proj"]  # [experts, 2 ffn, hidden]: the gate's rows, then the up's
        q4(b + "ffn_gate_exps.weight", gate_up[:, :c.moe_intermediate_size])
        q4(b + "ffn_up_exps.weight", gate_up[:, c.moe_intermediate_size:])
        q4(b + "ffn_down_exps.weight", sd[m + "experts.down_proj"])
        for x in ("gate", "up", "down"):
            q8(b + f"ffn_{x}_shexp.weight", sd[m + f"shared_experts.{x}_proj.weight"])
    return finish(w, path)
