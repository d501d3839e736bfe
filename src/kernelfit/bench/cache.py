"""The autotune cache: the measured winner of `kernelfit bench`, per machine, software and model.

Keyed by device identity (kind, name, compute capability, CPU model, threads, ISA), software
versions (torch, transformers) and model shape, so a driver/torch upgrade or another model never
reuses a measurement. Entries are validated on read; a stale or corrupt one is ignored with a
warning, never trusted. Written atomically. No torch import.
"""

from __future__ import annotations

import hashlib
import math
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

from ..catalog.attention import BACKENDS
from ..catalog.dtypes import DTYPES
from ..errors import PlanError
from ..hardware.machine import Machine
from ..model.spec import ModelSpec
from ..paths import cache_root, write_atomic
from ..planner.phases import PREFILL_CHOICES
from ..planner.quantization import QUANT_CHOICES, otf_choice
from ..planner.search import plan as make_plan
from ..planner.types import Choice, ChoiceKind, Plan, RejectKind, Rejected

FORMAT = 1
CACHES = ("dynamic", "static")


class TuneCacheWarning(UserWarning):
    """A tune-cache entry was unreadable or no longer valid and was ignored."""


def cache_file() -> Path:
    if os.environ.get("KERNELFIT_TUNE_CACHE"):
        return Path(os.environ["KERNELFIT_TUNE_CACHE"])
    return cache_root() / "tune.json"


