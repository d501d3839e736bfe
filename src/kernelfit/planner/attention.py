"""The attention implementation per sub-model: the first in the lead device's priority list that runs
on every device the sub-model computes on."""

from __future__ import annotations

from ..catalog.attention import BACKENDS, PLAIN_GENERATE, AttentionQuery, package_gaps, priority_for, why_not
from ..catalog.packages import install_hint
from ..errors import PlanError
from ..hardware.machine import Device, Machine
from ..model.spec import SubModel
from .types import ChoiceKind, Choice, Preferences, RejectKind, Rejected


def _reasons(name: str, sub: SubModel, devices: list[Device], machine: Machine, dtype: str) -> tuple[list[str], dict]:
    """(hardware/feature reasons, {missing package: why}) against `name` on every device."""
    hw: list[str] = []
    pkg: dict[str, str] = {}
    for d in devices:
        # a plan is for from_pretrained + generate: ordinary (non-paged) attention calls
        q = AttentionQuery(d, machine.software, dtype, sub.head_dim, frozenset(sub.features) | {PLAIN_GENERATE})
        hw += [r for r in why_not(BACKENDS[name], q, check_package=False) if r not in hw]
        pkg.update(package_gaps(BACKENDS[name], machine.software, d.kind))
    return hw, pkg


def choose_attention(sub: SubModel, devices: list[Device], machine: Machine, dtype: str, prefs: Preferences) -> Choice:
    """First implementation in the lead device's priority list that runs on every device used."""
    order = priority_for(devices[0])
    if prefs.attention != "auto" and prefs.attention not in order:
        order = (prefs.attention, *order)
    found = {name: _reasons(name, sub, devices, machine, dtype) for name in order}
    reasons = {name: hw + list(pkg.values()) for name, (hw, pkg) in found.items()}
    valid = [n for n in order if not reasons[n]]
    if not valid:  # eager runs everywhere torch does; reaching here is a catalog bug
        raise PlanError(f"no attention implementation runs {sub.role} model on {devices[0].name}")
    chosen, kind = valid[0], ChoiceKind.PRIORITY
    if prefs.attention != "auto" and prefs.attention in valid:
        chosen, kind = prefs.attention, ChoiceKind.REQUESTED
        why = f"requested, and it runs on {devices[0].name}"
    else:
        cap = devices[0].compute_capability
        why = f"first in the priority list for {devices[0].kind}{f' {cap}' if cap else ''}"
        why += f" ({' > '.join(order)}) that runs here with {dtype}, head_dim {sub.head_dim}"
        if prefs.attention != "auto":
            why = f"requested {prefs.attention} cannot run: {'; '.join(reasons[prefs.attention])} — using {chosen}, " + why
    rejected = []
    for n in order:
        if n == chosen:
            continue
        hw, pkg = found[n]
        if hw:
            rejected.append(Rejected(n, RejectKind.NOT_RUNNABLE, "; ".join(reasons[n])))
        elif pkg:
            rejected.append(Rejected(n, RejectKind.NOT_INSTALLED, "; ".join(reasons[n]),
                                     install=" && ".join(install_hint(p) for p in pkg)))
        else:
            rejected.append(Rejected(n, RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                     f"runs here, but {chosen} comes first in the priority list"))
    return Choice(chosen, kind, why, tuple(rejected), BACKENDS[chosen].sources)
