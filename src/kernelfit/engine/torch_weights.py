"""Weight-only packed linear weights for the CPU, and the products that read them.

Three layouts, each a torch kernel measured on this project's reference CPU (catalog/packed_kernels.py
holds the figures and where they come from):
- `Int4Weight`: torch's group-32 asymmetric int4 (`aten._weight_int4pack_mm_for_cpu`): Q4_0, Q4_1
  and Q4_K map onto it exactly, scales and zeros rounded to bf16 (the kernel takes bf16 only).
- `Int8Weight`: int8 per output row (`aten._weight_int8pack_mm`): Q8_0 and Q6_K re-gridded (a
  declared, measured loss), and dense checkpoints under `--quantization int8`.
- `DenseWeight`: a bf16 matrix (`F.linear`): float tensors, and a re-grid whose error is too large.

Both packed kernels compute in bf16 only; on other dtypes they fall back to a slow reference loop,
so activations are cast to bf16 at every product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .gguf.blocks import QK, Int4Groups

INT4_TILE_N = 64  # _convert_weight_to_int4pack_for_cpu packs rows in blocks of 64 (AVX-512 layout)


class PackedWeight:
    out_features: int
    in_features: int
    kernel: str

    def mm(self, x: torch.Tensor) -> torch.Tensor:  # x: [M, K] bf16 -> [M, N] bf16
        raise NotImplementedError

    def nbytes(self) -> int:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:  # float32 [N, K] of what the product computes with
        raise NotImplementedError


@dataclass(eq=False)
class Int4Weight(PackedWeight):
    packed: torch.Tensor  # uint8 [N, K/2], torch's CPU int4 layout
    scales_zeros: torch.Tensor  # bf16 [K/32, N, 2]
    out_features: int
    in_features: int
    kernel: str = "int4 group-32 (aten._weight_int4pack_mm_for_cpu)"

    def mm(self, x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, QK, self.scales_zeros)

    def nbytes(self):
        return self.packed.numel() + self.scales_zeros.numel() * 2

    @classmethod
    def from_groups(cls, g: Int4Groups, parts: list[int] | None = None) -> tuple["Int4Weight", list[float]]:
        """The packed weight, and the relative error its bf16 scales and zeros cost each part (consecutive row
        counts, e.g. Q, K and V of a fused product; default one part)."""
        n, k = g.codes.shape
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.from_numpy(g.codes.astype(np.int32)), 1)
        scale, zero, err2, norm2 = bf16_scale_zero(g)
        sz = torch.stack([scale.T, zero.T], dim=-1).contiguous()
        errors = [float((e.sum() / m.sum().clamp_min(1e-30)).sqrt())
                  for e, m in zip(err2.split(parts or [n]), norm2.split(parts or [n]))]
        return cls(packed, sz, n, k), errors

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K] of what the kernel computes with (bf16 scales and zeros), through the kernel itself."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return self.mm(eye).float().T.contiguous()


@dataclass(eq=False)
class Int8Weight(PackedWeight):
    weight: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # bf16 [N]
    out_features: int
    in_features: int
    kernel: str = "int8 per-row (aten._weight_int8pack_mm)"

    def mm(self, x):
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scale)

    def nbytes(self):
        return self.weight.numel() + self.scale.numel() * 2

    def dequantize(self) -> torch.Tensor:
        """float32 [N, K] of what the kernel computes with."""
        return self.weight.float() * self.scale.float().unsqueeze(1)

    @classmethod
    def from_float(cls, w: torch.Tensor) -> tuple["Int8Weight", float]:
        """Symmetric int8 per row; returns the weight and its relative error ||W8 - W|| / ||W||. The scale
        is rounded to bf16 *before* quantizing, so the kernel's bf16 scale adds no error of its own."""
        w = w.float()
        amax = w.abs().amax(dim=1).clamp_min(1e-30)
        scale = (amax / 127).to(torch.bfloat16)
        # a bf16 scale rounded down could push a code past 127: nudge it up one step where it did
        low = scale.float() * 127 < amax
        scale = torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
        q = torch.round(w / scale.float().unsqueeze(1)).clamp_(-127, 127).to(torch.int8)
        out = cls(q, scale, w.shape[0], w.shape[1])
        return out, ((out.dequantize() - w).norm() / w.norm().clamp_min(1e-30)).item()


