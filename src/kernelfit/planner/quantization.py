"""Quantization choices for a plan: which kernel runs a pre-quantized checkpoint on these devices,
and which on-the-fly quantizer shrinks a model that does not fit — least quality loss first.

Pure: no torch. Used by planner/search.py, one "level" at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..catalog.architectures import TRANSFORMERS_GGUF_ARCHS
from ..catalog.engine_checkpoints import ENGINE_FP8_NOTE, ENGINE_Q8_0_LOSS, why_not_engine_checkpoint
from ..catalog.checkpoint_layout import TEXT_OF_VLM
from ..catalog.converted_checkpoints import CONVERTED_CHECKPOINT_ARCHS
from ..catalog.packages import install_hint
from ..catalog.packed_kernels import REGRID_MAX_ERROR, dot_codes, packed_cpu, why_not_packed_gguf
from ..catalog.quantization import ON_THE_FLY, PREQUANTIZED, hf_backend_name, missing_packages, why_not_backend
from ..hardware.machine import Device, Machine
from ..model.quantization import PREQUANTIZED_METHODS
from ..model.spec import ModelSpec
from .types import RejectKind, Rejected

# "8bit"/"4bit" let the catalog pick the quantizer; "METHOD-Nbit" names it (bench measures each);
# "int8"/"int4": weight-only packed CPU kernels (catalog/packed_kernels.py), on a CPU placement
QUANT_CHOICES = ("auto", "none", "8bit", "4bit", "bitsandbytes-8bit", "bitsandbytes-4bit", "quanto-8bit", "quanto-4bit",
                 "int8", "int4", "q8_0")
PACKED_CHOICES = {"int8": 8, "int4": 4}
KV_BITS = 4


@dataclass(frozen=True)
class Level:
    """One rung of the ladder: how the weights are stored, and whether the KV cache is quantized."""

    # "none", "otf" (quantize on load), "pre" (pre-quantized checkpoint), "dequantize", or
    # "requant" (--allow-dequantize: unpack, then quantize on load with bitsandbytes/quanto), or
    # "packed" (a GGUF file as stored, or --quantization int8/int4: weight-only CPU kernels), or
    # "engine" (a transformers safetensors checkpoint read as stored by kernelfit's CPU engine)
    kind: str
    bits: int | None = None
    kv_bits: int | None = None
    method: str | None = None  # an on-the-fly quantizer the user (or bench) named; None: the catalog's pick

    def label(self) -> str:
        w = {"none": "unquantized", "otf": f"{self.bits}-bit" + (f" {self.method}" if self.method else ""), "pre": f"pre-quantized {self.bits}-bit",
             "dequantize": "dequantized", "requant": f"dequantized, re-quantized to {self.bits}-bit",
             "engine": "Q8_0 made at load on kernelfit's engine" if self.bits else
             "the checkpoint as stored on kernelfit's engine",
             "packed": f"packed int{self.bits}" if self.bits else "GGUF packed as stored"}[self.kind]
        return w + (f" + int{self.kv_bits} KV cache" if self.kv_bits else "")


@dataclass(frozen=True)
class QuantOption:
    method: str  # "none", "awq", "gptq", "bitsandbytes", "quanto", "dequantize"
    bits: int | None
    backend: str | None
    group_size: int | None
    kv_bits: int | None
    reason: str
    rejected: tuple[Rejected, ...] = ()
    install: str | None = None
    dequantize_first: bool = False  # load from the unpacked checkpoint (method "dequantize", or a re-quantization)
    passed_over_bits: int | None = None  # more bits that fit too but decode slower here (bench measures them)

    def __post_init__(self) -> None:  # a hook (tests reword every reason to prove no decision reads it)
        pass

    @property
    def memory_key(self) -> tuple[str, int, int | None] | None:
        return (self.method, self.bits, self.group_size) if self.method not in ("none", "dequantize") else None

    @property
    def packed(self) -> bool:
        """Weight-only packed CPU kernels run the weights (a GGUF file as stored, or --quantization int8/int4)."""
        return self.method in ("gguf", "packed")


def prequantized(model: ModelSpec):
    """The checkpoint's packed quantization (AWQ/GPTQ/fp8) that a kernel must run; None for dense or GGUF."""
    q = model.quantization
    return q if q is not None and q.prequantized else None


