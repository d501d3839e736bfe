"""A tiny transformers Qwen3.5 (text) model and its GGUF file as llama.cpp's converter writes one (transformers reads no
qwen35 GGUF files, so the tests write the file from the model): convert_hf_to_gguf's Qwen3.5 rules — every norm but
the Gated DeltaNet's own stored + 1, A_log stored as ssm_a = -exp(A_log), the conv taps squeezed to [channels, K],
q_proj kept whole (rows [q_h, gate_h] a head), and where value heads outnumber key heads, every value-head tensor
re-ordered from transformers' grouped order to llama.cpp's tiled one (GGUF value head j = transformers' head
(j % nk) * r + j // nk, r = nv / nk; conversion/qwen.py _LinearAttentionVReorderBase).

The linear weights are Q8_0 in the file; the model's own weights are first rounded to Q8_0's grid, so the model and
the file hold the same values and the comparison measures the engine alone.
"""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

LAYER_TYPES = ("linear_attention", "linear_attention", "full_attention", "linear_attention", "linear_attention",
               "full_attention")
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=len(LAYER_TYPES),
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_conv_kernel_dim=4,
             linear_key_head_dim=32, linear_value_head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4,
             rms_norm_eps=1e-6, max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=0,
             bos_token_id=1, eos_token_id=2, layer_types=list(LAYER_TYPES),
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                              "mrope_section": [3, 3, 2]})


MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=256, shared_expert_intermediate_size=256)


