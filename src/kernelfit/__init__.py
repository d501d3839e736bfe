"""kernelfit: run any transformers model on the hardware it lands on, with the fastest
configuration that hardware can really execute — and say why.

Pipeline: probe -> model -> catalog -> plan -> load -> dispatch -> bench. Importing this package is
cheap; the heavy parts (torch, transformers) load only when `load`, `guard` or the dispatcher is used.
No subpackage shares a name with a public function, so `kernelfit.plan(...)` stays a function whatever
was imported before (tests/test_layout.py).
"""

from __future__ import annotations

from .version import __version__

import os as _os

from .dispatch.autoregister import install as _install_autoregister

# attn_implementation="kernelfit" works once kernelfit is imported: registered when transformers loads its
# attention registries (nothing heavy is imported here)
_install_autoregister()

if _os.environ.get("KERNELFIT_GUARD") == "1":  # for code you cannot edit: KERNELFIT_GUARD=1 kernelfit exec ...
    from .dispatch.guard import guard as _guard

    _guard()

__all__ = ["__version__", "probe_machine", "load_profile", "load_model_spec", "plan", "make_plan", "Preferences",
           "load", "generate", "load_image", "guard", "register"]


# public name -> module that defines it (imported on first use: `import kernelfit` stays cheap)
_LAZY = {
    "probe_machine": ".probe",
    "load_profile": ".profiles",
    "load_model_spec": ".model.spec",
    "plan": ".planner.search",  # plan(machine, spec, prefs): the pure planner
    "make_plan": ".api",  # make_plan(model, prefs): probe, spec, plan, tune cache
    "Preferences": ".planner.types",
    "load": ".api",
    "generate": ".loader.generate",  # generate(model, tokenizer_or_processor, prompt, max_new_tokens, images=[...])
    "load_image": ".loader.images",
    "guard": ".dispatch.guard",
    "register": ".dispatch.dispatcher",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'kernelfit' has no attribute {name!r}")
