"""A checkpoint's config.json as the GGUF keys llama.cpp's converter writes from it (convert_hf_to_gguf.py
set_gguf_parameters: conversion/qwen.py Qwen3_5TextModel and Qwen2MoeModel, conversion/lfm2.py, conversion/granite.py
GraniteHybridModel, conversion/gemma.py, conversion/phi.py; the rotary scaling keys of conversion/base.py
TextModel), so that recipe_from_gguf fills the recipe from a checkpoint exactly as from its GGUF file: one reading of
each architecture's facts, not two. The architectures are catalog/converted_checkpoints.py's."""

from __future__ import annotations

import math

from ...errors import UsageError
from ...model.spec import rope_type
from ...catalog.engine_checkpoints import why_not_engine_checkpoint
from ...catalog.converted_checkpoints import CONVERTED_CHECKPOINT_ARCHS, LONGROPE_NAMES, sliding_pattern
from ...catalog.hybrid_checkpoints import layer_types


class ConfigHeader:
    """The header interface recipe_from_gguf reads (model/gguf_header.py GgufHeader): architecture, path, metadata,
    tensors, rope_scaling, arch_key."""

    def __init__(self, architecture: str, keys: dict, path: str):
        self.architecture, self.path = architecture, path
        self.metadata = {f"{architecture}.{k}": v for k, v in keys.items()}
        self.tensors = ()
        self.rope_scaling = None  # the header's verdict: "longrope" for a LongRoPE config (Phi-3), else None
        self.rope_factors = None  # LongRoPE's short factors: the GGUF file's rope_factors_short tensor

    def arch_key(self, key: str, default=None):
        return self.metadata.get(f"{self.architecture}.{key}", default)


def config_header(cfg: dict, shapes: dict[str, tuple[int, ...]], where: str) -> ConfigHeader:
    """`shapes`: the checkpoint's (rows, cols) by llama.cpp's tensor name (LFM2's feed-forward size is its w1's rows:
    the converter recomputes it from block_auto_adjust_ff_dim). What the plan rejects (another rotary scaling) is
    refused here too, by the same rule (catalog/engine_checkpoints.py)."""
    model_type = cfg.get("model_type")
    why = why_not_engine_checkpoint(model_type, "bfloat16", rope_type(cfg), None)  # the weights: the reader's check
    if why:
        raise UsageError(f"{where}: {'; '.join(why)} (--quantization none loads it through transformers)")
    try:
        return _header(cfg, model_type, shapes, where)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: config.json lacks or mistypes {exc}; fix the config") from None


def _header(cfg: dict, model_type: str, shapes: dict, where: str) -> ConfigHeader:
    arch = CONVERTED_CHECKPOINT_ARCHS[model_type]
    layers = int(cfg["num_hidden_layers"])
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    keys = {"context_length": int(cfg.get("max_position_embeddings") or 4096),
            "embedding_length": int(cfg["hidden_size"]), "block_count": layers,
            "attention.head_count": int(cfg["num_attention_heads"]),
            "rope.freq_base": float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0),
            "vocab_size": int(cfg["vocab_size"])}
    keys.update({"qwen35": _qwen35, "qwen35moe": _qwen35, "lfm2": _lfm2, "lfm2moe": _lfm2,
                 "granitehybrid": _granite, "gemma2": _gemma, "gemma3": _gemma, "phi3": _phi3,
                 "qwen2moe": _qwen_moe, "qwen3moe": _qwen_moe, "smollm3": _llama_keys,
                 "granite": _llama_keys}[arch](cfg, layers, shapes))
    longrope = (rope.get("rope_type") or rope.get("type")) in LONGROPE_NAMES  # (the plan lets Phi-3's through only)
    factors = _longrope(cfg, rope, keys) if longrope else None
    header = ConfigHeader(arch, keys, where)
    header.rope_scaling, header.rope_factors = ("longrope" if longrope else None), factors
    return header


def _longrope(cfg: dict, rope: dict, keys: dict):
    """LongRoPE (Phi-3.5, Phi-4-mini) as transformers' _compute_longrope_parameters runs it within the original
    context: the short factors, and its attention factor (the stated one, else sqrt(1 + ln f / ln original) with f
    the stated factor or max_position_embeddings / original) as the file's attn_factor key; past the original context
    the long factors would apply, which the recipe makes the runner's limit."""
    import torch

    original = int(rope.get("original_max_position_embeddings") or cfg["original_max_position_embeddings"])
    factor = float(rope.get("factor") or int(cfg.get("max_position_embeddings") or original) / original)
    attention = rope.get("attention_factor")
    keys_attention = float(attention) if attention is not None else (
        math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1 else 1.0)
    short = [float(x) for x in rope["short_factor"]]
    if len(short) != int(keys.get("rope.dimension_count") or _head(cfg)) // 2:
        raise ValueError("'short_factor' (one factor per rotated pair of a head)")
    keys.update({"rope.scaling.original_context_length": original, "rope.scaling.attn_factor": keys_attention})
    return torch.tensor(short, dtype=torch.float32)


