"""A lean decoder for packed weights on the CPU: Llama-family (llama, mistral, qwen2, qwen3, phi3) and Gemma 2/3.

Why not transformers' modules: a decode step of a 135M model is ~3 ms of weight reads, and the
generic path spends as much again in per-op overhead (mask building, cache objects, logits
processors, one product per projection). Per layer this runner does one norm, one fused QKV
product, rotary on Q and K together, a write into a static KV cache, attention over the filled
part, one output product, one norm, one fused gate/up product, the activation and one down
product. This module is the reference and the fallback: where the C++ extension builds (kernels/step.cpp), a
GGUF file's tokens and prompts run through its Step (run / prefill: the same math over the same weights) and
this module is never compiled. Elsewhere it is compiled with TorchScript (`torch.jit.script`): it needs no C++
compiler, and its interpreter runs a step's ~1,300 small ops with less overhead than Python (SmolLM2 decode
184 vs 130 tok/s here). torch.compile was measured too and lost: 70 tok/s, 35 s to compile
(benchmarks/results/llamacpp-*.md).

The residual stream and the KV cache are float32 (one-query SDPA is 4x faster in fp32 than bf16 on
this CPU); products take float32 (the C++ group dot products, engine/kernels/dot_kernels.h) or bf16 (torch's packed
kernels, where the C++ extension is not built: Product casts). Exactness is tested against transformers'
own dequantized load of the same file (tests/test_packed_gguf.py).
"""

# no `from __future__ import annotations`: TorchScript reads the signatures of the @torch.jit.ignore methods

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .native import native_module

INT4, INT8, DENSE, INT8_EXACT, DOT4, DOT8, BF16_ROWS, DOT6, DOT_IQ4, DOT_MXFP4 = range(10)  # Product.kind
# a dot weight's code format (engine/weights.py DotWeight.format: bits | grid << 8) -> its kind
DOT_KINDS = {4: DOT4, 6: DOT6, 8: DOT8, 4 | 1 << 8: DOT_IQ4, 4 | 2 << 8: DOT_MXFP4}
DOT_FORMATS = {kind: fmt for fmt, kind in DOT_KINDS.items()}


def dot_bits(kind: int) -> int:
    """A dot kind's code format (kernels/step.cpp dot_bits): for the extension's calls, which run in Python."""
    return DOT_FORMATS[kind]

# BF16_ROWS: bf16 weight rows as stored (a safetensors checkpoint; a GGUF file's float tensors) through the C++
# products of kernels/bf16_rows.h: float32 in and out (DENSE, torch's bf16 linear, rounds both to bf16)
# DOT4 / DOT6 / DOT8: the file's own groups read by kernelfit's C++ dot products (engine/weights.py): float32 in and
# out, exact weights. A call of more than DOT_MAX_ROWS rows (prefill) multiplies a bf16 copy made for that call
# with oneDNN instead: integer dot products are compute-bound there, oneDNN's bf16 GEMM is not. Or, asked for
# (--prefill int8), the int8 GEMM over the codes: faster, at llama.cpp's activation precision (lossy).
DOT_MAX_ROWS = 12  # measured on 2 threads: at 8 rows the dot products take 0.3-0.5x the time of unpack + oneDNN
# (3072x576: 150 vs 406 us), at 16 about the same, at 32 and more oneDNN wins; a short prompt is then also exact
# ... unless the bf16 copy of that one product would be large (an output head asked for every position's logits:
# Gemma 3's 262k x 640 table is 335 MB in bf16): the dot products then take all rows.
DOT_MAX_COPY_WEIGHTS = 1 << 24
# a prompt's attention runs in blocks of this many queries, each over only the keys it sees (rows_kernels.h): at
# 256 tokens 128 measured ~10% faster than 64 (fewer, larger oneDNN calls outweigh the larger masked triangle)
PROMPT_BLOCK = 128
# INT8_EXACT: the output head. The packed kernels return bf16, whose 8-bit mantissa rounds a logit of 25 to
# a multiple of 0.125 — enough to swap the top two tokens of SmolLM2 answering "What is the capital of
# France?" (margin 0.08). The head instead runs torch._int_mm, whose int32 sums are exact, on the activation
# rounded to int8 per row; that rounding moves a logit by ~1e-3 of its size, so the TOP_EXACT largest are then
# recomputed with the activation's second int8 digit (~15 bits in all). One pass over the table, like
# _weight_int8pack_mm, and exact to float32 where greedy decoding looks.
DIGIT = 254.0
TOP_EXACT = 64
GROUP = 32


