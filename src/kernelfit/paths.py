"""Where kernelfit keeps files, and how it writes them without leaving anything half-written."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """The user cache dir (platformdirs conventions), or $KERNELFIT_CACHE_DIR."""
    env = os.environ.get("KERNELFIT_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kernelfit"))


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


_warned_fallback: set[str] = set()


def writable_cache_root() -> Path:
    """cache_root() when kernelfit can write there; else (read-only, a file in the way, no permission) a
    private folder in the system's temporary directory, with a one-line warning once per process."""
    root = cache_root()
    if _writable(root):
        return root
    fallback = Path(tempfile.gettempdir()) / f"kernelfit-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    if not _writable(fallback):
        from .errors import UsageError

        raise UsageError(f"neither the cache directory {root} nor {fallback} is writable; set KERNELFIT_CACHE_DIR "
                         "to a writable folder")
    if str(root) not in _warned_fallback:
        _warned_fallback.add(str(root))
        print(f"kernelfit: warning: the cache directory {root} is not writable; using {fallback} for now (set "
              "KERNELFIT_CACHE_DIR to keep conversions between runs)", file=sys.stderr, flush=True)
    return fallback


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
