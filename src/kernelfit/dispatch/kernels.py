"""Attention kernels with transformers' shared signature, and the mask shapes each expects.

Signature (transformers `integrations/*_attention.py`):
    fn(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kw)
    -> (attn_output (B, S, H, D), attn_weights | None)
query/key/value are (B, H, S, D). Masks arrive in one of three forms and are converted here:
    "bool4d"    (B, 1|H, Q, K) True = attend, or None for plain causal (sdpa_mask); a float 4D mask
                (additive biases a model built itself) is passed through unchanged, as SDPA takes both
    "padding2d" (B, K) True/1 = real token, or None                    (flash_attention_mask)
    "additive"  (B, 1, Q, K) float, 0 or a large negative               (eager_mask)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..catalog.attention import CPU_DECODE_MATMUL_MIN_KEYS, CPU_DECODE_UNHANDLED


@dataclass(frozen=True)
class KernelBackend:
    name: str  # catalog name when the catalog knows it (its rules then apply)
    fn: Callable
    mask: str  # "bool4d", "padding2d" or "additive"
    supports: Callable | None = None  # extra predicate (device, dtype, head_dim, features) -> list[str]
    # a shape specialisation: tried before the ranked backends, for the calls it accepts (query, key) -> bool
    applies: Callable | None = None


def causal_bool(q_len: int, k_len: int, device, window: int | None = None) -> torch.Tensor:
    """(Q, K) causal mask aligned so the last query sees the last key (KV cache before the queries)."""
    offset = k_len - q_len
    i = torch.arange(q_len, device=device).unsqueeze(1) + offset
    j = torch.arange(k_len, device=device).unsqueeze(0)
    mask = j <= i
    if window:
        mask &= j > i - window
    return mask


def to_bool4d(mask, query: torch.Tensor, key: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor | None:
    if mask is None:
        return None  # SDPA applies is_causal itself
    if mask.dim() == 4:
        return mask  # bool, or a float additive mask whose biases must survive (SDPA takes both)
    q_len, k_len = query.shape[2], key.shape[2]
    pad = mask[:, -k_len:].to(torch.bool)[:, None, None, :]
    if not causal:
        return pad.expand(-1, 1, q_len, -1)
    return pad & causal_bool(q_len, k_len, query.device, window)


def to_padding2d(mask, key: torch.Tensor) -> torch.Tensor | None:
    """Only for plain causal/padding masks: the dispatcher never sends a FLOAT_MASK or SPARSE_SELECTION
    call to a padding2d kernel (the catalog marks them unsupported)."""
    if mask is None or mask.dim() == 2:
        return mask
    keep = mask if mask.dtype == torch.bool else mask == 0
    # a key is "real" when any query may attend to it (every real key sees at least its own query)
    padding = keep.any(dim=-2)[:, 0, :]
    return None if bool(padding.all()) else padding.to(torch.int32)


def to_additive(mask, query: torch.Tensor, key: torch.Tensor, causal: bool, window: int | None) -> torch.Tensor | None:
    if mask is not None and mask.dim() == 4 and mask.dtype != torch.bool:
        return mask
    b4 = to_bool4d(mask, query, key, causal, window)
    if b4 is None:
        if not causal or query.shape[2] == 1:
            return None
        b4 = causal_bool(query.shape[2], key.shape[2], query.device, window)[None, None]
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    return torch.where(b4, zero, torch.finfo(query.dtype).min)


def adapt_mask(mask, form: str, query, key, causal: bool, window: int | None):
    if form == "bool4d":
        return to_bool4d(mask, query, key, causal, window)
    if form == "padding2d":
        return to_padding2d(mask, key)
    return to_additive(mask, query, key, causal, window)


def eager_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            is_causal=None, **kwargs):
    """transformers' eager attention (matmul, softmax in fp32), GQA-aware, with an additive mask."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scale
    softcap = kwargs.get("softcap")
    if softcap:
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    if dropout and module is not None and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def decode_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                            is_causal=None, **kwargs):
    """One query token against the KV cache: the query heads of each KV head as one small matrix
    (no repeat_kv copy), two matmuls and an fp32 softmax. Additive mask, shared by the heads (B, 1, Q, K) or
    per head (B, H, Q, K); no softcap or window. Values may have their own head_dim (MLA: v_head_dim)."""
    b, h, q_len, d = query.shape
    kv_heads, dv = key.shape[1], value.shape[-1]
    groups = h // kv_heads
    scale = scaling if scaling is not None else d ** -0.5
    # These products have a row per grouped head and a column per cached key: oneDNN's territory
    # even inside a decode step whose one-row weight products skip it (loader/cpu_decode.py).
    onednn = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(True)
    try:
        weights = torch.matmul(query.reshape(b, kv_heads, groups * q_len, d), key.transpose(2, 3)) * scale
        if attention_mask is not None:
            mask = attention_mask[..., : key.shape[-2]]
            if mask.shape[1] > 1:  # per-head: the same (kv head, group, query) order as the rows above
                mask = mask.expand(b, h, q_len, -1).reshape(b, kv_heads, groups * q_len, -1)
            elif q_len > 1:
                mask = mask.repeat(1, 1, groups, 1)
            weights = weights + mask  # (B, 1, 1, K) broadcasts over the grouped heads
        weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        out = torch.matmul(weights, value).reshape(b, h, q_len, dv)
    finally:
        torch._C._set_mkldnn_enabled(onednn)
    return out.transpose(1, 2).contiguous(), None


def _long_cpu_decode(query: torch.Tensor, key: torch.Tensor) -> bool:
    return query.device.type == "cpu" and query.shape[2] == 1 and key.shape[2] >= CPU_DECODE_MATMUL_MIN_KEYS


def _cpu_only(device, dtype, head_dim, features) -> list[str]:
    reasons = [] if device.kind == "cpu" else ["CPU decode kernel"]
    return reasons + [f"does not handle {f}" for f in features & CPU_DECODE_UNHANDLED]


def default_backends() -> dict[str, KernelBackend]:
    """The real kernels: transformers' own functions where it has them."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    backends = {
        "sdpa": KernelBackend("sdpa", sdpa_attention_forward, "bool4d"),
        "eager": KernelBackend("eager", eager_attention_forward, "additive"),
        "cpu_decode": KernelBackend("cpu_decode", decode_attention_forward, "additive", _cpu_only, _long_cpu_decode),
    }
    try:
        from transformers.integrations.flash_attention import flash_attention_forward

        for name in ("flash_attention_2", "flash_attention_3", "flash_attention_4"):
            backends[name] = KernelBackend(name, _flash_with_version(flash_attention_forward, name), "padding2d")
    except ImportError:
        pass
    return backends


def _flash_with_version(fn: Callable, name: str) -> Callable:
    """transformers' flash_attention_forward reads the FA version from
    `module.config._attn_implementation`, which is "kernelfit" while dispatching: show it the
    real name for the duration of the call (forward passes run one at a time)."""

    def call(module, query, key, value, attention_mask, **kwargs):
        from transformers.modeling_flash_attention_utils import lazy_import_flash_attention

        lazy_import_flash_attention(name)  # raises ImportError when the package is missing
        config = module.config
        previous = config._attn_implementation_internal
        config._attn_implementation_internal = name
        try:
            return fn(module, query, key, value, attention_mask, **kwargs)
        finally:
            config._attn_implementation_internal = previous

    call.__name__ = f"{name}_forward"
    return call
