"""A tiny transformers Ministral 3 model and its GGUF file as llama.cpp's converter writes one (conversion/mistral3.py,
Ministral3Model on LlamaModel): architecture "mistral3", Q and K rows permuted to rotary pairs side by side
(LlamaModel.permute), YaRN's keys from rope_parameters with mscale_all_dim as rope.scaling.yarn_log_multiplier and
llama_4_scaling_beta as attention.temperature_scale. The attention weights are Q8_0, the FFN's Q4_0 — the model's own
rounded to those grids first, so the model and the file hold the same values.

The original context is ORIGINAL positions (Ministral 3's is 16,384): 300 positions cross it four times, so the YaRN
ramp and the query temperature (1 + beta ln(1 + floor(pos / ORIGINAL))) both act within the test's text."""

from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, quants
from gguf_tiny import add_f32, add_q8, finish, tiny_vocab

ORIGINAL = 64
BETA = 0.3  # Ministral 3's is 0.1; larger, so that a missing temperature shows in 300 positions
SHAPE = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=ORIGINAL * 16, pad_token_id=0,
             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)


def rope(beta: float = BETA) -> dict:
    return {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 16.0, "original_max_position_embeddings": ORIGINAL,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": beta}


def _grid(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return quants.dequantize(quants.quantize(x, qtype), qtype).reshape(x.shape).astype(np.float32)


def tiny_model(seed: int = 0, beta: float = BETA):
    from transformers import Ministral3Config, Ministral3ForCausalLM

    torch.manual_seed(seed)
    model = Ministral3ForCausalLM(Ministral3Config(**SHAPE, rope_parameters=rope(beta))).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            rng = np.random.default_rng(zlib.crc32(name.encode()))
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
                continue
            std = 1.0 if "embed_tokens" in name else 0.03 if ("o_proj" in name or "down_proj" in name) else 0.08
            qtype = GGMLQuantizationType.Q4_0 if "mlp" in name else GGMLQuantizationType.Q8_0
            p.copy_(torch.from_numpy(_grid(std * rng.standard_normal(tuple(p.shape)).astype(np.float32), qtype)))
    return model


def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: each head's two rotary halves interleaved into pairs side by side."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def add_q4(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    q = quants.quantize(np.ascontiguousarray(x, dtype=np.float32), GGMLQuantizationType.Q4_0)
    w.add_tensor(name, q, raw_dtype=GGMLQuantizationType.Q4_0)


def write_mistral3(path: Path, model) -> Path:
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    r = c.rope_parameters
    w = GGUFWriter(str(path), "mistral3")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(r["rope_theta"])
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(r["factor"])
    w.add_rope_scaling_orig_ctx_len(r["original_max_position_embeddings"])
    w.add_rope_scaling_yarn_beta_fast(r["beta_fast"])
    w.add_rope_scaling_yarn_beta_slow(r["beta_slow"])
    w.add_rope_scaling_yarn_log_mul(r["mscale_all_dim"])
    w.add_attn_temperature_scale(r["llama_4_scaling_beta"])
    w.add_vocab_size(c.vocab_size)
    tiny_vocab(w, c.vocab_size)
    q8, f32, q4 = partial(add_q8, w), partial(add_f32, w), partial(add_q4, w)

    q8("token_embd.weight", sd["model.embed_tokens.weight"])
    f32("output_norm.weight", sd["model.norm.weight"])
    q8("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        f32(b + "attn_norm.weight", sd[p + "input_layernorm.weight"])
        f32(b + "ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        q8(b + "attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads))
        q8(b + "attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads))
        q8(b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        q8(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        for x in ("gate", "up", "down"):
            q4(b + f"ffn_{x}.weight", sd[p + f"mlp.{x}_proj.weight"])
    return finish(w, path)
