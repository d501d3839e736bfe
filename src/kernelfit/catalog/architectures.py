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
    mlp_bias: bool = False  # the MLP (each expert) always has biases (gpt-oss)
    layer_norm: bool = False  # LayerNorm (weight + bias) rather than RMSNorm (weight only)
    moe: bool = False
    shared_expert_key: str | None = None  # config key of a shared expert's size beside the routed ones (Qwen2-MoE)
    always_tied: bool = False
    softcap_key: str | None = None  # config key for attention logit soft-capping
    sliding_window_flag: str | None = None  # config key that must be true for sliding_window to apply
    sliding_every_other: bool = False  # sliding window on alternate layers only (Gemma-2)
    short_conv: bool = False  # LFM2: layer_types "conv" layers run a gated short convolution (in_proj 3h x h, a
    # depthwise conv of conv_L_cache taps, out_proj h x h) instead of attention; their state does not grow with context
    gated_delta: bool = False  # Qwen3.5: layer_types "linear_attention" layers run a Gated DeltaNet (linear_* sizes),
    # the others gated attention (q_proj 2x: a gate a head); a fixed state a layer, no keys and values
    mamba2: bool = False  # Granite 4.0-H: layer_types "mamba" layers run a Mamba-2 mixer (mamba_* sizes); a fixed state


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
    "ministral3": DecoderFamily(),  # Ministral 3: Llama's block, YaRN, a query temperature (engine/recipe.py)
    "glm4": DecoderFamily(qkv_bias=True, attention_bias_key=None, norms_per_layer=4),
    "qwen3_moe": DecoderFamily(qk_norm="head", moe=True),
    # GLM-4.5: Q/K/V biases, sigmoid-routed experts beside an ungated shared one (transformers Glm4MoeConfig)
    "glm4_moe": DecoderFamily(qkv_bias=True, attention_bias_key=None, moe=True),
    # DeepSeek-V2/V3 (and the models llama.cpp writes as deepseek2: Moonlight, Kimi, GLM-4.7-Flash): latent attention
    # (a GGUF file states its one KV head of kv_lora_rank + rope values), sigmoid- or softmax-routed experts
    "deepseek_v2": DecoderFamily(moe=True, attention_bias_key=None),
    # Granite 4.0-H (Micro/1B/350M dense; its Tiny/Small MoE files run too): Mamba-2 layers and NoPE attention
    "granitemoehybrid": DecoderFamily(mamba2=True),
    # gpt-oss: biases on every projection and expert, sinks, every other layer sliding (transformers GptOssConfig)
    "gpt_oss": DecoderFamily(moe=True, mlp_bias=True, sliding_every_other=True),
    "qwen2_moe": DecoderFamily(qkv_bias=True, attention_bias_key=None, moe=True,
                               shared_expert_key="shared_expert_intermediate_size"),
    "lfm2": DecoderFamily(qk_norm="head", attention_bias_key=None, short_conv=True),
    "lfm2_moe": DecoderFamily(qk_norm="head", attention_bias_key=None, short_conv=True, moe=True),
    "qwen3_5_text": DecoderFamily(qk_norm="head", attention_bias_key=None, gated_delta=True),
    "qwen3_5_moe_text": DecoderFamily(qk_norm="head", attention_bias_key=None, gated_delta=True, moe=True,
                                      shared_expert_key="shared_expert_intermediate_size"),
    "starcoder2": DecoderFamily(gated_mlp=False, attention_bias_key="use_bias", mlp_bias_key="use_bias",
                                layer_norm=True),
    # the language models inside vision-language models
    "gemma3_text": DecoderFamily(always_tied=True, norms_per_layer=4, qk_norm="head"),
    "qwen2_vl_text": DecoderFamily(qkv_bias=True, attention_bias_key=None),
    "qwen2_5_vl_text": DecoderFamily(qkv_bias=True, attention_bias_key=None),
}

# Vision towers: (has class token, pre-layernorm, patch conv bias)
VISION: dict[str, tuple[bool, bool, bool]] = {
    "clip_vision_model": (True, True, False),
    "siglip_vision_model": (False, False, True),
    "idefics3_vision": (False, False, True),  # SigLIP-style
    "smolvlm_vision": (False, False, True),
    "qwen2_vl_vision": (False, False, False),  # ViT over 14x14x2 patches (depth / embed_dim / num_heads keys)
    "qwen2_5_vl_vision": (False, False, False),
}
# Vision configs that spell the ViT shape their own way: our key -> theirs
VISION_KEY_ALIASES = {"num_hidden_layers": ("depth",), "num_attention_heads": ("num_heads",),
                      "hidden_size": ("embed_dim",)}

# Composite VLMs: which sub-configs they hold, how the projector maps vision width to text width
# ("mlp2": two linear layers (LLaVA); "linear": one; "pixel_shuffle": one over scale_factor^2 merged
# patches (Idefics3/SmolVLM); "merger": an MLP over spatial_merge_size^2 patches (Qwen2-VL)), and whether
# it adds an image-newline vector.
COMPOSITES: dict[str, dict] = {
    "llava": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "mlp2"},
    "llava_next": {"text": "text_config", "vision": "vision_config", "image_newline": True, "projector": "mlp2"},
    "vipllava": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "mlp2"},
    "gemma3": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "linear"},
    "idefics3": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "pixel_shuffle"},
    "smolvlm": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "pixel_shuffle"},
    "paligemma": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "linear"},
    "qwen2_vl": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "merger"},
    "qwen2_5_vl": {"text": "text_config", "vision": "vision_config", "image_newline": False, "projector": "merger"},
}

# GGUF architectures transformers itself loads (dequantized): its integrations/ggml.py GGUF_CONFIG_MAPPING (5.25).
# A file of another architecture runs only on kernelfit's packed CPU engine; elsewhere it is refused at plan time.
TRANSFORMERS_GGUF_ARCHS = ("bloom", "deci", "falcon", "gemma2", "gemma3", "gemma4", "gpt2", "gpt_oss", "lfm2",
                           "llama", "mamba", "minimax_m2", "mistral", "nemotron", "phi3", "qwen2", "qwen2_moe", "qwen3",
                           "qwen3_moe", "stablelm", "starcoder2", "t5", "umt5")

GGUF_ARCH_TO_MODEL_TYPE = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3",
                           "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3",
                           "olmo2": "olmo2", "smollm3": "smollm3", "granite": "granite", "glm4": "glm4",
                           "qwen3moe": "qwen3_moe", "qwen2moe": "qwen2_moe", "lfm2": "lfm2", "lfm2moe": "lfm2_moe",
                           "qwen35": "qwen3_5_text", "qwen35moe": "qwen3_5_moe_text", "gpt-oss": "gpt_oss",
                           "mistral3": "ministral3", "glm4moe": "glm4_moe", "deepseek2": "deepseek_v2",
                           "granitehybrid": "granitemoehybrid"}


def supported_model_types() -> list[str]:
    return sorted(set(DECODERS) | set(COMPOSITES))
