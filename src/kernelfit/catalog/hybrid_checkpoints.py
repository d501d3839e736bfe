"""The hybrid architectures' transformers checkpoints under llama.cpp's tensor names and layouts: what
convert_hf_to_gguf.py's modify_tensors does to each of their tensors (conversion/qwen.py Qwen3_5TextModel and
_LinearAttentionVReorderBase, conversion/lfm2.py, conversion/granite.py GraniteHybridModel with conversion/mamba.py),
done here as a view of the checkpoint's own bytes instead of a copy written to a new file — so the builder reads a
safetensors Qwen3.5, LFM2 or Granite 4.0-H exactly as it reads their GGUF files.

A llama.cpp tensor is a `Source`: the checkpoint tensors it is made of (the experts' one each, stacked by rows), the
rows and columns picked from them (Qwen3.5's value heads from transformers' grouped order to llama.cpp's tiled one, a
fused gate|up split), and a fix of its values (the norms stored as 1 + w, A stored as -exp(A_log)): the machinery is
catalog/checkpoint_layout.py's, the other architectures' functions catalog/converted_checkpoints.py's.
"""

from __future__ import annotations

import numpy as np

from .checkpoint_layout import Fix, LayoutError, Taker

# config.json model_type -> llama.cpp's architecture (the GGUF files these checkpoints convert to)
HYBRID_CHECKPOINT_ARCHS = {"qwen3_5_text": "qwen35", "qwen3_5_moe_text": "qwen35moe", "lfm2": "lfm2",
                           "lfm2_moe": "lfm2moe", "granitemoehybrid": "granitehybrid"}
HYBRID_CHECKPOINT_SOURCES = ("llama-cpp-convert-hybrids", "llama-cpp-tensor-mapping")


def layer_types(cfg: dict, attention: str, recurrent: str, layers: int) -> list[bool]:
    """Which layers attend: config.json's layer_types (transformers 5 writes Granite 4.0-H's "mamba" / "attention" as
    "linear_attention" / "full_attention": both read), else LFM2's older full_attn_idxs, else Qwen3.5's every
    full_attention_interval-th layer."""
    types = cfg.get("layer_types")
    if types:
        attends, recurs = {attention, "full_attention"}, {recurrent, "linear_attention"}
        odd = sorted({t for t in types if t not in attends | recurs})
        if odd or len(types) != layers:
            raise LayoutError("config.json", f"layer_types {odd or len(types)} are not {layers} of '{attention}' / "
                              f"'{recurrent}'", "fix the config")
        return [t in attends for t in types]
    if "full_attn_idxs" in cfg:
        return [i in set(cfg["full_attn_idxs"]) for i in range(layers)]
    every = int(cfg.get("full_attention_interval") or 4)
    return [(i + 1) % every == 0 for i in range(layers)]