def _rope_scaling(rope: dict) -> dict:
    """conversion/base.py TextModel: a linear or YaRN scaling's keys (the plan refused the others)."""
    kind = rope.get("rope_type") or rope.get("type")
    if kind not in ("linear", "yarn") or rope.get("factor") is None:
        return {}
    keys = {"rope.scaling.type": kind, "rope.scaling.factor": float(rope["factor"])}
    if kind == "yarn":
        if rope.get("attention_factor") or rope.get("attn_factor") or rope.get("extrapolation_factor"):
            raise ValueError("'attention_factor' (a YaRN attention or extrapolation factor the engine does not take)")
        keys["rope.scaling.original_context_length"] = int(rope["original_max_position_embeddings"])
        keys.update({f"rope.scaling.yarn_{k}": float(rope[k]) for k in ("beta_fast", "beta_slow") if k in rope})
    return keys


def _attention_keys(cfg: dict, head: int) -> dict:
    return {"attention.head_count_kv": int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
            "attention.key_length": head, "attention.value_length": head,
            "attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
            "feed_forward_length": int(cfg["intermediate_size"])}


def _head(cfg: dict) -> int:
    return int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))


def _gemma(cfg: dict, layers: int, shapes: dict) -> dict:
    """conversion/gemma.py; query_pre_attn_scalar as the scores' scale (llama.cpp derives it from the model's size)."""
    keys = _attention_keys(cfg, _head(cfg))
    keys["attention.scale"] = float(cfg.get("query_pre_attn_scalar") or _head(cfg)) ** -0.5
    gemma3 = cfg["model_type"] == "gemma3_text"
    if gemma3:
        rope = cfg.get("rope_parameters") or {}
        full, local = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
        keys["rope.freq_base"] = float(full.get("rope_theta") or cfg.get("rope_theta") or 1_000_000.0)
        keys["rope.freq_base_swa"] = float(local.get("rope_theta") or cfg.get("rope_local_base_freq") or 10000.0)
        keys.update(_rope_scaling(full or cfg.get("rope_scaling") or {}))
    else:
        keys["attn_logit_softcapping"] = float(cfg.get("attn_logit_softcapping") or 0.0)
    keys["final_logit_softcapping"] = float(cfg.get("final_logit_softcapping") or 0.0)
    pattern = sliding_pattern(cfg, _refuse) if gemma3 else 2
    if pattern and cfg.get("sliding_window"):
        keys["attention.sliding_window"] = int(cfg["sliding_window"])
        keys["attention.sliding_window_pattern"] = pattern
    return keys


def _refuse(problem: str) -> None:  # (the reader's layout refused such a checkpoint before: catalog/converted_checkpoints)
    raise UsageError(f"config.json: {problem}")


def _phi3(cfg: dict, layers: int, shapes: dict) -> dict:
    """conversion/phi.py Phi3MiniModel: the rotary over partial_rotary_factor of a head; a sliding window caps the
    context at the window (each query then sees every earlier key, as transformers' windowed mask lets it)."""
    rope = cfg.get("rope_parameters") or {}
    keys = _attention_keys(cfg, _head(cfg))
    keys["attention.layer_norm_rms_epsilon"] = float(cfg.get("rms_norm_eps", 1e-5))
    partial = float(rope.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0)
    keys["rope.dimension_count"] = int(_head(cfg) * partial)
    keys.update(_rope_scaling(rope or cfg.get("rope_scaling") or {}))
    if cfg.get("sliding_window"):
        keys["context_length"] = min(int(cfg.get("max_position_embeddings") or 4096), int(cfg["sliding_window"]))
    return keys


def _qwen_moe(cfg: dict, layers: int, shapes: dict) -> dict:
    """conversion/qwen.py Qwen2MoeModel: the experts' and the shared expert's sizes."""
    keys = _attention_keys(cfg, _head(cfg))
    keys.update(_rope_scaling(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}))
    keys.update(_moe(cfg, "num_experts" if cfg.get("num_experts") else "num_local_experts", "num_experts_per_tok",
                     "moe_intermediate_size"))
    if cfg.get("shared_expert_intermediate_size"):
        keys["expert_shared_feed_forward_length"] = int(cfg["shared_expert_intermediate_size"])
    return keys


def _moe(cfg: dict, experts: str, used: str, size: str) -> dict:
    return {"expert_count": int(cfg[experts]), "expert_used_count": int(cfg[used]),
            "expert_feed_forward_length": int(cfg[size])}