# The C++ extension's calls (a pybind module: TorchScript calls them through Python). Free functions taking every
# tensor as an argument: a method reading its ScriptModule's attributes from Python cost ~50 us a call here (a 256-row
# RMS norm is 14 us), ~10 ms over a Gemma 3 270M prompt's ~250 calls.
@torch.jit.ignore
def _dot(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, kind: int, n: int,
         int8_prefill: bool) -> torch.Tensor:
    """x @ W^T over a dot weight's groups (DOT4 / DOT6 / DOT8): float32, or bf16 from the unpack + oneDNN path."""
    ops = native_module()
    bits = dot_bits(kind)
    if x.shape[0] <= DOT_MAX_ROWS:
        return ops.dot_mm(x, a, b, c, bits, n)
    if int8_prefill:  # --prefill int8: the codes through the int8 GEMM, one activation digit
        return ops.gemm_mm(x, a, b, c, bits, n)
    if n * x.shape[1] > DOT_MAX_COPY_WEIGHTS:
        return ops.dot_mm(x, a, b, c, bits, n)
    return _bf16_parts(x, [a], [b], [c], [kind], [n])


@torch.jit.ignore
def _gemm_parts(x: torch.Tensor, a: List[torch.Tensor], b: List[torch.Tensor], c: List[torch.Tensor], kind: List[int],
                n: List[int]) -> torch.Tensor:
    """Several dot weights' products over one input through the int8 GEMM, side by side."""
    return native_module().gemm_parts(x, a, b, c, [dot_bits(k) for k in kind], n)


@torch.jit.ignore
def _bf16_parts(x: torch.Tensor, a: List[torch.Tensor], b: List[torch.Tensor], c: List[torch.Tensor], kind: List[int],
                n: List[int]) -> torch.Tensor:
    """Several dot weights' products over one input with bf16 inputs, side by side (kernels/step.cpp's rows_products
    decides the same way): the bf16 panel GEMM where built (panel_gemm.h, float32 out), else the parts unpacked into
    one bf16 matrix for oneDNN (KERNELFIT_PANEL_GEMM=0), or on a CPU without AVX512-BF16 into one float32 matrix for
    one float32 product (no faster bf16 one runs there: kernels/step.cpp rows_products)."""
    ops = native_module()
    bits = [dot_bits(k) for k in kind]
    if ops.panel_available():
        return ops.panel_gemm_parts(x, a, b, c, bits, n)
    if ops.bf16_native():  # KERNELFIT_PANEL_GEMM=0: oneDNN's bf16 product (bf16 out: callers cast)
        return F.linear(x.to(torch.bfloat16), ops.dot_dequant_parts(a, b, c, bits, n))
    return F.linear(x.float(), ops.dot_dequant_parts(a, b, c, bits, n, False))


@torch.jit.ignore
def _bf16_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ W^T over bf16 rows as stored, float32 (kernels/bf16_rows.h)."""
    return native_module().bf16_rows_mm(x, w)


@torch.jit.ignore
def _dot_rows(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, kind: int, n: int) -> torch.Tensor:
    """float32 rows `ids` of a dot weight (the token table's lookup)."""
    return native_module().dot_dequant(a, b, c, dot_bits(kind), n, ids, False)


@torch.jit.ignore
def _c_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return native_module().rms_norm(x, w, eps)


@torch.jit.ignore
def _c_residual(x: torch.Tensor, y: torch.Tensor, post: torch.Tensor, eps: float, scale: float) -> None:
    native_module().residual_add(x, y, post, eps, scale)


@torch.jit.ignore
def _c_gated(gu: torch.Tensor, ffn: int, gelu: bool) -> torch.Tensor:
    return native_module().gated(gu, ffn, gelu)


@torch.jit.ignore
def _c_prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int, start: int, window: int,
                        scale: float, cap: float) -> torch.Tensor:
    return native_module().prompt_attention(q, k, v, pos, start, window, scale, PROMPT_BLOCK, cap)


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    """Gemma 2's soft-capping, cap * tanh(x / cap); cap 0: x."""
    if cap > 0:
        return torch.tanh(x / cap) * cap
    return x


