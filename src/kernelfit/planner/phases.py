"""Per-phase kernels for packed weights: decode (one row per step) and prefill (the prompt's rows).

Decode always reads the packed weights: one-row products are 2.4-3.2x faster packed than bf16 on the
reference CPU. Prefill is a trade-off (catalog/packed_kernels.py): the same packed weights (unpacked to
bf16 for each call) keep the memory of the file; a bf16 copy of the layer weights kept for prefill skips the
unpacking (DENSE_GAIN) for 2 bytes per weight more. The plan keeps the file's memory unless asked
(`--prefill dense`) — or unless `kernelfit bench` measured the copy faster end to end and the tune cache says so.
A GGUF file on an AVX512-BF16 CPU prefills through kernelfit's bf16 panel GEMM (the groups unpacked into the core's
cache, not memory): there the copy is slower, not a trade-off. A GGUF file on an AVX512-VNNI CPU may also prefill
through an int8 GEMM over its codes (`--prefill int8`), at llama.cpp's activation precision, so only when asked
(never by bench: it trades quality, not memory) — a trade-off where it is faster, slower where the panels run.

Pure: no torch.
"""

from __future__ import annotations

from dataclasses import replace

from ..catalog.packed_kernels import (DECODE_KERNELS, DENSE_VS_PANEL, DRAFT_MODEL_DECODE, FLOAT, GGUF_DECODE,
                                      GGUF_GROUPS, HYBRID_DECODE,
                                      INT8_PREFILL_GAIN, INT8_PREFILL_ISA, INT8_PREFILL_LOSS, INT8_PREFILL_SOURCES, INT8_VS_PANEL,
                                      PANEL_PREFILL_GAIN, PANEL_PREFILL_ISA, PANEL_PREFILL_SOURCES, PREFILL_DENSE,
                                      AMX_DENSE_GAIN, AMX_PREFILL_GAIN, AMX_PREFILL_ISA, AMX_PREFILL_SOURCES, AMX_VS_INT8,
                                      PREFILL_PANEL_AMX,
                                      PREFILL_INT8, PREFILL_PACKED, PREFILL_PANEL, ROPE_SCALING_SOURCES, SOURCES)
from ..catalog.kv_cache import KV_CACHE_KINDS, why_not_kv_cache
from ..catalog.kv_cache import SOURCES as KV_SOURCES
from ..hardware.machine import Cpu
from ..model.params import checkpoints_kept
from ..model.spec import ModelSpec
from .memory import MemoryEstimate, gib
from .types import Choice, ChoiceKind, Preferences, RejectKind, Rejected

PREFILL_CHOICES = ("auto", "packed", "dense", "int8")
# measured on the reference CPU (benchmarks/results/llamacpp-report.md): the copy saves unpacking each product per
# call (C++ dot path: ~10% of a prompt, and the one-matrix-per-layer unpack made up the rest) or torch's int4
# kernel, compute-bound at 256 rows (no compiler)
DENSE_GAIN = ("256-token prefill on the reference CPU: within noise of unpacking per call where kernelfit's C++ "
              "kernels are built (SmolLM2 0.99-1.04x, Gemma 3 270M 0.98-1.07x over three runs), 2.1x torch's int4 "
              "kernel where they are not")


def dense_copy_bytes(model: ModelSpec, bits: int | None) -> int:
    """bf16 bytes of the layer weights a prefill copy holds (not the embedding; the output head runs on
    one row even in prefill)."""
    t = model.text
    embedding = (t.vocab_size or 0) * t.hidden_size * (1 if t.tie_embeddings else 2)
    if bits is None:
        by_type = model.extra.get("gguf_numel_by_type") or {}
        quantized = sum(n for ty, n in by_type.items() if ty not in FLOAT)
    else:
        quantized = model.params
    return max(quantized - embedding, 0) * 2


def int8_prefill_rejection(q, cpu: Cpu | None) -> Rejected | None:
    """Why the int8 prefill GEMM cannot run (a GGUF file's codes, an AVX512-VNNI CPU), or None when it can."""
    if q.bits is not None:
        return Rejected("int8", RejectKind.NOT_RUNNABLE, "the int8 prefill GEMM reads a GGUF file's own groups; "
                        "this checkpoint is quantized on the fly")
    if cpu is None or not cpu.has(INT8_PREFILL_ISA):
        return Rejected("int8", RejectKind.NOT_RUNNABLE, f"the int8 prefill GEMM needs {INT8_PREFILL_ISA} "
                        "(Ice Lake / Zen 4 or newer)")
    return None


def panel_prefill(q, cpu: Cpu | None) -> bool:
    """Whether a prompt's products run through the bf16 panel GEMM: a GGUF file's own groups (the C++ dot path) on a
    CPU with AVX512-BF16."""
    return q.bits is None and cpu is not None and cpu.has(PANEL_PREFILL_ISA)


