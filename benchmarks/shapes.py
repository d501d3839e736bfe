"""kernelfit vs llama.cpp on GGUF files of real model shapes (random weights), made here the way llama.cpp users
make theirs: an F16 file written with the `gguf` package's writer under llama.cpp's tensor names, then quantized by
llama.cpp's own `llama-quantize` (Q4_K_M: its Q4_K/Q6_K mix). Speed only; accuracy is tested on tiny models.

    python benchmarks/shapes.py [--shapes qwen2.5-0.5b,qwen2.5-1.5b,llama3.2-1b] [--types Q4_K_M] [--rounds 3]
                                [--depth 4096] [--kv f32,q8_0]

--depth N: both engines start with N tokens already in the context (llama-bench -d N; kernelfit prefills them
untimed) and decode with plain steps, as llama-bench does. --kv: kernelfit rows with other KV cache kinds besides its
default (float16), e.g. f32 (what it held before) and q8_0.

Each round runs, for each file: `llama-bench -p 256 -n 64` and kernelfit's plan in a fresh interpreter (the
workers of benchmarks/llamacpp.py), interleaved. Beside each decode figure: the bytes a decode step reads (kernelfit:
its packed weights; llama.cpp: the file's tensors) over this machine's measured read bandwidth (a 1 GiB sum on the
same threads) — the roofline both engines stream against. Files are kept in .engines/shapes/ (ignored).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import llamacpp  # noqa: E402 - the llama.cpp build and the workers

OUT = llamacpp.ROOT / ".engines" / "shapes"
# name: (arch, hidden, layers, heads, kv heads, ffn, vocab, rotary base, llama3 rotary factors (factor, low, high,
# original context) or None) — from each model's config.json
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936, 1e6, None),
    "qwen2.5-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, 151936, 1e6, None),
    "qwen2.5-3b": ("qwen2", 2048, 36, 16, 2, 11008, 151936, 1e6, None),
    "llama3.2-1b": ("llama", 2048, 16, 32, 8, 8192, 128256, 5e5, (32.0, 1.0, 4.0, 8192)),
    # LFM2-1.2B: 10 short-convolution layers and 6 attention layers (full_attn_idxs), its feed-forward 12288 adjusted
    # to 8192 (block_auto_adjust_ff_dim), tied head
    "lfm2-1.2b": ("lfm2", 2048, 16, 32, 8, 8192, 65536, 1e6, None),
    # Qwen3.5-0.8B (its model card): 24 layers, every 4th gated attention (8 heads, 2 KV, head size 256, rotary over
    # 64), the others Gated DeltaNet (16 key and 16 value heads of 128, conv of 4); FFN 3584; tied head
    "qwen3.5-0.8b": ("qwen35", 1024, 24, 8, 2, 3584, 248320, 1e7, None),
    # Qwen3.6-35B-A3B (Qwen3.5-35B-A3B's shape), its first 4 of 40 layers (3 Gated DeltaNet, 1 attention): 256 experts
    # of 512, 8 a token, a shared expert of 512; 16 key and 32 value heads of 128
    "qwen3.6-35b-a3b-4l": ("qwen35moe", 2048, 4, 16, 2, 512, 248320, 1e7, None),
    # gpt-oss-20b (its config.json), its first 4 of 24 layers (2 sliding over 128, 2 global): 64 heads of 64, 8 KV
    # heads, 32 experts of 2880, 4 a token, YaRN 32x over 4096; untied head. Quantize it as MXFP4_MOE (llama-quantize:
    # the experts MXFP4, as gpt-oss ships them, the rest Q8_0)
    "gpt-oss-20b-4l": ("gpt-oss", 2880, 4, 64, 8, 2880, 201088, 150000.0, None),
    # GLM-4.7-Flash (transformers' Glm4MoeLiteConfig; llama.cpp writes it as deepseek2), its first 4 of 47 layers (the
    # dense one, 3 MoE): 20 heads of latent attention (q_lora 768, kv_lora 512, nope 192, rope 64, value 256), 64
    # experts of 1536, 4 a token, a shared expert of 1536, sigmoid routing with a selection bias; untied head
    "glm-4.7-flash-4l": ("deepseek2", 2048, 4, 20, 1, 10240, 154880, 1e6, None),
    # Granite 4.0-H-Micro's kind (3B dense: hidden 2048, 32 heads / 8 KV, FFN 8192, Mamba-2 of 64 heads x 64, one
    # group, state 128, conv 4; its sizes as recalled, not read from its config.json), its first 10 layers with one
    # attention layer (the 5th, about its 1-in-10 ratio); tied head
    "granite-4.0-h-10l": ("granitehybrid", 2048, 10, 32, 8, 8192, 100352, 10000.0, None),
    # Qwen3-30B-A3B (its config.json), its first 4 of 48 layers: 32 heads of 128 / 4 KV with per-head QK norms, 128
    # experts of 768, 8 a token, no shared expert; untied head
    "qwen3-30b-a3b-4l": ("qwen3moe", 2048, 4, 32, 4, 768, 151936, 1e6, None),
}
HEAD_DIM = {"qwen3-30b-a3b-4l": 128}  # where a head is not hidden / heads
GRANITE_ATTENTION = {"granite-4.0-h-10l": (4,)}
GRANITE_MAMBA = {"granite-4.0-h-10l": (64, 64, 1, 128, 4)}  # heads, head size, groups, state size, conv taps
MOE = {"qwen3.6-35b-a3b-4l": (256, 8, 512), "gpt-oss-20b-4l": (32, 4, 0),  # experts, a token's, the shared expert's
       "glm-4.7-flash-4l": (64, 4, 1536), "qwen3-30b-a3b-4l": (128, 8, 0)}
LATENT = {"glm-4.7-flash-4l": (768, 512, 192, 64, 256, 1536)}  # q_lora, kv_lora, nope, rope, value, expert ffn
GPT_OSS_HEAD, GPT_OSS_WINDOW = 64, 128
# Qwen3.5's sizes beyond the common ones: head size, Gated DeltaNet key heads, key size, value heads, value size, conv
# taps, full-attention interval, rotary dimensions
QWEN35 = {"qwen3.5-0.8b": (256, 16, 128, 16, 128, 4, 4, 64), "qwen3.6-35b-a3b-4l": (256, 16, 128, 32, 128, 4, 4, 64)}
LFM2_ATTENTION = {"lfm2-1.2b": (2, 5, 8, 10, 12, 14)}  # its config.json's full_attn_idxs
CONV_TAPS = 3  # LFM2's conv_L_cache


def llama3_factors(head_dim: int, base: float, factor: float, low: float, high: float, original: int) -> np.ndarray:
    """What llama.cpp's converter writes as rope_freqs for rope_scaling "llama3" (convert_hf_to_gguf.py)."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wavelen, high_wavelen = original / low, original / high
    out = []
    for f in freqs:
        wavelen = 2 * np.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_f16(name: str, path: Path) -> None:
    from gguf import GGUFWriter

    arch, hidden, layers, heads, kv, ffn, vocab, base, llama3 = SHAPES[name]
    hd = QWEN35[name][0] if name in QWEN35 else GPT_OSS_HEAD if arch == "gpt-oss" else \
        LATENT[name][1] + LATENT[name][3] if name in LATENT else HEAD_DIM.get(name, hidden // heads)
    rng = np.random.default_rng(0)
    w = GGUFWriter(str(path), arch)
    w.add_name(f"{name} shape, random weights")
    w.add_context_length(32768)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    attention = LFM2_ATTENTION.get(name, GRANITE_ATTENTION.get(name, range(layers)))
    w.add_head_count_kv([kv if i in attention else 0 for i in range(layers)] if arch in ("lfm2", "granitehybrid")
                        else kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(base)
    w.add_rope_dimension_count(QWEN35[name][7] if name in QWEN35 else LATENT[name][3] if name in LATENT else hd)
    if arch == "lfm2":
        w.add_shortconv_l_cache(CONV_TAPS)
    if name in GRANITE_MAMBA:  # as llama.cpp's converter writes them (conversion/granite.py GraniteHybridModel)
        heads_m, head_m, groups_m, state_m, taps_m = GRANITE_MAMBA[name]
        w.add_ssm_conv_kernel(taps_m)
        w.add_ssm_state_size(state_m)
        w.add_ssm_group_count(groups_m)
        w.add_ssm_inner_size(heads_m * head_m)
        w.add_ssm_time_step_rank(heads_m)
        w.add_rope_scaling_finetuned(False)
        w.add_embedding_scale(12.0)
        w.add_residual_scale(0.22)
        w.add_logit_scale(8.0)
        w.add_attention_scale(0.0078125)
    if name in MOE:
        w.add_expert_count(MOE[name][0])
        w.add_expert_used_count(MOE[name][1])
        w.add_expert_feed_forward_length(LATENT[name][5] if name in LATENT else ffn)
        if MOE[name][2] and name not in LATENT:
            w.add_expert_shared_feed_forward_length(MOE[name][2])
    if name in LATENT:  # as llama.cpp's converter writes them (conversion/deepseek.py DeepseekV2Model)
        from gguf import ExpertGatingFuncType

        q_rank, kv_rank, nope, rope, value, _ = LATENT[name]
        w.add_key_length(kv_rank + rope)
        w.add_value_length(kv_rank)
        w.add_key_length_mla(nope + rope)
        w.add_value_length_mla(value)
        w.add_q_lora_rank(q_rank)
        w.add_kv_lora_rank(kv_rank)
        w.add_leading_dense_block_count(1)
        w.add_expert_shared_count(1)
        w.add_expert_weights_scale(1.8)
        w.add_expert_weights_norm(True)
        w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
    if name in HEAD_DIM:
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch == "gpt-oss":  # as llama.cpp's converter writes them (conversion/gpt_oss.py)
        from gguf import RopeScalingType

        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_sliding_window(GPT_OSS_WINDOW)
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(32.0)
        w.add_rope_scaling_orig_ctx_len(4096)
    if name in QWEN35:  # as llama.cpp's converter writes them (conversion/qwen.py)
        _, nk, dk, nv, dv, taps, every, _ = QWEN35[name]
        w.add_key_length(hd)
        w.add_value_length(hd)
        w.add_rope_dimension_sections([11, 11, 10, 0])
        w.add_ssm_conv_kernel(taps)
        w.add_ssm_state_size(dk)
        w.add_ssm_group_count(nk)
        w.add_ssm_time_step_rank(nv)
        w.add_ssm_inner_size(nv * dv)
        w.add_uint32(f"{arch}.full_attention_interval", every)
        attention = [i for i in range(layers) if (i + 1) % every == 0]
    w.add_file_type(1)  # MOSTLY_F16
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(3, vocab)])
    w.add_token_types([1] * vocab)
    w.add_token_merges(["a b"])  # llama.cpp refuses a BPE vocabulary without merges
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def t(n, shape, std=0.02):
        w.add_tensor(n, (std * rng.standard_normal(shape, dtype=np.float32)).astype(np.float16))

    def norm(n, size):
        w.add_tensor(n, (1.0 + 0.05 * rng.standard_normal(size, dtype=np.float32)).astype(np.float32))

    t("token_embd.weight", (vocab, hidden))
    if llama3:
        w.add_tensor("rope_freqs.weight", llama3_factors(hd, base, *llama3))
    for i in range(layers):
        b = f"blk.{i}."
        norm(b + "attn_norm.weight", hidden)
        if name in QWEN35:
            write_qwen35_layer(w, t, norm, b, i in attention, name, hidden, heads, kv, ffn, rng)
            continue
        if arch == "gpt-oss":
            write_gptoss_layer(w, t, norm, b, hidden, heads, kv, hd, ffn, MOE[name][0], rng)
            continue
        if name in LATENT:
            write_latent_layer(w, t, norm, b, i, name, hidden, heads, ffn, rng)
            continue
        if name in GRANITE_MAMBA and i not in attention:
            write_mamba_layer(w, t, norm, b, name, hidden, ffn, rng)
            continue
        if i not in attention:  # an LFM2 short-convolution layer: in_proj (B, C, x), taps (float32), out_proj
            w.add_tensor(b + "shortconv.conv.weight", (0.3 * rng.standard_normal((hidden, CONV_TAPS))).astype(np.float32))
            t(b + "shortconv.in_proj.weight", (3 * hidden, hidden))
            t(b + "shortconv.out_proj.weight", (hidden, hidden))
            norm(b + "ffn_norm.weight", hidden)
            t(b + "ffn_gate.weight", (ffn, hidden))
            t(b + "ffn_up.weight", (ffn, hidden))
            t(b + "ffn_down.weight", (hidden, ffn))
            continue
        t(b + "attn_q.weight", (heads * hd, hidden))
        t(b + "attn_k.weight", (kv * hd, hidden))
        t(b + "attn_v.weight", (kv * hd, hidden))
        if arch == "qwen2":
            for x, n in (("q", heads), ("k", kv), ("v", kv)):
                w.add_tensor(b + f"attn_{x}.bias", (0.02 * rng.standard_normal(n * hd)).astype(np.float32))
        t(b + "attn_output.weight", (hidden, heads * hd))
        if arch in ("lfm2", "qwen3moe"):
            norm(b + "attn_q_norm.weight", hd)
            norm(b + "attn_k_norm.weight", hd)
        norm(b + "ffn_norm.weight", hidden)
        if arch == "qwen3moe":  # the router (float32) and every expert's gate, up and down [experts, rows, cols]
            experts = MOE[name][0]
            w.add_tensor(b + "ffn_gate_inp.weight", (0.02 * rng.standard_normal((experts, hidden))).astype(np.float32))
            t(b + "ffn_gate_exps.weight", (experts, ffn, hidden))
            t(b + "ffn_up_exps.weight", (experts, ffn, hidden))
            t(b + "ffn_down_exps.weight", (experts, hidden, ffn))
            continue
        t(b + "ffn_gate.weight", (ffn, hidden))
        t(b + "ffn_up.weight", (ffn, hidden))
        t(b + "ffn_down.weight", (hidden, ffn))
    if arch in ("gpt-oss", "deepseek2", "qwen3moe"):
        t("output.weight", (vocab, hidden))
    norm("token_embd_norm.weight" if arch == "lfm2" else "output_norm.weight", hidden)  # tied output head: the token
    # table (LFM2's final norm keeps llama.cpp's name for transformers' embedding_norm)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_gptoss_layer(w, t, norm, b: str, hidden: int, heads: int, kv: int, hd: int, ffn: int, experts: int,
                       rng) -> None:
    """A gpt-oss layer under llama.cpp's names: biased Q/K/V/O, sinks, the router and its bias, the experts'
    gate/up/down [experts, rows, cols] and their biases; post_attention_norm is the norm before the experts."""
    def f32(n, shape, std=0.02):
        w.add_tensor(n, (std * rng.standard_normal(shape)).astype(np.float32))

    for x, rows in (("q", heads * hd), ("k", kv * hd), ("v", kv * hd)):
        t(b + f"attn_{x}.weight", (rows, hidden))
        f32(b + f"attn_{x}.bias", rows)
    t(b + "attn_output.weight", (hidden, heads * hd))
    f32(b + "attn_output.bias", hidden)
    f32(b + "attn_sinks.weight", heads, 1.0)
    norm(b + "post_attention_norm.weight", hidden)
    f32(b + "ffn_gate_inp.weight", (experts, hidden))
    f32(b + "ffn_gate_inp.bias", experts)
    for x, shape in (("gate", (experts, ffn, hidden)), ("up", (experts, ffn, hidden)), ("down", (experts, hidden, ffn))):
        t(b + f"ffn_{x}_exps.weight", shape)
        f32(b + f"ffn_{x}_exps.bias", shape[:2])


