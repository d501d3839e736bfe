"""A tiny transformers Granite 4.0-H (GraniteMoeHybrid) model and its GGUF file as llama.cpp's converter writes one
(conversion/granite.py GraniteHybridModel, conversion/mamba.py Mamba2Model): architecture "granitehybrid", the
attention layers' KV head counts per layer (0 on a Mamba-2 layer), no rotary (rope.scaling.finetuned false), Granite's
embedding / residual / logit / attention multipliers, the dense FFN's input_linear split into ffn_gate / ffn_up, and a
Mamba-2 layer's in_proj as ssm_in, its conv taps squeezed to [channels, K] with their bias, A_log stored as
ssm_a = -exp(A_log), D as ssm_d, the gated norm as [groups, inner / groups], out_proj as ssm_out.

Linear weights Q8_0 in the file, the model's own rounded to that grid first; A, D, dt bias and the conv random, so
that every term of the recurrence matters. The token table's std is 0.1, so that after Granite's embedding multiplier
(12) the residual stream is ~1 and the layers (their outputs times the residual multiplier 0.22) move the logits: at
std 1 the logits barely depended on them (zeroing every Mamba-2 layer's D left a cosine of 0.9996)."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

LAYER_TYPES = ("mamba", "attention", "mamba", "mamba", "attention", "mamba")
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, shared_intermediate_size=512,
             num_hidden_layers=len(LAYER_TYPES), num_attention_heads=4, num_key_value_heads=2,
             layer_types=list(LAYER_TYPES), mamba_n_heads=8, mamba_d_head=64, mamba_n_groups=2, mamba_d_state=32,
             mamba_d_conv=4, mamba_expand=2, num_local_experts=0, position_embedding_type=None,
             embedding_multiplier=12.0, residual_multiplier=0.22, logits_scaling=8.0, attention_multiplier=0.015625,
             max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _q8_grid(x: np.ndarray) -> np.ndarray:
    t = GGMLQuantizationType.Q8_0
    return quants.dequantize(quants.quantize(x, t), t).reshape(x.shape).astype(np.float32)


MOE = dict(num_local_experts=4, num_experts_per_tok=2)  # Granite 4.0-H-Tiny's kind: experts beside the shared MLP


def tiny_model(seed: int = 0, moe: bool = False):
    from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

    torch.manual_seed(seed)
    model = GraniteMoeHybridForCausalLM(GraniteMoeHybridConfig(**{**SHAPE, **(MOE if moe else {})})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("A_log"):
                p.copy_(torch.empty_like(p).uniform_(-1.0, 1.5))
            elif name.endswith((".D", "dt_bias")):
                p.copy_(torch.randn_like(p))
            elif "conv1d" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif name.endswith("router.weight"):  # float32 in the file (llama-quantize leaves it so)
                p.copy_(0.3 * torch.randn_like(p))
            else:
                std = 0.1 if "embed_tokens" in name else 0.03 if ("o_proj" in name or "out_proj" in name or
                                                                   "output_linear" in name) else 0.08
                p.copy_(torch.from_numpy(_q8_grid(std * rng.standard_normal(tuple(p.shape)).astype(np.float32))))
    return model


def write_granitehybrid(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    types = [("mamba" if t in ("mamba", "linear_attention") else "attention") for t in c.layer_types]
    heads, head_dim, groups = c.mamba_n_heads, c.mamba_d_head, c.mamba_n_groups
    inner = heads * head_dim
    w = GGUFWriter(str(path), "granitehybrid")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.shared_intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv([c.num_key_value_heads if t == "attention" else 0 for t in types])
    w.add_key_length(c.hidden_size // c.num_attention_heads)
    w.add_value_length(c.hidden_size // c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_scaling_finetuned(False)  # no rotary: Granite 4.0-H's attention is NoPE
    w.add_embedding_scale(c.embedding_multiplier)
    w.add_residual_scale(c.residual_multiplier)
    w.add_logit_scale(c.logits_scaling)
    w.add_attention_scale(c.attention_multiplier)
    w.add_ssm_conv_kernel(c.mamba_d_conv)
    w.add_ssm_state_size(c.mamba_d_state)
    w.add_ssm_group_count(groups)
    w.add_ssm_inner_size(inner)
    w.add_ssm_time_step_rank(heads)
    if c.num_local_experts:  # llama.cpp's GraniteMoe keys: the experts' size is intermediate_size, the shared one's
        w.add_expert_count(c.num_local_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.intermediate_size)
        w.add_expert_shared_feed_forward_length(c.shared_intermediate_size)
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32 = partial(add_q8, w), partial(add_f32, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"])
    for i, kind in enumerate(types):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        f32(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        if kind == "mamba":
            m = p + "mamba."
            q8(b + "ssm_in.weight", sd[m + "in_proj.weight"])
            f32(b + "ssm_conv1d.weight", sd[m + "conv1d.weight"].squeeze(1))
            f32(b + "ssm_conv1d.bias", sd[m + "conv1d.bias"])
            f32(b + "ssm_dt.bias", sd[m + "dt_bias"])
            f32(b + "ssm_a", -np.exp(sd[m + "A_log"]).reshape(heads, 1))
            f32(b + "ssm_d", sd[m + "D"].reshape(heads, 1))
            f32(b + "ssm_norm.weight", sd[m + "norm.weight"].reshape(groups, inner // groups))
            q8(b + "ssm_out.weight", sd[m + "out_proj.weight"])
        else:
            for x in "qkv":
                q8(b + f"attn_{x}.weight", sd[p + f"self_attn.{x}_proj.weight"])
            q8(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        gate_up = sd[p + "shared_mlp.input_linear.weight"]  # [gate rows | up rows]
        shared = "_shexp" if c.num_local_experts else ""  # beside experts the shared MLP is a shared expert
        q8(b + f"ffn_gate{shared}.weight", gate_up[:c.shared_intermediate_size])
        q8(b + f"ffn_up{shared}.weight", gate_up[c.shared_intermediate_size:])
        q8(b + f"ffn_down{shared}.weight", sd[p + "shared_mlp.output_linear.weight"])
        if c.num_local_experts:
            e = p + "block_sparse_moe."
            f32(b + "ffn_gate_inp.weight", sd[e + "router.weight"])
            experts = sd[e + "experts.gate_up_proj"]  # [experts, 2 ffn, hidden]: the gate's rows, then the up's
            q8(b + "ffn_gate_exps.weight", experts[:, :c.intermediate_size])
            q8(b + "ffn_up_exps.weight", experts[:, c.intermediate_size:])
            q8(b + "ffn_down_exps.weight", sd[e + "experts.down_proj"])
    return finish(w, path)