def amx_prefill(cpu: Cpu | None) -> bool:
    """Whether the panels run on AMX tiles (the engine asks Linux for them at run time; refused, it keeps the
    AVX512-BF16 kernel)."""
    return cpu is not None and cpu.has(AMX_PREFILL_ISA) and cpu.has("amx_tile")


def phase_kernels(model: ModelSpec, prefs: Preferences, q, memory: MemoryEstimate,
                  cpu: Cpu | None = None) -> tuple[dict[str, Choice], MemoryEstimate]:
    """{"decode": Choice, "prefill": Choice} for a packed plan (and its memory with a prefill copy); ({}, memory)
    otherwise. `cpu`: the placement's CPU (its ISA decides the int8 prefill GEMM)."""
    if q is None or not q.packed:
        return {}, memory
    kernels = GGUF_DECODE if q.bits is None else DECODE_KERNELS[f"int{q.bits}"]
    if model.text.recurrent_layers and q.bits is None:  # a hybrid's state keeps a rejected draft (engine/recurrent.py)
        kernels = HYBRID_DECODE
    if prefs.draft_model and q.bits is None:
        kernels = GGUF_GROUPS + DRAFT_MODEL_DECODE.format(name=prefs.draft_model)
    # a scaled rotary (Llama 3.x's rope_freqs, YaRN, linear) runs the maths its sources define (engine/recipe.py)
    scaled = q.bits is None and model.extra.get("gguf_rope_scaling") is not None
    decode = Choice("packed", ChoiceKind.PRIORITY,
                    f"one-row products read the packed weights: {kernels} — 2.4-3.2x faster than bf16 at one row "
                    "on the reference CPU", sources=SOURCES + (ROPE_SCALING_SOURCES if scaled else ()) +
                    (("hybrid-layers",) if model.text.recurrent_layers else ()))
    # a GGUF file's groups on an AVX512-BF16 CPU: the bf16 panel GEMM, which the copy and the int8 GEMM do not beat;
    # on AMX the panels run on the tiles, where a bf16 copy's products are faster (a memory trade-off)
    panel = panel_prefill(q, cpu)
    tiles = panel and amx_prefill(cpu)
    packed_how, packed_sources = ((PREFILL_PANEL_AMX, AMX_PREFILL_SOURCES) if tiles else
                                  (PREFILL_PANEL, PANEL_PREFILL_SOURCES) if panel else (PREFILL_PACKED, SOURCES))
    panel_gain = AMX_PREFILL_GAIN if tiles else PANEL_PREFILL_GAIN
    no_int8 = int8_prefill_rejection(q, cpu)
    int8_gain = AMX_VS_INT8 if tiles else INT8_VS_PANEL if panel else INT8_PREFILL_GAIN
    int8_alt = no_int8 or Rejected("int8", RejectKind.SLOWER_HERE if panel else RejectKind.TRADE_OFF,
                                   f"{PREFILL_INT8}: {int8_gain}, and lossy ({INT8_PREFILL_LOSS})" if panel else
                                   f"{PREFILL_INT8}: {int8_gain}, but lossy ({INT8_PREFILL_LOSS}): "
                                   "--prefill int8 to take it")
    if prefs.prefill == "int8" and no_int8 is None:
        prefill = Choice("int8", ChoiceKind.REQUESTED,
                         f"--prefill int8: {PREFILL_INT8}; {int8_gain}; lossy: {INT8_PREFILL_LOSS}",
                         (Rejected("packed", RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                   f"{packed_how}: bf16 activations" + ("" if panel else ", slower prompts")),),
                         INT8_PREFILL_SOURCES)
        return {"decode": decode, "prefill": prefill}, memory
    copy = dense_copy_bytes(model, q.bits)
    with_copy = replace(memory, weights=memory.weights + copy)
    copy_fits = with_copy.fits
    need, budget = gib(with_copy.total), gib(memory.budget)
    dense_gain = AMX_DENSE_GAIN if tiles else DENSE_VS_PANEL if panel else DENSE_GAIN
    if prefs.prefill == "dense" and copy_fits:
        prefill = Choice("dense", ChoiceKind.REQUESTED,
                         f"--prefill dense: {PREFILL_DENSE} of the layer weights (+{gib(copy):.2f} GiB), "
                         f"{dense_gain}", (Rejected("packed", RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                                    f"{packed_how}: less memory" + (", faster prompts here"
                                                                                    if panel and not tiles
                                                                                    else ", slower prompts")),
                                           int8_alt), SOURCES)
        return {"decode": decode, "prefill": prefill}, with_copy
    if not copy_fits:
        alt = Rejected("dense", RejectKind.DOES_NOT_FIT, f"a {PREFILL_DENSE} needs {need:.2f} GiB, budget "
                       f"{budget:.2f} GiB", needs_gib=need, budget_gib=budget)
    elif panel and not tiles:  # more memory and slower prompts: nothing to trade
        alt = Rejected("dense", RejectKind.SLOWER_HERE, f"a {PREFILL_DENSE} of the layer weights adds {gib(copy):.2f} "
                       f"GiB and is slower here ({dense_gain})", needs_gib=need, budget_gib=budget)
    else:
        alt = Rejected("dense", RejectKind.TRADE_OFF,
                       f"a {PREFILL_DENSE} of the layer weights skips the per-call unpacking ({dense_gain}) but adds "
                       f"{gib(copy):.2f} GiB (--prefill dense, or `kernelfit bench` to measure it)",
                       needs_gib=need, budget_gib=budget)
    why = f"{packed_how}: memory stays that of the file" + (f"; {panel_gain}" if panel else "")
    kind = ChoiceKind.PRIORITY
    if prefs.prefill == "packed":
        kind, why = ChoiceKind.REQUESTED, f"--prefill packed: {why}"
    elif prefs.prefill == "dense":
        why = f"--prefill dense does not fit: {why}"
    elif prefs.prefill == "int8":  # asked for, cannot run: say why in the choice itself
        why = f"--prefill int8 cannot run here ({no_int8.reason}): {why}"
    return {"decode": decode, "prefill": Choice("packed", kind, why, (alt, int8_alt), packed_sources)}, memory


