"""Every transformers checkpoint the engine reads through llama.cpp's converter's layout (catalog/checkpoint_layout.py):
the hybrids (catalog/hybrid_checkpoints.py) and the transformer blocks the GGUF engine runs beyond the llama rows of
catalog/engine_checkpoints.py — Gemma 2, Gemma 3 (its text model), Phi-3, Qwen2-MoE, Qwen3-MoE, SmolLM3 and Granite
(dense) — each as
convert_hf_to_gguf.py's modify_tensors treats it (conversion/gemma.py Gemma2Model / Gemma3Model: every RMSNorm stored
as 1 + w; conversion/phi.py Phi3MiniModel: qkv_proj and gate_up_proj kept fused; conversion/qwen.py Qwen2MoeModel /
Qwen3MoeModel: the experts stacked into 3-D tensors; SmolLM3 and Granite: the llama block's tensors, their facts in
the keys), read in place. The config.json facts an architecture's llama.cpp
build does not run (Qwen3-MoE without renormalised experts, a sliding-window pattern llama.cpp does not build, ...)
refuse the checkpoint here, so the plan keeps transformers and says why.
"""

from __future__ import annotations

from .checkpoint_layout import Fix, Source, Taker, read_layout
from .hybrid_checkpoints import _ARCH_LAYOUTS as HYBRID_LAYOUTS
from .hybrid_checkpoints import HYBRID_CHECKPOINT_ARCHS, HYBRID_CHECKPOINT_SOURCES

# config.json model_type -> llama.cpp's architecture (the GGUF files these checkpoints convert to)
BLOCK_CHECKPOINT_ARCHS = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "qwen2_moe": "qwen2moe",
                          "qwen3_moe": "qwen3moe", "smollm3": "smollm3", "granite": "granite"}
CONVERTED_CHECKPOINT_ARCHS = {**HYBRID_CHECKPOINT_ARCHS, **BLOCK_CHECKPOINT_ARCHS}
CONVERTED_CHECKPOINT_SOURCES = HYBRID_CHECKPOINT_SOURCES + ("llama-cpp-convert-blocks",)
# rotary scalings the engine runs for these checkpoints (as the GGUF keys the converter writes: rope.scaling.type,
# .factor, .original_context_length); the hybrids' only the plain one. Gemma 3's per-layer-type rope_parameters are
# checked by its layout (its global layers may scale linearly)
BLOCK_ROPE_TYPES = ("default", "linear", "yarn")
# LongRoPE (Phi-3.5-mini, Phi-4-mini, Phi-3's 128k models; "su" its first name), run as the GGUF path runs it: the
# short factors within the original context, which becomes the runner's limit (engine/recipe_gguf.py longrope)
LONGROPE_NAMES = ("longrope", "su")
ROPE_TYPES_BY_ARCH = {"phi3": BLOCK_ROPE_TYPES + LONGROPE_NAMES}
# Gemma 2's layers alternate, the first sliding (llama.cpp's llama_model_gemma2 builds no other pattern); Gemma 3's
# every sliding_window_pattern-th layer attends globally (llama_model_gemma3: load_swa_pattern)
GEMMA2_PATTERN = 2


def layout(model_type: str, cfg: dict, names: set[str], where: str) -> dict[str, Source]:
    """llama.cpp's tensor name -> its Source for a checkpoint of a CONVERTED_CHECKPOINT_ARCHS model type (a LayoutError
    for a tensor it would not read or lacks, or a config fact the engine does not run)."""
    arrange = HYBRID_LAYOUTS.get(model_type) or _BLOCK_LAYOUTS[model_type]
    return read_layout(arrange, cfg, names, where)


