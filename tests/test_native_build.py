"""The C++ kernels' build survives being killed, and native code and caches come only from the user's own folders.

A killed first build (kill -9, the OOM killer, a CI time-out) left torch's build `lock` behind, and every later run
waited on it forever, silently; a cache folder pre-created in the temp dir by another user was used as the cache,
and kernelfit compiled its extension there for that user to replace."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kernelfit import paths
from kernelfit.errors import UsageError

BUILD = ("from kernelfit.engine.native import native_module, native_status; "
         "m = native_module(); print('BUILT' if m is not None else native_status())")
NOBODY = 65534


def _env(cache: Path, **more) -> dict:
    env = dict(os.environ, KERNELFIT_CACHE_DIR=str(cache), **more)
    env.pop("KERNELFIT_NATIVE", None)
    return env


def _torch_lock(cache: Path) -> Path | None:
    found = list((cache / "torch-extensions").glob("lean_step-*/lock"))
    return found[0] if found else None


def _kill_compilers_in(cache: Path) -> None:
    """Every process still compiling into `cache`: ninja starts each compiler in a process group of its own, which
    the kill of the build's group misses — an orphan compiler that wrote its object after the next build had linked
    made the run after it compile again (a CI time-out kills every process of the job, these too)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if str(cache).encode() in (d / "cmdline").read_bytes():
                os.kill(int(d.name), signal.SIGKILL)
        except OSError:
            pass