def tiny_model(seed: int = 0, moe: bool = False):
    """A random Qwen3.5 text model (or Qwen3.5-MoE: 4 experts, 2 a token, a shared expert) whose weights are on Q8_0's
    grid (its norms, taps, decays and biases random too)."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5MoeForCausalLM, Qwen3_5MoeTextConfig, Qwen3_5TextConfig

    torch.manual_seed(seed)
    if moe:
        shape = {k: v for k, v in SHAPE.items() if k != "intermediate_size"}
        model = Qwen3_5MoeForCausalLM(Qwen3_5MoeTextConfig(**shape, **MOE)).eval()
    else:
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**SHAPE)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(0.1 * torch.randn_like(p))  # (1 + w); the gated norm's w alone is set below
            elif p.dim() in (2, 3) and "conv1d" not in name and not name.endswith("mlp.gate.weight"):
                std = 1.0 if "embed_tokens" in name else 0.03 if ("o_proj" in name or "out_proj" in name or
                                                                   "down_proj" in name) else 0.08
                p.copy_(torch.from_numpy(_q8_grid(std * np.random.default_rng(zlib.crc32(name.encode()))
                                                  .standard_normal(tuple(p.shape)).astype(np.float32))))
            elif p.dim() == 2:  # a router: float32 in the file (llama-quantize leaves it so)
                p.copy_(0.3 * torch.randn_like(p))
            elif "conv1d" in name:
                p.copy_(0.3 * torch.randn_like(p))
            elif "dt_bias" in name:
                p.copy_(0.5 * torch.randn_like(p))
        for layer in model.model.layers:
            if hasattr(layer, "linear_attn"):
                layer.linear_attn.norm.weight.copy_(1.0 + 0.1 * torch.randn_like(layer.linear_attn.norm.weight))
    return model


def _q8_grid(x: np.ndarray) -> np.ndarray:
    t = GGMLQuantizationType.Q8_0
    return quants.dequantize(quants.quantize(x, t), t).reshape(x.shape).astype(np.float32)


def _v_order(nk: int, nv: int) -> np.ndarray:
    """GGUF value head j <- transformers value head (j % nk) * r + j // nk."""
    r = nv // nk
    return np.array([(j % nk) * r + j // nk for j in range(nv)])


def write_qwen35(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    nk, dk, nv, dv = (c.linear_num_key_heads, c.linear_key_head_dim, c.linear_num_value_heads,
                      c.linear_value_head_dim)
    heads = _v_order(nk, nv)

    def v_rows(x: np.ndarray, size: int) -> np.ndarray:  # rows in blocks of `size` a value head, re-ordered
        return x.reshape(nv, size, *x.shape[1:])[heads].reshape(x.shape)

    moe = getattr(c, "num_experts", 0)
    w = GGUFWriter(str(path), "qwen35moe" if moe else "qwen35")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    if moe:
        w.add_expert_count(c.num_experts)
        w.add_expert_used_count(c.num_experts_per_tok)
        w.add_expert_feed_forward_length(c.moe_intermediate_size)
        w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
    else:
        w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(int(c.head_dim * c.rope_parameters["partial_rotary_factor"]))
    w.add_rope_dimension_sections([*c.rope_parameters["mrope_section"], 0])
    w.add_ssm_conv_kernel(c.linear_conv_kernel_dim)
    w.add_ssm_state_size(dk)
    w.add_ssm_group_count(nk)
    w.add_ssm_time_step_rank(nv)
    w.add_ssm_inner_size(dv * nv)
    w.add_array(f"{w.arch}.attention.recurrent_layers", [t == "linear_attention" for t in c.layer_types])
    w.add_uint32(f"{w.arch}.full_attention_interval", 3)
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32 = partial(add_q8, w), partial(add_f32, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"] + 1)
    for i, kind in enumerate(c.layer_types):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"] + 1)
        f32(b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"] + 1)
        if moe:  # the router, every expert's gate, up and down (3-D), the shared expert and its one-row gate
            f32(b + "ffn_gate_inp.weight", sd[p + "mlp.gate.weight"])
            gate_up, ffn = sd[p + "mlp.experts.gate_up_proj"], c.moe_intermediate_size
            for x, data in (("gate", gate_up[:, :ffn]), ("up", gate_up[:, ffn:]), ("down", sd[p + "mlp.experts.down_proj"])):
                q8(b + f"ffn_{x}_exps.weight", data)
            for x in ("gate", "up", "down"):
                q8(b + f"ffn_{x}_shexp.weight", sd[p + f"mlp.shared_expert.{x}_proj.weight"])
            f32(b + "ffn_gate_inp_shexp.weight", sd[p + "mlp.shared_expert_gate.weight"].reshape(-1))
        else:
            for x in ("gate", "up", "down"):
                q8(b + f"ffn_{x}.weight", sd[p + f"mlp.{x}_proj.weight"])
        if kind == "full_attention":
            a = p + "self_attn."
            q8(b + "attn_q.weight", sd[a + "q_proj.weight"])
            q8(b + "attn_k.weight", sd[a + "k_proj.weight"])
            q8(b + "attn_v.weight", sd[a + "v_proj.weight"])
            q8(b + "attn_output.weight", sd[a + "o_proj.weight"])
            f32(b + "attn_q_norm.weight", sd[a + "q_norm.weight"] + 1)
            f32(b + "attn_k_norm.weight", sd[a + "k_norm.weight"] + 1)
            continue
        a = p + "linear_attn."
        qkv = sd[a + "in_proj_qkv.weight"]
        kd = nk * dk
        q8(b + "attn_qkv.weight", np.concatenate([qkv[:2 * kd], v_rows(qkv[2 * kd:], dv)]))
        q8(b + "attn_gate.weight", v_rows(sd[a + "in_proj_z.weight"], dv))
        q8(b + "ssm_beta.weight", v_rows(sd[a + "in_proj_b.weight"], 1))
        q8(b + "ssm_alpha.weight", v_rows(sd[a + "in_proj_a.weight"], 1))
        taps = sd[a + "conv1d.weight"].squeeze(1)
        f32(b + "ssm_conv1d.weight", np.concatenate([taps[:2 * kd], v_rows(taps[2 * kd:], dv)]))
        f32(b + "ssm_dt.bias", v_rows(sd[a + "dt_bias"], 1))
        f32(b + "ssm_a", v_rows(-np.exp(sd[a + "A_log"]), 1))
        f32(b + "ssm_norm.weight", sd[a + "norm.weight"])
        out = sd[a + "out_proj.weight"]  # its input columns, a value head's dv at a time
        q8(b + "ssm_out.weight", out.reshape(out.shape[0], nv, dv)[:, heads].reshape(out.shape))
    return finish(w, path)
