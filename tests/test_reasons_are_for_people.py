"""Reasons are for people: rewording every human reason the catalog and planner write changes no
decision — not a plan, not a bench candidate, not a support-matrix cell, not a doctor fix. Code
branches on kinds and structured fields, never on text."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from kernelfit.bench.candidates import candidates, quantization_candidates
from kernelfit.catalog import attention, dtypes, quantization, torch_builds
from kernelfit.cli.doctor import findings
from kernelfit.cli.matrix import support_matrix
from kernelfit.errors import PlanError, UsageError
from kernelfit.model.spec import load_model_spec
from kernelfit.planner import quantization as quantplan
from kernelfit.planner import types
from kernelfit.planner.hf_args import from_pretrained_kwargs, generate_kwargs
from kernelfit.planner.search import plan
from kernelfit.planner.types import Preferences
from kernelfit.profiles import load_profile, profile_names

CONFIGS = sorted((Path(__file__).parent / "data" / "model-configs").glob("*.json"))
PREFS = (Preferences(), Preferences(quantization="8bit"), Preferences(allow_dequantize=True),
         Preferences(dtype="float32", attention="eager", context=1024),
         Preferences(max_memory={"cpu": 6.0, "0": 6.0}))


def _kinds(rejected) -> list:
    return [(r.name, r.kind, r.install, r.needs_gib, r.budget_gib, r.method, r.backend, r.dtype, r.bits, r.kv_bits, r.place)
            for r in rejected]


def _choice(c) -> tuple:
    return c.value, c.kind, _kinds(c.rejected), c.sources


def _decisions(p) -> dict:
    q = p.quantization
    return {
        "placement": (p.placement.devices, p.placement.kind, p.placement.device_map, p.placement.max_memory,
                      _kinds(p.placement.rejected)),
        "dtype": _choice(p.dtype),
        "attention": {role: _choice(c) for role, c in p.attention.items()},
        "sdpa": {role: [(k, len(r)) for k, r in ks] for role, ks in p.sdpa_kernels.items()},
        "quantization": None if q is None else (q.method, q.bits, q.backend, q.group_size, q.kv_bits, q.install,
                                                q.dequantize_first, q.passed_over_bits, _kinds(q.rejected)),
        "quantization_rejected": _kinds(p.quantization_rejected),
        "memory": dataclasses.astuple(p.memory), "offload": p.offload, "warnings": len(p.warnings),
        "runnable": (p.runnable_attentions(), p.runnable_dtypes()),
        "bench": (candidates(p, compile=True), quantization_candidates(p)),
        "hf": (from_pretrained_kwargs(p), generate_kwargs(p)),
        "decode": (p.decode_fastpath is not None, p.decode_attention is not None),
    }


def snapshot() -> dict:
    out = {}
    for name in profile_names():
        machine = load_profile(name)
        out[("doctor", name)] = [(f.level, f.fix) for f in findings(machine)]
        for cfg in CONFIGS:
            spec = load_model_spec(str(cfg))
            for i, prefs in enumerate(PREFS):
                try:
                    out[(name, cfg.stem, i)] = _decisions(plan(machine, spec, prefs))
                except (PlanError, UsageError) as exc:
                    out[(name, cfg.stem, i)] = type(exc).__name__
    out["matrix"] = support_matrix(markdown=True)
    return out


def _reword_all(monkeypatch) -> None:
    """Replace every human reason with a constant, keeping only whether there is one."""
    said = "reworded"

    def hook(self):
        if getattr(self, "reason", None):
            object.__setattr__(self, "reason", said)

    for cls in (types.Rejected, types.Choice, quantplan.QuantOption, dtypes.DtypeVerdict):
        monkeypatch.setattr(cls, "__post_init__", hook)

    def lists(fn):
        return lambda *a, **k: [said for _ in fn(*a, **k)]

    wrapped = {
        attention.why_not: lists(attention.why_not),
        quantization.why_not_backend: lists(quantization.why_not_backend),
        attention.package_gaps: lambda *a, _f=attention.package_gaps, **k: [(d, said) for d, _ in _f(*a, **k)],
        attention.sdpa_kernels: lambda *a, _f=attention.sdpa_kernels, **k: [(n, [said] * len(r)) for n, r in _f(*a, **k)],
        torch_builds.device_blockers: lambda *a, _f=torch_builds.device_blockers, **k: [
            dataclasses.replace(b, reason=said, advice=said if b.advice else "") for b in _f(*a, **k)],
        dtypes.cpu_decode_gemv: lambda *a, _f=dtypes.cpu_decode_gemv, **k: said if _f(*a, **k) else None,
        attention.cpu_decode_attention: lambda *a, _f=attention.cpu_decode_attention, **k: said if _f(*a, **k) else None,
    }
    for module in [m for n, m in list(sys.modules.items()) if n.startswith("kernelfit") and m is not None]:
        for attr, value in list(vars(module).items()):
            for original, replacement in wrapped.items():
                if value is original:
                    monkeypatch.setattr(module, attr, replacement)


@pytest.fixture(scope="module")
def before() -> dict:
    return snapshot()


def test_rewording_every_reason_changes_no_decision(before, monkeypatch):
    _reword_all(monkeypatch)
    after = snapshot()
    assert after.keys() == before.keys()
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, changed[:10]
    assert sum(isinstance(v, dict) for v in before.values()) > 500  # the sweep planned for real


def test_the_rewording_reaches_the_plans(monkeypatch):
    """The check above can fail: after rewording, the plans' own reasons are the constant."""
    _reword_all(monkeypatch)
    p = plan(load_profile("t4"), load_model_spec(str(CONFIGS[0])), Preferences())
    assert p.dtype.reason == "reworded" and {r.reason for r in p.text_attention.rejected} == {"reworded"}
