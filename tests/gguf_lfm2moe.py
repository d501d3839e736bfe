"""A tiny transformers LFM2-MoE model and its GGUF file as llama.cpp's converter writes one (conversion/lfm2.py;
transformers reads no lfm2moe GGUF file): head_count_kv per layer (0 on the short convolutions), the first
num_dense_layers with a dense FFN, then experts chosen by sigmoid scores plus a selection bias (exp_probs_b.bias,
expert_gating_func 2), the final norm under token_embd_norm. Linear weights Q8_0, the model's own rounded to its grid
first (as tests/gguf_qwen35.py does), so the model and the file hold the same values."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFWriter
from gguf_qwen35 import _q8_grid
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

KINDS = ("conv", "conv", "full_attention", "conv", "full_attention", "conv")
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
             num_hidden_layers=len(KINDS), num_attention_heads=4, num_key_value_heads=2, num_experts=4,
             num_experts_per_tok=2, num_dense_layers=1, layer_types=list(KINDS), conv_L_cache=3,
             tie_word_embeddings=True, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_model(seed: int = 0):
    from transformers import Lfm2MoeConfig, Lfm2MoeForCausalLM

    torch.manual_seed(seed)
    model = Lfm2MoeForCausalLM(Lfm2MoeConfig(**SHAPE)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "conv.conv" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("feed_forward.gate.weight"):  # the router, float32 in the file
                p.copy_(0.3 * torch.randn_like(p))
            else:
                std = 1.0 if "embed_tokens" in name else 0.03 if any(
                    x in name for x in ("out_proj", "w2", "down_proj")) else 0.08
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                p.copy_(torch.from_numpy(_q8_grid(std * rng.standard_normal(tuple(p.shape)).astype(np.float32))))
        for layer in model.model.layers:  # a selection bias large enough to change choices
            if hasattr(layer.feed_forward, "expert_bias"):
                layer.feed_forward.expert_bias.copy_(0.2 * torch.randn_like(layer.feed_forward.expert_bias))
    return model


def write_lfm2moe(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(path), "lfm2moe")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if t == "full_attention" else 0 for t in c.layer_types])
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_expert_count(c.num_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_feed_forward_length(c.moe_intermediate_size)
    w.add_leading_dense_block_count(c.num_dense_layers)
    w.add_uint32("lfm2moe.expert_gating_func", 2)  # sigmoid
    w.add_vocab_size(c.vocab_size)
    w.add_shortconv_l_cache(c.conv_L_cache)
    tiny_vocab(w, c.vocab_size)
    q8, f32 = partial(add_q8, w), partial(add_f32, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("token_embd_norm.weight", sd["model.embedding_norm.weight"])
    for i, kind in enumerate(c.layer_types):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", sd[p + "operator_norm.weight"])
        f32(b + "ffn_norm.weight", sd[p + "ffn_norm.weight"])
        if kind == "full_attention":
            for x, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "out_proj")):
                q8(b + f"attn_{x}.weight", sd[p + f"self_attn.{hf}.weight"])
            f32(b + "attn_q_norm.weight", sd[p + "self_attn.q_layernorm.weight"])
            f32(b + "attn_k_norm.weight", sd[p + "self_attn.k_layernorm.weight"])
        else:
            f32(b + "shortconv.conv.weight", sd[p + "conv.conv.weight"].squeeze(1))
            q8(b + "shortconv.in_proj.weight", sd[p + "conv.in_proj.weight"])
            q8(b + "shortconv.out_proj.weight", sd[p + "conv.out_proj.weight"])
        f = p + "feed_forward."
        if i < c.num_dense_layers:
            for x, hf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                q8(b + f"ffn_{x}.weight", sd[f + f"{hf}.weight"])
            continue
        f32(b + "ffn_gate_inp.weight", sd[f + "gate.weight"])
        f32(b + "exp_probs_b.bias", sd[f + "expert_bias"])
        gate_up, ffn = sd[f + "experts.gate_up_proj"], c.moe_intermediate_size
        for x, data in (("gate", gate_up[:, :ffn]), ("up", gate_up[:, ffn:]), ("down", sd[f + "experts.down_proj"])):
            q8(b + f"ffn_{x}_exps.weight", data)
    return finish(w, path)
