"""Models that pick their attention *class* from a dict keyed by the implementation name (Falcon's
FALCON_ATTENTION_CLASSES, GPT-Neo, GIT, the SAM vision encoders of DeepSeek-OCR2, ...) never call a
registered attention function, and their classes branch on the name itself (Falcon's attention class
runs SDPA only when it is called "sdpa", and expects an additive mask otherwise): "kernelfit" is a
KeyError there, or silently the wrong mask. So when such a model is asked for "kernelfit", it is built
with the implementation of its own that it lists ("sdpa", else "eager"), with one warning that says so.
"""

from __future__ import annotations

import functools
import sys
import warnings

NAME = "kernelfit"


class ClassDictModelWarning(UserWarning):
    """A model that chooses its attention classes itself was built with its own implementation."""


def class_dict_substitute(module) -> str | None:
    """For a modeling module that picks attention classes from `*_ATTENTION_CLASSES` dicts: the name of its
    own implementation to use instead of "kernelfit" ("sdpa" where every such dict has it, else "eager").
    None for modules that go through transformers' attention registry."""
    dicts = [v for k, v in vars(module).items() if k.endswith("_ATTENTION_CLASSES") and isinstance(v, dict)]
    if not dicts:
        return None
    return "sdpa" if all("sdpa" in d for d in dicts) else "eager"


_warned: set[str] = set()


def patch_attention_check(modeling_utils) -> None:
    """Wrap PreTrainedModel._check_and_adjust_attn_implementation so that "kernelfit" on a class-dict model
    becomes that model's own implementation (see the module docstring)."""
    cls = modeling_utils.PreTrainedModel
    original = cls._check_and_adjust_attn_implementation
    if getattr(original, "_kernelfit_class_dicts", False):
        return

    @functools.wraps(original)
    def check(self, attn_implementation, *args, **kwargs):
        if attn_implementation == NAME:
            own = class_dict_substitute(sys.modules.get(type(self).__module__))
            if own is not None:
                name = type(self).__name__
                if name not in _warned:
                    _warned.add(name)
                    warnings.warn(f"kernelfit: {name} picks its attention classes itself (no registered attention "
                                  f"function to dispatch); built with its own '{own}' implementation",
                                  ClassDictModelWarning, stacklevel=3)
                attn_implementation = own
        return original(self, attn_implementation, *args, **kwargs)

    check._kernelfit_class_dicts = True
    cls._check_and_adjust_attn_implementation = check
