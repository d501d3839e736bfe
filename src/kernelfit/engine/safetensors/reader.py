"""A transformers checkpoint's safetensors shards read under llama.cpp's tensor names, over read-only memory maps:
the interface engine/gguf/reader.py's GgufTensors gives the builder, so one builder (engine/build.py) packs both.

Names: transformers' modeling files (model.layers.N.self_attn.q_proj.weight ...) -> llama.cpp's (blk.N.attn_q.weight
...), the mapping llama.cpp's converter applies (gguf-py tensor_mapping.py). Rows stay as transformers stores them:
Q and K keep each head's rotary halves, which the builder pairs (a GGUF llama file has them paired by the converter,
LlamaModel.permute). A tensor the recipe would not read (an o_proj bias, an MLP bias) refuses the checkpoint rather
than being dropped. AWQ / GPTQ linears (engine/safetensors/packed.py) stand under their dense weight's name and
give the dot products their codes and scales as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...catalog.engine_checkpoints import ALL_PACKED_METHODS, ENGINE_PACKED_METHODS, IGNORED_SUFFIXES, llama_cpp_name
from ...errors import UsageError
from ...model.safetensors_header import read_header, shard_files
from ..gguf import blocks as gb
from ..gguf.reader import Conversion, drop_pages
from ..weights import HugeArena
from . import packed as pk
from . import widened as wd
from .quantized import linear_leaves, quantized_linear, quantized_prefixes
from ...catalog.checkpoint_layout import Fix, Source, text_config, text_tensors
from ...catalog.converted_checkpoints import CONVERTED_CHECKPOINT_ARCHS, layout

DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}  # safetensors' names, GGUF's float types too


@dataclass
class Stored:
    """One tensor in a shard: where its bytes are and what they are."""

    data: np.memmap
    offset: int
    nbytes: int
    type_name: str
    shape: tuple[int, ...]


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
    def open(cls, directory: str | Path, requant: str | None = None, quant=None,
             config: dict | None = None) -> "SafetensorsTensors":
        """quant: the checkpoint's model.quantization.CheckpointQuant (AWQ / GPTQ: its linears are packed); config:
        its config.json, whose model_type picks the names' mapping (catalog/converted_checkpoints.py's layouts; a
        multimodal config's text model: its tensors as a text checkpoint names them)."""
        directory = Path(directory)
        model_type = text_config(config or {}).get("model_type")
        if model_type in CONVERTED_CHECKPOINT_ARCHS:
            if quant is not None:
                raise UsageError(f"{directory.name}: a {quant.method} {model_type} checkpoint is not read by the "
                                 "engine (it reads this architecture's bf16/fp16/fp32 weights); --quantization none "
                                 "loads it through transformers")
            own = _stored(directory)
            stored = {ours: own[name] for ours, name in text_tensors(own, config.get("model_type")).items()}
            sources = layout(model_type, text_config(config), set(stored), directory.name)
            return cls(str(directory), {ours: _joined(stored, s, ours, directory.name) for ours, s in sources.items()},
                       requant)
        by_name, parts = {}, {}
        stored = _stored(directory)
        leaves = linear_leaves(quant) if quant is not None else ()
        linears = quantized_prefixes(stored, quant) if quant is not None else set()
        for name, tensor in stored.items():
            prefix, _, leaf = name.rpartition(".")
            if prefix in linears and leaf in leaves:  # a quantized linear's part (across shards)
                parts.setdefault(prefix, {})[leaf] = tensor
                continue
            if quant is not None and quant.method in ALL_PACKED_METHODS and name.endswith("_proj.weight"):
                raise UsageError(f"{directory.name}: {name} is dense but config.json declares {quant.method} "
                                 "weights; fix the config (--quantization none loads it through transformers)")
            ours = llama_cpp_name(name)
            if ours is None:
                raise UsageError(f"{directory.name}: tensor {name} is not one the engine's recipe reads (a bias "
                                 "or layer it does not model); --quantization none loads it through transformers")
            by_name[ours] = _float(directory, name, tensor)
        if parts and (quant.method not in ENGINE_PACKED_METHODS + ("fp8",)):
            raise UsageError(f"{directory.name}: its {quant.method} linears have no engine reader (--quantization "
                             "none loads it through transformers)")
        for prefix, p in parts.items():
            by_name[_packed_name(directory, prefix)] = quantized_linear(directory, prefix, p, quant)
        return cls(str(directory), by_name, requant)

    def has(self, name: str) -> bool:
        return name in self.by_name

    def qtype(self, name: str) -> str:
        """The type the builder packs: the stored float type, or Q8_0 for a weight re-quantized at load."""
        return "Q8_0" if self._requantized(name) else self.by_name[name].type_name

    def _requantized(self, name: str) -> bool:
        t = self.by_name[name]
        return self.requant == "Q8_0" and isinstance(t, (Stored, Joined)) and len(t.shape) == 2 and \
            self.shape(name)[1] % gb.QK == 0

    def dot_layout(self, name: str) -> tuple:
        """Q8_0's dot layout (engine/gguf/blocks.py dot_groups): 8-bit codes, float16 scale per 32, minimum -128; a
        packed linear's own (engine/safetensors/packed.py layout)."""
        t = self.by_name[name]
        return pk.layout(t) if isinstance(t, pk.PackedLinear) else (8, gb.QK, np.dtype(np.float16).str, -128.0, 0)

    def dot_groups(self, name: str, order: np.ndarray | None = None, start: int = 0,
                   stop: int | None = None) -> gb.DotGroups:
        """Rows start..stop (after `order`) re-quantized into Q8_0 blocks by gguf-py's quantizer — bit for bit the
        blocks llama.cpp's quantize_row_q8_0 writes from the same values — and read as those blocks' groups."""
        from gguf import GGMLQuantizationType, quants

        rows, cols = self.shape(name)
        stop = rows if stop is None else stop
        t = self.by_name[name]
        if isinstance(t, pk.PackedLinear):
            g, err2, norm2 = pk.dot_groups(t, np.arange(start, stop) if order is None else order[start:stop])
            self.requant_error.setdefault(name, []).append((err2, norm2))
            return g
        w = self.dequantized(name, start, stop, order).numpy()
        raw = quants.quantize(w, GGMLQuantizationType.Q8_0)
        back = gb.dequantize(raw, "Q8_0", stop - start, cols)
        self.requant_error.setdefault(name, []).append((float(((back - w) ** 2).sum()), float((w ** 2).sum())))
        return gb.dot_groups(raw, "Q8_0", stop - start, cols)

    def column_order(self, name: str) -> np.ndarray | None:
        """The order dot_groups gives a weight's input columns in (an act-order GPTQ / compressed-tensors linear's
        groups side by side), or None: as stored. The product gathers its input the same way."""
        t = self.by_name[name]
        return t.perm if isinstance(t, pk.PackedLinear) else None

    def conversion(self, name: str, bits: int, grid: int = 0) -> Conversion:
        """What a weight packed into dot groups became (engine/gguf/reader.py dot): Q8_0 made here, its error (grid:
        always 0 here, the GGUF reader's signature)."""
        parts = self.requant_error.get(name, [])
        err2, norm2 = sum(e for e, _ in parts), sum(n for _, n in parts)
        rel = (err2 / norm2) ** 0.5 if norm2 > 0 else 0.0
        t = self.by_name[name]
        if isinstance(t, pk.PackedLinear):
            how = "as stored, exact" if pk.symmetric(t) else "codes and scales as stored, zero x scale in float16"
            return Conversion(name, f"{t.type_name} {t.bits}-bit g{t.group}", f"{bits}-bit groups ({how})", rel)
        return Conversion(name, t.type_name, f"{bits}-bit groups (Q8_0 made at load, lossy)", rel)

    def shape(self, name: str) -> tuple[int, int]:
        dims = self.by_name[name].shape
        return (int(dims[0]), int(np.prod(dims[1:]))) if len(dims) > 1 else (1, int(dims[0]))

    def _raw_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        t = self.by_name[name]
        if isinstance(t, Joined):
            return t.gather(start, stop)
        rows, cols = self.shape(name)
        return t.data[t.offset:t.offset + t.nbytes].view(DTYPES[t.type_name]).reshape(rows, cols)[start:stop]

    def release(self, name: str, rows: tuple[int, int] | None = None) -> None:
        """Drop a converted tensor's pages from this process's resident set (GgufTensors.release)."""
        t = self.by_name[name]
        if isinstance(t, Joined):  # its parts' pages, once the whole tensor is read
            for part in t.parts if rows is None else []:
                drop_pages(part.data, part.offset, part.offset + part.nbytes)
            return
        if rows is not None and isinstance(t, Stored):  # rows start..stop of a tensor copied chunk by chunk
            row_bytes = t.nbytes // self.shape(name)[0]
            drop_pages(t.data, t.offset + rows[0] * row_bytes, t.offset + rows[1] * row_bytes)
            return
        for part in t.parts() if isinstance(t, (pk.PackedLinear, wd.WidenedLinear)) else [t]:
            drop_pages(part.data, part.offset, part.offset + part.nbytes)

    def float_tensor(self, name: str) -> torch.Tensor:
        t = self.by_name[name]
        if isinstance(t, Joined):  # a small tensor whole, the converter's fix applied
            raw = t.gather(0, t.shape[0])
            w = gb.dequantize(raw, t.type_name, *raw.shape).astype(np.float32).reshape(-1)
            w = w + 1 if t.fix is Fix.PLUS_ONE else -np.exp(w) if t.fix is Fix.NEG_EXP else w
            return torch.from_numpy(np.ascontiguousarray(w))
        rows, cols = self.shape(name)
        w = gb.dequantize(self._raw_rows(name, 0, rows), self.by_name[name].type_name, rows, cols)
        return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).reshape(-1)

    def dequantized(self, name: str, start: int, stop: int, order: np.ndarray | None = None) -> torch.Tensor:
        """float32 rows as stored (before any re-quantization); a packed linear's (q - z) * s, an fp8 one's value *
        scale."""
        rows, cols = self.shape(name)
        t = self.by_name[name]
        if isinstance(t, (pk.PackedLinear, wd.WidenedLinear)):
            rows_of = np.arange(start, stop) if order is None else order[start:stop]
            w = pk.input_order(t, pk.dense_rows(t, rows_of)) if isinstance(t, pk.PackedLinear) else \
                wd.dense_rows(t, rows_of)
            return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        raw = self._raw_rows(name, 0, rows)[order[start:stop]] if order is not None else \
            self._raw_rows(name, start, stop)
        stored = self.by_name[name].type_name
        return torch.from_numpy(np.ascontiguousarray(gb.dequantize(raw, stored, stop - start, cols)))


