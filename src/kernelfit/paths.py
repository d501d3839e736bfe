"""Where kernelfit keeps files, and how it writes them without leaving anything half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

# A cache entry is a directory that holds this file only once it is complete.
CACHE_MARKER = "kernelfit-cache.json"


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


SAMPLE_BYTES = 4 << 20  # how much of each end of a file the content key reads


def files_key(files: list[Path], version: int) -> str:
    """A cache key for data derived from `files`, from their content: each file's name, size and the
    SHA-256 of its first and last 4 MiB. The same checkpoint in two clones or venvs (different
    paths and mtimes) shares one cache entry; a re-written file of the same size still changes
    its key unless it differs only in the middle, where checkpoints hold tensor data, not headers."""
    import hashlib

    h = hashlib.sha256(f"v{version}".encode())
    for f in sorted(files, key=lambda p: p.name):
        size = f.stat().st_size
        h.update(f"|{f.name}:{size}|".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(SAMPLE_BYTES))
            if size > 2 * SAMPLE_BYTES:
                fh.seek(size - SAMPLE_BYTES)
                h.update(fh.read(SAMPLE_BYTES))
    return h.hexdigest()[:16]


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary directory into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_entry(final: Path) -> Path | None:
    """`final` when it is a complete cache entry, else None."""
    return final if (final / CACHE_MARKER).is_file() else None


def build_entry(final: Path, build: Callable[[Path], dict]) -> Path:
    """Return the cache entry `final`, building it first if needed: `build(tmp)` writes into a temporary
    sibling directory and returns metadata; the marker file is written last and the directory renamed into
    place, so an interrupted build leaves nothing that looks complete."""
    hit = complete_entry(final)
    if hit is not None:
        return hit
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        meta = build(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps(meta))
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
