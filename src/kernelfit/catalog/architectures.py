"""Model types the planner understands, with the shape facts the config does not state.

A `model_type` missing here is refused with a clear message instead of guessed: a wrong
parameter count would make every memory figure wrong.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderFamily:
    qkv_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    attention_bias_key: str | None = "attention_bias"  # config key that turns on all 4 biases
    qk_norm: str | None = None  # "head" (RMSNorm over head_dim, Qwen3) or "full" (OLMo2)
    norms_per_layer: int = 2
    gated_mlp: bool = True  # gate/up/down (3 matrices) vs up/down (2)
    mlp_bias_key: str | None = None  # config key that adds biases to the MLP
    layer_norm: bool = False  # LayerNorm (weight + bias) rather than RMSNorm (weight only)
    moe: bool = False
    always_tied: bool = False
    softcap_key: str | None = None  # config key for attention logit soft-capping
    sliding_window_flag: str | None = None  # config key that must be true for sliding_window to apply
    sliding_every_other: bool = False  # sliding window on alternate layers only (Gemma-2)


DECODERS: dict[str, DecoderFamily] = {
    "llama": DecoderFamily(),
    "mistral": DecoderFamily(),
    "mixtral": DecoderFamily(moe=True),
    "qwen2": DecoderFamily(qkv_bias=True, attention_bias_key=None, sliding_window_flag="use_sliding_window"),
    "qwen3": DecoderFamily(qk_norm="head", sliding_window_flag="use_sliding_window"),
    "gemma": DecoderFamily(always_tied=True),
    "gemma2": DecoderFamily(always_tied=True, norms_per_layer=4, softcap_key="attn_logit_softcapping",
                            sliding_every_other=True),
    "phi3": DecoderFamily(attention_bias_key=None),
    "granite": DecoderFamily(),
    "olmo2": DecoderFamily(qk_norm="full", attention_bias_key=None),
    "smollm3": DecoderFamily(),
    "starcoder2": DecoderFamily(gated_mlp=False, attention_bias_key="use_bias", mlp_bias_key="use_bias",
                                layer_norm=True),
}

# Vision towers: (has class token, pre-layernorm, patch conv bias)
VISION: dict[str, tuple[bool, bool, bool]] = {
    "clip_vision_model": (True, True, False),
    "siglip_vision_model": (False, False, True),
}

# Composite VLMs: which sub-configs they hold, and whether the projector has an extra vector
COMPOSITES: dict[str, dict] = {
    "llava": {"text": "text_config", "vision": "vision_config", "image_newline": False},
    "llava_next": {"text": "text_config", "vision": "vision_config", "image_newline": True},
    "vipllava": {"text": "text_config", "vision": "vision_config", "image_newline": False},
}

GGUF_ARCH_TO_MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                           "gemma": "gemma", "gemma2": "gemma2", "phi3": "phi3", "olmo2": "olmo2"}


def supported_model_types() -> list[str]:
    return sorted(set(DECODERS) | set(COMPOSITES))
