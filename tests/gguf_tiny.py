"""Tiny GGUF files of any supported tensor type, written with the gguf package's own writer.

gguf-py quantizes Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 itself; it only dequantizes the K-quants, so Q2_K, Q3_K,
Q4_K, Q5_K and Q6_K are encoded here (a plain min/max encoder over llama.cpp's block layout; the decoder the tests check
against is gguf-py's).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, RopeScalingType, quants

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, LAYERS = 256, 4, 2, 512, 512, 2
EXPERTS, EXPERT_FFN = 4, 256  # qwen3moe, qwen2moe (256: a whole K-quant superblock)
SHARED_FFN = 512  # qwen2moe's shared expert
HEAD_DIM = HIDDEN // HEADS


def finish(w: GGUFWriter, path: Path) -> Path:
    """Write a GGUFWriter's header, keys and tensors to `path` and close it."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_vocab(w: GGUFWriter, n: int) -> None:
    """A byte-level BPE vocabulary of n tokens "t0".. with scores, no merges, bos 1 and eos 2."""
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(n)])
    w.add_token_types([1] * n)
    w.add_token_scores([0.0] * n)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def add_q8(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    """x (float32, any rank: rows along its last dimension) as Q8_0 blocks."""
    q = quants.quantize(np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor(name, q.reshape(*x.shape[:-1], -1), raw_dtype=GGMLQuantizationType.Q8_0)


def add_f32(w: GGUFWriter, name: str, x: np.ndarray) -> None:
    w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def _k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins (8 each)."""
    return np.concatenate([(sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6), (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)], axis=1)


def _asymmetric_k(w: np.ndarray, top: int):
    """Per sub-block of 32: codes 0..top, 6-bit scale and min multiples of a per-256 d and dmin (Q4_K, Q5_K)."""
    b = w.reshape(-1, 8, 32).astype(np.float32)
    lo = np.minimum(b.min(-1), 0)
    scale = (b.max(-1) - lo) / top
    d = (np.maximum(scale.max(-1), 1e-8) / 63).astype(np.float16).astype(np.float32)
    dmin = (np.maximum((-lo).max(-1), 1e-8) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / d[:, None]), 1, 63).astype(np.uint8)
    mn = np.clip(np.round(-lo / dmin[:, None]), 0, 63).astype(np.uint8)
    q = np.clip(np.round((b + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None]), 0, top).astype(np.uint8)
    return d, dmin, sc, mn, q


def q4_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> Q4_K blocks [rows, cols/256*144] uint8."""
    d, dmin, sc, mn, q = _asymmetric_k(w, 15)
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(-1, 128)  # chunk i: sub-block 2i low, 2i+1 high
    return np.concatenate([_f16(d), _f16(dmin), _k_scales(sc, mn), qs], axis=1).reshape(w.shape[0], -1)


def _symmetric_k(w: np.ndarray, top: int, half: int, sc_max: int):
    """Per sub-block of 16: codes -half..half-1 (returned + half), a scale 1..sc_max times a per-256 d (Q6_K, Q3_K)."""
    b = w.reshape(-1, 16, 16).astype(np.float32)
    scale = np.abs(b).max(-1) / top
    d = (np.maximum(scale.max(-1), 1e-8) / sc_max).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / d[:, None]), 1, sc_max)
    u = (np.clip(np.round(b / (d[:, None] * sc)[..., None]), -half, half - 1) + half).astype(np.uint8).reshape(-1, 256)
    return d, sc, u


def q6_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> Q6_K blocks [rows, cols/256*210] uint8."""
    rows = w.shape[0]
    d, sc, u = _symmetric_k(w, top=31, half=32, sc_max=127)
    sc = sc.astype(np.int8)
    h = u.reshape(-1, 2, 128)
    ql = (h[:, :, :64] & 15) | ((h[:, :, 64:] & 15) << 4)  # [n, 2, 64]
    hi = (h >> 4).reshape(-1, 2, 4, 32)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)  # [n, 2, 32]
    out = np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8), _f16(d)], axis=1)
    return out.reshape(rows, -1)


def q5_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> Q5_K blocks [rows, cols/256*176] uint8."""
    d, dmin, sc, mn, q = _asymmetric_k(w, 31)
    low, high = q & 15, q >> 4
    qs = (low[:, 0::2] | (low[:, 1::2] << 4)).reshape(-1, 128)
    qh = np.bitwise_or.reduce(high << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)  # bit i: sub-block i
    return np.concatenate([_f16(d), _f16(dmin), _k_scales(sc, mn), qh, qs], axis=1).reshape(w.shape[0], -1)


