"""Where kernelfit keeps files, and how it writes them without leaving anything half-written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """The user cache dir (platformdirs conventions), or $KERNELFIT_CACHE_DIR."""
    env = os.environ.get("KERNELFIT_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kernelfit"))


def write_atomic(path: str | Path, text: str) -> None:
    """Write a temp file beside the target, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def files_key(files: list[Path], version: int) -> str:
    """A cache key for derived data: each source file's resolved path, size and mtime."""
    import hashlib

    raw = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in sorted(files)) + f"|v{version}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary directory into place; if another process won the race, keep theirs."""
    import shutil

    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
