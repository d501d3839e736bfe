"""A GGUF file's packed weights kept in a file of the user's cache, read on later loads instead of built again.

Why: the dot products read a file's blocks re-laid into tiles (same bytes, another order: kernels/code_formats.h),
and building them costs the fresh memory they are written into — on this project's VMs the first touch of new
memory ran at ~2.9 s a GiB (anonymous huge pages and new page-cache pages alike), so a 0.94 GiB Qwen2.5-1.5B file
loaded in ~4.5 s. llama.cpp maps the file and pays nothing where its pages are already in the page cache. The tiles
are built once and written into a file here, and a later load reads that file into the weights' memory: its pages
come from the page cache, no rebuild. The weights stay on anonymous huge pages (not a mapping of the file, which the
first version did): a whole model's decode from mapped tiles ran 24% slower, the TLB walking 4 KiB pages (one 150 MB
product alone had measured the same speed either way).

The cache is keyed by the GGUF file (resolved path, size, mtime, inode) and by the code that lays the tiles out (the
reader, the block decoders, the tile formats), kept in a private folder (paths.private_dir: never another user's),
written to a temporary name and renamed into place with its index last, so a killed build leaves nothing to read.
A cache file whose size is not its index's is removed, never read. One cache a
source file: building a new one removes the others of that path, and the least recently used caches go while the
folder holds more than KERNELFIT_TILE_CACHE_GIB (default 32) — a user's collection of models does not pile up a
second copy on disk. KERNELFIT_TILE_CACHE=0 turns it off; so does a disk without room for the tiles (the file's
size, plus 10%, plus 1 GiB free); KERNELFIT_TILE_CACHE_DIR moves it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from pathlib import Path

import torch

from .weights import HugeArena, _huge_region

FORMAT = 1  # the index's layout
HEADROOM_BYTES = 1 << 30  # left free on the disk after the cache is written
DEFAULT_LIMIT_GIB = 32.0  # the folder's size past which the least recently used caches are removed
ALIGN = mmap.ALLOCATIONGRANULARITY  # a region's offset in the file (FORMAT 1's layout, from when regions were mapped)
# the code whose output the cache holds: a change to any of these builds the tiles again
LAYOUT_SOURCES = ("weights.py", "gguf/blocks.py", "gguf/reader.py", "build.py", "recipe.py", "kernels/code_formats.h",
                  "kernels/repack_kernels.h")


class TileCacheMismatch(Exception):
    """A replay asked for other regions than the cache recorded (the cache is removed; build_lean builds afresh)."""


def enabled() -> bool:
    return os.environ.get("KERNELFIT_TILE_CACHE", "1") != "0"


def cache_dir() -> Path:
    """The cache's private folder: KERNELFIT_TILE_CACHE_DIR, else `tiles` in kernelfit's cache."""
    from ..paths import private_dir, writable_cache_root

    chosen = os.environ.get("KERNELFIT_TILE_CACHE_DIR")
    return private_dir(Path(chosen) if chosen else writable_cache_root() / "tiles")


def cache_key(path: Path) -> str:
    """The file's identity and the tile layout's code, hashed."""
    st = path.stat()
    identity = f"{FORMAT}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{torch.__version__}"
    h = hashlib.sha256(identity.encode())
    here = Path(__file__).parent
    for name in LAYOUT_SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:20]


class FileArena(HugeArena):
    """HugeArena's carving, its regions kept in a file: writing (the first load: each region reserved in a growing
    temporary file and written there once the build is whole) or replaying (a later load: the same sequence of
    regions, read from the finished file, nothing to fill). The weights' memory is anonymous huge pages either way,
    as without the cache: decode from tiles on the file's own (4 KiB page-cache) pages ran 24% slower (Llama-3.2-1B
    Q4_K_M in-process, 2 threads: 21.0-21.2 tok/s mapped, 27.8-28.5 on huge pages). The regions' sizes are recorded
    in order; a replay whose requests differ from the record raises (the caller then builds without the cache)."""

    def __init__(self, folder: Path, key: str, source: Path, index: dict | None = None):
        super().__init__()
        self.folder, self.key, self.source = folder, key, source
        self.replay = index is not None
        self.index = index
        self.spilled = False  # the disk filled up mid-build: the rest went to memory, nothing is committed
        self.regions: list[int] = []
        self.pending: list[tuple[int, torch.Tensor]] = []  # a build's regions and their offsets in the file
        self.size = 0
        if self.replay:  # one reader for every region (closed when the replay ends, or with this arena)
            self.file, self.fd = folder / f"{key}.tiles", None
            self.reader = open(self.file, "rb", buffering=0)
        else:
            self.file = folder / f".{key}.{os.getpid()}.tmp"
            self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)

    def _region(self, nbytes: int) -> torch.Tensor:
        n = len(self.regions)
        if self.replay:
            sizes = self.index["regions"]
            if n >= len(sizes) or sizes[n] != nbytes:
                self.discard()
                raise TileCacheMismatch(self.key)
        if self.spilled:
            return _huge_region(nbytes)
        offset, span = self.size, -(-nbytes // ALIGN) * ALIGN
        if not self.replay:
            # the blocks reserved as the build asks for them: a disk that fills up is found here (ENOSPC), the rest
            # of the build goes to memory and nothing is committed
            try:
                os.posix_fallocate(self.fd, offset, span)
            except OSError:
                self.spilled = True
                return _huge_region(nbytes)
        self.regions.append(nbytes)
        self.size += span
        out = _huge_region(nbytes)  # the weights' memory is anonymous huge pages either way (below)
        if self.replay:
            self.reader.seek(offset)
            if self.reader.readinto(memoryview(out.numpy())) != nbytes:
                self.discard()
                raise TileCacheMismatch(self.key)
        else:
            self.pending.append((offset, out))  # written to the file once built (commit)
        return out

    def commit(self, conversions: list, problems: list[str]) -> None:
        """The first load's build is whole: the file renamed into place, then its index (what a replay needs)."""
        from dataclasses import asdict

        from ..paths import write_atomic

        if self.spilled:
            self.abandon()
            return
        try:
            for offset, region in self.pending:
                view = memoryview(region.numpy())
                while len(view):  # pwrite may write less than asked
                    view = view[os.pwrite(self.fd, view, offset + (len(region) - len(view))):]
        except OSError:  # the disk filled up after all: no cache
            self.abandon()
            return
        self.pending = []
        os.close(self.fd)
        final = self.folder / f"{self.key}.tiles"
        os.replace(self.file, final)
        self.file = final
        write_atomic(self.folder / f"{self.key}.json", json.dumps({
            "format": FORMAT, "source": str(self.source.resolve()), "regions": self.regions, "bytes": self.size,
            "conversions": [asdict(c) for c in conversions], "problems": problems}))
        prune(self.folder, self.source, keep=self.key)
        evict(self.folder, keep=self.key)

    def finish_replay(self) -> None:
        self.reader.close()
        if len(self.regions) != len(self.index["regions"]):
            self.discard()
            raise TileCacheMismatch(self.key)

    def discard(self) -> None:
        """This key's cache removed (a replay that did not match it)."""
        self.reader.close()
        (self.folder / f"{self.key}.json").unlink(missing_ok=True)
        (self.folder / f"{self.key}.tiles").unlink(missing_ok=True)

    def abandon(self) -> None:
        """A build that failed or will not be cached: its temporary file removed (its weights are in memory)."""
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
        if not self.replay:
            self.file.unlink(missing_ok=True)