@dataclass
class Joined:
    """A llama.cpp tensor made from the checkpoint's (engine/safetensors/layout.py Source): `parts` stacked by rows,
    each viewed as [rows, its last dimension] (a 1-D tensor as [n, 1]), then `rows` / `cols` picked; `fix` changes
    the values of a small tensor read whole (float_tensor)."""

    parts: list[Stored]
    rows: np.ndarray | None
    cols: np.ndarray | None
    fix: Fix | None
    type_name: str
    shape: tuple[int, ...]  # (rows, cols) after picking; (n,) for a vector

    def views(self) -> list[np.ndarray]:
        return [p.data[p.offset:p.offset + p.nbytes].view(DTYPES[p.type_name]).reshape(
            -1, p.shape[-1] if len(p.shape) > 1 else 1) for p in self.parts]

    def gather(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as stored (bf16 as uint16, f16, f32)."""
        views = self.views()
        if self.rows is None and len(views) == 1:
            out = views[0][start:stop]
        else:
            idx = self.rows[start:stop] if self.rows is not None else np.arange(start, stop)
            offsets = np.cumsum([0] + [len(v) for v in views])
            which = np.searchsorted(offsets, idx, side="right") - 1
            out = np.empty((len(idx), views[0].shape[1]), views[0].dtype)
            for k, v in enumerate(views):
                mine = which == k
                if mine.any():
                    out[mine] = v[idx[mine] - offsets[k]]
        return out[:, self.cols] if self.cols is not None else out


def _joined(stored: dict[str, Stored], source: Source, ours: str, where: str) -> Joined:
    parts = [stored[n] for n in source.parts]
    kinds = {p.type_name for p in parts}
    if len(kinds) != 1 or next(iter(kinds)) not in DTYPES:
        raise UsageError(f"{where}: {', '.join(source.parts[:2])} are {'/'.join(sorted(kinds))}; the engine reads "
                         f"{', '.join(DTYPES)} safetensors of one type a tensor (--quantization none loads it through "
                         "transformers)")
    lasts = {p.shape[-1] if len(p.shape) > 1 else 1 for p in parts}
    if len(lasts) != 1:
        raise UsageError(f"{where}: the tensors making {ours} differ in their last dimension; re-save the checkpoint")
    total = sum(int(np.prod(p.shape)) // next(iter(lasts)) for p in parts)
    rows = len(source.rows) if source.rows is not None else total
    cols = len(source.cols) if source.cols is not None else next(iter(lasts))
    if (source.rows is not None and int(source.rows.max(initial=-1)) >= total) or \
            (source.cols is not None and int(source.cols.max(initial=-1)) >= next(iter(lasts))):
        raise UsageError(f"{where}: {source.parts[0]} is smaller than config.json's sizes say; fix the config or "
                         "re-save the checkpoint")
    vector = len(parts) == 1 and len(parts[0].shape) == 1
    return Joined(parts, source.rows, source.cols, source.fix, parts[0].type_name, (rows,) if vector else (rows, cols))


def _stored(directory: Path) -> dict[str, Stored]:
    """Every tensor of the checkpoint's shards by its own name, over read-only memory maps."""
    files = shard_files(directory)
    if files is None:
        raise UsageError(f"{directory / 'model.safetensors.index.json'} is not a readable checkpoint index; "
                         "re-download or re-save the checkpoint")
    out = {}
    for shard in files:
        header = read_header(shard)
        if header is None:
            raise UsageError(f"{shard} is not a readable safetensors file; re-download or re-save the checkpoint")
        with shard.open("rb") as f:
            start = 8 + int.from_bytes(f.read(8), "little")  # the tensors' bytes follow the JSON header
        data = np.memmap(shard, dtype=np.uint8, mode="r")
        for name, info in header.items():
            if name != "__metadata__" and not name.endswith(IGNORED_SUFFIXES):
                begin, end = info["data_offsets"]
                out[name] = Stored(data, start + begin, end - begin, info["dtype"], tuple(info["shape"]))
    return out


def _float(directory: Path, name: str, t: Stored) -> Stored:
    if t.type_name not in DTYPES:
        raise UsageError(f"{directory.name}: tensor {name} is {t.type_name}; the engine reads {', '.join(DTYPES)} "
                         "safetensors (--quantization none loads it through transformers)")
    return t


def _packed_name(directory: Path, prefix: str) -> str:
    ours = llama_cpp_name(prefix + ".weight")
    if ours is None:
        raise UsageError(f"{directory.name}: packed linear {prefix} is not one the engine's recipe reads; "
                         "--quantization none loads it through transformers")
    return ours