def sliding_pattern(cfg: dict, refuse, every: int | None = None) -> int:
    """Gemma's sliding-window pattern from config.json's layer_types: the period P with layer i global iff
    (i + 1) % P == 0 (`every`: the one period the architecture builds). 0: no layer slides. `refuse(problem)` raises
    for layer types of another pattern."""
    types = cfg.get("layer_types")
    layers = int(cfg["num_hidden_layers"])
    if not types:
        return every or int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        refuse(f"layer_types are not {layers} of 'sliding_attention' / 'full_attention'")
    if "sliding_attention" not in types:
        return 0
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    period = every or (full[0] + 1 if full else layers + 1)
    if any((t == "full_attention") != ((i + 1) % period == 0) for i, t in enumerate(types)):
        refuse("its layer_types are not every " + (f"{period}th layer global" if period > 2 else
                                                        "other layer global, the first sliding") +
                    " (the sliding-window pattern llama.cpp builds)")
    return period


def _attention(take: Taker, p: str, b: str, norms: bool, fix: Fix | None = None) -> None:
    a = p + "self_attn."
    for ours, leaf in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("output", "o_proj")):
        take(b + f"attn_{ours}.weight", a + leaf + ".weight")
    for ours in ("q", "k", "v"):
        if take.has(a + f"{ours}_proj.bias"):
            take(b + f"attn_{ours}.bias", a + f"{ours}_proj.bias")
    if norms:
        take(b + "attn_q_norm.weight", a + "q_norm.weight", fix=fix)
        take(b + "attn_k_norm.weight", a + "k_norm.weight", fix=fix)


