"""The one place that chains the pipeline — probe -> model spec -> plan -> tune cache -> load — for the
Python API (`kernelfit.load`, `kernelfit.make_plan`) and the CLI. Later stages receive the Plan (and the
ModelSpec inside it), never a model string to resolve again."""

from __future__ import annotations

from typing import Callable

from .bench.cache import with_cached_winner
from .hardware.machine import Machine
from .model.spec import load_model_spec
from .planner.search import plan as plan_for
from .planner.types import Plan, Preferences


def make_plan(model: str, prefs: Preferences | None = None, machine: Machine | None = None,
              use_tune_cache: bool = True) -> Plan:
    """Plan `model` (a path, the bundled name or a cached hub id) for `machine` (default: this one, probed),
    with a measured `kernelfit bench` winner applied when one is cached for this machine and model."""
    spec = load_model_spec(model)  # bad model input fails here, before anything heavy
    if machine is None:
        from .probe import probe_machine

        machine = probe_machine()
    plan = plan_for(machine, spec, prefs or Preferences())
    return with_cached_winner(plan) if use_tune_cache else plan


def load(model: str = "smollm2-135m", *, dtype: str = "auto", attention: str = "auto", context: int | None = None,
         batch: int = 1, device: str = "auto", max_memory: dict | None = None, quantization: str = "auto",
         allow_dequantize: bool = False, machine: Machine | None = None, plan: Plan | None = None,
         dispatch: bool = True, use_tune_cache: bool = True, health_check: bool = True,
         trust_remote_code: bool = False, allow_pickle: bool = False,
         progress: Callable[[str], None] | None = None):
    """Load `model` with the fastest configuration this machine can run, and say why.

    `plan`: a plan already made (the preference arguments are then not used). Returns a `Loaded`
    (unpacks as `model, tokenizer, plan`). Raises UsageError for bad input and HealthCheckError when
    the loaded model does not match its checkpoint.
    """
    from .loader.load import load_plan

    if plan is None:
        prefs = Preferences(dtype=dtype, attention=attention, context=context, batch=batch, device=device,
                            max_memory=max_memory, quantization=quantization, allow_dequantize=allow_dequantize)
        plan = make_plan(model, prefs, machine, use_tune_cache)
    return load_plan(plan, dispatch=dispatch, health_check=health_check, trust_remote_code=trust_remote_code,
                     allow_pickle=allow_pickle, progress=progress)
