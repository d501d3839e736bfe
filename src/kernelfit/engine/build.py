"""Build the lean runner from a GGUF file (its recipe from the metadata, recipe.py: the keys follow llama.cpp's,
gguf-py constants.py Keys) or a transformers safetensors checkpoint (its recipe from config.json), weights packed
from the memory maps, modules compiled with TorchScript only where the
C++ step does not run every call.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..catalog.engine_checkpoints import why_not_engine_quant
from ..catalog.kv_cache import DEFAULT_KV_CACHE, why_not_kv_cache
from ..errors import UsageError
from ..model.quantization import parse_quantization
from ..model.gguf_header import read_gguf_header
from . import glibc
from .gguf.blocks import FLOAT_TYPES
from .recipe import FFN_NORM_NAMED_POST_ATTENTION, LayerKind, Recipe, RouterKind, recipe_from_config
from .recipe_gguf import recipe_from_gguf
from .gguf.reader import Conversion, GgufTensors, interleave_order, linear, regridded
from .tile_cache import FileArena, TileCacheMismatch, open_arena
from .safetensors.config_keys import config_header
from ..catalog.checkpoint_layout import text_config
from ..catalog.converted_checkpoints import CONVERTED_CHECKPOINT_ARCHS
from .safetensors.reader import SafetensorsTensors
from .kv_cache import KvCache
from .recurrent import State, check_position
from .weights import DotWeight, dot_available, gemm_available
from .reference import (BF16_ROWS, DENSE, DOT_KINDS, INT4, INT8, INT8_EXACT, Block, LeanLM, Product, Products,
                        dot_bits)
from .torch_weights import DenseWeight, Int4Weight, Int8Weight, PackedWeight

@dataclass
class LeanBuild:
    cfg: Recipe
    model: torch.nn.Module  # LeanLM, compiled by TorchScript unless the C++ path runs every call (build_lean)
    conversions: list[Conversion] = field(default_factory=list)
    weight_bytes: int = 0
    seconds: float = 0.0
    native: object = None  # lean_native.NativeArgs: the C++ decode step's arguments
    problems: list[str] = field(default_factory=list)  # damage seen while packing (GgufTensors.problems)
    int8_prefill: bool = False  # the layers' prompt products run the int8 GEMM (--prefill int8, on AVX512-VNNI)
    kv_cache: str = "f16"  # the KV cache's element kind (catalog/kv_cache.py; engine/kv_cache.py makes them)
    state: State | None = None  # the recurrent state of the build's own sequence (a hybrid's; kv_cache.reset_cache)
    scripted: bool = False  # `model` went through _script (TorchScript, or eager where it cannot script)


def product(w: PackedWeight, prefill_dense: bool = False, head: bool = False, int8_prefill: bool = False) -> Product:
    """A packed weight as a runner module; with prefill_dense, a bf16 copy for multi-row calls; with int8_prefill,
    a dot weight's multi-row calls take the int8 GEMM."""
    copy = None
    if prefill_dense and not isinstance(w, DenseWeight):
        copy = w.dequantize(bf16=True) if isinstance(w, DotWeight) else w.dequantize().to(torch.bfloat16)
    if isinstance(w, DotWeight):
        return Product(DOT_KINDS[w.format], w.codes, w.scale, w.out_features, copy, w.mins,
                       int8_prefill=int8_prefill and copy is None and w.group <= 32, perm=w.perm)
    if isinstance(w, Int4Weight):
        return Product(INT4, w.packed, w.scales_zeros, w.out_features, copy)
    if isinstance(w, Int8Weight):
        return Product(INT8_EXACT if head else INT8, w.weight, w.scale, w.out_features, copy)
    return Product(BF16_ROWS if dot_available() else DENSE, w.weight, torch.empty(0), w.out_features, None)


def build_lean(path: str | Path, prefill_dense: bool = False, progress=None, prefill_int8: bool = False,
               requant: str | None = None, kv_cache: str = "auto") -> LeanBuild:
    """Read `path`, pack its weights and compile the runner (~3 s for SmolLM2-135M on 2 cores). prefill_int8: the
    layers' prompt products through the int8 GEMM where this build has it (LeanBuild.int8_prefill says). requant
    "Q8_0": a safetensors checkpoint's weights re-quantized at load (--quantization q8_0). kv_cache: the KV cache's
    element kind (catalog/kv_cache.py; Q8_0 rows are read by the C++ kernels only); "auto": float16 where the C++
    step runs, float32 on the TorchScript fallback (SmolLM2's answer to the bundled question turned on float16 keys
    there: its bf16 int4 products leave the top two within rounding). A GGUF file's tiles are read from the user's
    tile cache where an earlier load left them (engine/tile_cache.py), else built and written into it."""
    try:
        return _build_lean(path, prefill_dense, progress, prefill_int8, requant, kv_cache, cached=True)
    except TileCacheMismatch:  # removed; never expected (the key holds the layout's code): build it again
        return _build_lean(path, prefill_dense, progress, prefill_int8, requant, kv_cache, cached=False)


