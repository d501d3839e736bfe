"""Tiny random-weight models built from configs (no downloads), and the seed's FA2 pattern."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

VOCAB = 96


def tiny_llama_config(**kw) -> LlamaConfig:
    base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                tie_word_embeddings=False)
    base.update(kw)
    return LlamaConfig(**base)


def tiny_llama(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**kw)).eval()


def tiny_llava_config() -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    return LlavaConfig(vision_config=vision, text_config=tiny_llama_config(), image_token_index=VOCAB - 1,
                       vision_feature_layer=-1, vision_feature_select_strategy="default")


def tiny_llava(seed: int = 0, **kw) -> LlavaForConditionalGeneration:
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration(tiny_llava_config(), **kw).eval()


class FA2LlamaForCausalLM(LlamaForCausalLM):
    """The seed's pattern: a Llama whose decoder layers are hard-wired to FlashAttention-2,
    whatever the caller asked for (VILA-style projects did this in their LlamaDecoderLayer)."""

    def __init__(self, config):
        super().__init__(config)
        for layer in self.model.layers:
            layer.self_attn.config._attn_implementation = "flash_attention_2"


def llava_inputs(config: LlavaConfig, prompt_len: int = 4):
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    ids = [1] + [config.image_token_index] * patches + list(range(3, 3 + prompt_len))
    return {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
            "pixel_values": torch.randn(1, 3, config.vision_config.image_size, config.vision_config.image_size)}
