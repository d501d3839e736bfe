"""The C++ decode step (lean_step.cpp), compiled once per torch version into the cache, and its arguments.

Compiling needs a C++ compiler and ninja (torch.utils.cpp_extension), ~20-40 s on 2 cores the first time;
the build is cached under the kernelfit cache dir, keyed by the source and torch version. Where it cannot be
built (no compiler) or is switched off (KERNELFIT_NATIVE=0), the TorchScript step runs instead: same math,
~15-30% slower decode on SmolLM2 here. `native_status()` says which and why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..paths import writable_cache_root

SOURCE = Path(__file__).with_name("lean_step.cpp")
_STATE: dict = {}


def _key() -> str:
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:12]


def native_module():
    """The compiled extension, or None (native_status() says why)."""
    if "module" in _STATE:
        return _STATE["module"]
    module, why = None, None
    if os.environ.get("KERNELFIT_NATIVE", "1") == "0":
        why = "KERNELFIT_NATIVE=0"
    elif shutil.which(os.environ.get("CXX", "c++")) is None:
        why = "no C++ compiler (c++) on PATH"
    else:
        try:
            from torch.utils.cpp_extension import load

            build = writable_cache_root() / "torch-extensions" / f"lean_step-{_key()}"
            build.mkdir(parents=True, exist_ok=True)
            module = load(name=f"kernelfit_lean_step_{_key()}", sources=[str(SOURCE)], build_directory=str(build),
                          extra_cflags=["-O3"], verbose=False)
        except Exception as exc:  # noqa: BLE001 - any build failure means: run the TorchScript step
            why = f"building the C++ step failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    _STATE["module"], _STATE["why"] = module, why
    return module


def native_status() -> str:
    native_module()
    return "C++ decode step" if _STATE["module"] is not None else f"TorchScript decode step ({_STATE['why']})"


@dataclass
class NativeArgs:
    """The static arguments of decode_step, gathered once from the (unscripted) LeanLM."""

    kinds: list
    a: list
    b: list
    n_qkv: list
    n_gu: list
    norms: list
    sliding: list
    head: tuple


def native_args(model) -> NativeArgs:
    empty = torch.empty(0)
    kinds, a, b, n_qkv, n_gu, norms, sliding = [], [], [], [], [], [], []

    def add(p):
        kinds.append(int(p.kind))
        a.append(p.a)
        b.append(p.b if p.b.numel() else empty)

    for blk in model.blocks:
        parts = [blk.qkv.p0, blk.qkv.p1, blk.qkv.p2][:blk.qkv.n]
        for p in parts:
            add(p)
        add(blk.o)
        gu = [blk.gate_up.p0, blk.gate_up.p1][:blk.gate_up.n]
        for p in gu:
            add(p)
        add(blk.down)
        n_qkv.append(len(parts))
        n_gu.append(len(gu))
        norms.append([blk.attn_norm, blk.ffn_norm, blk.qkv_bias if blk.has_bias else empty,
                      blk.q_norm if blk.has_qk_norm else empty, blk.k_norm if blk.has_qk_norm else empty,
                      blk.post_attn_norm if blk.has_post_norms else empty,
                      blk.post_ffn_norm if blk.has_post_norms else empty])
        sliding.append(int(blk.sliding))
    return NativeArgs(kinds, a, b, n_qkv, n_gu, norms, sliding, (int(model.head.kind), model.head.a, model.head.b))
