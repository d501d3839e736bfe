"""The packed tiles kept in the user's cache and read on later loads (engine/tile_cache.py): a second load reads what
the first built — the same logits bit for bit, nothing packed again, the weights on anonymous memory (not the file's
pages) — and a changed, damaged or half-written cache is never read."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from gguf_tiny import write_tiny
from kernelfit.engine import tile_cache
from kernelfit.engine.build import build_lean, forward
from kernelfit.engine.kv_cache import reset_cache
from kernelfit.engine.weights import DotWeight, dot_available

pytestmark = pytest.mark.skipif(not dot_available(), reason="the cache holds the C++ dot products' tiles")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "tiles"
    monkeypatch.setenv("KERNELFIT_TILE_CACHE_DIR", str(folder))
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "1")
    monkeypatch.setattr(tile_cache, "HEADROOM_BYTES", 0)  # these tiny files fit whatever the machine's disk holds
    return folder


def _logits(path: Path, said: list | None = None) -> tuple[torch.Tensor, object]:
    b = build_lean(path, progress=(said.append if said is not None else None))
    reset_cache(b, 40)
    return forward(b, torch.arange(3, 35), 0, True), b


def _file_backed(build) -> bool:
    """Whether any of the build's dot weights lies in a file mapping (/proc/self/maps: a region with a path)."""
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[5].endswith(".tiles"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            regions.append((lo, hi))
    ptrs = [p.a.data_ptr() for blk in build.model.blocks for p in blk.qkv.parts]
    return any(lo <= ptr < hi for ptr in ptrs for lo, hi in regions)


def test_a_second_load_maps_the_first_loads_tiles(tmp_path, cache, monkeypatch):
    path = write_tiny(tmp_path / "m.gguf", "Q4_K", nan_scale=True)  # a damaged block: its problem is kept too
    said: list[str] = []
    first, b1 = _logits(path, said)
    assert said[-1].startswith("packing") and len(list(cache.glob("*.tiles"))) == 1
    monkeypatch.setattr(DotWeight, "fill", lambda *a, **k: pytest.fail("a cached load packed tiles again"))
    second, b2 = _logits(path, said)
    assert said[-1].startswith("reading the packed tiles")
    # on anonymous memory, not the cache file's pages (decode from those ran 24% slower)
    assert not _file_backed(b1) and not _file_backed(b2)
    assert torch.equal(first.view(torch.int32), second.view(torch.int32))  # bit for bit (its NaN rows too)
    assert b2.conversions == b1.conversions and b2.problems == b1.problems and b1.problems
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "0")
    monkeypatch.undo()  # fill back; caching off: a build in memory gives the same logits
    monkeypatch.setenv("KERNELFIT_TILE_CACHE_DIR", str(cache))
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "0")
    assert torch.equal(_logits(path)[0].view(torch.int32), first.view(torch.int32))


def test_a_changed_file_builds_a_new_cache_and_drops_the_old(tmp_path, cache):
    path = write_tiny(tmp_path / "m.gguf", "Q8_0", seed=1)
    _logits(path)
    old = {p.name for p in cache.iterdir()}
    path.unlink()
    path = write_tiny(path, "Q8_0", seed=2)  # same name, other weights
    got = _logits(path)[0]
    assert not old & {p.name for p in cache.iterdir()} and len(list(cache.glob("*.tiles"))) == 1
    os.environ["KERNELFIT_TILE_CACHE"] = "0"
    try:
        assert torch.equal(_logits(path)[0], got)
    finally:
        os.environ["KERNELFIT_TILE_CACHE"] = "1"


def test_a_short_or_unindexed_cache_is_never_mapped(tmp_path, cache):
    """A tiles file shorter than its index says (mapping it would end in SIGBUS) is removed and built again; a killed
    build's temporary file (its process gone) is removed; a tiles file without its index is not used."""
    path = write_tiny(tmp_path / "m.gguf", "Q4_0")
    want = _logits(path)[0]
    tiles = next(cache.glob("*.tiles"))
    with open(tiles, "r+b") as f:
        f.truncate(tiles.stat().st_size // 2)
    said: list[str] = []
    assert torch.equal(_logits(path, said)[0], want) and said[-1].startswith("packing")
    dead = cache / f".{tiles.stem}.999999999.tmp"
    dead.write_bytes(b"half a build")
    next(cache.glob("*.json")).unlink()
    said.clear()
    assert torch.equal(_logits(path, said)[0], want) and said[-1].startswith("packing")
    assert not dead.exists()
    index = json.loads(next(cache.glob("*.json")).read_text())
    assert index["source"] == str(path.resolve()) and index["bytes"] == next(cache.glob("*.tiles")).stat().st_size


def test_caching_off_or_no_room_writes_nothing(tmp_path, cache, monkeypatch):
    path = write_tiny(tmp_path / "m.gguf", "Q4_K")
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "0")
    _logits(path)
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "1")
    monkeypatch.setattr(tile_cache, "HEADROOM_BYTES", 1 << 62)  # a disk without room for the tiles
    _logits(path)
    assert not any(cache.iterdir())


def test_the_least_recently_used_caches_go_past_the_size_limit(tmp_path, cache, monkeypatch):
    """Three files cached under a limit that holds two: the one used longest ago is removed, the one just mapped
    stays; the one just written stays whatever the limit."""
    paths = [write_tiny(tmp_path / f"m{i}.gguf", "Q8_0", seed=i) for i in range(3)]
    _logits(paths[0])
    _logits(paths[1])
    one = sum(p.stat().st_blocks * 512 for p in cache.glob("*.tiles")) / 2
    time.sleep(0.01)
    _logits(paths[0])  # mapped again: now the most recently used
    monkeypatch.setenv("KERNELFIT_TILE_CACHE_GIB", str(2.5 * one / 2**30))
    _logits(paths[2])
    sources = {json.loads(p.read_text())["source"] for p in cache.glob("*.json")}
    assert sources == {str(paths[0].resolve()), str(paths[2].resolve())}
    assert len(list(cache.glob("*.tiles"))) == 2
    monkeypatch.setenv("KERNELFIT_TILE_CACHE_GIB", "0")
    _logits(paths[1])
    assert {json.loads(p.read_text())["source"] for p in cache.glob("*.json")} == {str(paths[1].resolve())}


def test_a_disk_that_fills_up_mid_build_leaves_no_cache(tmp_path, cache, monkeypatch):
    """The regions are reserved (posix_fallocate) before they are mapped: one that cannot be (ENOSPC) sends the rest of
    the build to memory — the same logits, no cache committed, its temporary file removed — instead of a SIGBUS when a
    write through the mapping finds no block."""
    path = write_tiny(tmp_path / "m.gguf", "Q4_K")
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "0")
    want = _logits(path)[0]
    monkeypatch.setenv("KERNELFIT_TILE_CACHE", "1")
    calls = []

    def full(fd, offset, length):
        calls.append(offset)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real(fd, offset, length)

    real = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setattr(tile_cache.FileArena, "CHUNK", 1 << 16)  # regions of 64 KiB: several for this tiny model
    assert torch.equal(_logits(path)[0], want) and len(calls) == 2
    assert not any(cache.iterdir())
