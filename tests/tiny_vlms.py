"""Tiny random vision-language models of four families, each with a processor assembled offline (a
word-level tokenizer built here, the family's own image processor), saved like a hub checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("what is in the image describe this picture a an of and cat dog red blue green color shape "
         "circle square photo show me please tell hello yes no it").split()
VOCAB_SIZE = 320


def _tokenizer(special: list[str], image_markup: str, named: dict | None = None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    chars = [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(base + special + WORDS + chars))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}"
                "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image_markup +
                "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens=named or {}, chat_template=template)
    fast.add_special_tokens({"additional_special_tokens": special})
    assert len(fast) < VOCAB_SIZE
    return fast, template


def _text(**kw) -> dict:
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=VOCAB_SIZE, max_position_embeddings=1024, pad_token_id=1,
                bos_token_id=2, eos_token_id=3, **kw)


def llava(path: Path) -> Path:
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok, template = _tokenizer(["<image>"], "<image>\n")
    cfg = LlavaConfig(text_config=dict(model_type="llama", **_text()),
                      vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                                         projection_dim=32),
                      image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    proc = LlavaProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                          tok, patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
                          num_additional_image_tokens=1, chat_template=template)
    return _save(path, LlavaForConditionalGeneration(cfg), proc)


def qwen2_vl(path: Path) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor

    special = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok, template = _tokenizer(special, "<|vision_start|><|image_pad|><|vision_end|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    cfg = Qwen2VLConfig(text_config=dict(model_type="qwen2_vl_text", rope_parameters={
                            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2]}, **_text()),
                        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
                        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                            temporal_patch_size=2)
    proc = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    return _save(path, Qwen2VLForConditionalGeneration(cfg), proc)


def idefics3(path: Path) -> Path:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    special = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
        f"<row_{r}_col_{c}>" for r in range(1, 3) for c in range(1, 3)]
    tok, template = _tokenizer(special, "<image>")
    cfg = Idefics3Config(text_config=dict(model_type="llama", **_text()),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=32, patch_size=8),
                         image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=2)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 32}, max_image_size={"longest_edge": 32},
                                             do_image_splitting=False)
    proc = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=template)
    return _save(path, Idefics3ForConditionalGeneration(cfg), proc)


def gemma3(path: Path) -> Path:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    special = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok, template = _tokenizer(special, "<start_of_image>", {"boi_token": special[0], "eoi_token": special[1],
                                                             "image_token": special[2]})
    ids = {t: tok.convert_tokens_to_ids(t) for t in special}
    cfg = Gemma3Config(text_config=dict(model_type="gemma3_text", head_dim=16, sliding_window=64,
                                        layer_types=["sliding_attention", "full_attention"], **_text()),
                       vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
                       mm_tokens_per_image=4, boi_token_index=ids["<start_of_image>"],
                       eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
    proc = Gemma3Processor(Gemma3ImageProcessor(size={"height": 32, "width": 32}), tok, image_seq_length=4,
                           chat_template=template)
    return _save(path, Gemma3ForConditionalGeneration(cfg), proc)


FAMILIES = {"llava": llava, "qwen2_vl": qwen2_vl, "idefics3": idefics3, "gemma3": gemma3}


def _save(path: Path, model, processor) -> Path:
    torch.manual_seed(0)
    with torch.no_grad():  # some projections start at zero (Gemma 3): the image must reach the logits
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path


def image(path: Path, color: tuple[int, int, int], size: int = 48) -> Path:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), color)
    ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=tuple(255 - c for c in color))
    img.save(path)
    return path


def paligemma(path: Path) -> Path:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tok, template = _tokenizer(["<image>"], "")
    cfg = PaliGemmaConfig(text_config=dict(model_type="gemma", head_dim=16, **_text()),
                          vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
                                             projection_dim=64),
                          image_token_index=tok.convert_tokens_to_ids("<image>"), projection_dim=64)
    image_processor = SiglipImageProcessor(size={"height": 32, "width": 32}, image_seq_length=16)
    image_processor.image_seq_length = 16
    proc = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=template)
    return _save(path, PaliGemmaForConditionalGeneration(cfg), proc)


FAMILIES["paligemma"] = paligemma