def _llama_layer(take: Taker, i: int, qk_norms: bool) -> tuple[str, str]:
    """Layer i's two pre-norms and attention as the llama block names them; its prefixes (transformers', llama.cpp's)."""
    p, b = f"model.layers.{i}.", f"blk.{i}."
    take(b + "attn_norm.weight", p + "input_layernorm.weight")
    take(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
    _attention(take, p, b, qk_norms)
    return p, b


def _mlp(take: Taker, p: str, b: str) -> None:
    for x in ("gate", "up", "down"):
        take(b + f"ffn_{x}.weight", p + f"mlp.{x}_proj.weight")


def _gemma(cfg: dict, take: Taker) -> None:
    """conversion/gemma.py: every norm (the output norm, the four of a block, Gemma 3's Q / K norms) stored as 1 + w;
    HF's post_attention_layernorm is llama.cpp's post_attention_norm, pre_feedforward_layernorm its ffn_norm."""
    gemma3 = cfg.get("model_type") == "gemma3_text"
    if gemma3 and cfg.get("use_bidirectional_attention"):
        take.refuse("a bidirectional Gemma 3 (an embedding model) is not a decoder the engine runs")
    if not gemma3 and cfg.get("layer_types") is not None:
        sliding_pattern(cfg, take.refuse, GEMMA2_PATTERN)
    elif gemma3:
        sliding_pattern(cfg, take.refuse)
        rope = cfg.get("rope_parameters") or {}
        for kind in ("sliding_attention", "full_attention"):
            scaling = (rope.get(kind) or {}).get("rope_type") or "default"
            if scaling not in (("default",) if kind == "sliding_attention" else ("default", "linear")):
                take.refuse(f"rotary scaling '{scaling}' on Gemma 3's {kind.replace('_', ' ')} layers is not "
                            "implemented by the engine")
        if cfg.get("attn_logit_softcapping"):
            take.refuse("attention soft-capping on a Gemma 3 model (llama.cpp's gemma3 build has none)")
    take("output_norm.weight", "model.norm.weight", fix=Fix.PLUS_ONE)
    for i in range(int(cfg["num_hidden_layers"])):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        for ours, leaf in (("attn_norm", "input_layernorm"), ("post_attention_norm", "post_attention_layernorm"),
                           ("ffn_norm", "pre_feedforward_layernorm"), ("post_ffw_norm", "post_feedforward_layernorm")):
            take(b + ours + ".weight", p + leaf + ".weight", fix=Fix.PLUS_ONE)
        _attention(take, p, b, gemma3, Fix.PLUS_ONE)
        _mlp(take, p, b)


def _phi3(cfg: dict, take: Taker) -> None:
    """conversion/phi.py Phi3MiniModel: the fused qkv_proj as attn_qkv (Q, K, V rows in that order) and gate_up_proj as
    ffn_up (gate rows first), both read as stored."""
    take("output_norm.weight", "model.norm.weight")
    for i in range(int(cfg["num_hidden_layers"])):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        take(b + "attn_norm.weight", p + "input_layernorm.weight")
        take(b + "ffn_norm.weight", p + "post_attention_layernorm.weight")
        take(b + "attn_qkv.weight", p + "self_attn.qkv_proj.weight")
        take(b + "attn_output.weight", p + "self_attn.o_proj.weight")
        take(b + "ffn_up.weight", p + "mlp.gate_up_proj.weight")
        take(b + "ffn_down.weight", p + "mlp.down_proj.weight")


def _qwen_moe(cfg: dict, take: Taker) -> None:
    """conversion/qwen.py Qwen2MoeModel (Qwen3MoeModel its subclass): the router as ffn_gate_inp, the experts stacked as
    ffn_{gate,up,down}_exps; Qwen2-MoE's shared expert and its sigmoid gate; layers without experts (mlp_only_layers,
    decoder_sparse_step) a dense MLP. llama.cpp's qwen3moe always renormalises the chosen experts' weights and qwen2moe
    never does (transformers: norm_topk_prob): a config that says otherwise is refused."""
    qwen3 = cfg.get("model_type") == "qwen3_moe"
    if bool(cfg.get("norm_topk_prob", qwen3)) != qwen3:
        take.refuse(f"norm_topk_prob {cfg.get('norm_topk_prob')} on a {cfg['model_type']} model (llama.cpp's "
                    f"{BLOCK_CHECKPOINT_ARCHS[cfg['model_type']]} build {'always' if qwen3 else 'never'} "
                    "renormalises the chosen experts' weights)")
    if cfg.get("use_sliding_window"):
        take.refuse("use_sliding_window on a Qwen MoE model (llama.cpp's build has no window)")
    experts = int(cfg.get("num_experts") or cfg["num_local_experts"])
    take("output_norm.weight", "model.norm.weight")
    for i in range(int(cfg["num_hidden_layers"])):
        p, b = _llama_layer(take, i, qwen3)
        m = p + "mlp."
        if not take.has(m + "gate.weight"):
            _mlp(take, p, b)
            continue
        take(b + "ffn_gate_inp.weight", m + "gate.weight")
        take.experts(b, m + "experts.", experts, int(cfg["moe_intermediate_size"]),
                     {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"}, ("gate_up_proj", "down_proj"))
        if take.has(m + "shared_expert.gate_proj.weight"):
            for x in ("gate", "up", "down"):
                take(b + f"ffn_{x}_shexp.weight", m + f"shared_expert.{x}_proj.weight")
            take(b + "ffn_gate_inp_shexp.weight", m + "shared_expert_gate.weight")


def _llama_block(cfg: dict, take: Taker) -> None:
    """SmolLM3 and Granite: the llama block's tensors (an o_proj or MLP bias is not read: refused by name). SmolLM3's
    layers without rotary must be llama.cpp's every 4th (llama_model_smollm3: n_no_rope_layer_step, hard-coded);
    transformers' no_rope_layers marks them 0."""
    if cfg.get("model_type") == "smollm3":
        nope = cfg.get("no_rope_layers")
        if nope is not None and [int(x) for x in nope] != [int((i + 1) % 4 != 0) for i in range(len(nope))]:
            take.refuse("its no_rope_layers are not every 4th layer (the one pattern llama.cpp's smollm3 build runs)")
        if cfg.get("use_sliding_window"):
            take.refuse("use_sliding_window on a SmolLM3 model (llama.cpp's build has no window)")
    take("output_norm.weight", "model.norm.weight")
    for i in range(int(cfg["num_hidden_layers"])):
        _mlp(take, *_llama_layer(take, i, False))


_BLOCK_LAYOUTS = {"gemma2": _gemma, "gemma3_text": _gemma, "phi3": _phi3, "qwen2_moe": _qwen_moe,
                  "qwen3_moe": _qwen_moe, "smollm3": _llama_block, "granite": _llama_block}
