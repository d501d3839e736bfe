"""kernelfit: run any transformers model on the hardware it lands on, with the fastest
configuration that hardware can really execute — and say why.

Pipeline: probe -> catalog -> plan -> load -> dispatch. Importing this package is cheap; the
heavy parts (torch, transformers) load only when `load`, `guard` or the dispatcher is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

if _os.environ.get("KERNELFIT_GUARD") == "1":  # for code you cannot edit: KERNELFIT_GUARD=1 kernelfit exec ...
    from .runtime.guard import guard as _guard

    _guard()

__all__ = ["__version__", "probe_machine", "load_profile", "load_model_spec", "plan", "Preferences", "load", "guard",
           "register"]


def __getattr__(name: str):
    if name == "probe_machine":
        from .probe import probe_machine
        return probe_machine
    if name == "load_profile":
        from .profiles import load_profile
        return load_profile
    if name == "load_model_spec":
        from .modelspec import load_model_spec
        return load_model_spec
    if name == "plan":
        from .planner import plan
        return plan
    if name == "Preferences":
        from .plan import Preferences
        return Preferences
    if name == "load":
        from .runtime.load import load
        return load
    if name == "guard":
        from .runtime.guard import guard
        return guard
    if name == "register":
        from .runtime.dispatch import register
        return register
    raise AttributeError(f"module 'kernelfit' has no attribute {name!r}")
