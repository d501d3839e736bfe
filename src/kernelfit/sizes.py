"""Sizes as people write them ("20GiB", "64GB", "512MiB"; a bare number is GiB), parsed in one place for
the command line and the Python API."""

from __future__ import annotations

import re

from .errors import UsageError

SIZE_UNITS = {"": 1.0, "gib": 1.0, "gb": 1e9 / 1024**3, "mib": 1 / 1024, "mb": 1e6 / 1024**3, "tib": 1024.0}


def parse_size(text: str, what: str) -> float:
    """'20GiB', '64GB', '512MiB', '20' (GiB) -> GiB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", text or "")
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise UsageError(f"{what} {text!r} is not a size; write e.g. 20GiB, 64GB or 512MiB")
    value = float(m.group(1)) * SIZE_UNITS[m.group(2).lower()]
    if not value > 0:
        raise UsageError(f"{what} must be a positive size, not {text!r}")
    return value


def parse_max_memory(text: str) -> dict[str, float]:
    """'0=20GiB,1=20GiB,cpu=64GiB' -> {'0': 20.0, '1': 20.0, 'cpu': 64.0} (GiB)."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        m = re.fullmatch(r"\s*([\w:]+)\s*=\s*(.*)", part)
        if not m:
            raise UsageError(f"--max-memory {text!r}: expected DEVICE=SIZE pairs like 0=20GiB,cpu=64GiB")
        if m.group(1) in out:
            raise UsageError(f"--max-memory names {m.group(1)} twice")
        out[m.group(1)] = parse_size(m.group(2), f"--max-memory for {m.group(1)}:")
    return out
