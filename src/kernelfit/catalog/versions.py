"""Version comparison without the `packaging` dependency (numeric release parts only)."""

from __future__ import annotations

import re


def release(version: str) -> tuple[int, ...]:
    """'2.9.1+cu126' -> (2, 9, 1); '2.8.0.post2' -> (2, 8, 0); 'abc' -> ()."""
    m = re.match(r"\s*v?(\d+(?:\.\d+)*)", version or "")
    return tuple(int(p) for p in m.group(1).split(".")) if m else ()


def version_at_least(version: str, minimum: str) -> bool:
    have, need = release(version), release(minimum)
    if not have:
        return False
    n = max(len(have), len(need))
    return have + (0,) * (n - len(have)) >= need + (0,) * (n - len(need))
