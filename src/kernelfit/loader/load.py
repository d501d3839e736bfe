"""load_plan: apply a Plan to from_pretrained (through planner.hf_args), then check the result.
Planning happens before (api.py); this stage receives the Plan, whose ModelSpec says what to read.

Attention goes through the "kernelfit" dispatcher by default (the plan's choice first, runtime
fallback if a kernel raises); a load that fails because a kernel cannot run here is retried
down a fallback chain (plan -> sdpa -> eager in float32), each step recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

from ..catalog.architectures import COMPOSITES
from ..catalog.kernel_errors import cannot_run_here
from ..catalog.packed_kernels import MOE_GGUF_ARCHS
from ..errors import UsageError
from ..model.spec import ModelSpec
from ..planner.hf_args import attn_implementation, from_pretrained_kwargs, lean_runner
from ..planner.types import ChoiceKind, Plan
from .health import HealthReport, check_health, raise_if_unhealthy


@dataclass
class Loaded:
    model: Any
    tokenizer: Any  # tokenizer, or processor for vision-language models
    plan: Plan
    attn_implementation: Any  # what from_pretrained finally got
    dtype: str
    load_seconds: float
    health: HealthReport | None
    fallbacks: list[dict] = field(default_factory=list)  # load-time fallbacks; runtime ones: dispatch.fallbacks()
    packing: dict | None = None  # packed weights: what each tensor became and its measured error

    def __iter__(self):  # model, tokenizer, plan = kernelfit.load(...)
        return iter((self.model, self.tokenizer, self.plan))


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def engine_requant(q) -> str | None:
    """The block type the engine re-quantizes a checkpoint into at load: "Q8_0" for --quantization q8_0."""
    return "Q8_0" if q is not None and q.method == "engine" and q.bits == 8 else None


def check_loadable(plan: Plan, allow_pickle: bool = False) -> None:
    """What would stop loading this plan here, as a UsageError — before anything heavy starts (bench checks
    this once instead of failing every candidate). A GGUF file run packed whose tokenizer kernelfit does not read
    itself (engine/gguf/tokenizer.py) has transformers' tokenizer built here (once, then cached): a file whose
    tokenizer metadata transformers cannot read is refused before the plan is shown."""
    spec = plan.model
    q = plan.quantization
    if q is not None and q.install:
        raise UsageError(f"the plan for {spec.name} needs a package that is not installed: {q.install} "
                         f"(or choose another way with --quantization / --context)")
    if lean_runner(plan):  # the engine's reader refuses a damaged packed checkpoint here, and its recipe what the
        # engine does not run (grouped routing, an MTP block alone, ...): before the tokenizer, whose own refusal of
        # an architecture transformers does not read would hide the reason
        from ..engine.build import open_model

        open_model(Path(spec.model_dir) / spec.gguf_file if spec.gguf_file else Path(spec.model_dir),
                   engine_requant(q))
    if lean_runner(plan) and (spec.text.recurrent_layers or spec.extra.get("gguf_arch") in MOE_GGUF_ARCHS):
        from ..engine.weights import dot_available

        if not dot_available():  # before the plan is shown, not after packing
            from ..engine.native import native_status

            raise UsageError(f"{spec.name}'s {'recurrent' if spec.text.recurrent_layers else 'mixture-of-experts'} "
                             f"layers run in kernelfit's C++ step only, which does not run here ({native_status()}"
                             "); --quantization none runs the dequantized model where transformers reads the file")
    kv = plan.kernels.get("kv_cache")
    if kv is not None and kv.value == "q8_0":  # refused here, before the plan is shown, rather than after packing
        from ..engine.build import q8_0_cache_refusal

        prefill = plan.kernels.get("prefill")
        why = q8_0_cache_refusal(prefill is not None and prefill.value == "dense")
        if why:
            raise UsageError(why)
    if lean_runner(plan) and spec.gguf_file:
        from ..model.gguf_header import read_gguf_header
        from ..engine.gguf.tokenizer import tokenizer_kind
        from ..engine.runner import tokenizer_dir

        if tokenizer_kind(read_gguf_header(Path(spec.model_dir) / spec.gguf_file)) is None:
            tokenizer_dir(spec)
    if spec.format == "gguf":
        return
    if spec.format == "config-only" or not spec.model_dir:
        raise UsageError(f"{spec.source} has a config but no weights (*.safetensors or *.gguf) beside it; "
                         f"`kernelfit plan` works on it, loading needs the checkpoint")
    if spec.format == "pytorch-pickle" and not allow_pickle:
        raise UsageError(f"{spec.model_dir} holds pickle weights (.bin/.pt), which can run arbitrary code when "
                         f"loaded; convert them to safetensors, or pass --allow-pickle if you trust the source")


def _refused_pickle(exc: BaseException, spec: ModelSpec) -> UsageError | None:
    """torch's weights-only unpickler refused the pickle weights (--allow-pickle still loads them with
    weights_only=True, as from_pretrained does): a UsageError naming what it refused, else None. The file is
    never loaded another way."""
    import pickle
    import re

    seen: set[int] = set()
    while exc is not None and not isinstance(exc, pickle.UnpicklingError) and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    where = f"the pickle weights in {spec.model_dir}"
    found = re.search(r"GLOBAL (\S+)", text)  # "Unsupported global: GLOBAL exec", "GLOBAL posix.system whose ..."
    if found:
        name = found.group(1).rstrip(".")
        if "." not in name:  # torch drops the module of Python's builtins (exec, eval, getattr)
            name = f"builtins.{name}"
        return UsageError(f"{where} are not safe to load: they reference {name}, which torch's weights-only "
                          f"loader refuses (a checkpoint holds tensors, not code); do not load them unless you trust "
                          f"their source, and ask for safetensors weights instead")
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = detail.group(1) if detail else next((line for line in text.splitlines() if line.strip()), "")
    return UsageError(f"torch's weights-only loader refused {where} ({detail.strip()}); they are damaged or hold "
                      f"more than tensors: do not load them unless you trust their source")


def _weights_dir(spec: ModelSpec, progress: Callable) -> tuple[str, dict]:
    """Where from_pretrained reads, and format-specific keyword arguments (check_loadable ran before)."""
    if spec.format == "gguf":
        from .gguf_cache import materialise

        return str(materialise(spec, progress)), {"use_safetensors": True}
    return spec.model_dir, {"use_safetensors": spec.format != "pytorch-pickle"}


def _quantization_config(plan: Plan, qc: dict | None):
    """transformers' config object for the plan's quantization_config (None when dense)."""
    if not qc:
        return None
    import torch
    from transformers import AwqConfig, BitsAndBytesConfig, GPTQConfig, QuantoConfig

    method = qc["quant_method"]
    if method == "bitsandbytes":
        kw = {k: v for k, v in qc.items() if k != "quant_method"}
        if "bnb_4bit_compute_dtype" in kw:
            kw["bnb_4bit_compute_dtype"] = getattr(torch, kw["bnb_4bit_compute_dtype"])
        return BitsAndBytesConfig(**kw)
    if method == "quanto":
        return QuantoConfig(weights=qc["weights"])
    base = dict(plan.model.quantization.raw)
    base["backend"] = qc["backend"]  # the kernel the plan chose for this device, as transformers names it
    return (AwqConfig if method == "awq" else GPTQConfig).from_dict(base)


def _model_class(spec: ModelSpec):
    if spec.model_type in COMPOSITES:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM


def _tokenizer(spec: ModelSpec, directory: str, trust_remote_code: bool):
    try:
        if spec.model_type in COMPOSITES:
            from transformers import AutoProcessor

            return AutoProcessor.from_pretrained(directory, trust_remote_code=trust_remote_code)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(directory, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load the tokenizer from {directory}: {str(exc).splitlines()[0]}") from None


def load_plan(plan: Plan, *, dispatch: bool = True, health_check: bool = True, trust_remote_code: bool = False,
              allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> Loaded:
    """Load `plan.model` as `plan` says, down a fallback chain when a kernel cannot run here.

    Returns a `Loaded` (unpacks as `model, tokenizer, plan`). Raises UsageError for a plan that cannot be
    loaded here and HealthCheckError when the loaded model does not match its checkpoint.
    """
    say = progress or (lambda _msg: None)
    spec = plan.model
    q = plan.quantization
    check_loadable(plan, allow_pickle)
    if spec.extra.get("custom_code") and not trust_remote_code:
        import sys

        print(f"kernelfit: note: {spec.name} ships its own modeling code (auto_map); it is not run — the stock "
              f"transformers class for '{spec.model_type}' is used (--trust-remote-code runs it)", file=sys.stderr)
    t0 = time.perf_counter()
    if lean_runner(plan):  # a GGUF file run packed, or a checkpoint on the engine: kernelfit's runner, no from_pretrained
        from ..engine.runner import load_lean

        prefill = plan.kernels["prefill"].value if "prefill" in plan.kernels else "packed"
        kv = plan.kernels.get("kv_cache")  # as asked; else the builder's default for what runs here (build_lean)
        kv = kv.value if kv is not None and kv.kind is ChoiceKind.REQUESTED else "auto"
        runner, tokenizer = load_lean(spec, prefill, health_check, say, engine_requant(q), kv)
        # load_lean raised HealthCheckError on any problem; the builder refuses missing or unread tensors by name
        health = HealthReport(True, [], ["every tensor the recipe reads is in the file",
                                         "smoke forward"]) if health_check else None
        return Loaded(runner, tokenizer, plan, "kernelfit packed CPU runner", plan.dtype.value,
                      time.perf_counter() - t0, health, packing=runner.report())
    directory, fmt_kwargs = _weights_dir(spec, say)
    if q is not None and q.dequantize_first:
        from .dequantize import dequantized_dir

        directory = str(dequantized_dir(spec, say))
    tokenizer = _tokenizer(spec, directory, trust_remote_code)
    klass = _model_class(spec)

    chain: list[tuple[str | None, str]] = []  # (attention override, dtype), best first
    if dispatch:
        from ..dispatch.dispatcher import register

        # the dispatcher asks the catalog with the software the plan saw; the plan's choice is
        # registered per model config once it is loaded (below)
        register(software=plan.machine.software)
        chain.append(("kernelfit", plan.dtype.value))
    else:
        chain.append((None, plan.dtype.value))
    chain += [("sdpa", plan.dtype.value), ("eager", "float32")]
    fallbacks: list[dict] = []
    last = None
    steps = list(dict.fromkeys((str(attn_implementation(plan, a)), a, dt) for a, dt in chain))
    for attn, override, dt in steps:
        kwargs = from_pretrained_kwargs(plan, attention=override, dtype=dt)
        kwargs.pop("gguf_file", None)  # GGUF files load from their converted cache (fmt_kwargs)
        kwargs["dtype"] = _torch_dtype(dt)
        quant_config = _quantization_config(plan, kwargs.pop("quantization_config", None))
        if quant_config is not None:
            kwargs["quantization_config"] = quant_config
        attn_value = kwargs["attn_implementation"]
        say(f"loading {spec.name} ({spec.params / 1e9:.2f} B params) as {dt} with attention {attn} "
            f"on {', '.join(plan.placement.devices)}")
        try:
            loaded, info = klass.from_pretrained(directory, trust_remote_code=trust_remote_code,
                                                 output_loading_info=True, **kwargs, **fmt_kwargs)
        except Exception as exc:  # noqa: BLE001 - only "cannot run here" errors move down the chain
            refused = _refused_pickle(exc, spec) if spec.format == "pytorch-pickle" else None
            if refused is not None:
                raise refused from None
            if not cannot_run_here(exc):
                raise
            last = exc
            fallbacks.append({"stage": "load", "attention": attn, "dtype": dt,
                              "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
            continue
        loaded.eval()
        if dispatch:  # this model's layers try its own plan's choice first (other loaded models keep theirs)
            from ..dispatch.dispatcher import dispatcher

            for sub in spec.sub_models:
                cfg = getattr(loaded.config, sub.config_key, None) if sub.config_key else loaded.config
                if cfg is not None:
                    dispatcher().prefer(cfg, (plan.attention[sub.role].value,))
        if plan.decode_fastpath and dt == plan.dtype.value:
            from .cpu_decode import install

            install(loaded)
        health = None
        if health_check:
            say("health check: loading info, meta tensors, quantized modules, smoke forward")
            health = check_health(loaded, spec, info, dequantized=spec.format == "gguf", source_dir=directory,
                                  quant_method=q.method if q is not None and q.method != "none" else None)
            raise_if_unhealthy(health, spec.name)
        if q is not None and q.method == "packed":  # --quantization int8/int4 on a CPU: after the health check,
            from .packed_linear import pack_linears  # which compares the dense weights with the checkpoint

            say(f"packing linear layers to int{q.bits} for the CPU's weight-only kernels")
            packing = pack_linears(loaded, q.bits)
        else:
            packing = None
        if plan.tuned and plan.tuned.get("compile"):  # `kernelfit bench --compile` measured it fastest
            from .generate import compile_forward

            # after the health check: its 8-token smoke forward would otherwise compile a graph of its own
            say("torch.compile: the first generation compiles the forward (tens of seconds on a small CPU)")
            compile_forward(loaded)
        return Loaded(loaded, tokenizer, plan, attn_value, dt, time.perf_counter() - t0, health, fallbacks, packing)
    raise RuntimeError(f"kernelfit: every configuration in the fallback chain failed to load {spec.name}") from last
