"""An architecture as data: one Recipe describes a decoder, filled once from a GGUF file's keys (engine/recipe_gguf.py)
or a config.json (recipe_from_config, below); the runner, the reference model and the C++ step read it and never the
file's architecture name.

Rotary embeddings are a `Rotary` row: the kind and its numbers, turned into one complex table a position by
`rotary_table`, which both the reference and the C++ step multiply Q and K by. Every scaling that changes only
frequencies and a magnitude lives in that table, so a new scaling is a new `inverse_frequencies` case and no
kernel change:
- linear: positions divided by the factor;
- frequency factors (Llama 3.x: the `rope_freqs` tensor llama.cpp's converter writes from rope_scaling
  "llama3"): each pair's frequency divided by its factor, as ggml's rope does (`theta_base / freq_factor`);
- LongRoPE (Phi-3.5, Phi-3 128k): each pair's frequency divided by its factor from the file's short table, the
  table's magnitude the attention factor (transformers' _compute_longrope_parameters);
- YaRN (long-context Qwen2.5/Qwen3, Mistral 3): each pair's frequency ramps from interpolated (divided by the
  factor) to extrapolated between the correction dimensions of beta_fast/beta_slow over the original context,
  and the table's magnitude is the attention factor 0.1 ln(factor) + 1 — on Q and K both, so scores scale by its
  square, as transformers' `_compute_yarn_parameters` (cos and sin times attention_factor) and ggml's rope_yarn
  (mscale) do. gpt-oss's YaRN keeps the correction dimensions as computed (transformers' rope_parameters
  "truncate": false, GptOssConfig's default; OpenAI's reference rotary), where the others floor and ceil them.
  A log multiplier (the file's rope.scaling.yarn_log_multiplier, config.json's mscale_all_dim; Mistral 3 stores 1)
  makes the attention factor mscale(factor, 1) / mscale(factor, multiplier), mscale(s, m) = 0.1 m ln(s) + 1 — 1.0 for
  Mistral 3 (transformers' _compute_yarn_parameters with mscale = mscale_all_dim = 1; llama.cpp llama_context's
  yarn_attn_factor from rope_yarn_log_mul).

Mistral 3 (Ministral 3) also scales each query by Llama 4's attention temperature, 1 + beta ln(1 + floor(pos / L))
with L the original context (`Recipe.query_temperature`; transformers get_llama_4_attn_scale, llama.cpp
llm_graph_input_attn_temp): 1 below L, so it matters only past the context the model was trained at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from ..errors import UsageError

# Gemma 3 facts llama.cpp defaults where a file stores none: sliding layers use rotary base 10000 (rope.freq_base_swa
# where stored) and every 6th layer is global; its 27B model (62 layers) scales queries by (hidden/heads)^-0.5
# (llama.cpp src/models/gemma3.cpp; transformers Gemma3TextConfig defaults rope_local_base_freq=10000,
# sliding_window_pattern=6, Gemma 3 27B's query_pre_attn_scalar 168 = 5376 / 32).
GEMMA3_LOCAL_ROPE_THETA = 10000.0
GEMMA3_SLIDING_PATTERN = 6
GEMMA3_27B_LAYERS = 62
# Gemma 2: every other layer slides (the first does), its 27B model (46 layers) scales queries by (hidden/heads)^-0.5
# (llama.cpp LLM_ARCH_GEMMA2: n_swa_pattern 2, f_attention_scale by model type; transformers Gemma2Config layer_types,
# query_pre_attn_scalar)
GEMMA2_SLIDING_PATTERN = 2
# SmolLM3: every 4th layer (3, 7, ...) has no rotary embedding (llama.cpp llama_model_smollm3: n_no_rope_layer_step 4,
# hard-coded; transformers SmolLM3Config no_rope_layer_interval 4)
SMOLLM3_NO_ROTARY_STEP = 4
GEMMA2_27B_LAYERS = 46
QWEN35 = ("qwen35", "qwen35moe")  # Qwen3.5 / 3.6, dense and MoE: Gated DeltaNet and gated attention
LFM2 = ("lfm2", "lfm2moe")  # LFM2 and LFM2-MoE: short convolutions and attention
GRANITE_HYBRID = "granitehybrid"  # Granite 4.0-H: Mamba-2 layers and attention (NoPE), Granite's multipliers
GPT_OSS = "gpt-oss"
GLM4_MOE = "glm4moe"  # GLM-4.5 / 4.6 / 4.5-Air: sigmoid-routed experts with a selection bias and a routed scale,
# an ungated shared expert, leading dense layers, half of each head rotated
DEEPSEEK2 = "deepseek2"  # DeepSeek-V2/V2-Lite/V3, Moonlight, Kimi, GLM-4.7-Flash: multi-head latent attention (Latent)
MOE_ARCHS = ("qwen3moe", "qwen2moe", "qwen35moe", "lfm2moe", GPT_OSS, GLM4_MOE, DEEPSEEK2)
# Architectures whose file names the norm before the FFN post_attention_norm (llama.cpp's name for transformers'
# post_attention_layernorm), not a norm of the attention's output as in Gemma 2/3
FFN_NORM_NAMED_POST_ATTENTION = QWEN35 + (GPT_OSS, GLM4_MOE)
# gpt-oss: every other layer slides over 128 positions, the first does (llama.cpp llama_model_openai_moe
# load_swa_pattern(ml, 2); transformers GptOssConfig layer_types); its experts' clamped SwiGLU (GptOssConfig
# swiglu_alpha, swiglu_limit; llama.cpp hard-codes the same in ggml_swiglu_oai's call)
GPT_OSS_SLIDING_PATTERN = 2
GPT_OSS_SWIGLU = (1.702, 7.0)
MISTRAL3 = "mistral3"  # Ministral 3: a Llama block with YaRN and the query temperature
# YaRN's defaults where a file does not store them (transformers' rope_config_validation, llama.cpp hparams)
YARN_BETA_FAST = 32.0
YARN_BETA_SLOW = 1.0


class LayerKind(Enum):
    """What a decoder layer runs before its feed-forward block."""
    ATTENTION = "attention"
    SHORT_CONV = "short_conv"  # LFM2: in_proj -> B, C, x; y = C * causal depthwise conv(B * x); out_proj. Its state:
    # the last conv_kernel - 1 values of B * x (engine/recurrent.py), not a KV cache
    GATED_DELTA_NET = "gated_delta_net"  # Qwen3.5: a gated delta-rule linear attention (engine/kernels/delta_net.h)
    MAMBA2 = "mamba2"  # Granite 4.0-H: a Mamba-2 mixer (engine/kernels/mamba2.h)


class RouterKind(Enum):
    """How an MoE layer weighs its experts (llama.cpp's expert_gating_func: 1 softmax, 2 sigmoid)."""
    SOFTMAX = "softmax"  # a softmax over every expert's logit, the top k taken (Qwen3-MoE, Qwen3.5-MoE)
    SIGMOID = "sigmoid"  # each expert's own sigmoid, chosen by it plus a selection bias (LFM2-MoE)


@dataclass(frozen=True)
class Latent:
    """DeepSeek's multi-head latent attention (MLA), as llama.cpp runs it absorbed (src/models/deepseek2.cpp): a token
    keeps one latent row a layer, [k_pe (rope, rotated), kv_a_norm(c_kv) (kv_rank)] — the KV cache's one head of
    head_dim = rope + kv_rank, its keys and its values alike — and each query head is [rotated q_pe, k_b[h] q_nope[h]]
    (q_nope absorbed into the latent's space); a head's output is v_b[h] times the latent part of its attention over
    those rows. Q is one product (DeepSeek-V2-Lite) or q_a, its norm and q_b (q_rank > 0)."""
    q_rank: int  # 0: no low-rank Q
    kv_rank: int
    nope: int  # a head's query/key dimensions without rotary (qk_nope_head_dim)
    rope: int  # the rotated ones (qk_rope_head_dim), one key part shared by every head
    value: int  # a head's value size (v_head_dim)


class RotaryKind(Enum):
    PLAIN = "plain"
    LINEAR = "linear"
    YARN = "yarn"
    LONGROPE = "longrope"  # Phi-3.5 / Phi-3 128k: per-pair factors (the short table) and an attention factor


@dataclass(frozen=True)
class Rotary:
    base: float
    kind: RotaryKind = RotaryKind.PLAIN
    factor: float = 1.0  # linear and YaRN
    freq_factors: tuple[float, ...] | None = None  # per pair, divides its frequency (Llama 3.x rope_freqs)
    original_context: int = 0  # YaRN: the context the model was trained at
    beta_fast: float = YARN_BETA_FAST
    beta_slow: float = YARN_BETA_SLOW
    attention_factor: float = 1.0  # LongRoPE: the table's magnitude
    dims: int = 0  # the dimensions of a head it rotates (Phi-4-mini, StableLM: part of each head); 0: all
    truncate: bool = True  # YaRN: the correction dimensions floored and ceiled (gpt-oss: not)
    log_multiplier: float = 0.0  # YaRN: mscale_all_dim (the file's yarn_log_multiplier); 0: none
    mscale: float = 1.0  # YaRN: the attention factor's numerator's (DeepSeek-V2's mscale: its mscale_all_dim)

    @property
    def magnitude(self) -> float:
        """What the table's entries are scaled by (YaRN's and LongRoPE's attention factor), 1 otherwise."""
        if self.kind is RotaryKind.LONGROPE:
            return self.attention_factor
        if self.kind is not RotaryKind.YARN or self.factor <= 1:
            return 1.0
        mscale = 0.1 * self.mscale * math.log(self.factor) + 1.0
        return mscale / (0.1 * self.log_multiplier * math.log(self.factor) + 1.0) if self.log_multiplier else mscale

    @property
    def score_scale(self) -> float:
        """MLA's extra factor on the scores: mscale(factor, mscale_all_dim)^2 (transformers' yarn_apply_mscale;
        llama.cpp deepseek2's kq_scale), 1 otherwise."""
        if self.kind is not RotaryKind.YARN or self.factor <= 1 or not self.log_multiplier:
            return 1.0
        return (0.1 * self.log_multiplier * math.log(self.factor) + 1.0) ** 2


def inverse_frequencies(r: Rotary, dim: int) -> torch.Tensor:
    """float64 [dim/2]: each rotary pair's angle per position."""
    extrapolated = 1.0 / (r.base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    if r.freq_factors is not None:
        factors = torch.tensor(r.freq_factors, dtype=torch.float64)
        if factors.numel() != dim // 2:
            raise UsageError(f"the file's rope_freqs has {factors.numel()} factors for a rotary size of {dim} "
                             f"({dim // 2} pairs); the file is damaged")
        extrapolated = extrapolated / factors
    if r.kind is RotaryKind.LINEAR:
        return extrapolated / r.factor
    if r.kind is RotaryKind.YARN:
        def correction(rotations: float) -> float:
            return dim * math.log(r.original_context / (rotations * 2 * math.pi)) / (2 * math.log(r.base))

        low, high = correction(r.beta_fast), correction(r.beta_slow)
        if r.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / max(high - low, 0.001)).clamp(0, 1)
        keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate (low frequencies)
        return extrapolated / r.factor * (1 - keep) + extrapolated * keep
    return extrapolated


def rotary_table(r: Rotary, dim: int, positions: int) -> torch.Tensor:
    """complex64 [positions, dim/2]: magnitude * e^(i * pos * inverse_frequencies[j]) for pair j. A partial rotary
    (r.dims < dim) rotates the first r.dims/2 pairs with frequencies over r.dims, as transformers' partial_rotary_factor
    and ggml's n_rot do; the other pairs get 1 (angle 0, magnitude 1): multiplying by it leaves them exactly as
    they are, so the kernels rotate every pair alike."""
    rot = r.dims or dim
    ang = torch.outer(torch.arange(positions, dtype=torch.float64), inverse_frequencies(r, rot))
    table = torch.polar(torch.full_like(ang, r.magnitude), ang)
    if rot < dim:
        table = torch.cat([table, torch.ones(positions, (dim - rot) // 2, dtype=table.dtype)], 1)
    return table.to(torch.complex64)


@dataclass
class Recipe:
    family: str  # "llama" (llama, mistral, qwen2, qwen3, phi3, smollm3, granite, olmo2, glm4) or "gemma" (gemma,
    # gemma2, gemma3: gelu, the embedding scaled by sqrt(hidden); gemma2/3 sandwich norms)
    arch: str  # the file's general.architecture
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    eps: float
    rotary: Rotary
    local_rotary: Rotary | None = None  # gemma3 sliding layers
    sliding_window: int | None = None
    sliding_pattern: int = 0  # gemma2/3: every Nth layer is global
    max_positions: int = 4096
    attn_softcap: float = 0.0  # gemma2: scores -> cap * tanh(scores / cap) before the softmax
    final_softcap: float = 0.0  # gemma2: the logits likewise
    query_scale: float | None = None  # the scores' scale where it is not head_dim^-0.5 (Gemma 2 27B)
    no_rotary_step: int = 0  # smollm3: every Nth layer has no rotary (NoPE); 1: no layer has one
    embed_scale: float | None = None  # the embedding's multiplier (gemma: sqrt(hidden); granite: the file's)
    residual_scale: float = 1.0  # granite: x += residual_scale * a block's output
    logit_scale: float = 1.0  # granite: logits divided by it
    experts: int = 0  # qwen3moe, qwen2moe: experts a layer, top_k of them a token, expert_ffn rows each
    top_k: int = 0
    expert_ffn: int = 0
    norm_topk: bool = False  # the chosen experts' weights renormalised to sum 1 (Qwen3-MoE's norm_topk_prob)
    routed_scale: float = 1.0  # the chosen experts' weights times this (GLM-4.5's routed_scaling_factor 2.5)
    router: RouterKind = RouterKind.SOFTMAX  # how the experts are weighed
    layer_kinds: tuple[LayerKind, ...] = ()  # per layer; empty: every layer attention
    conv_kernel: int = 0  # taps a channel of a recurrent layer's convolution (LFM2's L_cache 3, Qwen3.5's 4)
    delta_heads: tuple[int, int, int, int] = (0, 0, 0, 0)  # Gated DeltaNet: key heads, key size, value heads, size
    mamba: tuple[int, int, int, int] = (0, 0, 0, 0)  # Mamba-2: heads, head size, groups, state size
    attention_gate: bool = False  # Qwen3.5: the Q product also gives a gate a query head; output * sigmoid(gate)
    # The experts' activation where it is not SwiGLU: gpt-oss's clamped one, (alpha, limit): x = min(gate, limit),
    # x * sigmoid(alpha x) * (clamp(up, -limit, limit) + 1)
    clamped_swiglu: tuple[float, float] | None = None
    attention_sinks: bool = False  # gpt-oss: a logit a head in the softmax's denominator (the attn_sinks tensors)
    # Mistral 3: (beta, L), each query times 1 + beta ln(1 + floor(pos / L)) (Llama 4's attention temperature)
    query_temperature: tuple[float, int] | None = None
    latent: Latent | None = None  # DeepSeek's MLA: kv_heads 1 and head_dim rope + kv_rank (the latent row)

    def temperature(self, pos: int) -> float:
        """The query's multiplier at a position (1 without a temperature)."""
        if not self.query_temperature:
            return 1.0
        beta, length = self.query_temperature
        return 1.0 + beta * math.log(1 + pos // length)

    def kind(self, layer: int) -> LayerKind:
        return self.layer_kinds[layer] if self.layer_kinds else LayerKind.ATTENTION

    @property
    def kv_layers(self) -> int:
        """Layers that keep keys and values (the KV cache holds these only)."""
        return sum(self.kind(i) is LayerKind.ATTENTION for i in range(self.layers))

    @property
    def recurrent_layers(self) -> int:
        """Layers that keep a fixed recurrent state instead of keys and values."""
        return self.layers - self.kv_layers

    def sliding(self, layer: int) -> bool:
        return bool(self.sliding_window and self.sliding_pattern and (layer + 1) % self.sliding_pattern)

    def rotary_layer(self, layer: int) -> bool:
        return not (self.no_rotary_step and (layer + 1) % self.no_rotary_step == 0)


def llama3_factors(base: float, dim: int, rope: dict) -> tuple[float, ...]:
    """Llama 3.x's per-pair frequency divisors from config.json's rope_parameters — the rope_freqs tensor llama.cpp's
    converter writes (convert_hf_to_gguf.py LlamaModel.generate_extra_tensors), which transformers'
    _compute_llama3_parameters applies to the frequencies directly: 1 for short wavelengths, the factor for long ones,
    a smooth mix between."""
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    original = float(rope.get("original_max_position_embeddings", 8192))
    out = []
    for f in (1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))).tolist():
        wavelength = 2 * math.pi / f
        if wavelength < original / high:
            out.append(1.0)
        elif wavelength > original / low:
            out.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return tuple(out)


def rotary_from_config(cfg: dict, head_dim: int, where: str) -> Rotary:
    """transformers' rope_parameters (or the older rope_theta + rope_scaling) as a Rotary row."""
    from ..model.spec import rope_type

    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    base = float(rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0)
    kind = rope_type(cfg)
    dims = int(head_dim * float(cfg.get("partial_rotary_factor") or 1.0))
    dims = dims if dims < head_dim else 0
    if kind == "linear":
        return Rotary(base, RotaryKind.LINEAR, float(rope["factor"]), dims=dims)
    if kind == "llama3":
        return Rotary(base, freq_factors=llama3_factors(base, dims or head_dim, rope), dims=dims)
    if kind == "yarn":
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        # transformers' _compute_yarn_parameters: mscale(f, mscale) / mscale(f, mscale_all_dim) where both are set
        # (Mistral 3: both 1), the plain factor otherwise; DeepSeek's mscale != 1 and explicit factors: not here
        if rope.get("attention_factor") or (mscale and mscale_all_dim and float(mscale) != 1.0):
            raise UsageError(f"{where}: YaRN with an explicit attention factor or an mscale other than 1 is not "
                             "implemented by the engine (--quantization none loads it through transformers)")
        return Rotary(base, RotaryKind.YARN, float(rope["factor"]), None,
                      int(rope.get("original_max_position_embeddings") or cfg["max_position_embeddings"]),
                      float(rope.get("beta_fast") or YARN_BETA_FAST), float(rope.get("beta_slow") or YARN_BETA_SLOW),
                      dims=dims, truncate=bool(rope.get("truncate", True)),
                      log_multiplier=float(mscale_all_dim) if mscale and mscale_all_dim else 0.0)
    return Rotary(base, dims=dims)


def recipe_from_config(cfg: dict, where: str) -> Recipe:
    """A transformers config.json -> the Recipe the same model's GGUF file gives (convert_hf_to_gguf.py writes its
    keys from these fields). Where a sliding window applies (Mistral 7B v0.1, Qwen2 use_sliding_window), positions
    stop at the window: below it a sliding layer sees every key, so the answers are exact."""
    from ..catalog.engine_checkpoints import why_not_engine_checkpoint
    from ..model.spec import rope_type

    arch = cfg.get("model_type")
    why = why_not_engine_checkpoint(arch, "bfloat16", rope_type(cfg), None)  # the weights' dtype: the reader's check
    if why:
        raise UsageError(f"{where}: {'; '.join(why)} (--quantization none loads it through transformers)")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    context = int(cfg.get("max_position_embeddings") or 4096)
    window = cfg.get("sliding_window")
    if window and (arch == "mistral" or cfg.get("use_sliding_window")):
        context = min(context, int(window))
    return Recipe(
        family="llama", arch=arch, hidden=hidden, layers=int(cfg["num_hidden_layers"]), heads=heads,
        kv_heads=int(cfg.get("num_key_value_heads") or heads), head_dim=head_dim, ffn=int(cfg["intermediate_size"]),
        vocab=int(cfg["vocab_size"]), eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rotary=rotary_from_config(cfg, head_dim, where), max_positions=context)
