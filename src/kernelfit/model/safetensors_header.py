"""Read a safetensors checkpoint's tensor table from its headers (JSON at the front of each shard):
names, dtypes, shapes. No tensor data is read, no torch is imported."""

from __future__ import annotations

import json
import struct
from pathlib import Path

MAX_HEADER_BYTES = 100 << 20  # the format caps the header at 100 MB


def read_header(path: Path) -> dict | None:
    """The header of one shard, or None when it is not a readable safetensors file."""
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return None
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > MAX_HEADER_BYTES:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return header if isinstance(header, dict) else None


def shard_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (a bad header, or tensor data past the end), or None."""
    header = read_header(path)
    if header is None:
        return "its header is not a safetensors header (garbage, or not a safetensors file)"
    with path.open("rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            return f"tensor {name!r} has no valid data_offsets"
        end = max(end, offsets[1])
    size = path.stat().st_size
    if 8 + n + end > size:
        return f"it is truncated ({size:,} bytes, its header needs {8 + n + end:,})"
    return None


def checkpoint_problem(directory: Path) -> str | None:
    """The first damaged shard, or an index naming a shard that is missing."""
    for index in (directory / "model.safetensors.index.json", directory / "pytorch_model.bin.index.json"):
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = {str(v) for v in weight_map.values()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name} is not a valid checkpoint index"
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            return f"{index.name} names {', '.join(missing[:3])}, which {'is' if len(missing) == 1 else 'are'} missing"
    for shard in sorted(directory.glob("*.safetensors")):
        why = shard_problem(shard)
        if why:
            return f"{shard.name}: {why}"
    return None


def count_parameters(directory: Path) -> int | None:
    """Elements of every tensor in the directory's *.safetensors shards; None if any shard is unreadable."""
    total = 0
    shards = sorted(directory.glob("*.safetensors"))
    for shard in shards:
        header = read_header(shard)
        if header is None:
            return None
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            n = 1
            for dim in info.get("shape", ()):
                n *= int(dim)
            total += n
    return total or None


def shard_files(directory: Path) -> list[Path] | None:
    """The checkpoint's safetensors files: its index's where it has one, else the folder's; None for an unreadable
    index."""
    index = directory / "model.safetensors.index.json"
    if not index.is_file():
        return sorted(directory.glob("*.safetensors"))
    try:
        return sorted({directory / f for f in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def tensor_names(directory: Path) -> set[str] | None:
    """Every tensor name in the checkpoint's shards (the index's shards where it has one); None if one is unreadable."""
    shards = shard_files(directory)
    if shards is None:
        return None
    names: set[str] = set()
    for shard in shards:
        header = read_header(shard)
        if header is None:
            return None
        names.update(n for n in header if n != "__metadata__")
    return names
