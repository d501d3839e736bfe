"""The one place that chains the pipeline — probe -> model spec -> plan -> tune cache -> load — for the
Python API (`kernelfit.load`, `kernelfit.make_plan`) and the CLI. Later stages receive the Plan (and the
ModelSpec inside it), never a model string to resolve again."""

from __future__ import annotations

from dataclasses import replace
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


def make_draft_plan(plan: Plan) -> Plan | None:
    """The plan of `plan`'s draft model (Preferences.draft_model; None without one) on the same machine with the same
    preferences, checked against `plan` (both on kernelfit's engine, one tokenizer) before either model loads."""
    name = plan.preferences.draft_model
    if not name:
        return None
    from .errors import UsageError
    from .loader.draft import check_draft_plans

    try:
        # its own context (None: its default): past its positions the draft stops drafting (engine/draft_model.py)
        draft = make_plan(name, replace(plan.preferences, draft_model=None, context=None), plan.machine,
                          use_tune_cache=False)
    except UsageError as exc:  # which of the two models the message is about
        raise UsageError(f"--draft-model: {exc}") from None
    check_draft_plans(plan, draft, name)
    return draft


def memory_in_gib(max_memory) -> dict[str, float] | None:
    """max_memory as users of transformers/accelerate write it — {0: "20GiB", "cpu": "64GB"} or numbers — as
    GiB by kernelfit key. Numbers are GiB; strings carry their unit (GiB, GB, MiB, MB, TiB; none = GiB)."""
    from .sizes import parse_max_memory, parse_size
    from .errors import UsageError

    if max_memory is None:
        return None
    if isinstance(max_memory, str):
        return parse_max_memory(max_memory)
    if not isinstance(max_memory, dict):
        raise UsageError(f"max_memory must map devices to sizes, e.g. {{'cpu': '8GiB', 0: '20GiB'}}, not {max_memory!r}")
    out = {}
    for key, value in max_memory.items():
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise UsageError(f"max_memory keys are device names or GPU indices, not {key!r}")
        if isinstance(value, str):
            value = parse_size(value, f"max_memory[{key!r}]")
        out[str(key)] = value
    return out


def device_preference(device: str, device_map) -> str:
    """from_pretrained's device_map, as the device kernelfit plans for (kernelfit places the layers itself)."""
    from .errors import UsageError

    if device_map is None:
        return device
    if device != "auto":
        raise UsageError("pass either device= or device_map=, not both")
    if isinstance(device_map, str) and device_map in ("auto", "balanced", "sequential"):
        return "auto"
    if isinstance(device_map, str):
        return device_map
    if isinstance(device_map, dict) and set(device_map) == {""} and isinstance(device_map[""], (str, int)):
        v = device_map[""]
        return f"cuda:{v}" if isinstance(v, int) else v
    raise UsageError("kernelfit places the layers itself: device_map takes 'auto' or one device (e.g. 'cpu', "
                     "'cuda:0', {'': 'cuda:0'}); use max_memory= to bound what each device gets")


def load(model: str = "smollm2-135m", *, dtype: str = "auto", attention: str = "auto", context: int | None = None,
         batch: int = 1, device: str = "auto", max_memory: dict | None = None, quantization: str = "auto",
         allow_dequantize: bool = False, prefill: str = "auto", kv_cache: str = "auto", machine: Machine | None = None,
         plan: Plan | None = None, draft_model: str | None = None,
         dispatch: bool = True, use_tune_cache: bool = True, health_check: bool = True,
         trust_remote_code: bool = False, allow_pickle: bool = False,
         progress: Callable[[str], None] | None = None, device_map=None, attn_implementation: str | None = None):
    """Load `model` with the fastest configuration this machine can run, and say why.

    `plan`: a plan already made (the preference arguments are then not used). Returns a `Loaded`
    (unpacks as `model, tokenizer, plan`). Raises UsageError for bad input and HealthCheckError when
    the loaded model does not match its checkpoint. transformers' spellings are accepted: device_map
    ("auto" or one device), attn_implementation, max_memory values like "8GiB", torch dtypes.
    """
    from .loader.load import load_plan

    if plan is None:
        if attn_implementation is not None:  # the transformers spelling
            attention = attn_implementation
        prefs = Preferences(dtype=str(dtype).removeprefix("torch."), attention=attention, context=context, batch=batch,
                            device=device_preference(device, device_map), max_memory=memory_in_gib(max_memory),
                            quantization=quantization, allow_dequantize=allow_dequantize, prefill=prefill,
                            kv_cache=kv_cache, draft_model=draft_model)
        plan = make_plan(model, prefs, machine, use_tune_cache)
    draft = make_draft_plan(plan)
    loaded = load_plan(plan, dispatch=dispatch, health_check=health_check, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle, progress=progress)
    if draft is not None:
        from .loader.draft import attach_draft

        attach_draft(loaded, draft, plan.preferences.draft_model, progress)
    return loaded