@dataclass(eq=False)
class DenseWeight(PackedWeight):
    weight: torch.Tensor  # bf16 [N, K]
    out_features: int
    in_features: int
    kernel: str = "bf16 dense (F.linear)"

    def mm(self, x):
        return F.linear(x, self.weight)

    def nbytes(self):
        return self.weight.numel() * 2

    def dequantize(self) -> torch.Tensor:
        return self.weight.float()

    @classmethod
    def from_float(cls, w: torch.Tensor) -> "DenseWeight":
        w = w.to(torch.bfloat16).contiguous()
        return cls(w, w.shape[0], w.shape[1])


def bf16_scale_zero(g: Int4Groups) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """bf16 scales and zeros for exact float ones, per group the pair of least squared error over the group's
    own codes: the scale rounded down or up, and the zero that best absorbs that rounding. Returns them with,
    per row, the squared error that costs and the squared norm of the exact weights.

    Rounding both to nearest leaves a systematic error per group (a whole group of 32 weights scaled by the
    same 1 + e), which moved SmolLM2's answer to "What is the capital of France?" from "The capital ..." to
    "L'Étoile ..."; choosing the pair by the group's error halves it (tests/test_packed_gguf.py)."""
    n, k = g.codes.shape
    c = torch.from_numpy(g.codes.reshape(n, -1, QK).astype(np.float32)) - 8  # [N, G, 32]
    s, z = torch.from_numpy(g.scale), torch.from_numpy(g.zero)
    down = s.to(torch.bfloat16)
    up = torch.nextafter(down, torch.where(s >= down.float(), torch.full_like(down, float("inf")),
                                            torch.full_like(down, float("-inf"))))
    mean_c = c.mean(-1)
    best_s, best_z, best_err = None, None, None
    for cand in (down, up):
        cf = cand.float()
        zc = (z + mean_c * (s - cf)).to(torch.bfloat16)
        err = (((c * (cf - s).unsqueeze(-1)) + (zc.float() - z).unsqueeze(-1)) ** 2).sum(-1)
        if best_err is None:
            best_s, best_z, best_err = cand, zc, err
        else:
            better = err < best_err
            best_s, best_z = torch.where(better, cand, best_s), torch.where(better, zc, best_z)
            best_err = torch.minimum(err, best_err)
    norm2 = torch.linalg.vector_norm(c * s.unsqueeze(-1) + z.unsqueeze(-1), dim=(-1, -2)) ** 2
    return best_s, best_z, best_err.sum(-1), norm2


def int4_from_float(w: torch.Tensor) -> tuple[Int4Weight, float]:
    """`--quantization int4` for a dense weight: group-32 asymmetric min/max int4 (what torchao's and
    gpt-fast's int4 weight-only quantizers do), with its relative error."""
    n, k = w.shape
    g = w.float().reshape(n, k // QK, QK)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-12).to(torch.bfloat16).float()
    codes = torch.round((g - lo.unsqueeze(-1)) / scale.unsqueeze(-1)).clamp_(0, 15)
    zero = (lo + 8 * scale).to(torch.bfloat16).float()
    groups = Int4Groups(codes.reshape(n, k).to(torch.uint8).numpy(), scale.numpy(), zero.numpy())
    packed, _ = Int4Weight.from_groups(groups)
    back = (codes - 8) * scale.unsqueeze(-1) + zero.unsqueeze(-1)
    err = ((back.reshape(n, k) - w.float()).norm() / w.float().norm().clamp_min(1e-30)).item()
    return packed, err


def can_int4(out_features: int, in_features: int) -> bool:
    """Shapes torch's CPU int4 layout takes: whole 64-row tiles, whole 32-column groups."""
    return out_features % INT4_TILE_N == 0 and in_features % QK == 0


def concat_int4(groups: list[Int4Groups]) -> Int4Groups:
    """Stack row groups (Q, K and V; gate and up) into one fused product's weight."""
    return Int4Groups(np.concatenate([g.codes for g in groups]), np.concatenate([g.scale for g in groups]),
                      np.concatenate([g.zero for g in groups]))