def ladder(model: ModelSpec, quantization: str, allow_dequantize: bool, dtype: str = "auto") -> list[Level]:
    if quantization == "q8_0":  # a safetensors checkpoint re-quantized at load on kernelfit's engine
        return [Level("engine", 8)]
    if quantization in PACKED_CHOICES:  # the packed CPU kernels; on an accelerator, its quantizer of those bits
        bits = PACKED_CHOICES[quantization]
        return [Level("packed", bits), Level("otf", bits), Level("otf", bits, KV_BITS)]
    levels = _dense_ladder(model, quantization, allow_dequantize)
    if model.format == "gguf" and quantization == "auto":
        # the file as stored first (it resolves on CPU placements only); elsewhere it is dequantized as before
        return [Level("packed"), *levels]
    if model.format == "safetensors" and quantization == "auto" and len(model.sub_models) == 1 and \
            dtype in ("auto", "bfloat16"):
        # kernelfit's engine reads the checkpoint itself (CPU placements, the architectures it covers; it keeps the
        # checkpoint's own 16-bit weights, so a --dtype float32/float16 asks for transformers); else transformers
        return [Level("engine"), *levels]
    return levels


def _dense_ladder(model: ModelSpec, quantization: str, allow_dequantize: bool) -> list[Level]:
    pre = prequantized(model)
    if pre is not None:
        levels = [Level("pre", pre.bits), Level("pre", pre.bits, KV_BITS)]
        if allow_dequantize:  # unpacked, then the dense ladder: 8-bit, 4-bit, each with and without an int4 KV cache
            levels += [Level("dequantize"), Level("requant", 8), Level("requant", 8, KV_BITS), Level("requant", 4),
                       Level("requant", 4, KV_BITS)]
        return levels
    if quantization == "none":
        return [Level("none")]
    if quantization in QUANT_CHOICES[2:]:
        method, _, size = quantization.rpartition("-")
        bits = int(size[0])
        return [Level("otf", bits, None, method or None), Level("otf", bits, KV_BITS, method or None)]
    return [Level("none"), Level("none", None, KV_BITS), Level("otf", 8), Level("otf", 8, KV_BITS),
            Level("otf", 4), Level("otf", 4, KV_BITS)]


def _pick(candidates, devices: list[Device], machine: Machine, dtype: str, bits: int, **shape):
    """Best backend valid on every device: installed ones first, then by priority."""
    rejected, runnable = [], []
    for b in sorted(candidates, key=lambda b: -b.priority):
        reasons: list[str] = []
        for d in devices:
            for r in why_not_backend(b, d, machine.software, dtype, bits, check_package=False, **shape):
                if r not in reasons:
                    reasons.append(r)
        if reasons:
            rejected.append(_rejected(b, RejectKind.NOT_RUNNABLE, "; ".join(reasons)))
        else:
            runnable.append(b)
    missing = {id(b): missing_packages(b, machine.software) for b in runnable}
    installed = [b for b in runnable if not missing[id(b)]]
    chosen = (installed or runnable or [None])[0]
    for b in runnable:
        if b is chosen:
            continue
        if missing[id(b)]:
            rejected.append(_rejected(b, RejectKind.NOT_INSTALLED,
                                      f"runs here, but package {', '.join(missing[id(b)])} is not installed",
                                      install=_install(b, machine)))
        else:
            rejected.append(_rejected(b, RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                      f"runs here, but {chosen.name} comes first (priority {chosen.priority} > {b.priority})"))
    return chosen, rejected


def _rejected(b, kind: RejectKind, reason: str, install: str | None = None) -> Rejected:
    return Rejected(f"{b.method}:{b.name}", kind, reason, install=install, method=b.method, backend=b.name)


def _install(b, machine: Machine) -> str | None:
    """The command(s) that install what `b` is missing here, or None."""
    return " && ".join(install_hint(p) for p in missing_packages(b, machine.software)) or None


def _kv(level: Level, machine: Machine) -> tuple[str | None, list[str]]:
    if not level.kv_bits:
        return None, []
    if machine.software.has_package("optimum-quanto"):
        return None, [f"int{level.kv_bits} KV cache (transformers QuantizedCache, quanto backend)"]
    return install_hint("optimum-quanto"), [f"int{level.kv_bits} KV cache (transformers QuantizedCache, needs optimum-quanto)"]


