"""A GGUF file's keys (and its rope_freqs / LongRoPE tables) -> the Recipe its architecture runs: the one place that
reads an architecture's name, llama.cpp's keys and its hard-coded facts (engine/recipe.py holds them as constants, with
each source). The runner, the reference and the C++ step read the Recipe only.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from ..catalog.packed_kernels import LEAN_GGUF_ARCHS, LEAN_ROPE_SCALINGS
from ..errors import UsageError
from ..model.spec import hybrid_layers, qwen35_delta_sizes
from .recipe import (DEEPSEEK2, GEMMA2_27B_LAYERS, GEMMA2_SLIDING_PATTERN, GEMMA3_27B_LAYERS, GEMMA3_LOCAL_ROPE_THETA,
                     GEMMA3_SLIDING_PATTERN, GLM4_MOE, GPT_OSS, GPT_OSS_SLIDING_PATTERN, GPT_OSS_SWIGLU, GRANITE_HYBRID,
                     LFM2, MISTRAL3, MOE_ARCHS, QWEN35, SMOLLM3_NO_ROTARY_STEP, YARN_BETA_FAST, YARN_BETA_SLOW, Latent,
                     LayerKind, Recipe, RouterKind, Rotary, RotaryKind)


def longrope(h, short_factors: torch.Tensor) -> Rotary:
    """LongRoPE as transformers' _compute_longrope_parameters runs it within the original context: the short factor
    table, and the attention factor sqrt(1 + ln(context / original) / ln(original)) (the file's own where stored,
    as llama.cpp's converter writes it). The long table applies only past the original context, which
    recipe_from_gguf makes the runner's limit."""
    original = int(h.arch_key("rope.scaling.original_context_length") or 0)
    context = int(h.arch_key("context_length") or original)
    if not original:
        raise UsageError(f"{Path(h.path).name}: LongRoPE without rope.scaling.original_context_length; the file is "
                         "incomplete (--quantization none runs the dequantized model)")
    scale = context / original
    stored = h.arch_key("rope.scaling.attn_factor")
    attention = float(stored) if stored else (math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
    return Rotary(float(h.arch_key("rope.freq_base", 10000.0)), RotaryKind.LONGROPE, 1.0,
                  tuple(float(x) for x in short_factors.tolist()), original, attention_factor=attention)


def rotary_from_gguf(h, rope_freqs: torch.Tensor | None) -> Rotary:
    """The global layers' rotary embedding from the file's keys (and its rope_freqs tensor, where it has one; for
    LongRoPE, its short factor table)."""
    scaling = h.rope_scaling  # the header's one verdict (the planner's too): names a YaRN key beyond this maths
    if scaling not in LEAN_ROPE_SCALINGS:
        raise UsageError(f"{Path(h.path).name}: rotary scaling '{scaling}' is not implemented by the packed CPU "
                         f"runner (--quantization none runs the dequantized model)")
    rotary = _scaled_rotary(h, scaling, rope_freqs)
    if h.architecture == GPT_OSS:
        rotary = replace(rotary, truncate=False)
    if h.architecture == DEEPSEEK2 and rotary.log_multiplier:
        # llama.cpp's TAG_DEEPSEEK2_YARN_LOG_MUL_FIX: the converter stores 0.1 x mscale_all_dim, and DeepSeek-V2's
        # mscale equals its mscale_all_dim (transformers: get_mscale(f, mscale) / get_mscale(f, mscale_all_dim) = 1)
        m = rotary.log_multiplier / 0.1
        rotary = replace(rotary, log_multiplier=m, mscale=m)
    dims = int(h.arch_key("rope.dimension_count") or 0)
    heads = h.arch_key("attention.head_count")
    heads = max(heads) if isinstance(heads, (list, tuple)) else heads  # a hybrid's per-layer counts (0: no attention)
    head = int(h.arch_key("attention.key_length") or 0) or int(h.arch_key("embedding_length")) // int(heads)
    if dims and dims < head:
        if dims % 2:
            raise UsageError(f"{Path(h.path).name}: a rotary over {dims} dimensions (odd) is not one the packed CPU "
                             "runner implements")
        return replace(rotary, dims=dims)
    return rotary


def _scaled_rotary(h, scaling: str | None, rope_freqs: torch.Tensor | None) -> Rotary:
    if scaling == "longrope":
        return longrope(h, rope_freqs)
    kind = h.arch_key("rope.scaling.type")  # beside rope_freqs, the header reports the factors, not the type
    base = float(h.arch_key("rope.freq_base", 10000.0))
    factors = tuple(float(x) for x in rope_freqs.tolist()) if rope_freqs is not None else None
    factor = float(h.arch_key("rope.scaling.factor") or 1.0)
    if kind == "linear":
        return Rotary(base, RotaryKind.LINEAR, factor, factors)
    if kind == "yarn":
        return Rotary(base, RotaryKind.YARN, factor, factors, int(h.arch_key("rope.scaling.original_context_length")),
                      float(h.arch_key("rope.scaling.yarn_beta_fast") or YARN_BETA_FAST),
                      float(h.arch_key("rope.scaling.yarn_beta_slow") or YARN_BETA_SLOW),
                      log_multiplier=float(h.arch_key("rope.scaling.yarn_log_multiplier") or 0.0))
    return Rotary(base, RotaryKind.PLAIN, 1.0, factors)


def granite_scales(h) -> dict:
    """Granite's multipliers, as llama.cpp's llama_model_granite reads them (each optional but the logit scale)."""
    attention = h.arch_key("attention.scale")
    return {"embed_scale": float(h.arch_key("embedding_scale") or 1.0),
            "residual_scale": float(h.arch_key("residual_scale") or 1.0),
            "logit_scale": float(h.arch_key("logit_scale") or 1.0),
            "query_scale": float(attention) if attention else None}


def recipe_from_gguf(h, rope_freqs: torch.Tensor | None = None) -> Recipe:
    """`h`: the file's header (model/gguf_header.py), read once by the caller; `rope_freqs`: its tensor, if any."""
    arch = h.architecture
    if arch not in LEAN_GGUF_ARCHS:
        raise UsageError(f"the packed CPU runner covers GGUF architectures {', '.join(LEAN_GGUF_ARCHS)}, not "
                         f"'{arch}' (--quantization none runs the dequantized model)")
    if arch == "olmo2" and h.arch_key("attention.sliding_window"):  # OLMo 3's windows: not this recipe's pattern
        raise UsageError(f"{Path(h.path).name}: an olmo2 file with a sliding window (OLMo 3) is not run by the packed "
                         "CPU runner yet")
    if arch == DEEPSEEK2:
        _check_deepseek2(h)
    if arch in (GLM4_MOE, DEEPSEEK2) and not any(t.name == "blk.0.attn_norm.weight" for t in h.tensors):
        raise UsageError(f"{Path(h.path).name}: a file of the multi-token-prediction block alone (a draft "
                         "model's half); run the model's own file")
    hidden = int(h.arch_key("embedding_length"))
    # Qwen3.5's, GLM-4.5's and DeepSeek's multi-token-prediction blocks follow the model's own (llama.cpp runs them
    # only to draft): not run here
    layers = int(h.arch_key("block_count")) - int(h.arch_key("nextn_predict_layers") or 0)
    heads, kv_heads, kinds = _heads_per_layer(h, layers)
    tokens = h.metadata.get("tokenizer.ggml.tokens")
    rotary = rotary_from_gguf(h, rope_freqs)
    gemma = arch in ("gemma", "gemma2", "gemma3")
    window = h.arch_key("attention.sliding_window") if gemma or arch == GPT_OSS else None
    scales = granite_scales(h) if arch in ("granite", GRANITE_HYBRID) else {}
    pattern = GEMMA2_SLIDING_PATTERN if arch == "gemma2" else \
        int(h.arch_key("attention.sliding_window_pattern",
                       GPT_OSS_SLIDING_PATTERN if arch == GPT_OSS else GEMMA3_SLIDING_PATTERN))
    return Recipe(
        family="gemma" if gemma else "llama", arch=arch, hidden=hidden, layers=layers,
        heads=heads, kv_heads=kv_heads, layer_kinds=kinds,
        conv_kernel=int(h.arch_key("shortconv.l_cache") or 0) if arch in LFM2 else
        int(h.arch_key("ssm.conv_kernel") or 0) if arch in QWEN35 + (GRANITE_HYBRID,) else 0,
        **(_delta_heads(h) if arch in QWEN35 else {}),
        **({"mamba": mamba_sizes(h)} if arch == GRANITE_HYBRID else {}),
        head_dim=int(h.arch_key("attention.key_length") or hidden // heads),
        # an MoE file without dense layers (Qwen3.5-MoE) stores its experts' size only
        ffn=int(h.arch_key("feed_forward_length") or h.arch_key("expert_feed_forward_length")),
        vocab=int(getattr(tokens, "count", None) or h.arch_key("vocab_size")),
        eps=float(h.arch_key("attention.layer_norm_rms_epsilon", 1e-6)),
        rotary=rotary,
        local_rotary=Rotary(float(h.arch_key("rope.freq_base_swa") or GEMMA3_LOCAL_ROPE_THETA))
        if arch == "gemma3" else None,  # gemma2: one base for all
        sliding_window=int(window) if window else None,
        sliding_pattern=pattern if window else 0,
        attn_softcap=float(h.arch_key("attn_logit_softcapping") or 0.0) if arch == "gemma2" else 0.0,
        final_softcap=float(h.arch_key("final_logit_softcapping") or 0.0) if arch in ("gemma2", "gemma3") else 0.0,
        # llama.cpp (gemma2, gemma3) and transformers (query_pre_attn_scalar): the 27B models scale by hidden / heads;
        # a checkpoint's config.json states its scale (engine/safetensors/config_keys.py writes it as attention.scale)
        query_scale=scales.pop("query_scale", None) or (_gemma_query_scale(h, hidden, heads, layers) if gemma
                                                        else None) or (
            _latent_scale(h, rotary) if arch == DEEPSEEK2 else None),
        no_rotary_step=SMOLLM3_NO_ROTARY_STEP if arch == "smollm3" else (
            # Granite's no-rope switch (Granite 4.0-H: no rotary at all)
            1 if arch in ("granite", GRANITE_HYBRID) and h.arch_key("rope.scaling.finetuned") is False else 0),
        **scales,
        # Qwen3-MoE renormalises its chosen experts' weights; Qwen2-MoE does not, and adds a shared expert whose
        # output a sigmoid gate scales (llama.cpp build_moe_ffn norm_w; transformers' norm_topk_prob)
        **({"experts": int(h.arch_key("expert_count")), "top_k": int(h.arch_key("expert_used_count")),
            "expert_ffn": int(h.arch_key("expert_feed_forward_length")),
            # gpt-oss: a softmax over the top k logits, the same weights as this renormalisation of all the experts';
            # GLM-4.5: the file's expert_weights_norm (its norm_topk_prob) and expert_weights_scale
            "norm_topk": bool(h.arch_key("expert_weights_norm")) if arch in (GLM4_MOE, DEEPSEEK2) else
            arch in ("qwen3moe", "qwen35moe", "lfm2moe", GPT_OSS, GRANITE_HYBRID),
            "routed_scale": float(h.arch_key("expert_weights_scale") or 1.0) if arch in (GLM4_MOE, DEEPSEEK2) else 1.0}
           if arch in MOE_ARCHS or (arch == GRANITE_HYBRID and h.arch_key("expert_count")) else {}),  # (a shared
        # expert's size is its products' rows: step.cpp; Granite 4.0-H-Tiny's experts: a softmax over the top k)
        # LFM2-MoE, GLM-4.5: sigmoid scores (llama.cpp's expert_gating_func 2; GLM-4.5's default), renormalised over
        # the chosen where the model does
        **({"router": RouterKind.SIGMOID} if arch in MOE_ARCHS and int(
            h.arch_key("expert_gating_func") or _default_gating(h)) == 2 else {}),
        **({"clamped_swiglu": GPT_OSS_SWIGLU, "attention_sinks": True} if arch == GPT_OSS else {}),
        **({"query_temperature": _query_temperature(h)} if arch == MISTRAL3 else {}),
        **(_latent(h) if arch == DEEPSEEK2 else {}),
        # LongRoPE runs its short table: positions past the original context would need the long one
        max_positions=int(h.arch_key("rope.scaling.original_context_length") if h.rope_scaling == "longrope" else
                          h.arch_key("context_length") or 4096))


def _gemma_query_scale(h, hidden: int, heads: int, layers: int) -> float | None:
    """The scores' scale of a Gemma file: its attention.scale where stored, else (hidden / heads)^-0.5 for the 27B
    models (None: head_dim^-0.5)."""
    stored = h.arch_key("attention.scale")
    if stored:
        return float(stored)
    big = {"gemma2": GEMMA2_27B_LAYERS, "gemma3": GEMMA3_27B_LAYERS}.get(h.architecture)
    return (hidden / heads) ** -0.5 if layers == big else None


def _default_gating(h) -> int:
    """llama.cpp's expert_gating_func where a file stores none: GLM-4.5's sigmoid (2); DeepSeek-V2/V2.5's softmax (1),
    but GLM-4.7-Flash's early files (47 or 48 layers, a 154,880-token vocabulary) sigmoid (llama_model_deepseek2)."""
    if h.architecture == GLM4_MOE:
        return 2
    if h.architecture == DEEPSEEK2:
        tokens = h.metadata.get("tokenizer.ggml.tokens")
        vocab = int(getattr(tokens, "count", None) or h.arch_key("vocab_size") or 0)
        return 2 if int(h.arch_key("block_count") or 0) - int(h.arch_key("nextn_predict_layers") or 0) in (47, 48) \
            and vocab == 154880 else 1
    return 1


def _check_deepseek2(h) -> None:
    """What the engine's MLA does not run, refused in one line: the legacy unsplit attn_kv_b (reconvert), group-limited
    routing, the attention temperature (llama.cpp reads it for Mistral Large)."""
    name = Path(h.path).name
    names = {t.name for t in h.tensors}
    if "blk.0.attn_kv_b.weight" in names and "blk.0.attn_k_b.weight" not in names:
        raise UsageError(f"{name}: an old deepseek2 file with attn_kv_b (not split into attn_k_b / attn_v_b); "
                         "reconvert it with a current llama.cpp convert_hf_to_gguf.py")
    if int(h.arch_key("expert_group_count") or 1) > 1:
        raise UsageError(f"{name}: experts chosen within groups (expert_group_count "
                         f"{h.arch_key('expert_group_count')}) are not run by the packed CPU engine yet")
    if h.arch_key("attention.temperature_scale"):
        raise UsageError(f"{name}: a deepseek2 file with an attention temperature is not run by the packed CPU engine")


def _latent(h) -> dict:
    """DeepSeek's MLA sizes from the file's keys (convert_hf_to_gguf's DeepseekV2Model: key_length = kv_rank + rope,
    key_length_mla = nope + rope, value_length_mla = v_head_dim, one KV head)."""
    rope = int(h.arch_key("rope.dimension_count"))
    kv_rank = int(h.arch_key("attention.kv_lora_rank"))
    lat = Latent(int(h.arch_key("attention.q_lora_rank") or 0), kv_rank,
                 int(h.arch_key("attention.key_length_mla")) - rope, rope,
                 int(h.arch_key("attention.value_length_mla")))
    if int(h.arch_key("attention.key_length") or 0) != kv_rank + rope:
        raise UsageError(f"{Path(h.path).name}: attention.key_length is not kv_lora_rank + the rotary size; the file "
                         "is damaged")
    if int(h.arch_key("attention.head_count_kv") or 0) != 1:
        raise UsageError(f"{Path(h.path).name}: a deepseek2 file whose latent attention is not one KV head (an old or "
                         "unabsorbed conversion); reconvert it with a current llama.cpp convert_hf_to_gguf.py")
    return {"latent": lat}


def _latent_scale(h, rotary: Rotary) -> float:
    """MLA's scores' scale: (nope + rope)^-0.5 (a head's query/key size before absorption) times YaRN's
    mscale(factor, mscale_all_dim)^2."""
    return int(h.arch_key("attention.key_length_mla")) ** -0.5 * rotary.score_scale


def _query_temperature(h) -> tuple[float, int] | None:
    """Mistral 3's query temperature: the file's attention.temperature_scale over its original context, as
    llama.cpp's llama_model_mistral3 reads them (None where the scale is 0 or absent)."""
    beta = float(h.arch_key("attention.temperature_scale") or 0.0)
    if not beta:
        return None
    length = int(h.arch_key("rope.scaling.original_context_length") or 0)
    if length <= 0:
        raise UsageError(f"{Path(h.path).name}: an attention temperature without rope.scaling.original_context_length; "
                         "the file is incomplete")
    return beta, length


def _heads_per_layer(h, layers: int) -> tuple[int, int, tuple[LayerKind, ...]]:
    """Query and KV heads, and each layer's kind (model/spec.py hybrid_layers reads and checks them)."""
    q, kv, attends = hybrid_layers(h, layers)
    if h.architecture not in QWEN35 + LFM2 + (GRANITE_HYBRID,):
        return q, kv, ()
    recurrent = LayerKind.GATED_DELTA_NET if h.architecture in QWEN35 else \
        LayerKind.MAMBA2 if h.architecture == GRANITE_HYBRID else LayerKind.SHORT_CONV
    return q, kv, tuple(LayerKind.ATTENTION if a else recurrent for a in attends)


def mamba_sizes(h) -> tuple[int, int, int, int]:
    """Granite 4.0-H's Mamba-2 sizes as llama.cpp's converter stores them (ssm.time_step_rank: heads, ssm.inner_size:
    all heads' values, ssm.group_count, ssm.state_size): (heads, head size, groups, state size)."""
    heads, inner = int(h.arch_key("ssm.time_step_rank") or 0), int(h.arch_key("ssm.inner_size") or 0)
    groups, state = int(h.arch_key("ssm.group_count") or 0), int(h.arch_key("ssm.state_size") or 0)
    if heads <= 0 or groups <= 0 or state <= 0 or inner % heads or heads % groups:
        raise UsageError(f"{Path(h.path).name}: ssm.inner_size {inner} is not whole heads of ssm.time_step_rank "
                         f"{heads} in ssm.group_count {groups} groups; the file is damaged")
    return heads, inner // heads, groups, state


def _delta_heads(h) -> dict:
    """Qwen3.5's Gated DeltaNet sizes (model/spec.py qwen35_delta_sizes), and its gated attention."""
    return {"delta_heads": qwen35_delta_sizes(h), "attention_gate": True}
