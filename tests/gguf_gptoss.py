"""A tiny transformers gpt-oss model and its GGUF file as llama.cpp's converter writes one (conversion/gpt_oss.py):
gate_up_proj's interleaved columns split into ffn_gate_exps / ffn_up_exps (and their biases), the sinks as
attn_sinks.weight, the router's bias as ffn_gate_inp.bias, the norm before the experts as post_attention_norm, YaRN's
keys from rope_parameters. The experts' weights MXFP4 (as gpt-oss ships them; llama-quantize's MXFP4_MOE), the other
linear weights Q8_0 — the model's own rounded to those grids first (as tests/gguf_qwen35.py does), so the model and
the file hold the same values. Every other layer slides over WINDOW positions, small enough that 300 positions pass it."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

WINDOW = 48
SHAPE = dict(vocab_size=512, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             head_dim=64, intermediate_size=256, num_local_experts=4, num_experts_per_tok=2, sliding_window=WINDOW,
             max_position_embeddings=131072, pad_token_id=0, bos_token_id=1, eos_token_id=2)


def _grid(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return quants.dequantize(quants.quantize(x, qtype), qtype).reshape(x.shape).astype(np.float32)


def tiny_model(seed: int = 0):
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    model = GptOssForCausalLM(GptOssConfig(**SHAPE)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith("sinks"):  # large enough that a head's sink takes a real share of its attention
                p.copy_(1.0 + torch.randn_like(p))
            elif name.endswith("router.weight"):  # float32 in the file (llama-quantize leaves it so)
                p.copy_(0.3 * torch.randn_like(p))
            elif "bias" in name:
                p.copy_(0.05 * torch.randn_like(p))
            elif "experts" in name:  # [experts, in, out] in transformers; the file's rows are the outputs
                x = (0.03 if "down" in name else 0.08) * rng.standard_normal(tuple(p.shape)).astype(np.float32)
                rows = np.ascontiguousarray(x.transpose(0, 2, 1))
                p.copy_(torch.from_numpy(_grid(rows, GGMLQuantizationType.MXFP4).transpose(0, 2, 1).copy()))
            else:
                # q and k at 0.05: YaRN's attention factor scales the scores by 1.81, and at 0.08 they were peaked
                # enough that a bf16 prompt's rounding moved a few rows' logits to a cosine of 0.95
                std = 1.0 if "embed_tokens" in name else 0.03 if "o_proj" in name else \
                    0.05 if name.endswith(("q_proj.weight", "k_proj.weight")) else 0.08
                p.copy_(torch.from_numpy(_grid(std * rng.standard_normal(tuple(p.shape)).astype(np.float32),
                                               GGMLQuantizationType.Q8_0)))
    return model


def add_mxfp4(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    """x (float32 [experts, rows, cols]) as MXFP4 blocks (gguf-py's encoder)."""
    q = quants.quantize(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32), GGMLQuantizationType.MXFP4)
    w.add_tensor(name, q.reshape(*x.shape[:-1], -1), raw_dtype=GGMLQuantizationType.MXFP4)


def write_gptoss(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    rope = c.rope_parameters
    w = GGUFWriter(str(path), "gpt-oss")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(rope["factor"])
    w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_beta_fast(rope["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(rope["beta_slow"])
    w.add_expert_count(c.num_local_experts)
    w.add_expert_used_count(c.num_experts_per_tok)
    w.add_expert_feed_forward_length(c.intermediate_size)
    w.add_sliding_window(c.sliding_window)
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32 = partial(add_q8, w), partial(add_f32, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"])
    q8("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        f32(b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"])
        for x, hf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
            q8(b + f"attn_{x}.weight", sd[p + f"self_attn.{hf}.weight"])
            f32(b + f"attn_{x}.bias", sd[p + f"self_attn.{hf}.bias"])
        f32(b + "attn_sinks.weight", sd[p + "self_attn.sinks"])
        m = p + "mlp."
        f32(b + "ffn_gate_inp.weight", sd[m + "router.weight"])
        f32(b + "ffn_gate_inp.bias", sd[m + "router.bias"])
        gate_up, gate_up_bias = sd[m + "experts.gate_up_proj"], sd[m + "experts.gate_up_proj_bias"]
        rows = gate_up.transpose(0, 2, 1)  # [experts, 2 ffn, hidden]: gate and up interleaved
        add_mxfp4(w, b + "ffn_gate_exps.weight", rows[:, ::2])
        add_mxfp4(w, b + "ffn_up_exps.weight", rows[:, 1::2])
        add_mxfp4(w, b + "ffn_down_exps.weight", sd[m + "experts.down_proj"].transpose(0, 2, 1))
        f32(b + "ffn_gate_exps.bias", gate_up_bias[:, ::2])
        f32(b + "ffn_up_exps.bias", gate_up_bias[:, 1::2])
        f32(b + "ffn_down_exps.bias", sd[m + "experts.down_proj_bias"])
    return finish(w, path)
