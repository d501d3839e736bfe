"""Cache entries (converted GGUF models, dequantized checkpoints): complete or absent, verified before use,
rebuilt when damaged — never used damaged.

An entry is a directory published by one rename once every file in it is written and fsynced. Its
manifest (CACHE_MARKER, written last) records each file's size and SHA-256. Before use, each file's size
is compared with the manifest; the full hash is recomputed only when a file's stat (size, mtime, inode)
differs from the one recorded the last time it verified (a `.verified` note beside the manifest), so a
warm load costs a few stat() calls. A damaged entry (a file missing, truncated, overwritten, zeroed) is
reported in one line, removed and rebuilt. Temporary build directories of processes that died are
removed; free space is checked before a build starts.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .errors import UsageError

CACHE_MARKER = "kernelfit-cache.json"
VERIFIED = ".verified.json"
MANIFEST_FORMAT = 2
TMP_PREFIX = ".tmp-"
OWNER_FILE = ".owner"
STALE_AFTER_S = 24 * 3600  # a temporary without a live owner, or older than this, is an orphan
FREE_SPACE_MARGIN = 1.1  # room for what the estimate misses (tokenizer files, safetensors headers)


class CacheWarning(UserWarning):
    """A cache entry was damaged (and rebuilt), or the cache could not be used as configured."""


def _say(message: str) -> None:
    print(f"kernelfit: {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def _stat_key(st: os.stat_result) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (CACHE_MARKER, VERIFIED, OWNER_FILE))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def damage(final: Path) -> str | None:
    """What is wrong with the entry at `final` (None when it is complete and intact)."""
    try:
        manifest = json.loads((final / CACHE_MARKER).read_text(encoding="utf-8"))
        files = manifest["files"]
        if manifest.get("manifest") != MANIFEST_FORMAT or not isinstance(files, dict) or not files:
            return "its manifest is from another kernelfit version"
    except FileNotFoundError:
        return "it is incomplete (no manifest)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    try:
        verified = json.loads((final / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        verified = {}
    changed = False
    for rel, info in files.items():
        path = final / rel
        try:
            st = path.stat()
        except OSError:
            return f"{rel} is missing"
        if st.st_size != info.get("size"):
            return f"{rel} has {st.st_size} bytes, not {info.get('size')}"
        if verified.get(rel) != _stat_key(st):  # changed since the last check (or never checked): hash it
            if sha256_file(path) != info.get("sha256"):
                return f"{rel} does not match its checksum"
            verified[rel] = _stat_key(st)
            changed = True
    if changed:
        try:
            (final / VERIFIED).write_text(json.dumps(verified), encoding="utf-8")
        except OSError:
            pass  # a read-only cache verifies again next time
    return None


def verified_entry(final: Path) -> Path | None:
    """`final` when it is complete and intact. A damaged entry is reported, removed and None returned
    (the caller rebuilds it)."""
    if not final.exists():
        return None
    why = damage(final)
    if why is None:
        return final
    _say(f"the cache entry {final} is damaged ({why}); removing it and building it again")
    shutil.rmtree(final, ignore_errors=True)
    if final.exists():
        raise UsageError(f"the cache entry {final} is damaged ({why}) and cannot be removed; delete it by hand")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_of(tmp: Path) -> int | None:
    try:
        return int((tmp / OWNER_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def remove_orphans(parent: Path) -> list[Path]:
    """Temporary build directories left by processes that died (kill -9, power loss): their owner pid is
    gone, or they are older than STALE_AFTER_S. A directory not yet claimed gets a minute's grace."""
    removed = []
    if not parent.is_dir():
        return removed
    for tmp in parent.glob(f"{TMP_PREFIX}*"):
        pid = pid_of(tmp)
        if pid == os.getpid():
            continue
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            continue
        dead = (pid is not None and not _alive(pid)) or (pid is None and age > 60)
        if dead or age > STALE_AFTER_S:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def check_free_space(parent: Path, need_bytes: int, what: str) -> None:
    free = shutil.disk_usage(parent).free
    if free < need_bytes * FREE_SPACE_MARGIN:
        raise UsageError(f"not enough free space for {what} in {parent}: it needs about "
                         f"{need_bytes * FREE_SPACE_MARGIN / 2**30:.2f} GiB, {free / 2**30:.2f} GiB are free; free "
                         f"some space or point KERNELFIT_CACHE_DIR at a larger disk")


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders, deepest first, where they are empty (another process may have filled one)."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            pass


def build_entry(final: Path, build: Callable[[Path], dict], need_bytes: int = 0, what: str = "a cache entry",
                progress: Callable[[str], None] | None = None) -> Path:
    """Return the intact cache entry `final`, building it first if needed: `build(tmp)` writes into a
    temporary sibling directory and returns metadata; every file is fsynced, the manifest written last,
    and the directory renamed into place — an interrupted build leaves nothing that looks complete."""
    hit = verified_entry(final)
    if hit is not None:
        return hit
    parent = final.parent
    # folders this build creates: removed again (when still empty) if it fails, so a failure leaves nothing
    created = [d for d in (parent, *parent.parents) if not d.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the cache directory {parent}: {exc.strerror}; set KERNELFIT_CACHE_DIR "
                         "to a writable folder") from None
    remove_orphans(parent)
    if need_bytes:
        check_free_space(parent, need_bytes, what)
    if progress is not None:
        progress(f"first load: {what} into the cache {final} (once)")
    try:
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=TMP_PREFIX))
    except OSError as exc:
        raise UsageError(f"cannot write to the cache directory {parent}: {exc.strerror}; set KERNELFIT_CACHE_DIR "
                         "to a writable folder") from None
    try:
        (tmp / OWNER_FILE).write_text(f"{os.getpid()}\n")
        meta = build(tmp)
        files, seen = {}, {}
        for path in _files(tmp):
            _fsync(path)
            rel = str(path.relative_to(tmp))
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
            seen[rel] = _stat_key(path.stat())  # a rename keeps inode and mtime: the first use need not hash
        (tmp / VERIFIED).write_text(json.dumps(seen), encoding="utf-8")
        (tmp / OWNER_FILE).unlink()
        marker = tmp / CACHE_MARKER
        marker.write_text(json.dumps({"manifest": MANIFEST_FORMAT, "files": files, **meta}), encoding="utf-8")
        _fsync(marker)
        publish_dir(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"the disk holding {parent} filled up while writing {what}; nothing was kept — free "
                             "some space or point KERNELFIT_CACHE_DIR at a larger disk") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        raise
    return final


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename a fully written temporary directory into place; if another process won the race, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if verified_entry(final) is None:
            raise
    try:
        _fsync(final.parent)
    except OSError:
        pass