def test_a_build_killed_at_any_point_does_not_block_the_next_run(tmp_path):
    """kill -9 (the whole process group: python, ninja and the compiler, as a CI time-out does) at three points of
    a first build — before it starts, while torch's lock file is held, and while the compiler runs — and the next
    run compiles and answers instead of waiting forever on the dead build's lock."""
    cache = tmp_path / "cache"
    saw_lock = False
    for when in ("early", "lock", "compiling"):
        p = subprocess.Popen([sys.executable, "-c", BUILD], env=_env(cache), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        if when == "early":
            time.sleep(0.5)
        else:
            while _torch_lock(cache) is None and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            saw_lock |= _torch_lock(cache) is not None
            if when == "compiling":
                time.sleep(8)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        _kill_compilers_in(cache)
    assert saw_lock, "the build never took torch's lock: nothing was tested"
    r = subprocess.run([sys.executable, "-c", BUILD], env=_env(cache), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "BUILT", r.stderr[-2000:]
    assert "compiling the CPU kernels" in r.stderr  # the first run says what it is doing, and roughly how long
    again = subprocess.run([sys.executable, "-c", BUILD], env=_env(cache), capture_output=True, text=True, timeout=200)
    assert again.stdout.strip().splitlines()[-1] == "BUILT" and "compil" not in again.stderr  # built once
    # another checkout of the same code (its sources elsewhere) shares the build: nothing compiled, nothing said
    import shutil

    from kernelfit.engine import native

    other = tmp_path / "other-checkout"
    shutil.copytree(native.KERNELS, other)
    elsewhere = ("import kernelfit.engine.native as n, pathlib; k = pathlib.Path(%r); n.SOURCE = k / 'step.cpp'; "
                 "n.HEADERS = tuple(k / h.name for h in n.HEADERS); " % str(other)) + BUILD.replace("from", "from", 1)
    lib = next((cache / "torch-extensions").glob("lean_step-*/*.so"))
    built_at = lib.stat().st_mtime_ns
    moved = subprocess.run([sys.executable, "-c", elsewhere], env=_env(cache), capture_output=True, text=True,
                           timeout=200)
    assert moved.stdout.strip().splitlines()[-1] == "BUILT" and "compil" not in moved.stderr, moved.stderr[-2000:]
    assert lib.stat().st_mtime_ns == built_at  # not relinked (torch's ninja file named the sources by path)


def _hold(build: Path, pid: str = "4242") -> int:
    """Take the build lock the way another live kernelfit process would."""
    fd = os.open(build.with_name(build.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.pwrite(fd, pid.encode(), 0)
    return fd


def test_a_live_build_is_waited_for_with_one_line_then_a_time_out(tmp_path, capsys):
    from kernelfit.engine.native import build_lock

    build = tmp_path / "lean_step-x"
    build.mkdir()
    fd = _hold(build)
    try:
        with pytest.raises(UsageError, match=r"pid 4242.*KERNELFIT_BUILD_WAIT"):
            with build_lock(build, wait_seconds=0.5):
                pass
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "waiting for another kernelfit process (pid 4242)" in err[0]
    # the other process finishes while this one waits: it goes on
    fd = _hold(build)
    threading.Timer(0.4, os.close, (fd,)).start()
    start = time.monotonic()
    with build_lock(build, wait_seconds=30):
        assert time.monotonic() - start >= 0.3


def test_a_dead_builds_torch_lock_is_removed_by_whoever_holds_the_build(tmp_path):
    from kernelfit.engine.native import build_lock

    build = tmp_path / "lean_step-x"
    build.mkdir()
    (build / "lock").write_text("")  # left by a build killed with kill -9: nobody holds the flock
    with build_lock(build, wait_seconds=1):
        assert not (build / "lock").exists()


def _nobodys(folder: Path, mode: int = 0o777) -> Path:
    folder.mkdir(parents=True)
    os.chown(folder, NOBODY, NOBODY)
    os.chmod(folder, mode)
    return folder


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_another_users_temp_fallback_is_refused_not_used(tmp_path):
    """The cache dir is not writable, and $TMPDIR/kernelfit-cache-<uid> was made by `nobody`, mode 777: before,
    kernelfit compiled its extension there. Now: one line naming the folder, exit 2, nothing written there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    planted = _nobodys(tmp / f"kernelfit-cache-{os.getuid()}")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    env = _env(blocker / "cache", TMPDIR=str(tmp))
    r = subprocess.run([sys.executable, "-c", BUILD], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "BUILT" not in r.stdout
    assert f"{planted} belongs to user nobody" in r.stderr and "KERNELFIT_CACHE_DIR" in r.stderr
    assert list(planted.iterdir()) == []
    # the CLI says it in one line and exits 2
    cli = subprocess.run([sys.executable, "-m", "kernelfit", "run", "smollm2-135m", "--prompt", "hi",
                          "--max-new-tokens", "1"], env=env, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 2, cli.stderr[-2000:]
    lines = [ln for ln in cli.stderr.splitlines() if ln.startswith("kernelfit: error")]
    assert len(lines) == 1 and "belongs to user nobody" in lines[0] and "Traceback" not in cli.stderr
    assert list(planted.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a folder owned by another user")
def test_a_cache_dir_of_another_user_is_refused_by_name(tmp_path, monkeypatch):
    other = _nobodys(tmp_path / "theirs")
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(other))
    with pytest.raises(UsageError, match="belongs to user nobody.*KERNELFIT_CACHE_DIR"):
        paths.writable_cache_root()
    mine_but_open = tmp_path / "open"
    mine_but_open.mkdir()
    os.chmod(mine_but_open, 0o777)
    subdir = _nobodys(mine_but_open / "torch-extensions", 0o755)  # planted by another user before the chmod
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(mine_but_open))
    assert paths.writable_cache_root() == mine_but_open  # ours: tightened, not refused
    assert mine_but_open.stat().st_mode & 0o777 == 0o700
    with pytest.raises(UsageError, match="torch-extensions belongs to user nobody"):
        paths.private_dir(subdir)


def test_the_temp_fallback_is_created_private_and_a_link_is_refused(tmp_path, monkeypatch, capsys):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    monkeypatch.setattr(paths, "_warned_fallback", set())
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("KERNELFIT_CACHE_DIR", str(blocker / "cache"))
    os.umask(old := os.umask(0o002))
    try:
        os.umask(0o000)  # the loosest umask: the folder must still be private
        root = paths.writable_cache_root()
    finally:
        os.umask(old)
    assert root == tmp / f"kernelfit-cache-{os.getuid()}"
    assert root.stat().st_uid == os.geteuid() and root.stat().st_mode & 0o777 == 0o700
    assert "is not writable" in capsys.readouterr().err
    root.rmdir()
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    root.symlink_to(target)
    with pytest.raises(UsageError, match="symbolic link"):
        paths.writable_cache_root()


@pytest.mark.parametrize("relinked", [False, True])
def test_compiled_is_said_only_when_the_library_was_built(tmp_path, monkeypatch, capsys, relinked):
    """A cached build whose load takes over 5 s (a busy machine) is not reported as compiled — it was, and then the
    killed-build test's "built once" check failed at random in the suite; a relinked library is."""
    import itertools
    import json
    import types

    import torch.utils.cpp_extension as cpp

    from kernelfit.engine import native

    build = tmp_path / "torch-extensions" / "lean_step-test"
    build.mkdir(parents=True, mode=0o700)
    lib = build / "k.so"
    lib.write_bytes(b"a library")
    (build / native.MANIFEST).write_text(json.dumps({"library": lib.name, "sha256": native._digest(lib)}))

    def load(**kwargs):
        if relinked:
            lib.write_bytes(b"a library")
            os.utime(lib, ns=(lib.stat().st_atime_ns, lib.stat().st_mtime_ns + 10**9))
        return types.SimpleNamespace(__file__=str(lib))

    monkeypatch.setattr(cpp, "load", load)
    clock = itertools.count(0.0, 10.0)  # every reading 10 s after the last: a slow load
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    native._build(build, [])
    said = "compiled the CPU kernels" in capsys.readouterr().err
    assert said == relinked
