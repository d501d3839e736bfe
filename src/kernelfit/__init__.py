"""kernelfit: run any transformers model on the hardware it lands on, with the fastest
configuration that hardware can really execute — and say why.

Pipeline: probe -> catalog -> plan -> load -> dispatch. Importing this package is cheap; the
heavy parts (torch, transformers) load only when `load`, `guard` or the dispatcher is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

import os as _os

if _os.environ.get("KERNELFIT_GUARD") == "1":  # for code you cannot edit: KERNELFIT_GUARD=1 kernelfit exec ...
    from .dispatch.guard import guard as _guard

    _guard()

__all__ = ["__version__", "probe_machine", "load_profile", "load_model_spec", "plan", "Preferences", "load", "guard",
           "register"]


# public name -> module that defines it (imported on first use: `import kernelfit` stays cheap)
_LAZY = {
    "probe_machine": ".probe",
    "load_profile": ".profiles",
    "load_model_spec": ".model.spec",
    "plan": ".planner.choose",
    "Preferences": ".planner.types",
    "load": ".loader.load",
    "guard": ".dispatch.guard",
    "register": ".dispatch.dispatcher",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'kernelfit' has no attribute {name!r}")
