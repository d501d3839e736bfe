"""`import kernelfit` makes `attn_implementation="kernelfit"` valid without an explicit register().

Registering needs transformers' attention registries, and importing them imports torch — which
`kernelfit plan` / `doctor` must never pay for. So nothing is imported here: an import hook waits for
transformers to load `transformers.modeling_utils` (where the registries live, imported by every
from_pretrained / from_config) and registers right after it. Where it is already loaded, registration
happens at once.

Registration also teaches transformers what to do with models that choose attention classes
themselves (class_dicts.py).
"""

from __future__ import annotations

import importlib.abc
import sys

_REGISTRIES = "transformers.modeling_utils"


def _after_import(name: str, module) -> None:
    if name == _REGISTRIES:
        from .dispatcher import register

        register()  # also teaches transformers about class-dict models (class_dicts.py)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _after_import(self.name, module)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the transformers modules above; finds nothing itself."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _REGISTRIES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


_FINDER = _Finder()


def install() -> None:
    """Register now for what transformers already loaded, and on import for the rest (idempotent)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    if sys.modules.get(_REGISTRIES) is not None:
        _after_import(_REGISTRIES, sys.modules[_REGISTRIES])