def _pack2(q: np.ndarray) -> np.ndarray:
    """[n, 256] 2-bit values -> [n, 64] bytes: per 128 values, byte b holds values b, 32+b, 64+b, 96+b."""
    v = q.reshape(-1, 2, 4, 32)
    return (v[:, :, 0] | (v[:, :, 1] << 2) | (v[:, :, 2] << 4) | (v[:, :, 3] << 6)).reshape(-1, 64)


def q3_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> Q3_K blocks [rows, cols/256*110] uint8 (symmetric, 6-bit scales per 16)."""
    rows = w.shape[0]
    d, sc, u = _symmetric_k(w, top=4, half=4, sc_max=31)
    stored = (sc.astype(np.int32) + 32).astype(np.uint8)  # [n, 16]
    low = np.zeros((len(d), 8), np.uint8)
    high = np.zeros((len(d), 4), np.uint8)
    for j in range(16):  # value j: low nibble in byte j % 8 (shift 4 * (j // 8)), top 2 bits in byte 8 + j % 4
        low[:, j % 8] |= (stored[:, j] & 15) << (4 * (j // 8))
        high[:, j % 4] |= (stored[:, j] >> 4) << (2 * (j // 4))
    hmask = np.bitwise_or.reduce((u >> 2).reshape(-1, 8, 32) << np.arange(8, dtype=np.uint8).reshape(1, 8, 1), axis=1)
    return np.concatenate([hmask, _pack2(u & 3), low, high, _f16(d)], axis=1).reshape(rows, -1)


def q2_k(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> Q2_K blocks [rows, cols/256*84] uint8 (4-bit scale and min per 16)."""
    rows = w.shape[0]
    b = w.reshape(-1, 16, 16).astype(np.float32)
    lo = np.minimum(b.min(-1), 0)
    scale = (b.max(-1) - lo) / 3
    d = (np.maximum(scale.max(-1), 1e-8) / 15).astype(np.float16).astype(np.float32)
    dmin = (np.maximum((-lo).max(-1), 1e-8) / 15).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / d[:, None]), 1, 15).astype(np.uint8)
    mn = np.clip(np.round(-lo / dmin[:, None]), 0, 15).astype(np.uint8)
    q = np.clip(np.round((b + (dmin[:, None] * mn)[..., None]) / (d[:, None] * sc)[..., None]), 0, 3).astype(np.uint8)
    return np.concatenate([sc | (mn << 4), _pack2(q.reshape(-1, 256)), _f16(d), _f16(dmin)], axis=1).reshape(rows, -1)


IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)


