"""fp8 linears widened to bf16 rows at load: transformers' block fp8 checkpoints ("quant_method": "fp8": weight
float8_e4m3fn [out, in], weight_scale_inv float32 [ceil(out/b0), ceil(in/b1)] for weight_block_size [b0, b1]) and
compressed-tensors' float-quantized ones (weight float8_e4m3fn, weight_scale [1] per tensor, [out, 1] per channel,
[out, in/g] per group or [ceil(out/b0), ceil(in/b1)] per block_structure). Either way w = value * its block's scale
(transformers' FP8 quantizer dequantizes so where no fp8 kernel runs; compressed_tensors/quantization/lifecycle/
forward.py _dequantize); no CPU here multiplies fp8, so the products are the engine's bf16 rows of w, rounded once
(the rounding measured per tensor, engine/gguf/reader.py dense).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import UsageError
from .packed import floats

FP8_STORED = "F8_E4M3"  # safetensors' name for float8_e4m3fn
SCALE_TYPES = ("F32", "BF16", "F16")
# every float8_e4m3fn byte's value (NaN for its two NaN codes), the table the rows are looked up in
E4M3_VALUES = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float().numpy()


@dataclass
class WidenedLinear:
    """One fp8 linear's tensors in the shards (engine/safetensors/reader.py Stored) and its scale's block."""

    weight: object
    scale: object
    block: tuple[int, int]  # the rows and columns one scale covers
    type_name: str = "FP8"

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    def parts(self) -> list:
        return [self.weight, self.scale]


def widened(where: str, weight, scale, block: tuple[int, int] | None) -> WidenedLinear:
    """The linear `where` (its fp8 weight and scale tensors), checked; block: the config's block size, None where the
    scale's shape gives it (per tensor, channel or group: the rows and columns must divide evenly)."""
    if weight.type_name != FP8_STORED or len(weight.shape) != 2 or scale.type_name not in SCALE_TYPES:
        raise UsageError(f"{where}: an fp8 linear must be an {FP8_STORED} matrix with a float scale ({weight.type_name}, "
                         f"{scale.type_name}); re-save the checkpoint")
    rows, cols = weight.shape
    dims = tuple(scale.shape) if len(scale.shape) == 2 else (1, 1) if int(np.prod(scale.shape)) == 1 else None
    if block is None and dims is not None and rows % dims[0] == 0 and cols % dims[1] == 0:
        block = (rows // dims[0], cols // dims[1])
    if dims is None or block is None or dims != (-(-rows // block[0]), -(-cols // block[1])):
        raise UsageError(f"{where}: its scale {list(scale.shape)} does not tile a [{rows}, {cols}] weight"
                         + (f" in blocks of {list(block)}" if block else "") + "; re-save the checkpoint")
    return WidenedLinear(weight, scale, block)


def dense_rows(w: WidenedLinear, rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), in]: each fp8 value times its block's scale, the weights the checkpoint stands for."""
    rows_n, cols = w.shape
    values = E4M3_VALUES[w.weight.data[w.weight.offset:w.weight.offset + w.weight.nbytes].reshape(rows_n, cols)[rows]]
    scale = floats(w.scale).astype(np.float32).reshape(-1, w.scale.shape[-1] if len(w.scale.shape) == 2 else 1)
    full = np.repeat(scale[np.asarray(rows) // w.block[0]], w.block[1], axis=1)[:, :cols]  # [n, in]
    return values * full