class Product(nn.Module):
    """One weight-only product y = x @ W^T in one of the packed layouts (engine/torch_weights.py, engine/weights.py),
    with an optional bf16 copy used for multi-row (prefill) calls. x: float32 or bf16."""

    def __init__(self, kind: int, a: torch.Tensor, b: torch.Tensor, out_features: int, prefill: Optional[torch.Tensor],
                 c: Optional[torch.Tensor] = None, int8_prefill: bool = False, perm: Optional[torch.Tensor] = None):
        super().__init__()
        self.kind = kind
        # an act-order checkpoint's dot weight: its codes' columns are the input's in this order (engine/safetensors/
        # packed.py PackedLinear.perm), gathered before every product; empty: as stored
        self.perm = perm if perm is not None else torch.empty(0, dtype=torch.long)
        # int4: packed, scales_zeros; int8: weight, scale; dense: weight, unused; dot: codes, scales (c: minimums)
        self.a, self.b = a, b
        self.c = c if c is not None else torch.empty(0)
        self.out_features = out_features
        self.top_exact = min(TOP_EXACT, out_features)  # TorchScript reads no module-level ints
        self.dot_max_rows = DOT_MAX_ROWS
        self.prefill = prefill if prefill is not None else torch.empty(0, dtype=torch.bfloat16)
        self.has_prefill = prefill is not None
        # a dot weight's calls of many rows through the int8 GEMM (gemm_kernels.h: AVX512-VNNI, the activation in
        # one int8 digit per 32, llama.cpp's precision) instead of a bf16 copy made per call and oneDNN
        self.int8_prefill = int8_prefill

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm.numel() > 0:
            x = x.index_select(-1, self.perm)
        if self.kind == 6:  # BF16_ROWS (TorchScript reads no module-level ints)
            return _bf16_rows(x, self.a)
        if self.kind >= 4:
            if self.has_prefill and x.shape[0] > self.dot_max_rows:
                return F.linear(x.to(torch.bfloat16), self.prefill)
            return _dot(x, self.a, self.b, self.c, self.kind, self.out_features, self.int8_prefill)
        if self.kind == 3:  # x float32 -> float32
            s = x.abs().amax(-1, keepdim=True).clamp_min(1e-30) / 127.0
            u = x / s
            hi = torch.round(u)
            lo = torch.round((u - hi) * 254.0)
            wt = self.a.t()
            out: List[torch.Tensor] = []
            for i in range(x.shape[0]):  # one row at a time: _int_mm's one-row path is the fast one
                y = torch._int_mm(hi[i:i + 1].to(torch.int8), wt).float()
                top = torch.topk(y[0] * self.b.float(), self.top_exact).indices  # ranked with the row scales
                fix = torch.mv(self.a[top].float(), lo[i]) / 254.0
                y[0, top] += fix
                out.append(y)
            return torch.cat(out) * s * self.b.float()
        x = x.to(torch.bfloat16)  # the torch kernels' dtype
        if self.has_prefill and x.shape[0] > 1:
            return F.linear(x, self.prefill)
        if self.kind == 0:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.a, 32, self.b)
        if self.kind == 1:
            return torch.ops.aten._weight_int8pack_mm(x, self.a, self.b)
        return F.linear(x, self.a)


