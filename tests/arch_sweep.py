"""Tiny random-weight models of every architecture transformers registers, built from their config
classes with small sizes, and the comparison of attn_implementation="kernelfit" against "sdpa".

Enumerated at test time from transformers' causal-LM and image-text-to-text mappings, so a new
transformers release is covered automatically. `overrides` shrinks any config generically;
PER_ARCH holds what the generic shrink gets wrong for a few architectures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

VOCAB = 320
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_layers=2, n_layer=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, vocab_size=VOCAB, max_position_embeddings=512, n_embd=64, n_head=4,
             d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=128, decoder_ffn_dim=128, ffn_dim=128, moe_intermediate_size=32, num_experts=4,
             num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, shared_expert_intermediate_size=32,
             first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8,
             v_head_dim=12, n_shared_experts=1, sliding_window=64, image_size=32, patch_size=8, num_channels=3,
             projection_dim=32)
TOKEN_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "sep_token_id", "cls_token_id",
              "mask_token_id")
# Where the generic shrink is not enough: the keys to set on top, per model_type (top level or sub-config).
PER_ARCH: dict[str, dict] = {
    # multimodal rotary: the three sections must add up to head_dim / 2 (16 / 2)
    "qwen2_vl": {"text_config": {"rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2]}},
                 "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2}},
    "qwen2_5_vl": {"text_config": {"rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2]}},
                   "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 4,
                                     "out_hidden_size": 64, "fullatt_block_indexes": [1]}},
}


def overrides(d: dict) -> dict:
    """Small values for the size keys a config (as a dict) has, consistent with each other."""
    out = {k: v for k, v in SMALL.items() if isinstance(d.get(k), int) and not isinstance(d.get(k), bool)}
    if "qk_rope_head_dim" in d or d.get("head_dim") is None:
        out.pop("head_dim", None)  # MLA derives it; others compute hidden / heads
    if "kv_lora_rank" in d and "num_key_value_heads" in out:  # MLA: keys are expanded to every head
        out["num_key_value_heads"] = out.get("num_attention_heads", 4)
    for k in ("n_group", "topk_group"):
        if isinstance(d.get(k), int):
            out[k] = 1
    if isinstance(d.get("rotary_dim"), int):
        out["rotary_dim"] = 8
    for k in TOKEN_KEYS:
        if isinstance(d.get(k), int) and d[k] >= VOCAB:
            out[k] = 1
    if isinstance(d.get("layer_types"), list):
        n, kinds = out.get("num_hidden_layers", d.get("num_hidden_layers")), list(dict.fromkeys(d["layer_types"]))
        keep = d["layer_types"][:n]
        if n and len(set(keep)) < len(kinds):  # keep one layer of each kind (hybrid models)
            keep = (kinds * n)[:max(n, len(kinds))]
            out["num_hidden_layers"] = len(keep)
        out["layer_types"] = keep
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def tiny_config(model_type: str, extra: dict | None = None):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    d = cls().to_dict()
    kw = overrides(d)
    for key, sub in d.items():
        if isinstance(sub, dict) and "model_type" in sub:
            kw[key] = {**sub, **overrides(sub)}
    kw = _merge(kw, PER_ARCH.get(model_type, {}))
    kw = _merge(kw, extra or {})
    try:
        return cls(**kw)
    except Exception:  # noqa: BLE001 - some validators reject a layer_types list of another length
        kw.pop("layer_types", None)
        return cls(**kw)


@dataclass
class Outcome:
    model_type: str
    built: bool  # builds and runs a forward under "sdpa" (else `why`)
    why: str = ""
    max_abs_diff: float = 0.0
    same_greedy: bool = True
    same_long_greedy: bool = True
    error: str = ""  # kernelfit raised

    @property
    def identical(self) -> bool:
        return self.built and not self.error and self.max_abs_diff < 1e-4 and self.same_greedy and self.same_long_greedy


MAX_PARAMS = 30e6


def build_pair(model_type: str, auto, extra: dict | None = None):
    """(sdpa model, kernelfit model with the same weights, config)."""
    cfg = tiny_config(model_type, extra)
    with torch.device("meta"):
        n = sum(p.numel() for p in auto.from_config(copy.deepcopy(cfg), attn_implementation="sdpa").parameters())
    if n > MAX_PARAMS:
        raise ValueError(f"still {n / 1e6:.0f}M parameters after the generic shrink")
    torch.manual_seed(0)
    ref = auto.from_config(copy.deepcopy(cfg), attn_implementation="sdpa").eval()
    kf = auto.from_config(copy.deepcopy(cfg), attn_implementation="kernelfit").eval()
    kf.load_state_dict(ref.state_dict(), strict=False)
    return ref, kf, cfg


def _greedy(model, ids, n=4):
    return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0)


def compare(model_type: str, auto) -> Outcome:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, VOCAB - 20, (2, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    long = torch.randint(3, VOCAB - 20, (1, 140), generator=gen)  # >= 136: the CPU decode kernel takes over
    try:
        ref, kf, _ = build_pair(model_type, auto)
        with torch.no_grad():
            a = ref(input_ids=ids, attention_mask=mask).logits
    except Exception as exc:  # noqa: BLE001 - an architecture that does not build under sdpa is listed with why
        return Outcome(model_type, False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}")
    try:
        with torch.no_grad():
            b = kf(input_ids=ids, attention_mask=mask).logits
            out = Outcome(model_type, True, max_abs_diff=float((a - b).abs().max()))
            out.same_greedy = bool(torch.equal(_greedy(ref, ids[:1]), _greedy(kf, ids[:1])))
            out.same_long_greedy = bool(torch.equal(_greedy(ref, long), _greedy(kf, long)))
            return out
    except Exception as exc:  # noqa: BLE001 - reported, and counted as a failure
        return Outcome(model_type, True, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}")


def mappings() -> dict[str, tuple[list[str], type]]:
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)

    return {"causal-lm": (list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES), AutoModelForCausalLM),
            "image-text-to-text": (list(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES), AutoModelForImageTextToText)}