def write_mamba_layer(w, t, norm, b: str, name: str, hidden: int, ffn: int, rng) -> None:
    """One Granite 4.0-H Mamba-2 layer under llama.cpp's names: ssm_in [z | xBC | dt], the conv taps [channels, K] and
    bias, dt bias, A (negative), D, the grouped norm, ssm_out; then its FFN."""
    heads, head, groups, state, taps = GRANITE_MAMBA[name]
    inner = heads * head
    channels = inner + 2 * groups * state
    t(b + "ssm_in.weight", (inner + channels + heads, hidden))
    w.add_tensor(b + "ssm_conv1d.weight", (0.3 * rng.standard_normal((channels, taps))).astype(np.float32))
    w.add_tensor(b + "ssm_conv1d.bias", (0.1 * rng.standard_normal(channels)).astype(np.float32))
    w.add_tensor(b + "ssm_dt.bias", rng.standard_normal(heads).astype(np.float32))
    w.add_tensor(b + "ssm_a", (-np.exp(rng.uniform(-1, 1.5, (heads, 1)))).astype(np.float32))
    w.add_tensor(b + "ssm_d", rng.standard_normal((heads, 1)).astype(np.float32))
    norm(b + "ssm_norm.weight", (groups, inner // groups))
    t(b + "ssm_out.weight", (hidden, inner))
    norm(b + "ffn_norm.weight", hidden)
    t(b + "ffn_gate.weight", (ffn, hidden))
    t(b + "ffn_up.weight", (ffn, hidden))
    t(b + "ffn_down.weight", (hidden, ffn))


def write_latent_layer(w, t, norm, b: str, i: int, name: str, hidden: int, heads: int, ffn: int, rng) -> None:
    """One deepseek2 layer under llama.cpp's names: q_a, its norm, q_b, kv_a_mqa, its norm, k_b [heads, kv_rank,
    nope], v_b [heads, value, kv_rank], the output; the first layer a dense FFN, the others the router (float32), its
    selection bias, the experts and the shared expert."""
    q_rank, kv_rank, nope, rope, value, expert_ffn = LATENT[name]
    t(b + "attn_q_a.weight", (q_rank, hidden))
    norm(b + "attn_q_a_norm.weight", q_rank)
    t(b + "attn_q_b.weight", (heads * (nope + rope), q_rank))
    t(b + "attn_kv_a_mqa.weight", (kv_rank + rope, hidden))
    norm(b + "attn_kv_a_norm.weight", kv_rank)
    t(b + "attn_k_b.weight", (heads, kv_rank, nope))
    t(b + "attn_v_b.weight", (heads, value, kv_rank))
    t(b + "attn_output.weight", (hidden, heads * value))
    norm(b + "ffn_norm.weight", hidden)
    if i == 0:
        t(b + "ffn_gate.weight", (ffn, hidden))
        t(b + "ffn_up.weight", (ffn, hidden))
        t(b + "ffn_down.weight", (hidden, ffn))
        return
    experts = MOE[name][0]
    w.add_tensor(b + "ffn_gate_inp.weight", (0.02 * rng.standard_normal((experts, hidden))).astype(np.float32))
    w.add_tensor(b + "exp_probs_b.bias", (0.01 * rng.standard_normal(experts)).astype(np.float32))
    t(b + "ffn_gate_exps.weight", (experts, expert_ffn, hidden))
    t(b + "ffn_up_exps.weight", (experts, expert_ffn, hidden))
    t(b + "ffn_down_exps.weight", (experts, hidden, expert_ffn))
    t(b + "ffn_gate_shexp.weight", (expert_ffn, hidden))
    t(b + "ffn_up_shexp.weight", (expert_ffn, hidden))
    t(b + "ffn_down_shexp.weight", (hidden, expert_ffn))


def write_qwen35_layer(w, t, norm, b: str, attends: bool, name: str, hidden: int, heads: int, kv: int, ffn: int,
                       rng) -> None:
    """One Qwen3.5 layer under llama.cpp's names: gated attention (attn_q of a query and a gate a head) or a Gated
    DeltaNet (attn_qkv, attn_gate, ssm_beta/alpha, float32 conv taps, ssm_a, dt bias and norm, ssm_out); its FFN's norm
    is post_attention_norm."""
    hd, nk, dk, nv, dv, taps, _, _ = QWEN35[name]
    if attends:
        t(b + "attn_q.weight", (2 * heads * hd, hidden))
        t(b + "attn_k.weight", (kv * hd, hidden))
        t(b + "attn_v.weight", (kv * hd, hidden))
        t(b + "attn_output.weight", (hidden, heads * hd))
        norm(b + "attn_q_norm.weight", hd)
        norm(b + "attn_k_norm.weight", hd)
    else:
        channels = 2 * nk * dk + nv * dv
        t(b + "attn_qkv.weight", (channels, hidden))
        t(b + "attn_gate.weight", (nv * dv, hidden))
        t(b + "ssm_beta.weight", (nv, hidden))
        t(b + "ssm_alpha.weight", (nv, hidden))
        w.add_tensor(b + "ssm_conv1d.weight", (0.3 * rng.standard_normal((channels, taps))).astype(np.float32))
        w.add_tensor(b + "ssm_dt.bias", rng.standard_normal(nv).astype(np.float32))
        w.add_tensor(b + "ssm_a", (-np.exp(rng.uniform(-2, 2, nv))).astype(np.float32))
        norm(b + "ssm_norm.weight", dv)
        t(b + "ssm_out.weight", (hidden, nv * dv))
    norm(b + "post_attention_norm.weight", hidden)
    if name in MOE:  # the router (float32), every expert's gate, up and down, the shared expert and its gate
        experts, _, shared = MOE[name]
        w.add_tensor(b + "ffn_gate_inp.weight", (0.02 * rng.standard_normal((experts, hidden))).astype(np.float32))
        t(b + "ffn_gate_exps.weight", (experts, ffn, hidden))
        t(b + "ffn_up_exps.weight", (experts, ffn, hidden))
        t(b + "ffn_down_exps.weight", (experts, hidden, ffn))
        w.add_tensor(b + "ffn_gate_inp_shexp.weight", (0.02 * rng.standard_normal(hidden)).astype(np.float32))
        t(b + "ffn_gate_shexp.weight", (shared, hidden))
        t(b + "ffn_up_shexp.weight", (shared, hidden))
        t(b + "ffn_down_shexp.weight", (hidden, shared))
        return
    t(b + "ffn_gate.weight", (ffn, hidden))
    t(b + "ffn_up.weight", (ffn, hidden))
    t(b + "ffn_down.weight", (hidden, ffn))


def make(name: str, qtype: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    final = OUT / f"{name}-{qtype}.gguf"
    if final.is_file():
        return final
    f16 = OUT / f"{name}-F16.gguf"
    if not f16.is_file():
        print(f"writing {f16.name}", flush=True)
        write_f16(name, f16)
    print(f"llama-quantize {f16.name} -> {final.name}", flush=True)
    tmp = final.with_suffix(".tmp")
    subprocess.run([str(llamacpp.QUANTIZE_BIN), str(f16), str(tmp), qtype], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    tmp.rename(final)
    return final


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b,llama3.2-1b")
    ap.add_argument("--types", default="Q4_K_M")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--kv", default="")
    a = ap.parse_args()
    llamacpp.build_llama_bench()
    files = {f"{s} {q}": make(s, q) for s in a.shapes.split(",") for q in a.types.split(",")}
    kinds = ["llama.cpp", "kernelfit"] + [f"kernelfit-kv-{k}" for k in a.kv.split(",") if k]
    runs = {(m, k): [] for m in files for k in kinds}
    bw = []
    for r in range(a.rounds):
        bw.append(llamacpp.read_bandwidth_gbs(a.threads))
        for m, path in files.items():
            for k in kinds:
                res = llamacpp.llama_cpp(path, a.threads, a.depth) if k == "llama.cpp" else \
                    llamacpp.python_worker(k, path, a.threads, a.depth)
                runs[(m, k)].append(res)
                print(f"round {r + 1}: {m:<22} {k:<17} prefill {res['prefill']:7.1f} tok/s  decode "
                      f"{res['decode']:6.1f} tok/s  peak RSS {res['peak_rss_mib']:7.1f} MiB  load "
                      f"{res.get('load_s', 0):5.1f} s", flush=True)
    bandwidth = statistics.median(bw)
    depth = f", after {a.depth} cached tokens (plain decode steps)" if a.depth else ""
    print(f"\n{a.rounds} interleaved rounds, {a.threads} threads, medians; read bandwidth {bandwidth:.1f} GB/s; "
          f"prefill {llamacpp.PROMPT}, decode {llamacpp.NEW} tokens{depth}\n")
    print("| file | kernelfit KV | MiB | llama.cpp prefill / decode | kernelfit prefill / decode | prefill x | decode x | "
          "kernelfit MiB/token (weights x file + KV) | decode GB/s: llama.cpp / kernelfit (% of read bw) | load s | "
          "RSS - baseline MiB |")
    print("|---|---|---:|---|---|---:|---:|---:|---|---:|---:|")
    for m, path in files.items():
        lc = runs[(m, "llama.cpp")]
        med = lambda rs, f: statistics.median(x[f] for x in rs)  # noqa: E731
        size = path.stat().st_size
        for k in kinds[1:]:
            kf = runs[(m, k)]
            ratio = lambda f: statistics.median(x[f] / y[f] for x, y in zip(kf, lc))  # noqa: E731
            wb = kf[-1]["weights_bytes"]
            # a decode step at depth also reads the cache it attends over: llama.cpp's is float16, 2 bytes a value
            kv_read = kf[-1]["kv_bytes"] * a.depth / max(1, a.depth + llamacpp.PROMPT + llamacpp.NEW + 1)
            lc_kv = kv_read * 2 / {"f32": 4, "f16": 2, "q8_0": 34 / 32}[kf[-1]["kv_cache"]]
            lc_gbs, kf_gbs = med(lc, "decode") * (size + lc_kv) / 1e9, med(kf, "decode") * (wb + kv_read) / 1e9
            rss = med(kf, "peak_rss_mib") - med(kf, "baseline_rss_mib")
            print(f"| {m} | {kf[-1]['kv_cache']} | {size / 2**20:.0f} | {med(lc, 'prefill'):.1f} / "
                  f"{med(lc, 'decode'):.1f} | {med(kf, 'prefill'):.1f} / {med(kf, 'decode'):.1f} | "
                  f"{ratio('prefill'):.2f}x | {ratio('decode'):.2f}x | {wb / 2**20:.0f} ({wb / size:.2f}x) + "
                  f"{kv_read / 2**20:.0f} | {lc_gbs:.1f} ({lc_gbs / bandwidth:.0%}) / {kf_gbs:.1f} "
                  f"({kf_gbs / bandwidth:.0%}) | {med(kf, 'load_s'):.1f} | {rss:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
