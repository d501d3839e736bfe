"""kernelfit.guard(): code that demands FlashAttention runs where FlashAttention cannot.

The seed case: a model hard-codes `attn_implementation="flash_attention_2"` (in from_pretrained,
in `config._attn_implementation`, or in its decoder layers) and crashes on Pascal, Volta, Turing
and CPUs. Where a FlashAttention version cannot run on some device of this machine, guard():

1. wraps `PreTrainedModel._check_and_adjust_attn_implementation`, so a load-time request for it
   becomes `"kernelfit"` (the per-call dispatcher) instead of failing transformers' checks;
2. registers the dispatcher under the FlashAttention name itself, so code that sets the name
   after loading, or inside its layers, reaches the dispatcher at forward time. The dispatcher
   still runs the real FlashAttention on devices where it works (mixed boxes) and adapts the
   mask transformers built for FlashAttention (2D padding) for the backend it calls.

One warning per FlashAttention version names the reason. Where it can run everywhere, guard()
changes nothing.
"""

from __future__ import annotations

import functools
import warnings

from ..catalog.attention import BACKENDS, AttentionQuery, priority_for, why_not

FLASH_NAMES = ("flash_attention_2", "flash_attention_3", "flash_attention_4")
_state: dict = {"installed": {}, "warned": set(), "original": None}


class FlashAttentionGuardWarning(UserWarning):
    """A FlashAttention request was redirected because it cannot run on this machine."""


def blockers(name: str, machine=None) -> list[str]:
    """Why `name` cannot run on some device of this machine ([] if it runs on all)."""
    if machine is None:
        from ..probe import probe_machine

        machine = probe_machine()
    devices = machine.accelerators or (machine.cpu_device,)
    out = []
    for d in devices:
        for r in why_not(BACKENDS[name], AttentionQuery(d, machine.software, "float16", 128)):
            out.append(f"{d.name}: {r}")
    return out


def _substitute_label(machine) -> str:
    lead = (machine.accelerators or (machine.cpu_device,))[0]
    for n in priority_for(lead):
        if n not in FLASH_NAMES and not why_not(BACKENDS[n], AttentionQuery(lead, machine.software, "float32", 128)):
            return f"kernelfit dispatch ({n} on {lead.name})"
    return "kernelfit dispatch"


def _warn_once(name: str, why: list[str], label: str) -> None:
    if name in _state["warned"]:
        return
    _state["warned"].add(name)
    warnings.warn(f"kernelfit.guard: {name} cannot run here ({'; '.join(why)}); using {label} instead",
                  FlashAttentionGuardWarning, stacklevel=3)


def _redirect(value, guarded: dict):
    if isinstance(value, str) and value in guarded:
        _warn_once(value, *guarded[value])
        return "kernelfit"
    if isinstance(value, dict):
        return {k: _redirect(v, guarded) for k, v in value.items()}
    return value


def guard(machine=None) -> list[str]:
    """Install the guard (idempotent). Returns the FlashAttention names it redirects."""
    from ..probe import probe_machine

    machine = machine or probe_machine()
    guarded = {}
    for name in FLASH_NAMES:
        why = blockers(name, machine)
        if why:
            guarded[name] = (why, _substitute_label(machine))
    if not guarded:
        return []
    from transformers import AttentionInterface, PreTrainedModel

    from .dispatcher import Dispatcher, dispatcher, register

    register()
    _state["installed"] = guarded
    for name in guarded:
        d = Dispatcher(backends=dispatcher().backends, software=dispatcher().software, preferred=(name,))

        def forward(module, query, key, value, attention_mask, _d=d, _name=name, **kwargs):
            _warn_once(_name, *guarded[_name])
            return _d(module, query, key, value, attention_mask, **kwargs)

        AttentionInterface.register(name, forward)
    if _state["original"] is None:
        original = PreTrainedModel._check_and_adjust_attn_implementation
        _state["original"] = original

        @functools.wraps(original)
        def check(self, attn_implementation, *args, **kwargs):
            return original(self, _redirect(attn_implementation, _state["installed"]), *args, **kwargs)

        PreTrainedModel._check_and_adjust_attn_implementation = check
    return list(guarded)


def unguard() -> None:
    """Undo guard() (tests use it to show the crash without the guard)."""
    from transformers import AttentionInterface, PreTrainedModel
    from transformers.integrations.flash_attention import flash_attention_forward

    if _state["original"] is not None:
        PreTrainedModel._check_and_adjust_attn_implementation = _state["original"]
        _state["original"] = None
    for name in _state["installed"]:
        AttentionInterface.register(name, flash_attention_forward)
    _state["installed"] = {}
    _state["warned"].clear()
