"""Cache entries are complete or absent, verified before use, rebuilt when damaged; kill -9, a full disk,
a cache path that cannot be written and two builders at once all leave a usable cache and no litter."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernelfit import cache_entry as C
from kernelfit.errors import UsageError

ROOT = Path(__file__).parent.parent


def _build(tmp: Path) -> dict:
    (tmp / "model.safetensors").write_bytes(os.urandom(1 << 20))
    (tmp / "config.json").write_text('{"model_type": "llama"}')
    (tmp / "tok").mkdir()
    (tmp / "tok" / "tokenizer.json").write_text("{}")
    return {"source": "test"}


def _litter(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(C.TMP_PREFIX))


def test_an_entry_is_built_once_then_verified_cheaply(tmp_path, monkeypatch):
    final = tmp_path / "gguf" / "m"
    calls = []
    assert C.build_entry(final, lambda t: calls.append(1) or _build(t)) == final
    manifest = json.loads((final / C.CACHE_MARKER).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "tok/tokenizer.json"}
    hashed = []
    real = C.sha256_file
    monkeypatch.setattr(C, "sha256_file", lambda p, *a: hashed.append(p.name) or real(p, *a))
    assert C.build_entry(final, lambda t: calls.append(1) or _build(t)) == final
    assert calls == [1] and hashed == []  # unchanged stat: no hashing on a warm load
    assert not _litter(final.parent)


def _zero_middle(p: Path) -> None:
    data = bytearray(p.read_bytes())
    mid = len(data) // 2
    data[mid - 4096: mid + 4096] = bytes(8192)
    p.write_bytes(bytes(data))


DAMAGE = {
    "zeroed middle": lambda e: _zero_middle(e / "model.safetensors"),
    "truncated": lambda e: os.truncate(e / "model.safetensors", 1000),
    "garbage": lambda e: (e / "model.safetensors").write_bytes(os.urandom((e / "model.safetensors").stat().st_size)),
    "deleted config": lambda e: (e / "config.json").unlink(),
    "deleted tokenizer": lambda e: (e / "tok" / "tokenizer.json").unlink(),
    "deleted manifest": lambda e: (e / C.CACHE_MARKER).unlink(),
    "broken manifest": lambda e: (e / C.CACHE_MARKER).write_text("{not json"),
    "old manifest": lambda e: (e / C.CACHE_MARKER).write_text('{"format": 1}'),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_entry_is_detected_reported_and_rebuilt(tmp_path, kind, capsys):
    final = tmp_path / "m"
    C.build_entry(final, _build)
    good = (final / "config.json").read_text()
    DAMAGE[kind](final)
    assert C.damage(final) is not None
    rebuilt = []
    C.build_entry(final, lambda t: rebuilt.append(1) or _build(t))
    assert rebuilt == [1] and C.damage(final) is None and (final / "config.json").read_text() == good
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0] and str(final) in err[0]


def test_same_size_rewrite_with_old_mtime_is_still_caught_when_the_inode_changes(tmp_path):
    final = tmp_path / "m"
    C.build_entry(final, _build)
    f = final / "model.safetensors"
    st = f.stat()
    tmp = final / "x"
    tmp.write_bytes(os.urandom(st.st_size))
    os.replace(tmp, f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "checksum" in C.damage(final)


KILL_SCRIPT = """
import os, sys, time
from pathlib import Path
from kernelfit.cache_entry import build_entry
def build(tmp):
    for i in range(40):
        (tmp / f"part-{i}.bin").write_bytes(os.urandom(1 << 16))
        time.sleep(0.02)
    return {}
