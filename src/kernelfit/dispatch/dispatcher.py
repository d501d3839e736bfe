"""`attn_implementation="kernelfit"`: pick the attention kernel per call, fall back when one raises.

Per call the dispatcher looks at the query's device (each layer on its own device in a mixed
box), dtype, head_dim, sliding window, softcap and causality, asks the catalog which backends
run there, and calls the first in priority order. When a backend raises an error that means
"this kernel cannot run here" (catalog.kernel_errors), it is marked dead for that device, one
warning is issued, and the call is redone with the next backend. Other errors propagate.

Registered in both transformers registries (AttentionInterface and AttentionMaskInterface):
a name missing from the mask registry would silently receive attention_mask=None.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..catalog.attention import (BACKENDS, FLOAT_MASK, NON_CAUSAL, OUTPUT_ATTENTIONS, SLIDING_WINDOW, SOFTCAP,
                                 SPARSE_SELECTION, AttentionQuery, priority_for, why_not)
from ..catalog.kernel_errors import cannot_run_here
from ..hardware.machine import Device, Software
from .kernels import KernelBackend, adapt_mask, default_backends
from .sparse import fold_selection

NAME = "kernelfit"


class KernelFallbackWarning(UserWarning):
    """A kernel could not run on a device; the dispatcher used the next one."""


def _torch_device_info(dev: torch.device) -> Device:
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        kind = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        arch = getattr(torch.cuda.get_device_properties(index), "gcnArchName", "").split(":")[0] if kind == "rocm" else None
        return Device(kind=kind, name=torch.cuda.get_device_name(index), index=index,
                      compute_capability=f"{major}.{minor}" if kind == "cuda" else None,
                      arch=arch or f"sm_{major}{minor}")
    if dev.type == "mps":
        return Device(kind="mps", name="Apple GPU (MPS)")
    if dev.type == "xpu":
        return Device(kind="xpu", name="Intel XPU", index=dev.index or 0)
    return Device(kind="cpu", name="cpu")


@dataclass
class Dispatcher:
    backends: dict[str, KernelBackend] = field(default_factory=dict)
    software: Software | None = None
    # (module, query) -> catalog Device; tests simulate devices per layer with this
    resolve: Callable | None = None
    preferred: tuple[str, ...] = ()  # tried first when they run, for modules without a plan of their own
    # id(config) -> (weakref to the config, its plan's choice): each loaded model (and each
    # sub-model of a VLM) keeps its own plan's preference, whatever was loaded after it
    by_config: dict = field(default_factory=dict)
    dead: set = field(default_factory=set)  # (device key, backend name)
    events: list = field(default_factory=list)  # fallbacks that happened, for reports
    _devices: dict = field(default_factory=dict)
    _order: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def device_for(self, module, query: torch.Tensor) -> Device:
        if self.resolve is not None:
            return self.resolve(module, query)
        key = query.device
        info = self._devices.get(key)
        if info is None:
            info = self._devices[key] = _torch_device_info(key)
        return info

    def prefer(self, config, choice: tuple[str, ...]) -> None:
        """Make `choice` the first backends tried for modules of this config."""
        self.by_config[id(config)] = (weakref.ref(config), tuple(choice))

    def preferred_for(self, module) -> tuple[str, ...]:
        config = getattr(module, "config", None)
        entry = self.by_config.get(id(config)) if config is not None else None
        if entry is not None and entry[0]() is config:
            return entry[1]
        return self.preferred

    def order_for(self, device: Device, dtype: str, head_dim: int, features: frozenset,
                  preferred: tuple[str, ...] | None = None) -> list[str]:
        """Backends that the catalog says run here, best first (cached)."""
        preferred = self.preferred if preferred is None else preferred
        key = ((device.kind, device.index, device.compute_capability, device.name), dtype, head_dim, features,
               preferred)
        cached = self._order.get(key)
        if cached is not None:
            return cached
        if self.software is None:
            raise RuntimeError("kernelfit: the dispatcher has no Software to ask the catalog with; "
                               "call kernelfit.register() first")
        names = [n for n, b in self.backends.items() if b.applies is not None]  # shape specialisations first
        names += [n for n in preferred if n in self.backends and n not in names]
        names += [n for n in priority_for(device) if n in self.backends and n not in names]
        names += [n for n in self.backends if n not in names]  # backends the catalog does not rank
        q = AttentionQuery(device, self.software, dtype, head_dim, features)
        runnable = []
        for n in names:
            backend = self.backends[n]
            reasons = why_not(BACKENDS[n], q) if n in BACKENDS else []
            if backend.supports is not None:
                reasons = reasons + list(backend.supports(device, dtype, head_dim, features))
            if not reasons:
                runnable.append(n)
        self._order[key] = runnable
        return runnable

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        device = self.device_for(module, query)
        dtype = str(query.dtype).removeprefix("torch.")
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        causal = kwargs.get("is_causal")
        causal = getattr(module, "is_causal", True) if causal is None else causal
        # a selection the model left to the kernel is folded into the mask here, as the model itself does
        # under "sdpa": never dropped (attention would silently become dense)
        attention_mask, selected = fold_selection(module, attention_mask, query, key, kwargs)
        float_mask = attention_mask is not None and attention_mask.dim() == 4 and attention_mask.dtype != torch.bool
        features = frozenset(
            f for f, on in ((SLIDING_WINDOW, bool(window)), (SOFTCAP, bool(kwargs.get("softcap"))),
                            (NON_CAUSAL, not causal), (OUTPUT_ATTENTIONS, bool(kwargs.get("output_attentions"))),
                            (FLOAT_MASK, float_mask), (SPARSE_SELECTION, selected))
            if on)
        dev_key = (device.kind, device.index, device.compute_capability)
        last_error = None
        for name in self.order_for(device, dtype, query.shape[-1], features, self.preferred_for(module)):
            if (dev_key, name) in self.dead:
                continue
            backend = self.backends[name]
            if backend.applies is not None and not backend.applies(query, key):
                continue
            mask = adapt_mask(attention_mask, backend.mask, query, key, causal, window)
            try:
                return backend.fn(module, query, key, value, mask, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised unless "cannot run here"
                if not cannot_run_here(exc):
                    raise
                last_error = exc
                with self._lock:
                    if (dev_key, name) in self.dead:
                        continue
                    self.dead.add((dev_key, name))
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    self.events.append({"device": device.name, "device_index": device.index, "backend": name,
                                        "error": f"{type(exc).__name__}: {first_line}"})
                warnings.warn(f"kernelfit: {name} cannot run on {device.name} ({type(exc).__name__}: {first_line}); "
                              f"using the next attention backend for this device from now on",
                              KernelFallbackWarning, stacklevel=2)
        raise RuntimeError(f"kernelfit: no attention backend could run on {device.name} for dtype {dtype}, "
                           f"head_dim {query.shape[-1]}") from last_error

    def reset(self) -> None:
        self.dead.clear()
        self.events.clear()
        self._order.clear()


_DISPATCHER: Dispatcher | None = None


def dispatcher() -> Dispatcher:
    """The process's dispatcher. Its Software (what the catalog checks packages against) is read once,
    here, or handed in by register(software=...) — never probed while a forward pass runs."""
    global _DISPATCHER
    if _DISPATCHER is None:
        from ..probe.software import probe_software

        _DISPATCHER = Dispatcher(backends=default_backends(), software=probe_software())
    return _DISPATCHER


def kernelfit_attention_forward(module, query, key, value, attention_mask, **kwargs):
    return dispatcher()(module, query, key, value, attention_mask, **kwargs)


def register(name: str = NAME, software: Software | None = None) -> str:
    """Register the dispatcher under `name` in AttentionInterface and its mask function in
    AttentionMaskInterface (idempotent). `software`: what a plan saw installed (the loader passes its
    plan's). Returns the name to pass as attn_implementation."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if software is not None and software != dispatcher().software:
        dispatcher().software = software
        dispatcher()._order.clear()

    AttentionInterface.register(name, kernelfit_attention_forward)
    import transformers.modeling_utils

    from .class_dicts import patch_attention_check

    patch_attention_check(transformers.modeling_utils)  # class-dict models (Falcon) get their own SDPA
    # The dispatcher takes SDPA's mask (boolean 4D, or None when purely causal) and converts it
    # for each backend (kernels.adapt_mask).
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def register_backend(backend: KernelBackend) -> None:
    """Add or replace a backend (tests register fake kernels that raise real error messages)."""
    d = dispatcher()
    d.backends[backend.name] = backend
    d._order.clear()


def fallbacks() -> list[dict]:
    return list(dispatcher().events)
