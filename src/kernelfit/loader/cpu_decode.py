"""CPU decode fast path: single-row forward steps run with oneDNN switched off.

PyTorch sends bf16 matmuls on AVX-512 CPUs to oneDNN, which repacks the weight on every call.
A decode step has one row, and there the packing costs more than the product; ATen's own bf16
GEMV reads the weight once (catalog.dtypes.cpu_decode_gemv says when this applies and why).
The switch is PyTorch's global `torch.backends.mkldnn` flag, set before a one-row forward and
restored after it, so prefill, other models and other code keep oneDNN.
"""

from __future__ import annotations

import torch

from ..catalog.dtypes import ONEDNN_BF16_MIN_ROWS

_HANDLES = "_kernelfit_decode_fastpath"


def _rows(args: tuple, kwargs: dict) -> int | None:
    x = kwargs.get("input_ids")
    if x is None and args and isinstance(args[0], torch.Tensor):
        x = args[0]
    if x is not None:
        return int(x.numel())
    emb = kwargs.get("inputs_embeds")
    return int(emb.shape[:-1].numel()) if emb is not None else None


def _before(module, args, kwargs):
    rows = _rows(args, kwargs)
    module._kernelfit_onednn_was = torch.backends.mkldnn.enabled
    if rows is not None and rows < ONEDNN_BF16_MIN_ROWS:
        torch._C._set_mkldnn_enabled(False)


def _after(module, args, kwargs, output):
    was = getattr(module, "_kernelfit_onednn_was", None)
    if was is not None:
        torch._C._set_mkldnn_enabled(was)
    return output


def install(model) -> bool:
    """Add the fast path to `model` (idempotent). False when this torch has no oneDNN switch."""
    if getattr(model, _HANDLES, None) is not None:
        return True
    if not hasattr(torch._C, "_set_mkldnn_enabled") or not torch.backends.mkldnn.is_available():
        return False
    handles = (model.register_forward_pre_hook(_before, with_kwargs=True),
               model.register_forward_hook(_after, with_kwargs=True, always_call=True))
    setattr(model, _HANDLES, handles)
    return True


def uninstall(model) -> None:
    for h in getattr(model, _HANDLES, None) or ():
        h.remove()
    if hasattr(model, _HANDLES):
        delattr(model, _HANDLES)


def installed(model) -> bool:
    return getattr(model, _HANDLES, None) is not None