def resolve_level(level: Level, model: ModelSpec, devices: list[Device], machine: Machine, dtype: str) -> QuantOption | Rejected:
    """A concrete option for this level on these devices, or why there is none."""
    kv_install, kv_note = _kv(level, machine)
    where = "+".join(d.torch_device for d in devices)
    if level.kind == "packed":
        return _packed(level, model, devices, machine, where)
    if level.kind == "engine":
        return _engine(level, model, devices, machine, where)
    arch = model.extra.get("gguf_arch")
    if model.format == "gguf" and level.kind != "packed" and arch not in TRANSFORMERS_GGUF_ARCHS:
        # every other level loads through transformers' GGUF dequantization
        return Rejected(f"gguf:{level.label()} on {where}", RejectKind.NOT_RUNNABLE,
                        f"transformers has no GGUF loader for architecture '{arch}', so the file cannot be "
                        "dequantized for it; it runs only on kernelfit's packed CPU engine", method=level.kind)
    if level.kind == "none":
        return QuantOption("none", None, None, None, level.kv_bits,
                           "; ".join(["dense weights in the compute dtype", *kv_note]), install=kv_install)
    if level.kind == "dequantize":
        pre = prequantized(model)
        return QuantOption("dequantize", None, None, None, None,
                           f"--allow-dequantize: the {pre.method} weights are unpacked to {dtype} on load",
                           dequantize_first=True)
    if level.kind == "pre":
        pre = prequantized(model)
        cands = [b for b in PREQUANTIZED if b.method == pre.method]
        chosen, rejected = _pick(cands, devices, machine, dtype, pre.bits, group_size=pre.group_size,
                                 sym=pre.sym, fmt=pre.format if pre.method == "awq" else None)
        if chosen is None:
            return Rejected(f"{pre.method} on {where}", RejectKind.NOT_RUNNABLE,
                            f"no {pre.method} kernel runs on {where} in {dtype}: "
                            + " | ".join(f"{r.name}: {r.reason}" for r in rejected), method=pre.method)
        install = _install(chosen, machine)
        why = (f"{pre.method} {pre.bits}-bit checkpoint: {chosen.name} is the fastest {pre.method} kernel that "
               f"runs on {where} in {dtype}")
        if install:
            why += f" (install it: {install})"
        return QuantOption(pre.method, pre.bits, chosen.name, pre.group_size, level.kv_bits,
                           "; ".join([why, *kv_note]), tuple(rejected), install or kv_install)
    cands = [b for b in ON_THE_FLY if level.bits in b.bits and level.method in (None, b.method)]
    chosen, rejected = _pick(cands, devices, machine, dtype, level.bits)
    if chosen is None:
        return Rejected(f"{level.bits}-bit on {where}", RejectKind.NOT_RUNNABLE, "no quantizer runs here: "
                        + " | ".join(f"{r.name}: {r.reason}" for r in rejected))
    install = _install(chosen, machine)
    why = f"quantized on load to {level.bits}-bit with {chosen.method} {chosen.name}"
    if level.kind == "requant":
        why = f"--allow-dequantize: the {prequantized(model).method} weights are unpacked, then {why}"
    if install:
        why += f" (install it: {install})"
    return QuantOption(chosen.method, level.bits, chosen.name, 64 if chosen.method == "bitsandbytes" else 128,
                       level.kv_bits, "; ".join([why, *kv_note]), tuple(rejected), install or kv_install,
                       dequantize_first=level.kind == "requant")


