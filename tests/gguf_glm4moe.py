"""A tiny transformers GLM-4.5 (Glm4Moe) model and its GGUF file as llama.cpp's converter writes one (conversion/glm.py
Glm4MoeModel): architecture "glm4moe", Q and K rows as they are (NEOX pairs: half of each head rotated, its halves
side by side), Q/K/V biases, per-head QK norms, the norm before the FFN as post_attention_norm, a leading dense layer,
then sigmoid-routed experts (the router float32, e_score_correction_bias as exp_probs_b.bias, gate_up_proj split into
ffn_gate_exps / ffn_up_exps) beside an ungated shared expert, and the keys for the expert count, the shared count, the
leading dense blocks, the gating function (sigmoid), the routed scale and norm_topk_prob. One multi-token-prediction
block follows the model's own (nextn_predict_layers 1, as GLM-4.5's files carry it): the engine must skip it.

The experts' weights are Q4_0 in the file, the other linear weights Q8_0 — the model's own rounded to those grids first,
so the model and the file hold the same values."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

Q4, Q8 = GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q8_0
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, n_routed_experts=8, num_experts_per_tok=3,
             n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True,
             use_qk_norm=True, attention_bias=True, n_group=1, topk_group=1, max_position_embeddings=4096,
             tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _grid(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return quants.dequantize(quants.quantize(x, qtype), qtype).reshape(x.shape).astype(np.float32)


def tiny_model(seed: int = 0):
    from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

    torch.manual_seed(seed)
    model = Glm4MoeForCausalLM(Glm4MoeConfig(**SHAPE)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):  # the router: float32 in the file (llama-quantize leaves it so)
                p.copy_(0.3 * torch.randn_like(p))
            elif "bias" in name:
                p.copy_(0.05 * torch.randn_like(p))
            else:
                std = 1.0 if "embed_tokens" in name else 0.03 if ("o_proj" in name or "down_proj" in name) else 0.08
                x = (std * rng.standard_normal(tuple(p.shape))).astype(np.float32)
                p.copy_(torch.from_numpy(_grid(x, Q4 if "experts." in name else Q8)))
        for layer in model.model.layers[SHAPE["first_k_dense_replace"]:]:  # the selection bias (a buffer)
            layer.mlp.gate.e_score_correction_bias.copy_(0.1 * torch.randn(SHAPE["n_routed_experts"]))
    return model


def add_q4(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    q = quants.quantize(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32), Q4)
    w.add_tensor(name, q.reshape(*x.shape[:-1], -1), raw_dtype=Q4)


def write_glm4moe(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(path), "glm4moe")
    layers = c.num_hidden_layers
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(layers + 1)  # and the MTP block
    w.add_nextn_predict_layers(1)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(int(c.head_dim * c.rope_parameters["partial_rotary_factor"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_expert_count(c.n_routed_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_expert_shared_count(c.n_shared_experts)
    w.add_leading_dense_block_count(c.first_k_dense_replace)
    w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    w.add_expert_weights_scale(c.routed_scaling_factor)
    w.add_expert_weights_norm(c.norm_topk_prob)
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32, q4 = partial(add_q8, w), partial(add_f32, w), partial(add_q4, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"])
    q8("output.weight", sd["lm_head.weight"])
    for i in range(layers + 1):
        p, b = f"model.layers.{min(i, layers - 1)}.", f"blk.{i}."  # the MTP block: the last layer's weights again
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        f32(b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"])
        for x in "qkv":
            q8(b + f"attn_{x}.weight", sd[p + f"self_attn.{x}_proj.weight"])
            f32(b + f"attn_{x}.bias", sd[p + f"self_attn.{x}_proj.bias"])
        q8(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        f32(b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"])
        f32(b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"])
        m = p + "mlp."
        if i < c.first_k_dense_replace:
            for x in ("gate", "up", "down"):
                q8(b + f"ffn_{x}.weight", sd[m + f"{x}_proj.weight"])
            continue
        f32(b + "ffn_gate_inp.weight", sd[m + "gate.weight"])
        f32(b + "exp_probs_b.bias", sd[m + "gate.e_score_correction_bias"])
        gate_up = sd[m + "experts.gate_up_proj"]  # [experts, 2 ffn, hidden]: the gate's rows, then the up's
        q4(b + "ffn_gate_exps.weight", gate_up[:, :c.moe_intermediate_size])
        q4(b + "ffn_up_exps.weight", gate_up[:, c.moe_intermediate_size:])
        q4(b + "ffn_down_exps.weight", sd[m + "experts.down_proj"])
        for x in ("gate", "up", "down"):
            q8(b + f"ffn_{x}_shexp.weight", sd[m + f"shared_experts.{x}_proj.weight"])
        if i == layers:  # the MTP block's own tensors (llama.cpp's NEXTN names)
            q8(b + "nextn.eh_proj.weight", np.zeros((c.hidden_size, 2 * c.hidden_size), np.float32))
            for x in ("enorm", "hnorm", "shared_head_norm"):
                f32(b + f"nextn.{x}.weight", np.ones(c.hidden_size, np.float32))
    return finish(w, path)