def tune_key(machine: Machine, model: ModelSpec, devices: tuple[str, ...]) -> str:
    used = [d for d in machine.devices if d.torch_device in devices]
    t = model.text
    ident = {
        "devices": [(d.kind, d.name, str(d.compute_capability or ""), d.memory_gib) for d in used],
        "cpu": (machine.cpu.model, machine.cpu.threads, list(machine.cpu.isa)),
        "software": (machine.software.torch, machine.software.package_version("transformers"),
                     machine.software.nvidia_driver),
        "model": (model.model_type, model.params, t.num_layers, t.hidden_size, t.num_heads, t.num_kv_heads,
                  t.head_dim, model.format),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


def _read_all(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
            raise ValueError("unexpected layout")
        return data["entries"]
    except (OSError, ValueError) as exc:
        warnings.warn(f"kernelfit: ignoring the tune cache {path} ({exc}); run `kernelfit bench` to rebuild it",
                      TuneCacheWarning, stacklevel=3)
        return {}


def save_winner(machine: Machine, model: ModelSpec, devices: tuple[str, ...], winner: dict,
                results: list[dict]) -> Path | None:
    """Write the winner to the tune cache; None (and a warning) when it cannot be written — the caller has
    the measurement and prints it either way."""
    path = cache_file()
    entries = _read_all(path)
    entries[tune_key(machine, model, devices)] = {"model": model.name, "winner": winner, "results": results,
                                                  "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"format": FORMAT, "entries": entries}, indent=1))
    except OSError as exc:
        warnings.warn(f"kernelfit: could not save the bench winner to {path} ({exc.strerror or exc}); the "
                      "measurement above is not cached (set KERNELFIT_TUNE_CACHE to a writable file)",
                      TuneCacheWarning, stacklevel=2)
        return None
    return path


def _valid(winner, plan: Plan) -> str | None:
    """Why a cached winner cannot be applied to this plan (None if it can)."""
    if not isinstance(winner, dict):
        return "not an object"
    attn, dtype, cache = winner.get("attention"), winner.get("dtype"), winner.get("cache")
    if not all(isinstance(v, str) for v in (attn, dtype, cache)) or attn not in BACKENDS or cache not in CACHES \
            or dtype not in DTYPES:
        return f"unknown choice {attn!r}/{dtype!r}/{cache!r}"
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        v = winner.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            return f"{key} is {v!r}, not a positive number"
    if not isinstance(winner.get("compile", False), bool):
        return f"compile is {winner.get('compile')!r}, not true/false"
    if not isinstance(winner.get("measured_at", ""), (str, type(None))):
        return f"measured_at is {winner.get('measured_at')!r}"
    if not isinstance(winner.get("quantization", "none"), str):
        return f"unknown quantization {winner.get('quantization')!r}"
    if attn not in plan.runnable_attentions():
        return f"{attn} no longer runs here per the catalog"
    if dtype not in plan.runnable_dtypes():
        return f"{dtype} is no longer a native dtype here"
    if winner.get("quantization", "none") not in ("none", "gguf", "engine", *QUANT_CHOICES[2:]):  # q8_0 included
        return f"unknown quantization {winner.get('quantization')!r}"
    if winner.get("prefill", "auto") not in PREFILL_CHOICES:
        return f"unknown prefill kernel {winner.get('prefill')!r}"
    return None


def cached_winner(plan: Plan) -> dict | None:
    entry = _read_all(cache_file()).get(tune_key(plan.machine, plan.model, plan.placement.devices))
    if entry is None:
        return None
    why = _valid(entry.get("winner") if isinstance(entry, dict) else None, plan)
    if why is None and not isinstance(entry.get("measured_at", ""), (str, type(None))):
        why = f"measured_at is {entry.get('measured_at')!r}"
    if why:
        warnings.warn(f"kernelfit: ignoring the cached tune result for {plan.model.name}: {why}", TuneCacheWarning,
                      stacklevel=3)
        return None
    return dict(entry["winner"], measured_at=entry.get("measured_at"))


def _replan(plan: Plan, winner: dict) -> Plan | None:
    """The plan made again for the winner's dtype — and its quantizer, when the model needs one (a model
    that fits unquantized is never quantized by a cached result) and the user did not choose one — so the
    memory estimate and placement are the winner's, not the static choice's. None when it no longer plans."""
    prefs = plan.preferences
    quantization = winner.get("quantization", "none")
    static = otf_choice(plan.quantization)
    if static in ("gguf", "engine") and prefs.quantization == "auto":
        # a GGUF file or a checkpoint on the engine: kernelfit's runner (with the measured prefill kernel), or the
        # dequantized model / transformers' load
        if quantization == "none":
            prefs = replace(prefs, quantization="none")
        elif prefs.prefill == "auto" and winner.get("prefill", "auto") != "auto":
            prefs = replace(prefs, prefill=winner["prefill"])
    elif prefs.quantization == "auto" and static not in ("none", quantization) and quantization != "none":
        prefs = replace(prefs, quantization=quantization)
    if winner["dtype"] != plan.dtype.value:
        prefs = replace(prefs, dtype=winner["dtype"])
    if prefs == plan.preferences:
        return plan
    try:
        return make_plan(plan.machine, plan.model, prefs)
    except PlanError:
        return None


def apply_winner(plan: Plan, winner: dict) -> Plan:
    """The plan with the measured winner's quantizer, attention, dtype and KV cache (and torch.compile);
    the static choices are kept in the rejected lists with the measurement that beat them. Re-planned for
    the winner's dtype, so memory and placement follow it; a winner that no longer plans is not applied."""
    static = plan
    replanned = _replan(plan, winner)
    if replanned is None:
        warnings.warn(f"kernelfit: ignoring the cached tune result for {plan.model.name}: {winner['dtype']} no "
                      "longer fits here", TuneCacheWarning, stacklevel=3)
        return plan
    plan = replanned
    measured = (f"measured fastest by `kernelfit bench` ({winner.get('measured_at', 'earlier')}): "
                f"prefill {winner.get('prefill_tokens_per_s', 0):.0f} tok/s, decode {winner.get('decode_tokens_per_s', 0):.1f} tok/s")
    slower = "static choice; slower when measured"
    attention = dict(plan.attention)
    a = plan.text_attention
    if winner["attention"] != a.value:
        rejected = [r for r in a.rejected if r.name != winner["attention"]] + [
            Rejected(a.value, RejectKind.MEASURED_SLOWER, slower)]
        attention["text"] = Choice(winner["attention"], ChoiceKind.MEASURED, measured, tuple(rejected),
                                   BACKENDS[winner["attention"]].sources)
    dtype = plan.dtype
    if winner["dtype"] != static.dtype.value:
        d = static.dtype  # the static plan's alternatives, with its choice now among them
        rejected = [r for r in d.rejected if r.name != winner["dtype"]] + [
            Rejected(d.value, RejectKind.MEASURED_SLOWER, slower)]
        dtype = Choice(winner["dtype"], ChoiceKind.MEASURED, measured, tuple(rejected), plan.dtype.sources)
    kernels = dict(plan.kernels)
    p = kernels.get("prefill")
    if p is not None and static.preferences.prefill == "auto" and winner.get("prefill") == p.value \
            and static.kernels["prefill"].value != p.value:
        rejected = [r for r in p.rejected if r.name != p.value] + [
            Rejected(static.kernels["prefill"].value, RejectKind.MEASURED_SLOWER, slower)]
        kernels["prefill"] = Choice(p.value, ChoiceKind.MEASURED, measured, tuple(rejected), p.sources)
    # the dtype (and prefill kernel) came from the measurement, not from the user: the preferences stay as asked
    return replace(plan, attention=attention, dtype=dtype, kernels=kernels,
                   preferences=replace(plan.preferences, dtype=static.preferences.dtype,
                                       prefill=static.preferences.prefill),
                   tuned={"cache": winner["cache"], "reason": measured, "compile": bool(winner.get("compile")),
                          "quantization": otf_choice(plan.quantization), **{k: winner.get(k) for k in (
                              "prefill_tokens_per_s", "decode_tokens_per_s", "measured_at")}})


def with_cached_winner(plan: Plan) -> Plan:
    """Apply a matching measured winner, unless the user asked for a dtype or attention themselves."""
    if plan.preferences.dtype != "auto" or plan.preferences.attention != "auto":
        return plan
    winner = cached_winner(plan)
    return apply_winner(plan, winner) if winner else plan
