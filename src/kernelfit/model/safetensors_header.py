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
