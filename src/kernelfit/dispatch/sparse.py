"""Sparse attention selection that a model hands to the attention function instead of folding it into
the mask. DeepSeek-V3.2-style models (DeepSeek-V3.2, GLM-MoE-DSA, Mistral-Large-4, HY-V4, AXK2, dots3)
pass `indices` (B, S, topk): the keys each query may see. MiniMax-M3 passes `block_indices`
(B, H_idx, S, topk): blocks of keys, expanded by its indexer. These models fold the selection into the
mask themselves only when the implementation is named "eager" or "sdpa"; under "kernelfit" the
dispatcher folds it in exactly as they do, so attention never silently becomes dense."""

from __future__ import annotations

import torch

from .kernels import causal_bool


class SparseSelectionError(RuntimeError):
    """A call carries a selection this module gives no way to apply."""


def fold_token_indices(mask, indices: torch.Tensor, query: torch.Tensor, key: torch.Tensor):
    """The model's own composition: keys not selected for a query are masked out (bool & ~selected, or
    the dtype's minimum in an additive mask)."""
    b, s, k_len = indices.shape[0], indices.shape[1], key.shape[2]
    not_selected = (indices.new_ones((b, s, k_len), dtype=torch.bool)
                    .scatter(-1, indices.long(), False).unsqueeze(1))  # [B, 1, S, T]; True = masked
    if mask is None:
        mask = causal_bool(s, k_len, query.device)[None, None].expand(b, 1, s, k_len)
    if mask.dtype == torch.bool:
        return mask & ~not_selected
    return mask.masked_fill(not_selected, torch.finfo(query.dtype).min)


def fold_block_indices(module, mask, block_indices: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                       kwargs: dict):
    """MiniMax-M3: its indexer expands the block selection into a per-head additive mask."""
    build = getattr(getattr(module, "indexer", None), "build_block_mask", None)
    if build is None:
        raise SparseSelectionError(
            f"kernelfit: {type(module).__name__} passes block_indices but has no indexer.build_block_mask to apply "
            "them; load it with attn_implementation='sdpa'")
    position_ids = kwargs.get("position_ids")
    if position_ids is None:  # as the model computes them
        position_ids = torch.arange(key.shape[2] - query.shape[2], key.shape[2], device=query.device)
    position_ids = (position_ids if position_ids.ndim > 1 else position_ids.unsqueeze(0)).expand(query.shape[0], -1)
    return build(block_indices, mask, key.shape[2], query.dtype, query.device, position_ids)


def fold_selection(module, mask, query: torch.Tensor, key: torch.Tensor, kwargs: dict):
    """Pop `indices` / `block_indices` from kwargs and return (mask with the selection folded in, folded?)."""
    indices, blocks = kwargs.pop("indices", None), kwargs.pop("block_indices", None)
    if indices is not None:
        return fold_token_indices(mask, indices, query, key), True
    if blocks is not None:
        return fold_block_indices(module, mask, blocks, query, key, kwargs), True
    return mask, False