def kv_cache_choice(model: ModelSpec, prefs: Preferences) -> Choice:
    """The engine's KV cache kind (catalog/kv_cache.py): float16 unless asked otherwise; Q8_0 only when asked (lossy)
    and where the head size is whole blocks of 32."""
    head_dim = model.text.head_dim
    f16, f32, q8 = (KV_CACHE_KINDS[k] for k in ("f16", "f32", "q8_0"))
    no_q8 = why_not_kv_cache("q8_0", head_dim)
    asked = prefs.kv_cache
    q8_alt = Rejected("q8_0", RejectKind.NOT_RUNNABLE, no_q8) if no_q8 else Rejected(
        "q8_0", RejectKind.TRADE_OFF, f"{q8.label} take {q8.bytes_per_value / f16.bytes_per_value:.2f}x float16's "
        f"bytes, lossy: {q8.loss} (--kv-cache q8_0 to take it)")
    f32_alt = Rejected("f32", RejectKind.RUNS_BUT_LOWER_PRIORITY, "twice float16's memory and bytes read a decode "
                       f"step, for no measured gain: float16 {f16.loss}")
    if asked == "f32":
        return Choice("f32", ChoiceKind.REQUESTED, "--kv-cache f32: float32 rows, the reference the others are "
                      "measured against", (Rejected("f16", RejectKind.RUNS_BUT_LOWER_PRIORITY, f"half the memory; "
                                                    f"{f16.loss}"), q8_alt), KV_SOURCES)
    if asked == "q8_0" and not no_q8:
        return Choice("q8_0", ChoiceKind.REQUESTED, f"--kv-cache q8_0: {q8.label} (a float16 scale and 32 int8 codes, "
                      f"{q8.bytes_per_value:.4g} bytes a value), lossy: {q8.loss}",
                      (Rejected("f16", RejectKind.RUNS_BUT_LOWER_PRIORITY,
                                f"{f16.bytes_per_value / q8.bytes_per_value:.2f}x the memory of Q8_0 blocks, and "
                                f"{f16.loss}"), f32_alt),
                      KV_SOURCES)
    why = (f"float16 rows, as llama.cpp's default: half of float32's memory and of the bytes a decode step reads at "
           f"long contexts; {f16.loss} (float32 where kernelfit's C++ step is not built: the TorchScript fallback's "
           "bf16 products leave near-ties that float16 keys can turn)")
    if asked == "f16":
        return Choice("f16", ChoiceKind.REQUESTED, f"--kv-cache f16: {why}{hybrid_state(model)}", (f32_alt, q8_alt),
                      KV_SOURCES)
    if asked == "q8_0":
        why = f"--kv-cache q8_0 cannot run here ({no_q8}): {why}"
    return Choice("f16", ChoiceKind.PRIORITY, why + hybrid_state(model), (f32_alt, q8_alt), KV_SOURCES)


def hybrid_state(model: ModelSpec) -> str:
    """What a hybrid's recurrent layers keep instead of keys and values ("" for a transformer)."""
    t = model.text
    if not t.recurrent_layers:
        return ""
    state = t.state_values * 4
    kept = checkpoints_kept(state)
    return (f"; only its {t.num_layers - t.recurrent_layers} attention layers keep keys and values: its "
            f"{t.recurrent_layers} {t.recurrent_kind} layers keep a state of {state / 1024:.0f} KiB a "
            f"sequence, whatever the context, and up to {kept} copies of it where prompts ended (checkpoints a next "
            f"turn or a shared prefix resumes from, {kept * state / 2**20:.1f} MiB; counted in the memory)")
