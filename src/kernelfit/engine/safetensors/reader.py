"""A transformers checkpoint's safetensors shards read under llama.cpp's tensor names, over read-only memory maps:
the interface engine/gguf/reader.py's GgufTensors gives the builder, so one builder (engine/build.py) packs both.

Names: transformers' modeling files (model.layers.N.self_attn.q_proj.weight ...) -> llama.cpp's (blk.N.attn_q.weight
...), the mapping llama.cpp's converter applies (gguf-py tensor_mapping.py). Rows stay as transformers stores them:
Q and K keep each head's rotary halves, which the builder pairs (a GGUF llama file has them paired by the converter,
LlamaModel.permute). A tensor the recipe would not read (an o_proj bias, an MLP bias) refuses the checkpoint rather
than being dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...catalog.engine_checkpoints import IGNORED_SUFFIXES, llama_cpp_name
from ...errors import UsageError
from ...model.safetensors_header import read_header
from ..gguf import blocks as gb
from ..gguf.reader import Conversion, drop_pages
from ..weights import HugeArena

DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}  # safetensors' names, GGUF's float types too


@dataclass
class Stored:
    """One tensor in a shard: where its bytes are and what they are."""

    data: np.memmap
    offset: int
    nbytes: int
    type_name: str
    shape: tuple[int, ...]


def shards(directory: Path) -> list[Path]:
    """The checkpoint's safetensors files: the index's, else the folder's."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return sorted({directory / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    return sorted(directory.glob("*.safetensors"))


@dataclass
class SafetensorsTensors:
    """The checkpoint's tensors by llama.cpp name (GgufTensors' interface, float types only)."""

    path: str
    by_name: dict
    requant: str | None = None  # "Q8_0": every 2-D weight re-quantized at load into llama.cpp's blocks (lossy)
    conversions: list[Conversion] = field(default_factory=list)
    arena: HugeArena = field(default_factory=HugeArena)
    problems: list[str] = field(default_factory=list)
    # per re-quantized tensor, its chunks' (squared error, squared norm): the rows are converted on several threads
    requant_error: dict = field(default_factory=dict)

    @classmethod
    def open(cls, directory: str | Path, requant: str | None = None) -> "SafetensorsTensors":
        directory = Path(directory)
        by_name = {}
        for shard in shards(directory):
            header = read_header(shard)
            if header is None:
                raise UsageError(f"{shard} is not a readable safetensors file; re-download or re-save the checkpoint")
            with shard.open("rb") as f:
                start = 8 + int.from_bytes(f.read(8), "little")  # the tensors' bytes follow the JSON header
            data = np.memmap(shard, dtype=np.uint8, mode="r")
            for name, info in header.items():
                if name == "__metadata__" or name.endswith(IGNORED_SUFFIXES):
                    continue
                ours = llama_cpp_name(name)
                if ours is None:
                    raise UsageError(f"{directory.name}: tensor {name} is not one the engine's recipe reads (a bias "
                                     "or layer it does not model); --quantization none loads it through transformers")
                if info["dtype"] not in DTYPES:
                    raise UsageError(f"{directory.name}: tensor {name} is {info['dtype']}; the engine reads "
                                     f"{', '.join(DTYPES)} safetensors (--quantization none loads it through "
                                     "transformers)")
                begin, end = info["data_offsets"]
                by_name[ours] = Stored(data, start + begin, end - begin, info["dtype"], tuple(info["shape"]))
        return cls(str(directory), by_name, requant)

    def has(self, name: str) -> bool:
        return name in self.by_name

    def qtype(self, name: str) -> str:
        """The type the builder packs: the stored float type, or Q8_0 for a weight re-quantized at load."""
        return "Q8_0" if self._requantized(name) else self.by_name[name].type_name

    def _requantized(self, name: str) -> bool:
        return self.requant == "Q8_0" and len(self.by_name[name].shape) == 2 and self.shape(name)[1] % gb.QK == 0

    def dot_layout(self, name: str) -> tuple:
        """Q8_0's dot layout (engine/gguf/blocks.py dot_groups): 8-bit codes, float16 scale per 32, minimum -128."""
        return 8, gb.QK, np.dtype(np.float16).str, -128.0

    def dot_groups(self, name: str, order: np.ndarray | None = None, start: int = 0,
                   stop: int | None = None) -> gb.DotGroups:
        """Rows start..stop (after `order`) re-quantized into Q8_0 blocks by gguf-py's quantizer — bit for bit the
        blocks llama.cpp's quantize_row_q8_0 writes from the same values — and read as those blocks' groups."""
        from gguf import GGMLQuantizationType, quants

        rows, cols = self.shape(name)
        stop = rows if stop is None else stop
        w = self.dequantized(name, start, stop, order).numpy()
        raw = quants.quantize(w, GGMLQuantizationType.Q8_0)
        back = gb.dequantize(raw, "Q8_0", stop - start, cols)
        self.requant_error.setdefault(name, []).append((float(((back - w) ** 2).sum()), float((w ** 2).sum())))
        return gb.dot_groups(raw, "Q8_0", stop - start, cols)

    def conversion(self, name: str, bits: int) -> Conversion:
        """What a weight packed into dot groups became (engine/gguf/reader.py dot): Q8_0 made here, its error."""
        parts = self.requant_error.get(name, [])
        err2, norm2 = sum(e for e, _ in parts), sum(n for _, n in parts)
        return Conversion(name, self.by_name[name].type_name, f"{bits}-bit groups (Q8_0 made at load, lossy)",
                          (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0)

    def shape(self, name: str) -> tuple[int, int]:
        dims = self.by_name[name].shape
        return (int(dims[0]), int(np.prod(dims[1:]))) if len(dims) > 1 else (1, int(dims[0]))

    def _raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.by_name[name]
        rows, cols = self.shape(name)
        return t.data[t.offset:t.offset + t.nbytes].view(DTYPES[t.type_name]).reshape(rows, cols)[start:stop]

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Drop a converted tensor's pages from this process's resident set (GgufTensors.release)."""
        t = self.by_name[name]
        drop_pages(t.data, t.offset, t.offset + t.nbytes)

    def float_tensor(self, name: str) -> torch.Tensor:
        rows, cols = self.shape(name)
        w = gb.dequantize(self._raw_rows(name, 0, rows), self.by_name[name].type_name, rows, cols)
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(-1)

    def dequantized(self, name: str, start: int, stop: int, order: np.ndarray | None = None) -> torch.Tensor:
        """float32 rows as stored (before any re-quantization)."""
        rows, cols = self.shape(name)
        raw = self._raw_rows(name, 0, rows)[order[start:stop]] if order is not None else \
            self._raw_rows(name, start, stop)
        stored = self.by_name[name].type_name
        return torch.from_numpy(np.ascontiguousarray(gb.dequantize(raw, stored, stop - start, cols)))
