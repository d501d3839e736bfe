"""Attention implementations: where each runs, as data, and why it would not.

Each backend is one row; `why_not(backend, query)` answers with a list of short reasons (empty
means it runs), like vLLM's `validate_configuration`. Names are transformers'
`attn_implementation` names. No torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..hardware.capability import (
    SM50_MAXWELL,
    SM70_FP16_TENSOR_CORES,
    SM80_AMPERE,
    SM90_HOPPER,
    SM100_BLACKWELL_DC,
    SM121_SDPA_MAX,
    Capability,
)
from ..hardware.machine import Device, Software
from .dtypes import DTYPES, HALF
from .gates import hardware_gate
from .versions import version_at_least

ALL_DTYPES = frozenset(DTYPES)

# Feature names a model can need (ModelSpec -> AttentionQuery.features).
SLIDING_WINDOW = "sliding_window"
SOFTCAP = "softcap"
OUTPUT_ATTENTIONS = "output_attentions"
NON_CAUSAL = "non_causal"  # vision towers, encoders
# Masks a call can carry that some kernels cannot honour (the dispatcher sees them per call):
FLOAT_MASK = "float_mask"  # an additive float mask with learned biases or per-head values (Doge, MiniMax-M3)
SPARSE_SELECTION = "sparse_selection"  # indexer-selected keys (DeepSeek-V3.2 `indices`, MiniMax-M3 `block_indices`)
# FlashAttention takes a 2D padding mask at most: biases and per-query key selections cannot be expressed
_FLASH_MASK_LIMITS = frozenset({FLOAT_MASK, SPARSE_SELECTION})
PLAIN_GENERATE = "plain_generate"  # ordinary model.generate / forward (no paged cache)


@dataclass(frozen=True)
class AttentionQuery:
    device: Device
    software: Software
    dtype: str
    head_dim: int
    features: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    summary: str
    platforms: frozenset[str]
    dtypes: frozenset[str] = ALL_DTYPES
    min_cc: Capability | None = None  # NVIDIA only
    max_cc: Capability | None = None  # inclusive
    rocm_archs: frozenset[str] | None = None  # None: any AMD arch
    max_head_dim: int | None = None
    package: str | None = None  # distribution that must be installed
    min_package_version: str | None = None
    min_torch: str | None = None
    unsupported: frozenset[str] = frozenset()  # features it cannot honour
    sources: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)  # feature -> why unsupported


BACKENDS: dict[str, AttentionBackend] = {b.name: b for b in (
    AttentionBackend(
        name="flash_attention_4",
        summary="FlashAttention-4 (CuTeDSL), Hopper and datacenter Blackwell",
        platforms=frozenset({"cuda"}), dtypes=HALF,
        min_cc=SM90_HOPPER, max_cc=Capability(10, 3), max_head_dim=128,
        package="flash-attn-4", unsupported=frozenset({OUTPUT_ATTENTIONS}) | _FLASH_MASK_LIMITS,
        sources=("fa4-pypi", "vllm-fa-utils", "transformers-attn-interface"),
    ),
    AttentionBackend(
        name="flash_attention_3",
        summary="FlashAttention-3, Hopper only",
        platforms=frozenset({"cuda"}), dtypes=HALF,
        min_cc=SM90_HOPPER, max_cc=SM90_HOPPER, max_head_dim=256,
        package="flash-attn-3", unsupported=frozenset({OUTPUT_ATTENTIONS}) | _FLASH_MASK_LIMITS,
        sources=("fa3-readme", "transformers-fa3-gate"),
    ),
    AttentionBackend(
        name="flash_attention_2",
        summary="FlashAttention-2 (flash-attn package)",
        platforms=frozenset({"cuda", "rocm"}), dtypes=HALF,
        min_cc=SM80_AMPERE, max_head_dim=256,
        rocm_archs=frozenset({"gfx90a", "gfx942", "gfx950"}),
        package="flash-attn", min_package_version="2.1.0",
        unsupported=frozenset({OUTPUT_ATTENTIONS}) | _FLASH_MASK_LIMITS,
        sources=("fa2-readme", "fa2-rocm", "transformers-fa2-nocheck"),
    ),
    AttentionBackend(
        name="sdpa",
        summary="torch.nn.functional.scaled_dot_product_attention (picks flash / mem-efficient / cuDNN / math inside)",
        platforms=frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}),
        min_torch="2.1.2", unsupported=frozenset({OUTPUT_ATTENTIONS, SOFTCAP}),
        sources=("torch-sdp-utils", "torch-sdpa-cpu"),
        notes={SOFTCAP: "SDPA has no logit soft-capping; transformers would compute a different result"},
    ),
    AttentionBackend(
        name="flex_attention",
        summary="torch flex_attention, compiled by Inductor (Triton on GPU, C++ on CPU)",
        platforms=frozenset({"cuda", "cpu"}),
        min_cc=SM70_FP16_TENSOR_CORES, min_torch="2.5.0",
        unsupported=frozenset({OUTPUT_ATTENTIONS}),
        sources=("torch-flex", "inductor-triton-gate"),
    ),
    AttentionBackend(
        name="paged|eager",
        summary="eager over a paged KV cache (transformers continuous batching / generate_batch only)",
        platforms=frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}),
        unsupported=frozenset({PLAIN_GENERATE}),
        sources=("transformers-attn-interface",),
        notes={PLAIN_GENERATE: "only for continuous batching (generate_batch / serving), not model.generate"},
    ),
    AttentionBackend(
        name="eager",
        summary="matmul + softmax in Python (transformers' reference; materialises the full score matrix)",
        platforms=frozenset({"cuda", "rocm", "cpu", "mps", "xpu"}),
        sources=("transformers-eager",),
    ),
)}

# Priority is data: the first backend with no reasons against it wins. Keys are device
# families; `priority_for` maps a device to one.
# A decode step on a CPU (one query token) against a long KV cache: PyTorch's CPU flash-attention
# kernel walks the keys block by block on one thread per head, and at 4,000 cached keys takes 11x
# longer than two grouped matmuls and a softmax (1,836 vs 159 us per SmolLM2 layer; 57 vs 59 us at
# 128 keys, the crossover) — source: kernelfit-cpu-decode-attn. The dispatcher switches at:
CPU_DECODE_MATMUL_MIN_KEYS = 128
CPU_DECODE_UNHANDLED = frozenset({SLIDING_WINDOW, SOFTCAP, OUTPUT_ATTENTIONS})  # the grouped-matmul kernel's limits



def cpu_decode_attention(devices: list[Device], features) -> str | None:
    """Why the dispatcher specialises long one-query CPU calls, or None where it does not."""
    if not any(d.kind == "cpu" for d in devices) or set(features) & CPU_DECODE_UNHANDLED:
        return None
    return (f"one-query steps over >= {CPU_DECODE_MATMUL_MIN_KEYS} cached keys use grouped matmuls instead of "
            "SDPA's CPU flash kernel (11x faster at 4k keys; through the kernelfit dispatcher)")


PRIORITY: dict[str, tuple[str, ...]] = {
    "cuda-sm100": ("flash_attention_4", "flash_attention_2", "sdpa", "flex_attention", "eager"),
    "cuda-sm90": ("flash_attention_3", "flash_attention_2", "flash_attention_4", "sdpa", "flex_attention", "eager"),
    "cuda": ("flash_attention_2", "sdpa", "flex_attention", "eager"),
    "rocm": ("flash_attention_2", "sdpa", "eager"),
    "cpu": ("sdpa", "flex_attention", "eager"),
    "mps": ("sdpa", "eager"),
    "xpu": ("sdpa", "eager"),
}


def device_family(device: Device) -> str:
    cap = device.compute_capability
    if device.kind == "cuda" and cap is not None:
        if SM100_BLACKWELL_DC <= cap < Capability(11, 0):
            return "cuda-sm100"
        if cap.major == 9:
            return "cuda-sm90"
    return device.kind if device.kind in PRIORITY else "cpu"


def priority_for(device: Device) -> tuple[str, ...]:
    return PRIORITY[device_family(device)]


def why_not(backend: AttentionBackend, q: AttentionQuery, check_package: bool = True) -> list[str]:
    """Short reasons this backend cannot run the query; [] when it can. `check_package=False` leaves
    out what an install would fix (the support matrix marks that apart)."""
    d = q.device
    reasons = hardware_gate(d, backend.platforms, backend.min_cc, backend.max_cc)
    if d.kind not in backend.platforms:
        return reasons
    if d.kind == "rocm" and backend.rocm_archs is not None and d.arch not in backend.rocm_archs:
        reasons.append(f"ROCm build supports {', '.join(sorted(backend.rocm_archs))}; {d.name} is {d.arch}")
    if q.dtype not in backend.dtypes:
        reasons.append(f"supports {' and '.join(sorted(backend.dtypes))} only, not {q.dtype}")
    if backend.max_head_dim and q.head_dim > backend.max_head_dim:
        reasons.append(f"head_dim {q.head_dim} is over its maximum {backend.max_head_dim}")
    for feature in sorted(q.features & backend.unsupported):
        reasons.append(backend.notes.get(feature, f"does not support {feature.replace('_', ' ')}"))
    if check_package:
        reasons += [why for _, why in package_gaps(backend, q.software, d.kind)]
    if backend.min_torch:
        tv = q.software.torch
        if tv is None:
            reasons.append("torch is not installed")
        elif not version_at_least(tv, backend.min_torch):
            reasons.append(f"needs torch >= {backend.min_torch}, found {tv}")
    return reasons


def package_gaps(backend: AttentionBackend, software: Software, device_kind: str) -> list[tuple[str, str]]:
    """(distribution, why) for each package the backend needs here that is missing or too old."""
    gaps = []
    if backend.package:
        version = software.package_version(backend.package)
        if version is None:
            gaps.append((backend.package, f"package {backend.package} is not installed"))
        elif backend.min_package_version and not version_at_least(version, backend.min_package_version):
            gaps.append((backend.package, f"needs {backend.package} >= {backend.min_package_version}, found {version}"))
    if backend.name == "flex_attention" and device_kind == "cuda" and not software.has_package("triton"):
        gaps.append(("triton", "package triton is not installed (flex_attention compiles to Triton on GPUs)"))
    return gaps


def sdpa_kernels(q: AttentionQuery, masked: bool = True) -> list[tuple[str, list[str]]]:
    """Which of SDPA's own kernels apply, each with its reasons against (PyTorch sdp_utils.cpp).

    `masked`: transformers passes an explicit mask for padding/sliding window; SDPA's flash
    kernel takes none (it then picks mem-efficient), unless the call is purely causal.
    """
    d, cap = q.device, q.device.compute_capability
    if d.kind == "cpu":
        return [("flash (CPU)", []), ("math", [])]
    if d.kind != "cuda" or cap is None:
        return [("math", [])]
    out = []
    flash: list[str] = []
    if not (SM80_AMPERE <= cap <= SM121_SDPA_MAX):
        flash.append(f"needs sm80..sm121, device is {cap.sm}")
    if q.dtype not in HALF:
        flash.append("fp16/bf16 only")
    if q.head_dim > 256 or q.head_dim % 8:
        flash.append("head_dim must be a multiple of 8 and <= 256")
    if masked:
        flash.append("takes no arbitrary attention mask (used for causal calls without padding)")
    out.append(("flash", flash))
    eff: list[str] = []
    if cap < SM50_MAXWELL or cap > SM121_SDPA_MAX:
        eff.append(f"needs sm50..sm121, device is {cap.sm}")
    if q.dtype == "bfloat16" and cap < SM80_AMPERE:
        eff.append("bf16 only on sm80+")
    out.append(("mem_efficient", eff))
    cudnn: list[str] = []
    if not (SM80_AMPERE <= cap <= SM121_SDPA_MAX):
        cudnn.append(f"needs sm80..sm121, device is {cap.sm}")
    out.append(("cudnn", cudnn))
    out.append(("math", []))
    return out