print("start", flush=True)
build_entry(Path(sys.argv[1]), build)
print("done", flush=True)
"""


@pytest.mark.parametrize("after_s", [0.05, 0.3, 0.7])
def test_kill_9_during_a_build_leaves_nothing_that_looks_complete_and_the_next_run_cleans_up(tmp_path, after_s):
    final = tmp_path / "cache" / "m"
    p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(final)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(after_s)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not final.exists() or C.damage(final) is None  # never a half-built entry in place
    C.build_entry(final, _build)  # the next run: builds (or reuses) and removes the dead process's temporary
    assert C.damage(final) is None and not _litter(final.parent)


def test_a_full_disk_ends_in_one_line_and_keeps_nothing(tmp_path):
    final = tmp_path / "m"

    def fill(tmp):
        (tmp / "model.safetensors").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(UsageError, match="filled up"):
        C.build_entry(final, fill)
    assert not final.exists() and not _litter(tmp_path)


def test_free_space_is_checked_before_starting(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: type("U", (), {"free": 10 << 20})())
    started = []
    with pytest.raises(UsageError, match="not enough free space"):
        C.build_entry(tmp_path / "m", lambda t: started.append(1) or _build(t), need_bytes=1 << 30, what="x")
    assert not started and not _litter(tmp_path)


def test_an_unwritable_cache_falls_back_with_a_warning(tmp_path, monkeypatch, capsys):
    from kernelfit import paths

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(paths, "_warned_fallback", set())
    root = paths.writable_cache_root()
    assert root != blocker / "cache" and paths._writable(root)
    assert "not writable" in capsys.readouterr().err


CONCURRENT = """
import os, sys, time
from pathlib import Path
from kernelfit.cache_entry import build_entry
def build(tmp):
    time.sleep(0.3)
    (tmp / "model.safetensors").write_bytes(b"same" * 1000)
    return {}
print(build_entry(Path(sys.argv[1]), build))
"""


def test_two_builders_at_once_both_answer_and_leave_one_entry(tmp_path):
    final = tmp_path / "m"
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(final)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(o[0].strip() == str(final) for o in outs)
    assert C.damage(final) is None and not _litter(tmp_path)


@pytest.mark.slow
def test_a_zeroed_bundled_model_is_rebuilt_and_answers_paris(tmp_path):
    """The reported fault: 64 MiB zeroed in the middle of the converted model.safetensors used to pass the
    health check and answer "The answer is:". Now the entry is rebuilt and the answer is right."""
    env = dict(os.environ, KERNELFIT_CACHE_DIR=str(tmp_path / "cache"))
    # the dequantized path (--quantization none) is the one that converts the file into the cache
    args = [sys.executable, "-m", "kernelfit", "run", "--quantization", "none", "--prompt", "What is the capital of France?",
            "--max-new-tokens", "8", "--no-cache"]
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0 and "Paris" in first.stdout, first.stderr[-2000:]
    (entry,) = (tmp_path / "cache" / "gguf").iterdir()
    weights = entry / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(weights.stat().st_size // 2)
        f.write(bytes(64 << 20))
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "Paris" in again.stdout, again.stderr[-2000:]
    assert "damaged" in again.stderr and "checksum" in again.stderr
    assert C.damage(entry) is None


@pytest.mark.slow
def test_kill_9_during_the_real_conversion_then_the_next_run_answers_and_cleans_up(tmp_path):
    """The bundled GGUF's first conversion (~15 s) killed twice at different points; the next run converts,
    answers, and no temporary directory is left (it used to leak ~517 MiB per kill)."""
    env = dict(os.environ, KERNELFIT_CACHE_DIR=str(tmp_path / "cache"))
    # the dequantized path (--quantization none) is the one that converts the file into the cache
    args = [sys.executable, "-m", "kernelfit", "run", "--quantization", "none", "--prompt", "What is the capital of France?",
            "--max-new-tokens", "8", "--no-cache"]
    for after in (4.0, 9.0):
        p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(after)
        p.send_signal(signal.SIGKILL)
        p.wait()
    gguf = tmp_path / "cache" / "gguf"
    left = [p for p in gguf.iterdir() if p.name.startswith(C.TMP_PREFIX)] if gguf.exists() else []
    assert left and not any((p / C.CACHE_MARKER).exists() for p in left)  # killed mid-build: no manifest yet
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr[-2000:]
    assert [p.name for p in gguf.iterdir() if p.name.startswith(C.TMP_PREFIX)] == []
    (entry,) = [p for p in gguf.iterdir()]
    assert C.damage(entry) is None
