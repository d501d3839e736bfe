"""The C library, where the allocator and the kernel's page advice are tuned (glibc on Linux; None elsewhere)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def libc():
    """ctypes handle of glibc, or None (not glibc: nothing to tune)."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