def quantization_config(q: QuantOption, dtype: str) -> dict | None:
    """The quantization_config for from_pretrained, as plain data (runtime builds the objects)."""
    if q.method == "bitsandbytes":
        if q.bits == 8:
            return {"quant_method": "bitsandbytes", "load_in_8bit": True}
        return {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": dtype}
    if q.method == "quanto":
        return {"quant_method": "quanto", "weights": f"int{q.bits}"}
    if q.method in ("fp8", "compressed-tensors"):
        return None  # the checkpoint's own quantization_config drives transformers' FP8Linear / CompressedLinear
    if q.method in PREQUANTIZED_METHODS:
        return {"quant_method": q.method, "backend": hf_backend_name(q.method, q.backend)}
    return None


def generation_config(q: QuantOption) -> dict:
    if q.kv_bits:
        return {"cache_implementation": "quantized", "cache_config": {"backend": "quanto", "nbits": q.kv_bits}}
    return {}


def otf_choice(q: QuantOption | None) -> str:
    """The --quantization value that reproduces an on-the-fly option ("none" when there is none; "gguf" for
    a GGUF file run packed and "engine" for a safetensors checkpoint on kernelfit's engine, which
    `--quantization auto` gives on a CPU)."""
    if q is None:
        return "none"
    if q.method in ("bitsandbytes", "quanto"):
        return f"{q.method}-{q.bits}bit"
    if q.method == "packed":
        return f"int{q.bits}"
    if q.method == "engine" and q.bits:
        return "q8_0"
    return q.method if q.method in ("gguf", "engine") else "none"


def quantization_preference(model: ModelSpec, static: str, choice: str, static_choice: str = "none") -> str:
    """The --quantization preference that plans `choice` (an otf_choice value) for `model`, whose static plan
    was made with preference `static` and gave `static_choice`: "none" keeps the static preference for dense models
    (their "auto" is unquantized when they fit) but means "dequantized" for a GGUF file and "through transformers"
    where the static plan ran the engine; "gguf" and "engine" are what "auto" gives."""
    if choice in ("gguf", "engine"):
        return "auto"
    if choice == "none":
        return "none" if model.format == "gguf" or static_choice == "engine" else static
    return choice



def _packed(level: Level, model: ModelSpec, devices: list[Device], machine: Machine, where: str) -> QuantOption | Rejected:
    """The weight-only packed CPU path: a GGUF file as stored (level.bits None), or a dense checkpoint packed
    to int8/int4 on load."""
    name = "gguf:packed-cpu" if level.bits is None else f"packed:int{level.bits}"
    isa = packed_cpu(devices, machine.cpu)
    if isa is None:
        on = "a GPU" if any(d.is_accelerator for d in devices) else f"{where} (no AVX2/AVX-512)"
        why = (f"the packed weight-only kernels are CPU kernels; on {on} the GGUF file is dequantized to the compute "
               f"dtype and runs as a dense model" if level.bits is None else
               f"--quantization int{level.bits} uses the packed weight-only CPU kernels; they do not run on {on}")
        return Rejected(name, RejectKind.NOT_RUNNABLE, why, method=name.split(":")[0], backend="packed-cpu")
    if level.bits is None:
        types = tuple(model.extra.get("gguf_numel_by_type") or ())
        reasons = why_not_packed_gguf(model.extra.get("gguf_arch"), types, model.extra.get("gguf_rope_scaling"))
        if reasons:
            return Rejected(name, RejectKind.NOT_RUNNABLE, "; ".join(reasons) + "; the file is dequantized instead",
                            method="gguf", backend="packed-cpu")
        layouts = sorted({f"{dot_codes(t)} ({t})" for t in types})
        return QuantOption("gguf", None, "packed-cpu", 32, None,
                           f"the {model.quantization.format} file runs as stored on the {isa}: no float copy; its blocks "
                           "tiled once into the user's cache and read from it on later loads; "
                           f"its own groups, exact ({', '.join(layouts)}) — where no C++ compiler builds the dot "
                           f"products, torch's int4 kernel and int8 per row re-gridded (bf16 over "
                           f"{REGRID_MAX_ERROR:.0%} error)")
    if model.format == "gguf" or prequantized(model) is not None:
        return Rejected(name, RejectKind.NOT_RUNNABLE, f"--quantization int{level.bits} packs a dense checkpoint; "
                        f"{model.name} is already quantized ({model.quantization.label()})", method="packed")
    return QuantOption("packed", level.bits, "packed-cpu", 32 if level.bits == 4 else None, None,
                       f"--quantization int{level.bits}: every linear layer packed on load to "
                       + ("int4 group-32 (asymmetric min/max)" if level.bits == 4 else "int8 per row (symmetric)")
                       + f" for torch's weight-only CPU kernels on the {isa}; a quality loss you asked for")


def _activations(pre) -> str:
    """What the engine does with activations a compressed-tensors checkpoint was calibrated to quantize."""
    if not pre.activations:
        return ""
    return (f" (its config quantizes activations, {pre.activations}; the engine keeps them as its products always "
            "do: float32, in 8-bit digits per 32 for the dot products)")


def _engine(level: Level, model: ModelSpec, devices: list[Device], machine: Machine,
            where: str) -> QuantOption | Rejected:
    """A transformers safetensors checkpoint on kernelfit's CPU engine (engine/safetensors/reader.py), as stored or
    (level.bits 8, --quantization q8_0) re-quantized at load, or why not."""
    name = "engine:kernelfit-cpu"
    if level.bits and (model.format != "safetensors" or prequantized(model) is not None):
        return Rejected(name, RejectKind.NOT_RUNNABLE, f"--quantization q8_0 re-quantizes a dense safetensors "
                        f"checkpoint; {model.name} is " + (f"a {model.format} file" if model.format != "safetensors"
                                                           else f"already quantized ({model.quantization.label()})"),
                        method="engine", backend="kernelfit-cpu")
    isa = packed_cpu(devices, machine.cpu)
    if isa is None:
        on = "a GPU" if any(d.is_accelerator for d in devices) else f"{where} (no AVX2/AVX-512)"
        return Rejected(name, RejectKind.NOT_RUNNABLE, f"kernelfit's engine runs on CPUs with AVX2; on {on} "
                        "transformers loads the checkpoint", method="engine", backend="kernelfit-cpu")
    # a multimodal config whose text model the engine reads alone (TEXT_OF_VLM) is judged by that model's type
    kind = model.text.model_type if model.model_type in TEXT_OF_VLM else model.model_type
    reasons = why_not_engine_checkpoint(kind, model.checkpoint_dtype, model.extra.get("rope_type"),
                                        model.quantization, model.extra.get("engine_tensors"))
    if reasons:
        return Rejected(name, RejectKind.NOT_RUNNABLE, "; ".join(reasons) + "; transformers loads it instead",
                        method="engine", backend="kernelfit-cpu")
    if level.bits:
        return QuantOption("engine", 8, "kernelfit-cpu", 32, None,
                           f"--quantization q8_0: each linear weight re-quantized at load into llama.cpp's Q8_0 "
                           f"blocks (int8 per 32 with a float16 scale: 1.06 bytes a weight instead of 2), run by the "
                           f"exact dot products on the {isa}; lossy, a quality loss you asked for "
                           f"({ENGINE_Q8_0_LOSS})")
    pre = prequantized(model)
    if pre is not None and pre.float_values:
        return QuantOption("engine", None, "kernelfit-cpu", None, None,
                           f"the checkpoint's {pre.label()} weights on kernelfit's CPU engine ({isa}): "
                           f"{ENGINE_FP8_NOTE}; the architecture from config.json" + _activations(pre)
                           + "; --quantization none loads it through transformers instead")
    if pre is not None:
        sym = pre.method in ("gptq", "compressed-tensors") and bool(pre.sym)
        return QuantOption("engine", None, "kernelfit-cpu", pre.group_size, None,
                           f"the checkpoint's {pre.label()} weights run as stored on kernelfit's CPU engine ({isa}): "
                           f"its codes and scales (float16; float32 where float16 cannot hold them) become the exact dot products' groups (of 128 where its "
                           f"groups split into 128s, else of 32) — no dequantization"
                           + (" (symmetric: exact)" if sym else
                              "; each group's zero x scale is kept as a float16 minimum, its rounding measured per "
                              "tensor")
                           + ("; act-order (g_idx): each product's codes read in group order and its input gathered "
                              "the same way, exact" if pre.act_order else "")
                           + "; the architecture from config.json" + _activations(pre)
                           + "; --quantization none runs it " + ("through transformers" if pre.method ==
                                                                  "compressed-tensors" else
                                                                  "on gptqmodel's kernels through transformers")
                           + " instead")
    return QuantOption("engine", None, "kernelfit-cpu", None, None,
                       f"the checkpoint's {model.checkpoint_dtype} weights run on kernelfit's CPU engine ({isa}): "
                       "read from the safetensors shards as bf16 / float16 rows exactly as stored (float32 rounded "
                       "to bf16 once), the architecture from config.json"
                       + (f" as the GGUF keys and tensors of llama.cpp's {CONVERTED_CHECKPOINT_ARCHS[kind]} "
                          "(its converter's layout, read in place: no file written)" if kind in CONVERTED_CHECKPOINT_ARCHS
                          else "")
                       + (f" (its {model.text.config_key} alone: the vision tower is not run, images are not read)"
                          if model.model_type in TEXT_OF_VLM else "")
                       + ", float32 activations, the KV cache of the plan's KV cache row; "
                       "--quantization none loads it through transformers instead")