class Products(nn.Module):
    """Products over the same input, concatenated (Q, K and V or gate and up, when their layouts differ and cannot be
    one fused product)."""

    def __init__(self, parts: List[Product]):
        super().__init__()
        self.n = len(parts)
        self.p0 = parts[0]
        self.p1 = parts[1] if len(parts) > 1 else parts[0]
        self.p2 = parts[2] if len(parts) > 2 else parts[0]
        # every part, for the C++ step (Qwen3.5's Gated DeltaNet has four: qkv, gate, beta, alpha; such a layer never
        # runs here, whose forward concatenates up to three)
        self.parts = nn.ModuleList(parts)
        # all parts on the int8 GEMM: one call quantizes the input once and writes each part's columns (no cat);
        # all on the bf16 path: one call too (_bf16_parts)
        # (parts whose inputs are gathered in their own column order, act-order ones, each run alone)
        plain = all(p.perm.numel() == 0 for p in parts)
        self.int8_parts = plain and all(p.kind in DOT_KINDS.values() and p.int8_prefill for p in parts)
        self.bf16_parts = plain and all(p.kind in DOT_KINDS.values() and not p.int8_prefill and not p.has_prefill
                                        for p in parts) and \
            sum(p.out_features for p in parts) * parts[0].a.shape[1] // dot_bits(parts[0].kind) \
            <= DOT_MAX_COPY_WEIGHTS
        # the parts' tensors and shapes as the extension's one-call functions take them
        self.part_a: List[torch.Tensor] = [p.a for p in parts]
        self.part_b: List[torch.Tensor] = [p.b for p in parts]
        self.part_c: List[torch.Tensor] = [p.c for p in parts]
        self.part_kind: List[int] = [p.kind for p in parts]
        self.part_n: List[int] = [p.out_features for p in parts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n == 1:
            return self.p0(x)
        if self.bf16_parts and x.shape[0] > self.p0.dot_max_rows:
            return _bf16_parts(x, self.part_a, self.part_b, self.part_c, self.part_kind, self.part_n)
        if self.int8_parts and x.shape[0] > self.p0.dot_max_rows:
            return _gemm_parts(x, self.part_a, self.part_b, self.part_c, self.part_kind, self.part_n)
        if self.n == 2:
            return torch.cat([self.p0(x), self.p1(x)], dim=-1)
        return torch.cat([self.p0(x), self.p1(x), self.p2(x)], dim=-1)


def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Block(nn.Module):
    def __init__(self, attn_norm, qkv: Products, qkv_bias, o: Product, ffn_norm, gate_up: Products, down: Product,
                 q_norm, k_norm, post_attn_norm, post_ffn_norm, sliding: bool, rotary: bool = True,
                 router: Optional[torch.Tensor] = None, shared: Optional[List[Product]] = None,
                 shared_gate: Optional[torch.Tensor] = None, conv: Optional[torch.Tensor] = None,
                 delta: Optional[List[torch.Tensor]] = None, gated: bool = False,
                 expert_bias: Optional[torch.Tensor] = None, gpt_oss: Optional[List[torch.Tensor]] = None,
                 latent: Optional[List[Product]] = None, latent_norms: Optional[List[torch.Tensor]] = None,
                 mamba: Optional[List[torch.Tensor]] = None):
        super().__init__()
        empty = torch.empty(0)
        self.attn_norm, self.ffn_norm = attn_norm, ffn_norm
        self.qkv, self.o, self.gate_up, self.down = qkv, o, gate_up, down
        self.has_bias = qkv_bias is not None
        self.qkv_bias = qkv_bias if qkv_bias is not None else empty
        self.has_qk_norm = q_norm is not None
        self.q_norm = q_norm if q_norm is not None else empty
        self.k_norm = k_norm if k_norm is not None else empty
        self.qk_norm_full = False  # OLMo 2: one norm over all query heads (and one over all key heads); LeanLM sets it
        self.has_pre_norm = attn_norm is not None  # OLMo 2 has none: its norms follow attention and the FFN
        self.attn_norm = attn_norm if attn_norm is not None else empty
        self.ffn_norm = ffn_norm if ffn_norm is not None else empty
        self.has_post_norms = post_attn_norm is not None
        self.post_attn_norm = post_attn_norm if post_attn_norm is not None else empty
        self.post_ffn_norm = post_ffn_norm if post_ffn_norm is not None else empty
        self.sliding = sliding
        self.rotary = rotary  # False: a NoPE layer (SmolLM3's every 4th), Q and K not rotated
        # an MoE layer's router (its experts' products run in the C++ step only: build.py needs it for such files)
        self.router = router if router is not None else empty
        # Qwen2-MoE's shared expert (gate, up, down products) and its sigmoid gate's weights: the C++ step only too
        self.shared = nn.ModuleList(shared or [])
        self.shared_gate = shared_gate if shared_gate is not None else empty
        # a recurrent layer's convolution taps float32 [channels, L] (the C++ step only): LFM2's short convolution (qkv
        # is then its in_proj, o its out_proj), or with `delta` ([ssm_a, ssm_dt bias, ssm_norm]) Qwen3.5's Gated
        # DeltaNet (qkv: its qkv, gate, beta and alpha products; o: ssm_out)
        self.conv = conv if conv is not None else empty
        self.delta = delta or []
        self.gated = gated  # Qwen3.5's attention: Q's product also gives the gates of its output
        self.expert_bias = expert_bias if expert_bias is not None else empty  # LFM2-MoE: added to choose experts
        # gpt-oss's: the attention output's bias, the sinks, the router's bias and the experts' gate, up and down
        # biases (step.cpp O_BIAS..; the C++ step only, as its routers)
        self.gpt_oss: List[torch.Tensor] = gpt_oss or []
        # DeepSeek's MLA (the C++ step only): q_b (where Q is low-rank), k_b and v_b products, and the q_a and kv_a
        # norms (build.py latent_products)
        self.latent = nn.ModuleList(latent or [])
        self.latent_norms: List[torch.Tensor] = latent_norms or []
        # a Mamba-2 layer's D and conv bias (the C++ step only; its taps in conv, A, dt bias and norm in delta)
        self.mamba: List[torch.Tensor] = mamba or []


class LeanLM(nn.Module):
    """Batch-1 causal LM. `forward(ids, pos, all_logits)` runs `ids` at positions pos.. against the static
    KV cache and returns the logits of the last position, or of every position."""

    def __init__(self, cfg, embed_weight: torch.Tensor, embed_scale: Optional[torch.Tensor], blocks: List[Block],
                 final_norm: torch.Tensor, head: Product, embed_dot: Optional[Product] = None,
                 native_glue: bool = False):
        super().__init__()
        # norms, residual adds and the gated activation in one pass each (the C++ extension's rows_kernels.h)
        self.native_glue = native_glue
        self.heads, self.kv_heads, self.head_dim = cfg.heads, cfg.kv_heads, cfg.head_dim
        self.eps = float(cfg.eps)
        self.gemma = cfg.family == "gemma"
        self.embed_mult = float(cfg.embed_scale or (math.sqrt(cfg.hidden) if self.gemma else 1.0))
        self.residual_scale, self.logit_scale = float(cfg.residual_scale), float(cfg.logit_scale)
        self.scaling = float(cfg.query_scale or cfg.head_dim ** -0.5)
        self.attn_cap, self.final_cap = float(cfg.attn_softcap), float(cfg.final_softcap)
        beta, length = cfg.query_temperature or (0.0, 1)  # Mistral 3's query temperature (recipe.py)
        self.temp_beta, self.temp_length = float(beta), int(length)
        self.window = int(cfg.sliding_window or 0)
        self.ffn = int(cfg.ffn)
        self.embed_weight = embed_weight  # int8 [V, hidden] (with embed_scale) or bf16
        self.embed_int8 = embed_scale is not None
        self.embed_scale = embed_scale if embed_scale is not None else torch.empty(0)
        self.has_embed_dot = embed_dot is not None  # the table as dot groups (the head's, when tied)
        self.embed_dot = embed_dot if embed_dot is not None else head
        for blk in blocks:  # Q then K heads' norm weights, row after row (rows_kernels.h rms_norm cycles through them)
            blk.qk_norm_full = blk.has_qk_norm and blk.q_norm.numel() == cfg.heads * cfg.head_dim
            blk.qk_norm_rows = (torch.cat([blk.q_norm.repeat(cfg.heads), blk.k_norm.repeat(cfg.kv_heads)])
                                if blk.has_qk_norm and not blk.qk_norm_full else torch.empty(0))
        self.blocks = nn.ModuleList(blocks)
        self.layers = len(blocks)
        self.final_norm, self.head = final_norm, head
        self.k_cache = torch.empty(0)
        self.v_cache = torch.empty(0)
        self.rope_global = torch.empty(0)
        self.rope_local = torch.empty(0)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.has_embed_dot:
            e = self.embed_dot
            x = _dot_rows(ids, e.a, e.b, e.c, e.kind, e.out_features)
        elif self.embed_int8:
            x = self.embed_weight[ids].float() * self.embed_scale[ids].float().unsqueeze(-1)
        else:
            x = self.embed_weight[ids].float()
        if self.embed_mult != 1.0:
            x = x * self.embed_mult
        return x

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.native_glue:
            return _c_norm(x, w, self.eps)
        return _norm(x, w, self.eps)

    def _residual(self, x: torch.Tensor, y: torch.Tensor, post: torch.Tensor, has_post: bool) -> torch.Tensor:
        if self.native_glue:
            _c_residual(x, y, post if has_post else torch.empty(0), self.eps, self.residual_scale)  # y f32 or bf16
            return x
        if has_post:
            y = _norm(y.float(), post, self.eps)
        if self.residual_scale != 1.0:
            y = y.float() * self.residual_scale
        return x + y  # a bf16 addend promotes to float32: no separate cast

    def _rotary(self, qk: torch.Tensor, table: torch.Tensor, pos: int, t: int) -> torch.Tensor:
        """Rotary on [t, heads, head_dim] whose dims are interleaved pairs (see gguf_packed.interleave):
        one complex product."""
        f = table[pos:pos + t].unsqueeze(1)
        z = torch.view_as_complex(qk.reshape(t, qk.shape[1], -1, 2)) * f
        return torch.view_as_real(z).reshape(qk.shape)

    def _temperature(self, qk: torch.Tensor, pos: int, t: int, nq: int) -> torch.Tensor:
        """The query heads of [t, heads, head_dim] times 1 + beta ln(1 + floor(p / L)) at their positions p."""
        p = torch.arange(pos, pos + t, dtype=torch.float64)
        s = (1.0 + self.temp_beta * torch.log1p(torch.floor(p / self.temp_length))).float().view(t, 1, 1)
        return torch.cat([qk[:, :nq] * s, qk[:, nq:]], 1)

    def _window_start(self, pos: int, sliding: bool) -> int:
        return max(0, pos - self.window + 1) if sliding else 0

    def _blocked(self, pos: int, t: int, sliding: bool) -> torch.Tensor:
        """[t, keys] True where query pos + i may not see key start + j (later, or out of the window)."""
        start = self._window_start(pos, sliding)
        qi = torch.arange(pos, pos + t).unsqueeze(1)
        ki = torch.arange(start, pos + t).unsqueeze(0)
        allowed = ki <= qi
        if sliding:
            allowed = allowed & (ki > qi - self.window)
        return ~allowed

    def _attend(self, q: torch.Tensor, li: int, pos: int, t: int, sliding: bool, blocked: torch.Tensor) -> torch.Tensor:
        end = pos + t
        start = self._window_start(pos, sliding)
        k = self.k_cache[li, :, :, start:end].float()  # a float16 cache (engine/kv_cache.py) read as float32
        v = self.v_cache[li, :, :, start:end].float()
        q4 = q.transpose(0, 1).unsqueeze(0)  # [1, heads, t, d]
        group = self.heads // self.kv_heads
        if t == 1 and self.attn_cap == 0:
            o = F.scaled_dot_product_attention(q4, k, v, scale=self.scaling, enable_gqa=group > 1)
            return o[0].transpose(0, 1).reshape(t, self.heads * self.head_dim)
        if t == 1:  # soft-capped scores (Gemma 2): SDPA has no cap
            kq = k[0].repeat_interleave(group, 0)
            scores = _softcap(torch.matmul(q4[0], kq.transpose(1, 2)) * self.scaling, self.attn_cap)
            o = torch.matmul(torch.softmax(scores, -1), v[0].repeat_interleave(group, 0))
            return o.transpose(0, 1).reshape(t, self.heads * self.head_dim)
        # A prompt: scores and weighted values as two bf16 GEMMs per kv head (oneDNN), the query heads that share
        # a kv head stacked into one; softmax in float32. CPU SDPA's flash kernel ran at ~100 GFLOP/s here
        # (Gemma 3 270M: 1.4 of its 7 ms a layer at 256 tokens, 0.5 this way); the products feeding it are bf16
        # already, so the scores' bf16 rounding is of the size of their inputs'.
        if self.native_glue:  # the same in C++, in query blocks over the keys each sees (rows_kernels.h)
            return _c_prompt_attention(q, self.k_cache[li, 0], self.v_cache[li, 0], pos, start,
                                       self.window if sliding else 0, self.scaling, self.attn_cap)
        length = end - start
        qg = q4[0].to(torch.bfloat16).reshape(self.kv_heads, group * t, self.head_dim)
        scores = _softcap(torch.bmm(qg, k[0].to(torch.bfloat16).transpose(1, 2)).float() * self.scaling,
                          self.attn_cap)
        scores = scores.view(self.kv_heads, group, t, length).masked_fill(blocked, float("-inf"))
        p = torch.softmax(scores, -1).to(torch.bfloat16).view(self.kv_heads, group * t, length)
        o = torch.bmm(p, v[0].to(torch.bfloat16)).float().view(self.heads, t, self.head_dim)
        return o.transpose(0, 1).reshape(t, self.heads * self.head_dim)

    def forward(self, ids: torch.Tensor, pos: int, all_logits: bool) -> torch.Tensor:
        t = ids.shape[0]
        x = self._embed(ids)
        nq, nkv, d = self.heads, self.kv_heads, self.head_dim
        li = 0
        # the prompt's causal (and sliding-window) masks, once for all layers
        blocked_global = torch.empty(0, dtype=torch.bool)
        blocked_local = torch.empty(0, dtype=torch.bool)
        if t > 1 and not self.native_glue:
            blocked_global = self._blocked(pos, t, False)
            if self.window > 0:
                blocked_local = self._blocked(pos, t, True)
        for blk in self.blocks:
            h = self._rms(x, blk.attn_norm) if blk.has_pre_norm else x
            qkv = blk.qkv(h).float()
            if blk.has_bias:
                qkv = qkv + blk.qkv_bias
            if blk.qk_norm_full:  # over all heads' dims at once, before the heads are split
                qkv = torch.cat([self._rms(qkv[:, :nq * d], blk.q_norm), self._rms(qkv[:, nq * d:(nq + nkv) * d],
                                 blk.k_norm), qkv[:, (nq + nkv) * d:]], 1)
            qkv = qkv.view(t, nq + 2 * nkv, d)
            qk = qkv[:, :nq + nkv]
            if blk.qk_norm_full:
                pass
            elif blk.has_qk_norm and self.native_glue:  # every head's row with its own norm weight, one pass
                qk = _c_norm(qk, blk.qk_norm_rows, self.eps)
            elif blk.has_qk_norm:
                qk = torch.cat([_norm(qk[:, :nq], blk.q_norm, self.eps), _norm(qk[:, nq:], blk.k_norm, self.eps)], 1)
            table = self.rope_local if blk.sliding and self.rope_local.numel() > 0 else self.rope_global
            if blk.rotary:
                qk = self._rotary(qk, table, pos, t)
            if self.temp_beta != 0.0:
                qk = self._temperature(qk, pos, t, nq)
            self.k_cache[li, 0, :, pos:pos + t] = qk[:, nq:].transpose(0, 1)
            self.v_cache[li, 0, :, pos:pos + t] = qkv[:, nq + nkv:].transpose(0, 1)
            if not all_logits and t > 1 and li == self.layers - 1:
                # past the last layer's keys and values only the last row is read (llama.cpp's inp_out_ids does
                # the same): its attention, output product and feed-forward run for that row alone
                a = self._attend(qk[t - 1:, :nq], li, pos + t - 1, 1, blk.sliding, blocked_global)
                x = x[t - 1:]
            else:
                a = self._attend(qk[:, :nq], li, pos, t, blk.sliding, blocked_local if blk.sliding else blocked_global)
            x = self._residual(x, blk.o(a), blk.post_attn_norm, blk.has_post_norms)
            h = self._rms(x, blk.ffn_norm) if blk.has_pre_norm else x
            gu = blk.gate_up(h)  # the activation in float32: in bf16 SmolLM2's logit cosine fell 3x further
            if self.native_glue:  # reads a bf16 product as it is, computes in float32
                g = _c_gated(gu, self.ffn, self.gemma)
            else:
                gu = gu.float()
                g = gu[:, :self.ffn]
                if self.gemma:
                    g = F.gelu(g, approximate="tanh")
                else:
                    g = F.silu(g)
                g = g * gu[:, self.ffn:]
            x = self._residual(x, blk.down(g), blk.post_ffn_norm, blk.has_post_norms)
            li += 1
        if not all_logits:
            x = x[x.shape[0] - 1:]
        h = self._rms(x, self.final_norm)
        return _softcap(self.head(h).float() / self.logit_scale, self.final_cap)