def _qwen35(cfg: dict, take: Taker) -> None:
    """conversion/qwen.py: every norm but the Gated DeltaNet's own stored + 1; A as -exp(A_log); the conv taps [channels,
    K]; q_proj kept whole ([q_h, gate_h] a head); value-head tensors from transformers' grouped order (value head j of
    key head j // r) to llama.cpp's tiled one (GGUF head j = transformers' (j % nk) r + j // nk)."""
    layers = int(cfg["num_hidden_layers"])
    nk, dk = int(cfg["linear_num_key_heads"]), int(cfg["linear_key_head_dim"])
    nv, dv = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
    tiled = np.array([(j % nk) * (nv // nk) + j // nk for j in range(nv)])

    def v_order(prefix: int, size: int) -> np.ndarray | None:  # rows [prefix | nv blocks of size], blocks re-ordered
        if nv == nk:
            return None
        return np.concatenate([np.arange(prefix), prefix + (tiled[:, None] * size + np.arange(size)).reshape(-1)])

    take("output_norm.weight", "model.norm.weight", fix=Fix.PLUS_ONE)
    for i, attends in enumerate(layer_types(cfg, "full_attention", "linear_attention", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "input_layernorm.weight", fix=Fix.PLUS_ONE)
        take(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", fix=Fix.PLUS_ONE)
        if attends:
            a = p + "self_attn."
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
                take(b + f"attn_{ours}.weight", a + leaf + ".weight")
            take(b + "attn_q_norm.weight", a + "q_norm.weight", fix=Fix.PLUS_ONE)
            take(b + "attn_k_norm.weight", a + "k_norm.weight", fix=Fix.PLUS_ONE)
        else:
            a, kd = p + "linear_attn.", 2 * nk * dk
            take(b + "attn_qkv.weight", a + "in_proj_qkv.weight", rows=v_order(kd, dv))
            take(b + "attn_gate.weight", a + "in_proj_z.weight", rows=v_order(0, dv))
            take(b + "ssm_beta.weight", a + "in_proj_b.weight", rows=v_order(0, 1))
            take(b + "ssm_alpha.weight", a + "in_proj_a.weight", rows=v_order(0, 1))
            take(b + "ssm_conv1d.weight", a + "conv1d.weight", rows=v_order(kd, dv))
            take(b + "ssm_dt.bias", a + "dt_bias", rows=v_order(0, 1))
            take(b + "ssm_a", a + "A_log", rows=v_order(0, 1), fix=Fix.NEG_EXP)
            take(b + "ssm_norm.weight", a + "norm.weight")
            take(b + "ssm_out.weight", a + "out_proj.weight", cols=v_order(0, dv))
        m = p + "mlp."
        if take.has(m + "gate.weight"):  # Qwen3.5-MoE: the router, the experts, the shared expert and its gate
            take(b + "ffn_gate_inp.weight", m + "gate.weight")
            take.experts(b, m + "experts.", int(cfg["num_experts"]), int(cfg["moe_intermediate_size"]),
                         {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}, ("gate_up_proj", "down_proj"))
            for x in ("gate", "up", "down"):
                take(b + f"ffn_{x}_shexp.weight", m + f"shared_expert.{x}_proj.weight")
            take(b + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight")
        else:
            for x in ("gate", "up", "down"):
                take(b + f"ffn_{x}.weight", m + f"{x}_proj.weight")


def _lfm2(cfg: dict, take: Taker) -> None:
    """conversion/lfm2.py: norms as they are (the final one, transformers' embedding_norm, under token_embd_norm), the
    short convolution's taps [channels, K]; LFM2-MoE's first num_dense_layers dense, then sigmoid-routed experts with
    their selection bias."""
    layers = int(cfg["num_hidden_layers"])
    take("token_embd_norm.weight", "model.embedding_norm.weight")
    for i, attends in enumerate(layer_types(cfg, "full_attention", "conv", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "operator_norm.weight")
        take(b + "ffn_norm.weight", p + "ffn_norm.weight")
        if attends:
            a = p + "self_attn."
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "out_proj")):
                take(b + f"attn_{ours}.weight", a + leaf + ".weight")
            take(b + "attn_q_norm.weight", a + "q_layernorm.weight")
            take(b + "attn_k_norm.weight", a + "k_layernorm.weight")
        else:
            for leaf in ("conv", "in_proj", "out_proj"):
                take(b + f"shortconv.{leaf}.weight", p + f"conv.{leaf}.weight")
        f = p + "feed_forward."
        if take.has(f + "gate.weight"):
            take(b + "ffn_gate_inp.weight", f + "gate.weight")
            take(b + "exp_probs_b.bias", f + "expert_bias")
            take.experts(b, f + "experts.", int(cfg["num_experts"]), int(cfg["moe_intermediate_size"]),
                         {"gate": "w1", "up": "w3", "down": "w2"}, ("gate_up_proj", "down_proj"))
        else:
            for ours, leaf in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                take(b + f"ffn_{ours}.weight", f + leaf + ".weight")


def _granite(cfg: dict, take: Taker) -> None:
    """conversion/granite.py GraniteHybridModel: the shared MLP's input_linear split into gate and up (a shared expert's
    where the layer has experts), a Mamba-2 layer's in_proj as ssm_in, its conv taps [channels, K] and bias, A as
    -exp(A_log), D, the gated norm, out_proj."""
    layers = int(cfg["num_hidden_layers"])
    shared = int(cfg["shared_intermediate_size"])
    experts = int(cfg.get("num_local_experts") or 0)
    take("output_norm.weight", "model.norm.weight")
    for i, attends in enumerate(layer_types(cfg, "attention", "mamba", layers)):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "input_layernorm.weight")
        take(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        if attends:
            for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
                take(b + f"attn_{ours}.weight", p + f"self_attn.{leaf}.weight")
        else:
            m = p + "mamba."
            for ours, leaf in (("ssm_in.weight", "in_proj.weight"), ("ssm_conv1d.weight", "conv1d.weight"),
                               ("ssm_dt.bias", "dt_bias"), ("ssm_d", "D"), ("ssm_norm.weight", "norm.weight"),
                               ("ssm_out.weight", "out_proj.weight")):
                take(b + ours, m + leaf)
            if take.has(m + "conv1d.bias"):
                take(b + "ssm_conv1d.bias", m + "conv1d.bias")
            take(b + "ssm_a", m + "A_log", fix=Fix.NEG_EXP)
        x = "_shexp" if experts else ""  # beside experts the shared MLP is a shared expert
        mlp = p + "shared_mlp."
        take(b + f"ffn_gate{x}.weight", mlp + "input_linear.weight", rows=np.arange(shared))
        take(b + f"ffn_up{x}.weight", mlp + "input_linear.weight", rows=shared + np.arange(shared))
        take(b + f"ffn_down{x}.weight", mlp + "output_linear.weight")
        if experts:
            e = p + "block_sparse_moe."
            take(b + "ffn_gate_inp.weight", e + "router.layer.weight")
            take.experts(b, e, experts, int(cfg["intermediate_size"]), {}, ("input_linear.weight",
                                                                             "output_linear.weight"))


_ARCH_LAYOUTS = {"qwen3_5_text": _qwen35, "qwen3_5_moe_text": _qwen35, "lfm2": _lfm2, "lfm2_moe": _lfm2,
                 "granitemoehybrid": _granite}
