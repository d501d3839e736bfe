"""The C++ decode step, batched step and prompt forward (kernels/step.cpp and its headers), compiled once per torch
version into the cache, and their arguments.

Compiling needs a C++ compiler and ninja (torch.utils.cpp_extension), ~20-40 s on 2 cores the first time;
the build is cached under the kernelfit cache dir, keyed by the source and torch version. Where it cannot be
built (no compiler) or is switched off (KERNELFIT_NATIVE=0), the TorchScript step runs instead: same math,
~15-30% slower decode on SmolLM2 here. `native_status()` says which and why.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UsageError
from ..paths import private_dir, write_atomic, writable_cache_root

KERNELS = Path(__file__).with_name("kernels")
SOURCE = KERNELS / "step.cpp"
HEADERS = tuple(KERNELS / h for h in ("dot_kernels.h", "gemm_kernels.h", "rows_kernels.h", "unpack_kernels.h",
                                      "panel_gemm.h", "panel_attention.h", "decode_attention.h",
                                      "bf16_rows.h", "kv_cache.h", "repack_kernels.h", "short_conv.h",
                                      "delta_net.h", "amx_tiles.h", "code_formats.h", "mamba2.h", "step_experts.h",
                                      "step_latent.h", "step_recurrent.h", "dot_tiles.h"))
# The dot products are compiled for this machine's vector ISA (-march=native on x86-64, where AVX2/VNNI decide
# their speed; elsewhere they are scalar and the loader keeps torch's kernels, and some compilers refuse the flag),
# so a build is keyed by the CPU too: a cache folder shared by machines of different CPUs keeps one build each.
# -fno-trapping-math: without it GCC keeps a loop scalar when it converts float to int (which could raise an FP
# exception that nothing here unmasks): the exp polynomials of the softmax and the activations stayed scalar.
CFLAGS = ["-O3", "-fno-trapping-math"] + (["-march=native"] if __import__("platform").machine().lower() in ("x86_64", "amd64") else [])
# at::parallel_for is an inline template whose threads are an `#pragma omp parallel` compiled into this extension:
# without -fopenmp every product ran on one thread (SmolLM2's 0.55 MB products at ~29 GB/s, the same with 1 or 2
# threads). Linked by soname (libgomp.so.1), it resolves to the OpenMP runtime torch has already loaded.
OPENMP = ["-fopenmp"]
_STATE: dict = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _key(openmp: list[str]) -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    for header in HEADERS:
        h.update(header.read_bytes())
    h.update(torch.__version__.encode())
    # torch's ninja file names its include folders, which lie in the environment torch is installed in: another
    # virtualenv of the same torch recompiles in the same folder anyway, so it gets a folder (and a build) of its own
    h.update(str(Path(torch.__file__).resolve().parent).encode())
    h.update(_cpu_flags().encode())
    h.update(" ".join(CFLAGS + openmp).encode())
    return h.hexdigest()[:12]


def native_module():
    """The compiled extension, or None (native_status() says why)."""
    if "module" in _STATE:
        return _STATE["module"]
    module, why, threads = None, None, None
    if os.environ.get("KERNELFIT_NATIVE", "1") == "0":
        why = "KERNELFIT_NATIVE=0"
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        why = "no C++ compiler (c++) on PATH"
    else:
        # a damaged build (a killed link) is rebuilt once; a compiler without OpenMP (clang without libomp) gets
        # a build without it: one thread, still ahead of the TorchScript step
        root = private_dir(writable_cache_root() / "torch-extensions")
        for openmp in (OPENMP, OPENMP, []):
            build = root / f"lean_step-{_key(openmp)}"
            try:
                module = _build(build, openmp)
                break
            except UsageError:
                raise  # a folder that is not the user's, or a build that another process holds too long
            except Exception as exc:  # noqa: BLE001 - any build failure means: run the TorchScript step
                why = f"building the C++ step failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                shutil.rmtree(build, ignore_errors=True)
        threads = None if module is None or openmp else "one thread: the compiler has no OpenMP"
    _STATE["module"], _STATE["why"], _STATE["threads"] = module, why, threads
    return module


# How long a process waits for another one's build of the same kernels (~25-60 s here; a slow machine or a
# loaded CI runner takes longer) before it gives up with a message saying what to do.
BUILD_WAIT_SECONDS = float(os.environ.get("KERNELFIT_BUILD_WAIT", "900"))


def _lock_file(build: Path) -> Path:
    """The flock file of a build folder: beside it, so that removing the folder leaves the lock in place."""
    return build.with_name(build.name + ".lock")


@contextlib.contextmanager
def build_lock(build: Path, wait_seconds: float | None = None):
    """Hold the build of `build` against other kernelfit processes.

    torch.utils.cpp_extension serialises builds with a file (`build/lock`) that it never expires: a build killed
    by kill -9, the OOM killer or a CI time-out leaves it behind, and every later load waited on it forever. This
    lock is an flock(2) on `<build>.lock` beside the folder: the kernel releases it when its holder dies, however
    it dies. Whoever holds it is the only kernelfit process building or loading that folder, so a torch `lock`
    file found inside is a dead build's and is removed. A live holder is waited for, with one line saying so."""
    import fcntl
    import time

    wait_seconds = BUILD_WAIT_SECONDS if wait_seconds is None else wait_seconds
    fd = os.open(_lock_file(build), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                waited = time.monotonic() - start
                if waited > wait_seconds:
                    raise UsageError(f"another kernelfit process (pid {holder}) has been compiling the CPU kernels in "
                                     f"{build} for over {wait_seconds:.0f} s; wait for it to finish, or stop it and "
                                     "run again (KERNELFIT_BUILD_WAIT sets how long to wait)") from None
                if not told:
                    told = True
                    print(f"kernelfit: waiting for another kernelfit process (pid {holder}) that is compiling the CPU "
                          f"kernels in {build}", file=sys.stderr, flush=True)
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        (build / "lock").unlink(missing_ok=True)  # a killed build's: no live kernelfit process holds this folder
        yield
    finally:
        os.close(fd)  # closing releases the flock


MANIFEST = "kernelfit-build.json"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified_or_cleared(build: Path) -> bool:
    """True when `build` holds a library this module built and recorded; a library without its record (a link
    killed half-way) or with another checksum (damaged since) is removed with its folder: loading a truncated
    shared library kills the process with SIGBUS, so it must never be tried. Called under build_lock."""
    libs = list(build.glob("*.so"))
    if not libs:
        return False
    try:
        record = json.loads((build / MANIFEST).read_text())
        if record.get("sha256") == _digest(libs[0]) and record.get("library") == libs[0].name:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    shutil.rmtree(build, ignore_errors=True)
    return False


def _sources_in(build: Path) -> Path:
    """The sources, copied into the build folder (already there, untouched: the folder is keyed by their content).
    torch's ninja file names the sources by path, so compiling them where they lie rebuilt the kernels for every
    checkout of the same code (~40 s, silently); from here every checkout using one torch installation shares a
    build (_key)."""
    for f in (SOURCE, *HEADERS):
        dst = build / f.name
        if not dst.is_file() or dst.read_bytes() != f.read_bytes():
            tmp = build / f".{f.name}.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst)
    return build / SOURCE.name


def _build(build: Path, openmp: list[str]):
    import time

    from torch.utils.cpp_extension import load

    build.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(build):
        fresh = not verified_or_cleared(build)
        private_dir(build)
        if fresh:
            print("kernelfit: compiling the CPU kernels for this machine and torch (once; about 30-90 s)",
                  file=sys.stderr, flush=True)
        start = time.monotonic()
        before = {f.name: f.stat().st_mtime_ns for f in build.glob("*.so")}
        module = load(name=f"kernelfit_lean_step_{_key(openmp)}", sources=[str(_sources_in(build))],
                      build_directory=str(build), extra_cflags=CFLAGS + openmp, extra_ldflags=openmp, verbose=False)
        lib = Path(module.__file__)
        record = {"library": lib.name, "sha256": _digest(lib)}
        if not (build / MANIFEST).is_file() or json.loads((build / MANIFEST).read_text()) != record:
            write_atomic(build / MANIFEST, json.dumps(record))  # what was just loaded (rebuilt or not)
        seconds = time.monotonic() - start
        # said only when the library was (re)linked: a cached build that took over 5 s to load on a busy machine was
        # reported as compiled (and failed test_native_build's "built once" check)
        if fresh or before.get(lib.name) != lib.stat().st_mtime_ns:
            print(f"kernelfit: compiled the CPU kernels in {seconds:.0f} s", file=sys.stderr, flush=True)
    for old in build.parent.glob("lean_step-*"):  # builds of other sources or torch versions: never loaded again
        if old.is_dir() and old != build:
            _remove_unheld(old)
    return module


def _remove_unheld(old: Path) -> None:
    """Remove another build's folder unless a live process holds its build lock."""
    import fcntl

    try:
        fd = os.open(_lock_file(old), os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(old, ignore_errors=True)  # its small lock file stays: unlinking a lock file races openers
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def native_status() -> str:
    native_module()
    if _STATE["module"] is None:
        return f"TorchScript decode step ({_STATE['why']})"
    return f"C++ decode step ({_STATE['threads']})" if _STATE.get("threads") else "C++ decode step"


@dataclass
class NativeArgs:
    """The static arguments of decode_step, gathered once from the (unscripted) LeanLM."""

    kinds: list
    a: list
    b: list
    c: list
    n: list
    n_qkv: list
    n_gu: list
    norms: list
    sliding: list
    head: tuple
    embed: tuple | None  # the token table's dot groups (kind, codes, scales, mins, rows), or None
    prefill_ok: bool = False  # every layer product is the file's groups, no bf16 copy: Step.prefill runs prompts
    bound: object = None  # the extension's Step holding these, made on the first call (lean_build._native)
    routers: list = None  # per layer: an MoE layer's router weights, or an empty tensor
    perms: list = None  # per product: its input's column order (an act-order checkpoint's dot weight), or empty


NO_ROTARY = 2  # a layer flag beside sliding (1) in NativeArgs.sliding: Q and K not rotated (step.cpp LAYER_NO_ROTARY)
SHORT_CONV, DELTA_NET, GATED, SHARED_EXPERT, LATENT, MAMBA = 4, 8, 16, 32, 64, 128  # a short-convolution layer, a
# Gated DeltaNet layer (neither keeps keys and values), attention with an output gate, an MoE layer with a shared
# expert, DeepSeek's latent attention, a Mamba-2 layer (step.cpp LAYER_CONV, LAYER_DELTA, LAYER_GATED, LAYER_SHARED,
# LAYER_LATENT, LAYER_MAMBA)
MAMBA_SLOTS = 19  # step.cpp MAMBA_D: where a Mamba-2 layer's D and conv bias go in its norms


C_KINDS = (4, 5, 6, 7, 8, 9)  # reference.py DOT4, DOT8, BF16_ROWS, DOT6, DOT_IQ4, DOT_MXFP4: the C++ prompt forward's


def native_args(model) -> NativeArgs:
    empty = torch.empty(0)
    kinds, a, b, c, n, n_qkv, n_gu, norms, sliding, routers, perms = [], [], [], [], [], [], [], [], [], [], []
    copies = []

    def add(p):
        copies.append(bool(p.has_prefill))
        kinds.append(int(p.kind))
        a.append(p.a)
        b.append(p.b if p.b.numel() else empty)
        c.append(p.c)
        n.append(int(p.out_features))
        perms.append(p.perm)

    for blk in model.blocks:
        parts = list(blk.qkv.parts)
        for p in parts:
            add(p)
        for p in blk.latent:  # MLA: q_b, k_b, v_b between its Q/kv_a products and O
            add(p)
        add(blk.o)
        gu = [blk.gate_up.p0, blk.gate_up.p1][:blk.gate_up.n]
        for p in gu:
            add(p)
        add(blk.down)
        for p in blk.shared:  # a shared expert: gate, up, down after the routed experts' products
            add(p)
        n_qkv.append(len(parts))
        n_gu.append(len(gu))
        qk = blk.latent_norms or ([blk.q_norm, blk.k_norm] if blk.has_qk_norm else [empty, empty])  # MLA: q_a's, kv_a's
        norms.append([blk.attn_norm, blk.ffn_norm, blk.qkv_bias if blk.has_bias else empty, *qk,
                      blk.post_attn_norm if blk.has_post_norms else empty,
                      blk.post_ffn_norm if blk.has_post_norms else empty, blk.shared_gate, blk.conv,
                      *(blk.delta or [empty] * 3), blk.expert_bias, *blk.gpt_oss])
        if blk.mamba:
            norms[-1] += [empty] * (MAMBA_SLOTS - len(norms[-1])) + list(blk.mamba)
        kind = (MAMBA if blk.mamba else DELTA_NET if blk.delta else SHORT_CONV) if blk.conv.numel() else 0
        sliding.append(int(blk.sliding) | (0 if blk.rotary else NO_ROTARY) | kind | (GATED if blk.gated else 0)
                       | (SHARED_EXPERT if len(blk.shared) else 0) | (LATENT if len(blk.latent) else 0))
        routers.append(blk.router)
    h = model.head
    e = model.embed_dot
    embed = (int(e.kind), e.a, e.b, e.c, int(e.out_features)) if model.has_embed_dot else None
    prefill_ok = all(k in C_KINDS for k in kinds) and not any(copies)
    return NativeArgs(kinds, a, b, c, n, n_qkv, n_gu, norms, sliding, (int(h.kind), h.a, h.b, h.c, int(h.out_features)),
                      embed, prefill_ok, routers=routers, perms=perms)