def _build_lean(path, prefill_dense, progress, prefill_int8, requant, kv_cache, cached: bool) -> LeanBuild:
    t0 = time.perf_counter()
    map_large_allocations()
    exact = dot_available()
    if requant and (not exact or not Path(path).is_dir()):
        raise UsageError("--quantization q8_0 re-quantizes a safetensors checkpoint for the C++ dot products"
                         + ("" if exact else ", which no C++ compiler built here") + "; run it without the option")
    cfg, t, interleave = open_model(Path(path), requant)  # interleave: Q and K rows keep each head's rotary halves
    if kv_cache == "auto":
        from .native import native_module

        kv_cache = DEFAULT_KV_CACHE if native_module() is not None else "f32"
    why_kv = why_not_kv_cache(kv_cache, cfg.head_dim)
    if why_kv:
        raise UsageError(f"--kv-cache {kv_cache}: {why_kv}; use --kv-cache {DEFAULT_KV_CACHE}")
    why_kv = q8_0_cache_refusal(prefill_dense) if kv_cache == "q8_0" else None  # before packing, not after
    if why_kv:
        raise UsageError(why_kv)
    int8 = prefill_int8 and exact and gemm_available()
    if cached and exact and isinstance(t, GgufTensors):
        t.arena = open_arena(Path(path))
    replay = t.arena.replay
    if progress is not None:
        progress(f"{'reading the packed tiles of' if replay else 'packing'} {Path(path).name} for the CPU "
                 f"({cfg.layers} layers)")
    rot = cfg.rotary.dims  # a partial rotary: only the first rot dimensions of a head are paired
    q_order = interleave_order(cfg.heads * cfg.head_dim, cfg.head_dim, rot) if interleave else None
    k_order = interleave_order(cfg.kv_heads * cfg.head_dim, cfg.head_dim, rot) if interleave else None
    norm_order = torch.from_numpy(interleave_order(cfg.head_dim, cfg.head_dim, rot)) if interleave else None
    blocks, packed = [], []

    def optional(name: str) -> torch.Tensor | None:  # a norm some architectures have (gemma's post norms, and
        return t.float_tensor(name) if t.has(name) else None  # olmo2's only ones; olmo2 has no pre-norms)

    for i in range(cfg.layers):
        b = f"blk.{i}."
        conv = delta = mamba = None
        kind = cfg.kind(i)
        if kind is not LayerKind.ATTENTION and not exact:
            raise UsageError(f"{Path(path).name}: a hybrid model's recurrent layers run in kernelfit's C++ step only, "
                             "which no C++ compiler builds here (--quantization none runs the dequantized model)")
        if kind is LayerKind.SHORT_CONV:  # LFM2: in_proj's B, C, x rows take the Q/K/V slot, out_proj O's
            names, orders = [b + "shortconv.in_proj.weight"], {}
            conv = t.float_tensor(b + "shortconv.conv.weight").reshape(cfg.hidden, cfg.conv_kernel).contiguous()
        elif kind is LayerKind.MAMBA2:  # Granite 4.0-H: in_proj [z | xBC | dt] takes the Q/K/V slot, out_proj O's
            names, orders = [b + "ssm_in.weight"], {}
            conv, delta, mamba = mamba_tensors(t, b, cfg)
        elif kind is LayerKind.GATED_DELTA_NET:  # Qwen3.5: qkv, gate (z), beta and alpha take the Q/K/V slot
            names, orders = [b + x for x in ("attn_qkv.weight", "attn_gate.weight", "ssm_beta.weight",
                                             "ssm_alpha.weight")], {}
            conv, delta = delta_tensors(t, b, cfg)
        elif cfg.attention_gate:  # Qwen3.5's attention: Q's rows [q_h, gate_h] a head -> all q (paired), all gates
            names = [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"]
            orders = {names[0]: gated_q_order(cfg, q_order), names[1]: k_order} if interleave else {}
        elif cfg.latent:  # DeepSeek's MLA: Q (or q_a) and kv_a over the normed input; q_b, k_b, v_b after (latent)
            names = [b + ("attn_q_a.weight" if cfg.latent.q_rank else "attn_q.weight"), b + "attn_kv_a_mqa.weight"]
            orders = {}
        elif t.has(b + "attn_qkv.weight"):  # phi3: Q, K and V rows in one tensor, in that order
            names = [b + "attn_qkv.weight"]
            v_rows = np.arange(cfg.kv_heads * cfg.head_dim) + (cfg.heads + cfg.kv_heads) * cfg.head_dim
            orders = {names[0]: np.concatenate([q_order, k_order + cfg.heads * cfg.head_dim, v_rows])} \
                if interleave else {}
        else:
            names = [b + "attn_q.weight", b + "attn_k.weight", b + "attn_v.weight"]
            orders = {names[0]: q_order, names[1]: k_order} if interleave else {}
        bias = None
        if t.has(b + "attn_qkv.bias"):  # a fused tensor's biases, in its rows' order
            bias = t.float_tensor(b + "attn_qkv.bias")
            if interleave:
                bias = bias[torch.from_numpy(orders[names[0]])]
        elif t.has(b + "attn_q.bias"):
            qb, kb, vb = (t.float_tensor(b + f"attn_{x}.bias") for x in "qkv")
            if interleave:
                qb, kb = qb[torch.from_numpy(q_order)], kb[torch.from_numpy(k_order)]
            bias = torch.cat([qb, kb, vb])
        qkv = linear(t, names, orders, exact)
        latent, latent_norms = latent_products(t, b, cfg, exact) if cfg.latent else ([], [])
        router = shared_gate = expert_bias = None
        shared = []
        if t.has(b + "ffn_gate_inp.weight"):  # MoE: every expert's gate, up and down rows, one product each
            if not exact:
                raise UsageError(f"{Path(path).name}: a mixture-of-experts file needs the C++ dot products (no C++ "
                                 "compiler builds them here; --quantization none runs the dequantized model)")
            router = t.float_tensor(b + "ffn_gate_inp.weight").reshape(cfg.experts, cfg.hidden)
            gate_up = [linear(t, [b + f"ffn_{x}_exps.weight"], exact=True)[0] for x in ("gate", "up")]
            down = linear(t, [b + "ffn_down_exps.weight"], exact=True)[0]
            if t.has(b + "ffn_gate_shexp.weight"):  # a shared expert: gate, up, down, and its sigmoid gate where it
                # has one (Qwen2-MoE, Qwen3.5-MoE; GLM-4.5's is added ungated)
                shared = [linear(t, [b + f"ffn_{x}_shexp.weight"], exact=True)[0] for x in ("gate", "up", "down")]
                if t.has(b + "ffn_gate_inp_shexp.weight"):
                    shared_gate = t.float_tensor(b + "ffn_gate_inp_shexp.weight").reshape(cfg.hidden)
            if t.has(b + "exp_probs_b.bias"):  # LFM2-MoE, GLM-4.5: a bias on each expert's score, for choosing only
                expert_bias = t.float_tensor(b + "exp_probs_b.bias").reshape(cfg.experts)
        else:
            # phi3 stores gate and up as one ffn_up of 2 x ffn rows, gate first: the layout the fused product gives
            gate_up = linear(t, [b + "ffn_gate.weight", b + "ffn_up.weight"] if t.has(b + "ffn_gate.weight") else
                             [b + "ffn_up.weight"], exact=exact)
            down = linear(t, [b + "ffn_down.weight"], exact=exact)[0]
        o = linear(t, [b + {LayerKind.SHORT_CONV: "shortconv.out_proj.weight", LayerKind.GATED_DELTA_NET:
                            "ssm_out.weight", LayerKind.MAMBA2: "ssm_out.weight"}.get(kind, "attn_output.weight")],
                   exact=exact)[0]
        packed += [*qkv, *latent, o, *gate_up, down, *shared]
        qn = kn = None
        if t.has(b + "attn_q_norm.weight"):  # gemma3, qwen3: RMSNorm of each head's Q and K; olmo2: of all of Q, K
            qn, kn = t.float_tensor(b + "attn_q_norm.weight"), t.float_tensor(b + "attn_k_norm.weight")
            full = qn.numel() == cfg.heads * cfg.head_dim
            if interleave and full:
                qn, kn = qn[torch.from_numpy(q_order)], kn[torch.from_numpy(k_order)]
            elif interleave:
                qn, kn = qn[norm_order], kn[norm_order]
        # Qwen3.5's norm before the FFN is the file's post_attention_norm (llama.cpp's name for HF's
        # post_attention_layernorm), not a norm of the attention's output as in Gemma 2/3
        ffn_norm, post_attn = ((optional(b + "post_attention_norm.weight"), None)
                               if cfg.arch in FFN_NORM_NAMED_POST_ATTENTION else
                               (optional(b + "ffn_norm.weight"), optional(b + "post_attention_norm.weight")))
        blocks.append(Block(
            optional(b + "attn_norm.weight"), Products([product(w, prefill_dense, False, int8) for w in qkv]),
            bias, product(o, prefill_dense, False, int8), ffn_norm,
            Products([product(w, prefill_dense, False, int8) for w in gate_up]),
            product(down, prefill_dense, False, int8), qn, kn,
            post_attn, optional(b + "post_ffw_norm.weight"), cfg.sliding(i),
            cfg.rotary_layer(i), router, [product(w) for w in shared], shared_gate, conv, delta,
            cfg.attention_gate and kind is LayerKind.ATTENTION, expert_bias,
            gpt_oss_tensors(t, b, cfg) if cfg.attention_sinks else None,
            [product(w) for w in latent], latent_norms, mamba))
    table = "token_embd.weight"
    embed = linear(t, [table], exact=True)[0] if exact and t.qtype(table) not in FLOAT_TYPES else regridded(t, table)
    head = linear(t, ["output.weight"], exact=exact)[0] if t.has("output.weight") else embed
    packed += [embed] + ([head] if head is not embed else [])
    head_p = product(head, head=True)
    final = "output_norm.weight" if t.has("output_norm.weight") else "token_embd_norm.weight"  # LFM2's final norm
    # (transformers' embedding_norm, applied after the last layer) keeps the name llama.cpp's converter gives it
    if isinstance(embed, DotWeight):  # looked up through the dot kernels' row reader (the head's, when tied)
        embed_p = head_p if head is embed else product(embed)
        model = LeanLM(cfg, torch.empty(0), None, blocks, t.float_tensor(final), head_p, embed_p, native_glue=exact)
    else:
        scale = embed.scale if isinstance(embed, Int8Weight) else None
        model = LeanLM(cfg, embed.weight, scale, blocks, t.float_tensor(final), head_p, native_glue=exact)
    from .native import native_args, native_status

    native = native_args(model)
    # Where the C++ step and prompt forward run everything (native.prefill_ok), TorchScript is compiled only if a
    # call ever needs it (forward(): all logits through a non-dot head): compiled and run, it held ~20 MiB more
    # (SmolLM2: peak RSS over the interpreter 172 -> 163 MiB without running it, ~12 more without compiling it)
    runner = model.eval() if native.prefill_ok else _script(model.eval())  # prefill_ok: all dot groups, so exact
    nbytes = sum(w.nbytes() for w in packed)
    # the int8 GEMM quantizes a group's activations at one scale: groups of 128 (AWQ / GPTQ) take the bf16 panels
    int8 = int8 and not any(isinstance(w, DotWeight) and w.group > 32 for w in packed)
    if kv_cache == "q8_0" and not native.prefill_ok:  # a product the C++ kernels do not run (a fused float one)
        raise UsageError(f"--kv-cache q8_0 is read by kernelfit's C++ kernels, which do not run every call for this "
                         f"model here ({native_status()}); use --kv-cache {DEFAULT_KV_CACHE}")
    if isinstance(t.arena, FileArena):  # the tiles as built (or mapped): the cache written, or its record restored
        if replay:
            t.arena.finish_replay()
            t.conversions = [Conversion(**c) for c in t.arena.index["conversions"]]
            t.problems = list(t.arena.index["problems"])
        else:
            t.arena.commit(t.conversions, t.problems)
    del packed, blocks, model, embed, head
    release_free_memory()
    return LeanBuild(cfg, runner, t.conversions, nbytes, time.perf_counter() - t0, native, t.problems,
                     int8 and not prefill_dense, kv_cache, scripted=not native.prefill_ok)


def latent_products(t, b: str, cfg: Recipe, exact: bool) -> tuple[list[PackedWeight], list[torch.Tensor]]:
    """An MLA layer's products after its Q (or q_a) and kv_a ones — q_b where Q is low-rank, then k_b [heads x
    kv_rank rows, nope] and v_b [heads x value rows, kv_rank], each head's rows a block the step takes alone — and its
    norms [q_a's (empty where none), kv_a's] (step.cpp's norms slots 3 and 4 in an MLA layer)."""
    if not exact:
        raise UsageError(f"{Path(t.path).name}: multi-head latent attention runs in kernelfit's C++ step only, which no "
                         "C++ compiler builds here")
    lat = cfg.latent
    names = ([b + "attn_q_b.weight"] if lat.q_rank else []) + [b + "attn_k_b.weight", b + "attn_v_b.weight"]
    products = [linear(t, [n], exact=True)[0] for n in names]
    q_norm = t.float_tensor(b + "attn_q_a_norm.weight").reshape(lat.q_rank) if lat.q_rank else torch.empty(0)
    return products, [q_norm, t.float_tensor(b + "attn_kv_a_norm.weight").reshape(lat.kv_rank)]


def gpt_oss_tensors(t, b: str, cfg: Recipe) -> list[torch.Tensor]:
    """gpt-oss's float tensors of layer `b` as llama.cpp's converter stores them (conversion/gpt_oss.py): the attention
    output's bias, the sinks (attn_sinks.weight, one a query head), the router's bias and the experts' gate, up and down
    biases [experts, rows] — step.cpp's norms slots O_BIAS.. in that order."""
    def bias(name: str, rows: int) -> torch.Tensor:
        return t.float_tensor(b + name).reshape(cfg.experts, rows).contiguous()

    return [t.float_tensor(b + "attn_output.bias").reshape(cfg.hidden),
            t.float_tensor(b + "attn_sinks.weight").reshape(cfg.heads),
            t.float_tensor(b + "ffn_gate_inp.bias").reshape(cfg.experts),
            bias("ffn_gate_exps.bias", cfg.expert_ffn), bias("ffn_up_exps.bias", cfg.expert_ffn),
            bias("ffn_down_exps.bias", cfg.hidden)]


def delta_tensors(t, b: str, cfg: Recipe) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A Gated DeltaNet layer's float tensors as llama.cpp's converter stores them: the conv taps [channels, K], ssm_a
    (already -exp(A_log)), the dt bias, and the gated norm's weights (without Qwen3.5's +1: that norm has none)."""
    nk, dk, nv, dv = cfg.delta_heads
    channels = 2 * nk * dk + nv * dv
    conv = t.float_tensor(b + "ssm_conv1d.weight").reshape(channels, cfg.conv_kernel).contiguous()
    return conv, [t.float_tensor(b + "ssm_a").reshape(nv), t.float_tensor(b + "ssm_dt.bias").reshape(nv),
                  t.float_tensor(b + "ssm_norm.weight").reshape(dv)]


def mamba_tensors(t, b: str, cfg: Recipe) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """A Mamba-2 layer's float tensors as llama.cpp's converter stores them (conversion/mamba.py Mamba2Model): the conv
    taps [channels, K], [ssm_a (already -exp(A_log)), the dt bias, the gated norm's weights [groups, inner / groups]]
    (step.cpp's norms slots 9-11) and [D, the conv's bias] (MAMBA_D, MAMBA_CONV_BIAS; a zero bias where the file
    has none)."""
    heads, head_dim, groups, _ = cfg.mamba
    inner = heads * head_dim
    taps = t.float_tensor(b + "ssm_conv1d.weight")
    taps = taps.reshape(-1, cfg.conv_kernel).contiguous()
    bias = t.float_tensor(b + "ssm_conv1d.bias").reshape(-1) if t.has(b + "ssm_conv1d.bias") else \
        torch.zeros(taps.shape[0])
    return taps, [t.float_tensor(b + "ssm_a").reshape(heads), t.float_tensor(b + "ssm_dt.bias").reshape(heads),
                  t.float_tensor(b + "ssm_norm.weight").reshape(groups, inner // groups).contiguous()], \
        [t.float_tensor(b + "ssm_d").reshape(heads), bias]


def gated_q_order(cfg: Recipe, q_order: np.ndarray | None) -> np.ndarray:
    """Qwen3.5's Q rows [q_h (head size), gate_h (head size)] a head, re-ordered to every head's q (each head's rotary
    halves paired as q_order pairs them) then every head's gate."""
    d = cfg.head_dim
    q_rows = np.concatenate([np.arange(h * 2 * d, h * 2 * d + d) for h in range(cfg.heads)])
    gate_rows = q_rows + d
    return np.concatenate([q_rows[q_order] if q_order is not None else q_rows, gate_rows])


def q8_0_cache_refusal(prefill_dense: bool) -> str | None:
    """Why a Q8_0 KV cache cannot run in this process (its rows are read by the C++ kernels only, so every call must
    take them: the dot products built here, no bf16 copy whose prompts go through TorchScript), or None."""
    if not dot_available() or prefill_dense:
        from .native import native_status

        why = "--prefill dense sends prompts through TorchScript" if prefill_dense else native_status()
        return (f"--kv-cache q8_0 is read by kernelfit's C++ kernels, which do not run every call here ({why}); use "
                f"--kv-cache {DEFAULT_KV_CACHE}")
    return None


def open_model(path: Path, requant: str | None = None) -> tuple[Recipe, GgufTensors | SafetensorsTensors, bool]:
    """The recipe, the tensors under llama.cpp's names, and whether Q and K keep each head's rotary halves (the
    builder then pairs them): a GGUF file (its keys), or a transformers checkpoint folder (config.json and its
    safetensors shards, engine/safetensors/reader.py). Headers only, no weights read: the loader calls it before
    the plan is shown (loader/load.py check_loadable), so a checkpoint the reader refuses ends in one line."""
    if path.is_dir():
        config = path / "config.json"
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {config}: {exc}; point at a folder written by save_pretrained") from None
        quant = parse_quantization(cfg.get("quantization_config"), str(config))
        if quant is not None:
            why = why_not_engine_quant(quant) or (["--quantization q8_0 re-quantizes a dense checkpoint"] if requant
                                                  else [])
            if why:
                raise UsageError(f"{path.name}: {'; '.join(why)} (--quantization none loads it through transformers)")
        if text_config(cfg).get("model_type") in CONVERTED_CHECKPOINT_ARCHS:  # config.json as the GGUF keys its
            # converter writes (a multimodal config's text model: catalog/checkpoint_layout.py TEXT_OF_VLM)
            t = SafetensorsTensors.open(path, requant, quant, cfg)
            header = config_header(text_config(cfg), {n: t.shape(n) for n in t.by_name}, path.name)
            return recipe_from_gguf(header, header.rope_factors), t, True
        return recipe_from_config(cfg, path.name), SafetensorsTensors.open(path, requant, quant), True  # keeps halves
    header = read_gguf_header(path)  # once: a 262k-token vocabulary takes ~0.4 s to parse
    t = GgufTensors.open(path, header)
    factors = next((n for n in ("rope_freqs.weight", "rope_factors_short.weight") if t.has(n)), None)  # per pair
    cfg = recipe_from_gguf(header, t.float_tensor(factors) if factors else None)
    # Llama/Mistral/Mistral 3/SmolLM3/Granite/GLM-4 files already pair rotary dims side by side (llama.cpp's
    # converter permutes their Q and K rows), DeepSeek's as trained; qwen2, qwen3, gemma, phi3 and olmo2 files keep
    # halves
    return cfg, t, cfg.arch not in ("llama", "mistral", "mistral3", "smollm3", "granite", "glm4", "deepseek2")


def _script(model: LeanLM) -> torch.jit.ScriptModule | LeanLM:
    """The reference model compiled with TorchScript, or the same module run eagerly where this torch cannot script
    it. torch 2.13 marks TorchScript deprecated in favour of torch.compile, which measured slower here
    (reference.py's docstring); it still ships and runs, and it still pays: SmolLM2 on the no-compiler path
    (KERNELFIT_NATIVE=0, 2 threads, 128 decode steps, two runs each) decodes 88.5-89.6 tok/s scripted against
    66.6-66.9 eager (1.33x), for ~1.3 s more at load. A torch without it (or one that refuses the module) gets
    the eager module: the same maths, slower."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.script(model)
        except Exception as exc:  # noqa: BLE001 - TorchScript removed or refusing: its errors are of many kinds
            warnings.warn(f"TorchScript could not compile the reference model ({type(exc).__name__}); running it "
                          "eagerly", RuntimeWarning, stacklevel=2)
            return model


def forward(build: LeanBuild, ids: torch.Tensor, pos: int, all_logits: bool = False, cache: KvCache | None = None,
            panel_rows: bool = False) -> torch.Tensor:
    """Run `ids` at positions pos.. (see LeanLM.forward). TorchScript's optimizing executor is off: its
    profiling runs cost ~10 s and ~170 MB on the first calls here and the optimized graph decoded no faster
    (131 vs 143 tok/s for SmolLM2), since the step is a chain of ATen calls it cannot fuse. cache: a sequence's own
    (sequence_cache; the C++ path only), else the build's; panel_rows: a prompt of any length through the prompt
    kernels, which compute each row alone (Step.prefill's panel_rows)."""
    ids = ids.reshape(-1)
    n = build.native
    step = _native_step(build) if n is not None and (ids.numel() == 1 or (n.prefill_ok and not all_logits) or
                                                      native_all_logits(build)) else None
    if step is not None:
        return _native(build, step, ids, pos, all_logits, cache, panel_rows)
    if cache is not None:
        raise ValueError("a sequence's own cache needs the C++ step (batch_ready)")
    if build.cfg.experts or build.cfg.recurrent_layers or build.cfg.latent:  # the reference model has no routers,
        # no recurrent layers, no latent attention
        raise UsageError("a mixture-of-experts, hybrid or latent-attention file runs through the C++ step only, which is "
                         "not built here")
    if not build.scripted:  # the C++ path's build: compiled (or left eager) on first need
        build.model, build.scripted = _script(build.model), True
    with torch.jit.optimized_execution(False), torch.inference_mode():
        return build.model(ids, pos, all_logits)


def _native_step(build: LeanBuild):
    from .native import native_module

    return native_module()


def native_all_logits(build: LeanBuild) -> bool:
    """Whether the C++ prompt forward gives every row's logits (forward's all_logits): every product the file's
    groups (or bf16 rows) and such a head — up to DOT_MAX_ROWS rows, equal to one decode step a row (runner.py's drafts)."""
    n = build.native
    return n is not None and n.prefill_ok and n.head[0] in (*DOT_KINDS.values(), BF16_ROWS)


def batch_ready(build: LeanBuild) -> bool:
    """Whether several sequences can share a step (batch_step): the C++ step and prompt forward run every call."""
    return build.native is not None and build.native.prefill_ok and _native_step(build) is not None


def batch_step(build: LeanBuild, tokens: list[int], positions: list[int], sequences: list[int],
               caches: list[KvCache]) -> torch.Tensor:
    """Logits float32 [R, vocab] of R tokens in one step (R <= DOT_MAX_ROWS): token r at position positions[r] of
    the sequence whose cache is caches[sequences[r]]. Each row's logits equal a decode step of its sequence alone
    (Step.batch); the weights are read once for all of them."""
    m, step = build.model, _native_step(build)
    for r, p in enumerate(positions):
        if p >= caches[sequences[r]].capacity:
            raise ValueError(f"position {p} is past its sequence's KV cache ({caches[sequences[r]].capacity})")
    rows_of = [[p for r, p in enumerate(positions) if sequences[r] == s] for s in range(len(caches))]
    for c, mine in zip(caches, rows_of):  # a sequence's rows run in order from where its recurrent state is
        check_position(c.state, mine[0])
        if mine != list(range(mine[0], mine[0] + len(mine))):
            raise ValueError(f"a sequence's rows must be consecutive positions, not {mine}")
    with torch.inference_mode():
        x = _embed_rows(build, step, torch.tensor(tokens))
        local = torch.view_as_real(m.rope_local) if m.rope_local.numel() else torch.empty(0)
        out = _bound(build, step).batch(x, positions, sequences, [c.k for c in caches], [c.v for c in caches],
                                        [_state_values(c.state) for c in caches], torch.view_as_real(m.rope_global),
                                        local)
    for c, mine in zip(caches, rows_of):
        if c.state is not None:
            c.state.at = mine[-1] + 1
    return out


def _state_values(state: State | None) -> torch.Tensor:
    return state.values if state is not None else torch.empty(0)


def _bound(build: LeanBuild, step):
    """The C++ Step with the build's per-model arguments bound once (passing SmolLM2's ~600 tensors on every call
    cost ~0.3 ms a token in pybind11's conversions)."""
    m, c, n = build.model, build.cfg, build.native
    if n.bound is None:
        n.bound = step.Step(n.kinds, n.a, n.b, n.c, n.n, n.n_qkv, n.n_gu, n.norms, n.sliding, m.final_norm,
                            *n.head, c.heads, c.kv_heads, c.head_dim, c.ffn, float(c.eps), m.scaling,
                            int(c.sliding_window or 0), c.family == "gemma", m.head.top_exact,
                            float(c.attn_softcap), float(c.final_softcap), float(c.residual_scale),
                            float(c.logit_scale), n.routers, int(c.top_k), int(c.expert_ffn), bool(c.norm_topk),
                            int(c.delta_heads[0]), int(c.delta_heads[1]), c.router is RouterKind.SIGMOID,
                            *(c.clamped_swiglu or (1.0, 0.0)), *(c.query_temperature or (0.0, 0)),
                            float(c.routed_scale), _latent_dims(c), n.perms)
    return n.bound


def _latent_dims(c: Recipe) -> list[int]:
    """step.cpp Step::lat: MLA's q_rank, kv_rank, nope, rope, value (empty without it)."""
    lat = c.latent
    return [lat.q_rank, lat.kv_rank, lat.nope, lat.rope, lat.value] if lat else []


def _native(build: LeanBuild, step, ids: torch.Tensor, pos: int, all_logits: bool, cache: KvCache | None,
            panel_rows: bool) -> torch.Tensor:
    """One token through the C++ decode step, or a prompt through its C++ forward (Step.prefill: the same math as
    LeanLM.forward, without TorchScript's interpreter or the Python calls into the extension in between)."""
    m = build.model
    k, v = (cache.k, cache.v) if cache is not None else (m.k_cache, m.v_cache)
    state = cache.state if cache is not None else build.state
    capacity = int(k.shape[3]) if k.dim() == 5 else 0
    if pos + ids.numel() > capacity:
        raise ValueError(f"position {pos + ids.numel() - 1} is past the KV cache ({capacity}); call "
                         "reset_cache first")
    check_position(state, pos)
    with torch.jit.optimized_execution(False), torch.inference_mode():
        x = _embed_rows(build, step, ids)
        local = torch.view_as_real(m.rope_local) if m.rope_local.numel() else torch.empty(0)
        bound = _bound(build, step)
        if ids.numel() == 1 and not panel_rows:
            out = bound.run(x, pos, k, v, _state_values(state), torch.view_as_real(m.rope_global), local)
        else:
            out = bound.prefill(x, pos, k, v, _state_values(state), torch.view_as_real(m.rope_global), local,
                                build.int8_prefill, all_logits, panel_rows)
    if state is not None:
        state.at = pos + ids.numel()
    return out


def _embed_rows(build: LeanBuild, step, ids: torch.Tensor) -> torch.Tensor:
    """The tokens' embeddings; a dot-group table is read here directly (through the scripted module, the Python
    call of its ignored method cost ~0.5 ms a token)."""
    m, n = build.model, build.native
    if n.embed is None:
        return m._embed(ids)
    kind, a, b, c, rows = n.embed
    x = step.dot_dequant(a, b, c, dot_bits(kind), rows, ids, False)
    return x * m.embed_mult if m.embed_mult != 1.0 else x


M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters
MMAP_THRESHOLD_BYTES = 256 << 10  # while packing
RUN_MMAP_THRESHOLD_BYTES = 32 << 20  # after: glibc's own ceiling, so the runner's few-MB activations reuse heap
# memory instead of a fresh mapping (and its page faults) per op — prefill ran at 650 instead of 1,150 tok/s
RUN_TRIM_THRESHOLD_BYTES = 64 << 20  # setting the mmap threshold fixes the trim threshold at 128 KiB: every free
# at the heap's top then handed the pages back and the next call faulted them in again (a 2.6 MB bf16 unpack took
# 526 us instead of ~100 us, a third of it page faults)


def map_large_allocations() -> None:
    """Serve allocations over 256 KiB from their own mappings (glibc), returned to the OS when freed. glibc
    otherwise raises that threshold after the first large free, and packing's many few-MB temporaries then
    fragment the heap: SmolLM2's packed build peaked ~160 MB higher here."""
    libc = glibc.libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_free_memory() -> None:
    """Hand the allocator's free pages back to the OS (glibc malloc_trim), then let activations reuse the heap."""
    libc = glibc.libc()
    if libc is not None:
        libc.malloc_trim(0)
        libc.mallopt(M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, RUN_TRIM_THRESHOLD_BYTES)