def _nearest_iq4(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Codes 0..15 of the IQ4_NL grid value nearest each b / scale; [..., 32] -> 16 bytes a 32 (low nibbles first)."""
    q = np.abs(b[..., None] / np.where(scale == 0, 1, scale)[..., None, None] - IQ4_VALUES).argmin(-1).astype(np.uint8)
    return q[..., :16] | (q[..., 16:] << 4)


def iq4_nl(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> IQ4_NL blocks (a float16 d and 16 bytes of grid codes a 32) [rows, cols/32*18]."""
    b = w.reshape(-1, 32).astype(np.float32)
    d = (np.abs(b).max(-1) / 127).astype(np.float16).astype(np.float32)
    return np.concatenate([_f16(d), _nearest_iq4(b, d)], axis=1).reshape(w.shape[0], -1)


def iq4_xs(w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] -> IQ4_XS blocks (a float16 d, 6-bit scales - 32 a 32, 128 bytes of codes a 256)."""
    b = w.reshape(-1, 8, 32).astype(np.float32)
    s = np.abs(b).max(-1) / 127
    d = (np.maximum(s.max(-1), 1e-8) / 31).astype(np.float16).astype(np.float32)
    ls = (np.clip(np.round(s / d[:, None]), 1, 31) + 32).astype(np.uint16)  # stored ls; the scale is d * (ls - 32)
    qs = _nearest_iq4(b, d[:, None] * (ls.astype(np.float32) - 32)).reshape(-1, 128)
    low = (ls[:, 0::2] & 15) | ((ls[:, 1::2] & 15) << 4)
    high = ((ls >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(-1, dtype=np.uint16)
    return np.concatenate([_f16(d), high[:, None].view(np.uint8), low.astype(np.uint8), qs], axis=1).reshape(
        w.shape[0], -1)


K_ENCODERS = {"Q2_K": q2_k, "Q3_K": q3_k, "Q5_K": q5_k, "IQ4_NL": iq4_nl, "IQ4_XS": iq4_xs}


def encode(w: np.ndarray, qtype: str):
    if qtype == "F32":
        return w.astype(np.float32), None
    if qtype == "Q4_K":
        return q4_k(w), GGMLQuantizationType.Q4_K
    if qtype == "Q6_K":
        return q6_k(w), GGMLQuantizationType.Q6_K
    if qtype in K_ENCODERS:
        return K_ENCODERS[qtype](w), getattr(GGMLQuantizationType, qtype)
    t = getattr(GGMLQuantizationType, qtype)
    return quants.quantize(w.astype(np.float32), t), t


def write_tiny(path: Path, qtype: str, arch: str = "llama", seed: int = 0, embed_type: str | None = None,
               tokenizer: bool = True, nan_norm: bool = False, yarn: bool = False, nan_scale: bool = False,
               head_dim: int | None = None, rope_freqs: np.ndarray | None = None,
               yarn_context: tuple[float, int] | None = None, rope_dims: int | None = None,
               longrope: bool = False, softcaps: tuple[float, float] = (50.0, 30.0), layers: int = LAYERS) -> Path:
    """A 2-layer model of `arch` ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite", "olmo2") whose linear weights are `qtype`; `tokenizer`
    False leaves out the token scores transformers needs, `nan_norm` puts a NaN in the final norm, `nan_scale` one in
    a block scale of a quantized tensor (Q4_0/Q5_0/Q8_0: the first two bytes of a block), `yarn` declares YaRN
    rotary scaling (with `yarn_context` = (factor, original context length) stored, as llama.cpp's converter does);
    `head_dim` overrides the head size (the runner reads it from attention.key_length); `rope_freqs` writes Llama 3's
    per-pair frequency factors as the `rope_freqs.weight` tensor; `rope_dims` rotates only that many dimensions of a
    head; `longrope` writes Phi-3.5's rope_factors_long/short tables."""
    rng = np.random.default_rng(seed)
    hd = head_dim or (128 if arch in ("qwen3", "qwen3moe") else HEAD_DIM)  # transformers reads no head_dim from qwen3 files: 128
    w = GGUFWriter(str(path), arch)
    w.add_context_length(1024)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(layers)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if yarn or yarn_context:
        w.add_rope_scaling_type(RopeScalingType.YARN)
    if yarn_context:
        w.add_rope_scaling_factor(float(yarn_context[0]))
        w.add_rope_scaling_orig_ctx_len(int(yarn_context[1]))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(VOCAB)
    if arch in ("qwen3moe", "qwen2moe"):  # 4 experts, 2 a token, each of EXPERT_FFN rows
        w.add_expert_count(EXPERTS)
        w.add_expert_used_count(2)
        w.add_expert_feed_forward_length(EXPERT_FFN)
    if arch == "qwen2moe":  # and a shared expert
        w.add_expert_shared_feed_forward_length(SHARED_FFN)
    if arch == "granite":  # Granite 3.x's multipliers (of its real sizes' kind)
        w.add_embedding_scale(12.0)
        w.add_residual_scale(0.22)
        w.add_logit_scale(8.0)
        w.add_attention_scale(0.015625)
    if arch == "glm4":  # GLM-4 rotates half of each head (its partial_rotary_factor 0.5), pairs side by side
        rope_dims = rope_dims or hd // 2
    if arch in ("llama", "phi3", "smollm3", "granite", "glm4") or rope_dims:
        w.add_rope_dimension_count(rope_dims or hd)
    if longrope:  # Phi-3.5's LongRoPE as llama.cpp's converter writes it: two per-pair factor tables, the original
        # context (the file's context_length, 1024, is 2x it)
        w.add_rope_scaling_orig_ctx_len(512)
        for which, top in (("long", 8.0), ("short", 3.0)):  # a factor per rotated pair
            w.add_tensor(f"rope_factors_{which}.weight", np.linspace(1, top, (rope_dims or hd) // 2, dtype=np.float32))
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(16)  # shorter than the test text, so the window matters
    if arch == "gemma2":  # Gemma 2's soft-caps (its real 50 and 30 by default)
        w.add_attn_logit_softcapping(softcaps[0])
        w.add_final_logit_softcapping(softcaps[1])
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    if tokenizer:
        w.add_token_scores([0.0] * VOCAB)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if arch == "phi3":
        w.add_pad_token_id(0)  # transformers' Phi3Config pads with 32000 otherwise, past this vocabulary

    def tensor(name, shape, kind, std=0.08):
        if kind == "norm":
            x = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            w.add_tensor(name, x)
            return
        x = (std * rng.standard_normal(shape)).astype(np.float32)
        data, t = encode(x, kind)
        if nan_scale and name.endswith("attn_q.weight"):
            data = data.copy()
            data.reshape(-1)[0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
        w.add_tensor(name, data, raw_dtype=t)

    tensor("token_embd.weight", (VOCAB, HIDDEN), embed_type or "Q8_0", std=1.0)
    for i in range(layers):
        b = f"blk.{i}."
        if arch != "olmo2":  # OLMo 2's norms follow attention and the FFN instead (post_* below)
            tensor(b + "attn_norm.weight", (HIDDEN,), "norm")
        if arch == "phi3":  # fused Q/K/V and gate/up, as llama.cpp's converter writes Phi-3's qkv_proj, gate_up_proj
            tensor(b + "attn_qkv.weight", ((HEADS + 2 * KV_HEADS) * hd, HIDDEN), qtype)
        else:
            tensor(b + "attn_q.weight", (HEADS * hd, HIDDEN), qtype)
            tensor(b + "attn_k.weight", (KV_HEADS * hd, HIDDEN), qtype)
            tensor(b + "attn_v.weight", (KV_HEADS * hd, HIDDEN), qtype)
        tensor(b + "attn_output.weight", (HIDDEN, HEADS * hd), qtype)
        if arch != "olmo2":
            tensor(b + "ffn_norm.weight", (HIDDEN,), "norm")
        if arch in ("qwen3moe", "qwen2moe"):  # the router (float, as llama-quantize leaves it), each expert's gate, up,
            # down
            w.add_tensor(b + "ffn_gate_inp.weight", (0.3 * rng.standard_normal((EXPERTS, HIDDEN))).astype(np.float32))
            for part, shape in (("gate", (EXPERT_FFN, HIDDEN)), ("up", (EXPERT_FFN, HIDDEN)),
                                ("down", (HIDDEN, EXPERT_FFN))):
                x = (0.08 * rng.standard_normal((EXPERTS * shape[0], shape[1]))).astype(np.float32)
                data, kind = encode(x, qtype)
                w.add_tensor(b + f"ffn_{part}_exps.weight", data.reshape(EXPERTS, shape[0], -1), raw_dtype=kind)
            if arch == "qwen2moe":  # the shared expert and its gate (one row: llama.cpp keeps it as a vector)
                w.add_tensor(b + "ffn_gate_inp_shexp.weight", (0.3 * rng.standard_normal(HIDDEN)).astype(np.float32))
                tensor(b + "ffn_gate_shexp.weight", (SHARED_FFN, HIDDEN), qtype)
                tensor(b + "ffn_up_shexp.weight", (SHARED_FFN, HIDDEN), qtype)
                tensor(b + "ffn_down_shexp.weight", (HIDDEN, SHARED_FFN), qtype)
        elif arch in ("phi3", "glm4"):  # one ffn_up of gate then up rows (Phi-3's and GLM-4's gate_up_proj)
            tensor(b + "ffn_up.weight", (2 * FFN, HIDDEN), qtype)
        else:
            tensor(b + "ffn_gate.weight", (FFN, HIDDEN), qtype)
            tensor(b + "ffn_up.weight", (FFN, HIDDEN), qtype)
        if arch not in ("qwen3moe", "qwen2moe"):
            tensor(b + "ffn_down.weight", (HIDDEN, FFN), qtype)
        if arch in ("qwen2", "glm4", "qwen2moe"):
            for x, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
                w.add_tensor(b + f"attn_{x}.bias", (0.1 * rng.standard_normal(n * hd)).astype(np.float32))
        if arch in ("gemma3", "qwen3", "qwen3moe"):
            tensor(b + "attn_q_norm.weight", (hd,), "norm")
            tensor(b + "attn_k_norm.weight", (hd,), "norm")
        if arch in ("gemma2", "gemma3", "olmo2", "glm4"):
            tensor(b + "post_attention_norm.weight", (HIDDEN,), "norm")
            tensor(b + "post_ffw_norm.weight", (HIDDEN,), "norm")
        if arch == "olmo2":  # one norm over all of Q, one over all of K
            tensor(b + "attn_q_norm.weight", (HEADS * hd,), "norm")
            tensor(b + "attn_k_norm.weight", (KV_HEADS * hd,), "norm")
    if nan_norm:
        w.add_tensor("output_norm.weight", np.full(HIDDEN, np.nan, dtype=np.float32))
    else:
        tensor("output_norm.weight", (HIDDEN,), "norm")
    return finish(w, path)


LFM2_KINDS = ("conv", "conv", "attention", "conv", "attention", "conv")  # LFM2-1.2B's order, shortened
CONV_TAPS = 3  # LFM2's conv_L_cache
OUT_STD = 0.03  # a block's output products: each layer adds to the residual rather than replacing it, as trained
# models' do (at 0.08, six random layers amplified the activations' rounding until ~2% of the top-1 picks, among
# logits of std 16, turned on it)


def write_tiny_lfm2(path: Path, qtype: str, seed: int = 0, kinds: tuple[str, ...] = LFM2_KINDS,
                    head_count_kv: list[int] | None = None) -> Path:
    """A small LFM2 file as llama.cpp's converter writes one: head_count_kv per layer (0 on the short-convolution
    layers), shortconv.l_cache, the conv taps float32 [hidden, L], in_proj (B, C, x rows) and out_proj, per-head Q/K
    norms, and the final norm under token_embd_norm (transformers' embedding_norm)."""
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "lfm2")
    w.add_context_length(1024)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(len(kinds))
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(head_count_kv or [KV_HEADS if k == "attention" else 0 for k in kinds])  # (a damaged one)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(1000000.0)
    w.add_vocab_size(VOCAB)
    w.add_shortconv_l_cache(CONV_TAPS)
    tiny_vocab(w, VOCAB)

    def tensor(name, shape, kind, std=0.08):
        if kind == "norm":
            w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32))
            return
        data, t = encode((std * rng.standard_normal(shape)).astype(np.float32), kind)
        w.add_tensor(name, data, raw_dtype=t)

    tensor("token_embd.weight", (VOCAB, HIDDEN), "Q8_0", std=1.0)
    for i, kind in enumerate(kinds):
        b = f"blk.{i}."
        tensor(b + "attn_norm.weight", (HIDDEN,), "norm")
        if kind == "attention":
            tensor(b + "attn_q.weight", (HEADS * HEAD_DIM, HIDDEN), qtype)
            tensor(b + "attn_k.weight", (KV_HEADS * HEAD_DIM, HIDDEN), qtype)
            tensor(b + "attn_v.weight", (KV_HEADS * HEAD_DIM, HIDDEN), qtype)
            tensor(b + "attn_output.weight", (HIDDEN, HEADS * HEAD_DIM), qtype, std=OUT_STD)
            tensor(b + "attn_q_norm.weight", (HEAD_DIM,), "norm")
            tensor(b + "attn_k_norm.weight", (HEAD_DIM,), "norm")
        else:  # taps large enough that the convolution shapes the answer
            w.add_tensor(b + "shortconv.conv.weight", (0.3 * rng.standard_normal((HIDDEN, CONV_TAPS))).astype(np.float32))
            tensor(b + "shortconv.in_proj.weight", (3 * HIDDEN, HIDDEN), qtype, std=0.1)
            tensor(b + "shortconv.out_proj.weight", (HIDDEN, HIDDEN), qtype, std=OUT_STD)
        tensor(b + "ffn_norm.weight", (HIDDEN,), "norm")
        tensor(b + "ffn_gate.weight", (FFN, HIDDEN), qtype)
        tensor(b + "ffn_up.weight", (FFN, HIDDEN), qtype)
        tensor(b + "ffn_down.weight", (HIDDEN, FFN), qtype, std=OUT_STD)
    tensor("token_embd_norm.weight", (HIDDEN,), "norm")
    return finish(w, path)