def _qwen35(cfg: dict, layers: int, shapes: dict) -> dict:
    rope = cfg.get("rope_parameters") or {}
    head = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // int(cfg["num_attention_heads"]))
    partial = float(rope.get("partial_rotary_factor") or cfg.get("partial_rotary_factor") or 1.0)
    nv, dv = int(cfg["linear_num_value_heads"]), int(cfg["linear_value_head_dim"])
    keys = {"attention.head_count_kv": int(cfg["num_key_value_heads"]), "attention.key_length": head,
            "attention.value_length": head, "attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
            "rope.dimension_count": int(head * partial), "ssm.conv_kernel": int(cfg["linear_conv_kernel_dim"]),
            "ssm.state_size": int(cfg["linear_key_head_dim"]), "ssm.group_count": int(cfg["linear_num_key_heads"]),
            "ssm.time_step_rank": nv, "ssm.inner_size": nv * dv,
            "attention.recurrent_layers": [not a for a in layer_types(cfg, "full_attention", "linear_attention",
                                                                      layers)]}
    if cfg.get("num_experts"):
        keys.update(_moe(cfg, "num_experts", "num_experts_per_tok", "moe_intermediate_size"))
        keys["expert_shared_feed_forward_length"] = int(cfg["shared_expert_intermediate_size"])
    else:
        keys["feed_forward_length"] = int(cfg["intermediate_size"])
    return keys


def _lfm2(cfg: dict, layers: int, shapes: dict) -> dict:
    attends = layer_types(cfg, "full_attention", "conv", layers)
    dense = next((shapes[n] for n in (f"blk.{i}.ffn_gate.weight" for i in range(layers)) if n in shapes), None)
    keys = {"attention.head_count_kv": [int(cfg["num_key_value_heads"]) if a else 0 for a in attends],
            "attention.layer_norm_rms_epsilon": float(cfg.get("norm_eps", 1e-5)),
            "shortconv.l_cache": int(cfg["conv_L_cache"]),
            "feed_forward_length": int(dense[0]) if dense else int(cfg["intermediate_size"])}
    if cfg.get("num_experts"):
        keys.update(_moe(cfg, "num_experts", "num_experts_per_tok", "moe_intermediate_size"))
        keys["leading_dense_block_count"] = int(cfg.get("num_dense_layers") or 0)
        keys["expert_gating_func"] = 2  # sigmoid (conversion/lfm2.py LFM2MoeModel)
    return keys


def _granite(cfg: dict, layers: int, shapes: dict) -> dict:
    attends = layer_types(cfg, "attention", "mamba", layers)
    hidden, heads = int(cfg["hidden_size"]), int(cfg["mamba_n_heads"])
    head = cfg.get("mamba_d_head")
    head = int(head) if isinstance(head, int) else int(cfg.get("mamba_expand", 2)) * hidden // heads
    keys = {"attention.head_count_kv": [int(cfg["num_key_value_heads"]) if a else 0 for a in attends],
            "attention.key_length": hidden // int(cfg["num_attention_heads"]),
            "attention.value_length": hidden // int(cfg["num_attention_heads"]),
            "attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps", 1e-6)),
            "feed_forward_length": int(cfg["shared_intermediate_size"]),
            "embedding_scale": float(cfg.get("embedding_multiplier") or 1.0),
            "residual_scale": float(cfg.get("residual_multiplier") or 1.0),
            "logit_scale": float(cfg.get("logits_scaling") or 1.0),
            "attention.scale": float(cfg.get("attention_multiplier") or 0.0) or None,
            "ssm.conv_kernel": int(cfg["mamba_d_conv"]), "ssm.state_size": int(cfg["mamba_d_state"]),
            "ssm.group_count": int(cfg["mamba_n_groups"]), "ssm.inner_size": heads * head,
            "ssm.time_step_rank": heads}
    if cfg.get("position_embedding_type") != "rope":  # Granite 4.0-H: no rotary (NoPE)
        keys["rope.scaling.finetuned"] = False
    if cfg.get("num_local_experts"):
        keys.update(_moe(cfg, "num_local_experts", "num_experts_per_tok", "intermediate_size"))
        keys["expert_shared_feed_forward_length"] = int(cfg["shared_intermediate_size"])
    return keys


def _llama_keys(cfg: dict, layers: int, shapes: dict) -> dict:
    """SmolLM3 (its NoPE layers: the recipe's every 4th, checked by the layout) and Granite (its four multipliers, as
    conversion/granite.py GraniteModel writes them)."""
    keys = _attention_keys(cfg, _head(cfg))
    keys.update(_rope_scaling(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}))
    if cfg["model_type"] == "granite":
        keys.update({"embedding_scale": float(cfg.get("embedding_multiplier") or 1.0),
                     "residual_scale": float(cfg.get("residual_multiplier") or 1.0),
                     "logit_scale": float(cfg.get("logits_scaling") or 1.0),
                     "attention.scale": float(cfg.get("attention_multiplier") or 0.0) or None})
    return keys