def open_arena(path: Path) -> HugeArena:
    """A FileArena replaying this file's cache where a whole one exists, else one writing it where caching is on and
    the disk has room, else a plain HugeArena."""
    if not enabled():
        return HugeArena()
    try:
        folder = cache_dir()
        key = cache_key(path)
        index = _read_index(folder, key)
        if index is not None:
            os.utime(folder / f"{key}.json")  # used now: the last to go (evict)
            return FileArena(folder, key, path, index)
        need = int(path.stat().st_size * 1.1) + HEADROOM_BYTES
        if shutil.disk_usage(folder).free < need:
            return HugeArena()
        return FileArena(folder, key, path)
    except OSError:
        return HugeArena()  # an unreadable or unwritable cache: build in memory, as without it


def _read_index(folder: Path, key: str) -> dict | None:
    """The index of a whole cache, or None; a cache whose file does not have the index's size is removed."""
    index_file, tiles = folder / f"{key}.json", folder / f"{key}.tiles"
    if not index_file.is_file():
        return None
    try:
        index = json.loads(index_file.read_text())
        if index.get("format") == FORMAT and tiles.is_file() and tiles.stat().st_size == index["bytes"]:
            return index
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index_file.unlink(missing_ok=True)
    tiles.unlink(missing_ok=True)
    return None


def prune(folder: Path, source: Path, keep: str) -> None:
    """Remove the caches of `source` other than `keep` (an earlier version of the file, or of the code), those of
    files that no longer exist, and the temporary files of builds whose process is gone (killed mid-build)."""
    for tmp in folder.glob(".*.tmp"):
        try:
            os.kill(int(tmp.name.split(".")[-2]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass
    for index_file in folder.glob("*.json"):
        key = index_file.stem
        if key == keep:
            continue
        try:
            src = Path(json.loads(index_file.read_text()).get("source", ""))
        except (OSError, ValueError, AttributeError):
            continue
        if src == source.resolve() or not src.exists():
            index_file.unlink(missing_ok=True)
            (folder / f"{key}.tiles").unlink(missing_ok=True)


def limit_bytes() -> int:
    try:
        gib = float(os.environ.get("KERNELFIT_TILE_CACHE_GIB", DEFAULT_LIMIT_GIB))
    except ValueError:
        gib = DEFAULT_LIMIT_GIB
    return int(max(gib, 0.0) * (1 << 30))


def evict(folder: Path, keep: str) -> None:
    """The least recently used caches (their index's mtime: written or mapped) removed while the folder's tiles hold
    more than limit_bytes(); `keep`, the one just written, stays whatever its size."""
    caches = []
    for index_file in folder.glob("*.json"):
        tiles = folder / f"{index_file.stem}.tiles"
        try:
            caches.append((index_file.stat().st_mtime_ns, index_file.stem, tiles.stat().st_blocks * 512))
        except OSError:
            continue
    total = sum(size for _, _, size in caches)
    for _, key, size in sorted(caches):
        if total <= limit_bytes():
            break
        if key == keep:
            continue
        (folder / f"{key}.json").unlink(missing_ok=True)
        (folder / f"{key}.tiles").unlink(missing_ok=True)
        total -= size
