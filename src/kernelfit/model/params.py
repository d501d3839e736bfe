"""Parameter counts from config shapes alone (no weights), per sub-model.

The sums mirror the modules transformers builds for each family; the test suite checks them
against the published counts of the configs in tests/data/model-configs (within 2%).
"""

from __future__ import annotations

from ..catalog.architectures import COMPOSITES, DECODERS, VISION, VISION_KEY_ALIASES


def head_dim_of(cfg: dict) -> int:
    hd = cfg.get("head_dim")
    if isinstance(hd, int) and hd > 0:
        return hd
    return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])


def ffn_size(cfg: dict) -> int:
    """The feed-forward rows a layer has: intermediate_size, or LFM2's adjusted size (transformers' Lfm2MLP: 2/3 of
    it, times block_ffn_dim_multiplier, rounded up to block_multiple_of, where block_auto_adjust_ff_dim); an MoE
    config with no dense layer (Qwen3.5-MoE's has no intermediate_size) its experts' moe_intermediate_size."""
    inter = int(cfg.get("intermediate_size") or cfg["moe_intermediate_size"])
    if not cfg.get("block_auto_adjust_ff_dim"):
        return inter
    inter = int(2 * inter / 3)
    if cfg.get("block_ffn_dim_multiplier") is not None:
        inter = int(float(cfg["block_ffn_dim_multiplier"]) * inter)
        step = int(cfg.get("block_multiple_of") or 256)
        inter = step * ((inter + step - 1) // step)
    return inter


def short_conv_state(taps: int, hidden: int) -> int:
    """float32 values an LFM2 short-convolution layer keeps a sequence: its last taps - 1 inputs a channel."""
    return (taps - 1) * hidden


def delta_net_state(taps: int, nk: int, dk: int, nv: int, dv: int) -> int:
    """float32 values a Gated DeltaNet layer keeps a sequence: its convolution's last taps - 1 inputs (q, k and v
    channels) and a [key size, value size] matrix a value head (engine/kernels/delta_net.h)."""
    return (taps - 1) * (2 * nk * dk + nv * dv) + nv * dk * dv


def mamba2_sizes(cfg: dict) -> tuple[int, int, int, int, int]:
    """A Granite 4.0-H config's Mamba-2 sizes: (taps, heads, head size, groups, state size) (transformers'
    GraniteMoeHybridConfig defaults where a key is missing)."""
    return (int(cfg.get("mamba_d_conv") or 4), int(cfg.get("mamba_n_heads") or 128), int(cfg.get("mamba_d_head") or 32),
            int(cfg.get("mamba_n_groups") or 1), int(cfg.get("mamba_d_state") or 256))


def mamba2_state(taps: int, heads: int, head_dim: int, groups: int, state: int) -> int:
    """float32 values a Mamba-2 layer keeps a sequence: its convolution's last taps - 1 inputs (x, B and C channels) and
    a [head size, state size] matrix a head (engine/kernels/mamba2.h)."""
    return (taps - 1) * (heads * head_dim + 2 * groups * state) + heads * head_dim * state


# A sequence's state checkpoints (engine/recurrent.py: copies of the state where a prompt's prefill ended, which a
# next turn or a shared prefix resumes from): at most CHECKPOINTS copies (llama-server's --ctx-checkpoints default)...
CHECKPOINTS = 8
CHECKPOINT_BYTES = 64 << 20  # ...and within this many bytes (at least the newest): LFM2-1.2B's copies are 160 KiB
# (8 kept), Qwen3.5-0.8B's ~19 MiB (3 kept) — a server holds them for each of its sequences


def checkpoints_kept(state_bytes: int) -> int:
    """How many copies of a state of `state_bytes` a sequence keeps at most."""
    if state_bytes <= 0:
        return 0
    return max(1, min(CHECKPOINTS, CHECKPOINT_BYTES // state_bytes))


def decoder_params(cfg: dict, model_type: str) -> int:
    fam = DECODERS[model_type]
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    nh = int(cfg["num_attention_heads"])
    nkv = int(cfg.get("num_key_value_heads") or nh)
    hd = head_dim_of(cfg)
    inter = ffn_size(cfg)
    vocab = int(cfg["vocab_size"])
    q, kv = nh * hd, nkv * hd
    attn = h * q + 2 * h * kv + q * h
    all_bias = bool(fam.attention_bias_key and cfg.get(fam.attention_bias_key))
    if fam.qkv_bias or all_bias:
        attn += q + 2 * kv
    if all_bias:
        attn += h
    if fam.qk_norm == "head":
        attn += 2 * hd
    elif fam.qk_norm == "full":
        attn += q + kv
    mlp_matrices = 3 if fam.gated_mlp else 2
    mlp = mlp_matrices * h * inter
    if fam.mlp_bias or cfg.get("mlp_bias") or (fam.mlp_bias_key and cfg.get(fam.mlp_bias_key)):
        mlp += (mlp_matrices - 1) * inter + h
    if fam.moe:
        experts = int(cfg.get("num_local_experts") or cfg.get("num_experts") or 1)
        mlp = experts * mlp + h * experts  # experts + router
        shared = int(cfg.get(fam.shared_expert_key) or 0) if fam.shared_expert_key else 0
        mlp += mlp_matrices * h * shared + (h if shared else 0)  # a shared expert and its one-row gate
    norm_params = 2 * h if fam.layer_norm else h  # LayerNorm has a bias, RMSNorm does not
    per_layer = attn + mlp + fam.norms_per_layer * norm_params
    tied = fam.always_tied or bool(cfg.get("tie_word_embeddings", False))
    embeddings = vocab * h * (1 if tied else 2)
    if fam.gated_delta:  # Qwen3.5: gated attention's q_proj is twice the queries; Gated DeltaNet layers instead
        attn += q * h
        lin = sum(t == "linear_attention" for t in cfg.get("layer_types") or [])
        nk, dk = int(cfg.get("linear_num_key_heads") or 16), int(cfg.get("linear_key_head_dim") or 128)
        nv, dv = int(cfg.get("linear_num_value_heads") or 32), int(cfg.get("linear_value_head_dim") or 128)
        channels = 2 * nk * dk + nv * dv
        delta = (h * channels + h * nv * dv + 2 * h * nv + channels * int(cfg.get("linear_conv_kernel_dim") or 4)
                 + 2 * nv + dv + nv * dv * h)  # in_proj_qkv, z, b, a; conv; dt_bias, A_log; norm; out_proj
        per_delta = delta + mlp + fam.norms_per_layer * norm_params
        return (layers - lin) * (attn + mlp + fam.norms_per_layer * norm_params) + lin * per_delta + embeddings + \
            norm_params
    if fam.mamba2:  # Granite 4.0-H's Mamba-2 layers: in_proj, the taps and their bias, A, D, dt bias, norm, out_proj
        taps, heads, head_dim, groups, state = mamba2_sizes(cfg)
        inner, mixers = heads * head_dim, sum(t in ("mamba", "linear_attention") for t in cfg.get("layer_types") or [])
        channels = inner + 2 * groups * state
        mixer = h * (inner + channels + heads) + channels * (taps + 1) + 3 * heads + inner + inner * h
        per_mixer = mixer + mlp + fam.norms_per_layer * norm_params
        return (layers - mixers) * per_layer + mixers * per_mixer + embeddings + norm_params
    conv = 0
    if fam.short_conv:  # LFM2's conv layers: in_proj (3h x h), out_proj (h x h), the depthwise taps, no attention
        conv = sum(t == "conv" for t in cfg.get("layer_types") or [])
        conv_layer = 4 * h * h + h * int(cfg.get("conv_L_cache") or 3) + mlp + fam.norms_per_layer * norm_params
        return (layers - conv) * per_layer + conv * conv_layer + embeddings + norm_params
    return layers * per_layer + embeddings + norm_params


def vision_key(cfg: dict, key: str):
    """A ViT shape key, under its own name or a tower's spelling of it (Qwen2-VL: depth, num_heads, embed_dim)."""
    for name in (*VISION_KEY_ALIASES.get(key, ()), key):
        if isinstance(cfg.get(name), int) and not isinstance(cfg.get(name), bool):
            return cfg[name]
    return None


def vision_params(cfg: dict, model_type: str) -> int:
    class_token, pre_norm, conv_bias = VISION[model_type]
    h = int(vision_key(cfg, "hidden_size"))
    inter = int(cfg.get("intermediate_size") or h * cfg.get("mlp_ratio", 4))
    layers = int(vision_key(cfg, "num_hidden_layers"))
    patch = int(cfg.get("patch_size", 14))
    image = int(cfg.get("image_size", 224))
    channels = int(cfg.get("num_channels", 3))
    patches = (image // patch) ** 2
    embed = channels * patch * patch * h + (h if conv_bias else 0)
    embed += (patches + (1 if class_token else 0)) * h + (h if class_token else 0)
    per_layer = 4 * (h * h + h) + (h * inter + inter) + (inter * h + h) + 2 * 2 * h
    norms = 2 * h * (2 if pre_norm else 1)
    return embed + layers * per_layer + norms


def vision_tokens(cfg: dict) -> int:
    """Tokens one image becomes (patches), the vision tower's sequence length."""
    return (int(cfg.get("image_size", 224)) // int(cfg.get("patch_size", 14))) ** 2


def projector_params(model_type: str, vision_hidden: int, text_hidden: int, cfg: dict | None = None) -> int:
    cfg = cfg or {}
    kind = COMPOSITES[model_type]["projector"]
    if kind == "linear":
        return vision_hidden * text_hidden + vision_hidden  # projection + its input norm
    if kind == "pixel_shuffle":
        return vision_hidden * int(cfg.get("scale_factor", 2)) ** 2 * text_hidden
    if kind == "merger":
        merged = vision_hidden * int((cfg.get("vision_config") or {}).get("spatial_merge_size", 2)) ** 2
        return merged * merged + merged + merged * text_hidden + text_hidden + vision_hidden
    p = vision_hidden * text_hidden + text_hidden + text_hidden * text_hidden + text_hidden
    if COMPOSITES[model_type]["image_newline"]:
        p += text_hidden
    return p
