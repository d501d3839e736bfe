"""`--quantization int8` / `int4` on a CPU: a dense checkpoint's linear layers packed on load.

The same weight-only kernels the packed GGUF runner uses (engine/torch_weights.py), behind an nn.Linear-shaped
module, so any architecture transformers loads runs them. int4 needs whole 64-row tiles and 32-column
groups; a layer that has neither stays int8, and one whose input size is not a multiple of 8 stays dense.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.torch_weights import Int8Weight, PackedWeight, can_int4, int4_from_float


class PackedLinear(nn.Module):
    def __init__(self, weight: PackedWeight, bias: torch.Tensor | None, rel_error: float):
        super().__init__()
        self.packed, self.rel_error = weight, rel_error
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = self.packed.mm(x.reshape(-1, self.in_features).to(torch.bfloat16)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.packed.kernel}, rel. error {self.rel_error:.4f}"


def pack_linears(model: nn.Module, bits: int) -> dict:
    """Replace every nn.Linear of `model` by a PackedLinear (int4 where the shape allows, else int8).
    Returns {"int4": n, "int8": n, "dense": n, "max_rel_error": e}."""
    counts = {"int4": 0, "int8": 0, "dense": 0, "max_rel_error": 0.0}
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        w = mod.weight.detach()
        if w.device.type != "cpu" or w.shape[1] % 8:
            counts["dense"] += 1
            continue
        if bits == 4 and can_int4(*w.shape):
            packed, err = int4_from_float(w)
            counts["int4"] += 1
        else:
            packed, err = Int8Weight.from_float(w)
            counts["int8"] += 1
        counts["max_rel_error"] = max(counts["max_rel_error"], round(err, 5))
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], PackedLinear(packed, mod.bias, err))
    return counts
