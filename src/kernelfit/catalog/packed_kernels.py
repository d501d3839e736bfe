"""Weight-only packed kernels on the CPU: which GGUF types map onto which torch kernel, per phase.

Measured on this project's reference CPU (2-thread AMD EPYC with avx512_bf16, torch 2.13.0+cpu;
benchmarks/packed_kernels.py reprints the figures, source "kernelfit-packed-kernels"), microseconds
per product:

    shape (N x K)      rows  bf16 dense  int4 g32  int8 per-row
    3072 x 576 (gate+up)  1      81.6      34.3       29.5
    576 x 1536 (down)     1      37.5      16.5       13.8
    49152 x 576 (head)    1    1225.5     381.7      403.0
    3072 x 576          256    1191.0    2661.1     2975.9
    576 x 1536          256     602.7    1303.7     1352.2

One-row (decode) products read the packed weight 2.4-3.2x faster than bf16; 256-row (prefill)
products are 2.2x slower packed than with oneDNN's bf16 (hence prefill unpacks each product to bf16 per call
where the C++ dot products hold the file's groups). Per-phase kernels: packed for
decode always; for prefill, packed (memory of the file), a bf16 copy (faster prefill for
2 bytes per weight more) — a trade-off the planner names and `--prefill dense` takes — or, for a GGUF file on an
AVX512-VNNI CPU, kernelfit's int8 GEMM over the codes (fastest; lossy, `--prefill int8` only).

Pure data and functions: no torch.
"""

from __future__ import annotations

from ..hardware.machine import Cpu, Device

SOURCES = ("kernelfit-packed-kernels", "torch-int4pack-cpu", "llama-cpp-vec-dot")

# GGUF tensor types the packed path reads (engine/gguf/blocks.py), by the layout they get
INT4_EXACT = ("Q4_0", "Q4_1", "Q4_K")  # group-32 asymmetric int4: the file's grid, scales rounded to bf16
# no torch kernel with their grid: int8 per row (measured loss) or bf16 (the C++ dot products read them as stored)
REGRID = ("Q5_0", "Q5_1", "Q8_0", "Q6_K", "Q2_K", "Q3_K", "Q5_K", "IQ4_NL", "IQ4_XS", "MXFP4")
FLOAT = ("F32", "F16", "BF16")
PACKED_GGUF_TYPES = INT4_EXACT + REGRID + FLOAT
# GGUF architectures engine/reference.py runs
LEAN_GGUF_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite",
                   "olmo2", "glm4", "gemma", "qwen3moe", "qwen2moe", "lfm2", "qwen35",
                   "qwen35moe", "lfm2moe", "gpt-oss", "mistral3", "glm4moe", "deepseek2", "granitehybrid")

MOE_GGUF_ARCHS = ("qwen3moe", "qwen2moe", "qwen35moe", "lfm2moe", "gpt-oss", "glm4moe", "deepseek2")  # their routers and experts run in the C++ step only

# A re-gridded tensor (Q8_0/Q6_K -> int8 per row) whose relative weight error exceeds this is unpacked to bf16
# instead. At 2% the logits of SmolLM2 and Gemma 3 270M keep a cosine above 0.9999 with the file's own
# values (tests/test_packed_gguf.py measures the real files: SmolLM2's Q8_0 table re-grids at 1.1%).
REGRID_MAX_ERROR = 0.02

# The ISA the packed kernels are fast on: both use AVX-512 (bf16 dot products) when present and a
# scalar reference loop otherwise (aten/src/ATen/native/cpu/int4mm_kernel.cpp, int8mm_kernel.cpp).
FAST_ISA = ("avx512_bf16", "avx512f", "avx2")

# bytes per weight once packed, as the C++ dot products hold them (engine/weights.py): the codes (4, 6 or 8 bits)
# plus a float16 scale per 32 and a minimum alike where the type has one (Q4_1, Q5_1; the symmetric types' is a fixed
# multiple of the scale). Q4_K, Q5_K and Q6_K keep the file's two levels (engine/kernels/dot_kernels.h TileScales):
# a float16 d (and dmin) per 256 and a one-byte sub-scale (and sub-minimum) per group — Q4_K 4.625 bits against the
# file's 4.5 (float32 scales per group made it 6: 1.33x the file's bytes a token); Q6_K's codes keep their 6 bits
# (8-bit codes made its 6.56 bits 8.56). Q2_K/Q3_K keep float32 per 16. IQ4_NL / IQ4_XS / MXFP4: their 4-bit codes
# (looked up in the type's grid), IQ4_NL's float16 scale per 32, IQ4_XS's two levels (4.28 bits, the file's 4.25),
# MXFP4's exponent byte per 32 as stored (4.25 bits; a float32 per 32 made them 5).
# torch's layouts (no compiler) are int4 + bf16 scale/zero (Q4_K 5 bits) and int8 per row.
TWO_LEVEL = 2 / 256  # a float16 per superblock of 256
PACKED_BYTES_PER_VALUE = {"Q4_0": 0.5 + 2 / 32, "Q4_1": 0.5 + 4 / 32, "Q4_K": 0.5 + 2 * (1 / 32 + TWO_LEVEL),
                          "Q5_0": 1 + 2 / 32, "Q5_1": 1 + 4 / 32, "Q8_0": 1 + 2 / 32, "Q6_K": 0.75 + 1 / 16 + TWO_LEVEL,
                          "Q2_K": 0.5 + 8 / 16, "Q3_K": 0.5 + 4 / 16, "Q5_K": 1 + 2 * (1 / 32 + TWO_LEVEL),
                          "IQ4_NL": 0.5 + 2 / 32, "IQ4_XS": 0.5 + 1 / 32 + TWO_LEVEL, "MXFP4": 0.5 + 1 / 32,
                          "F32": 4.0, "F16": 2.0, "BF16": 2.0}


def packed_gguf_bytes(numel_by_type: dict[str, int]) -> int:
    """Resident bytes of a GGUF file's weights on the packed path."""
    return int(sum(n * PACKED_BYTES_PER_VALUE.get(t, 2.0) for t, n in numel_by_type.items()))


def packed_dense_bits(bits: int) -> float:
    """`--quantization int4/int8` on a dense checkpoint: effective bits per weight."""
    return 4 + 32 / 32 if bits == 4 else 8.0


DECODE_KERNELS = {
    "int4": "int4 group-32 (aten._weight_int4pack_mm_for_cpu)",
    "int8": "int8 per-row (aten._weight_int8pack_mm)",
}
# GGUF files: the file's own groups (codes, scale and minimum per 32 or 16 weights, every value exact) through
# kernelfit's C++ group dot products (engine/kernels/dot_kernels.h), built with the C++ compiler on first use; the
# activations enter as two int8 digits per group of 32 (~15 bits), so the decode logits agree with the float32
# dequantized file to a cosine of 0.99999 (tests/test_packed_gguf.py). Per product with hot caches
# (benchmarks/packed_kernels.py, 2 threads) they are faster than torch's (3072x576 4-bit: 17.9 vs 26.8 us, bf16
# 79.4); over a whole model (benchmarks/results/llamacpp-report.md) SmolLM2 decodes at 352.5 vs 221.6 tok/s and
# Gemma 3 270M at 141.1 vs 114.6, without the re-grid's loss. At 256 rows each product is unpacked to bf16 for
# oneDNN: 1,102 us for 3072x576 against oneDNN on a kept bf16 copy 937 and int4 2,680.
GGUF_GROUPS = ("the file's own 4/6/8-bit groups, exact, through kernelfit's C++ group dot products (torch's "
               "_weight_int4pack_mm_for_cpu / _weight_int8pack_mm with re-gridded int8 where no C++ compiler "
               "builds them)")
GGUF_DECODE = GGUF_GROUPS + ("; decoding checks prompt-lookup drafts several tokens a step where the C++ step runs "
                             "(greedy, and sampled in the server: the same tokens, the same seeded samples; paused "
                             "where it measures slower)")
# --draft-model: a small model of the same tokenizer drafts instead of prompt lookup (engine/draft_model.py), checked the
# same way, so the output is unchanged; llama.cpp's p_min 0.75 stops a draft where the draft model is unsure
DRAFT_MODEL_DECODE = ("; decoding checks drafts from the draft model {name} (the same tokenizer; it decodes ahead "
                      "while it gives its next token at least 75%) several tokens a step (greedy, and sampled in the "
                      "server alone: the same tokens, the same seeded samples; paused where it measures slower)")
# A hybrid (LFM2, Qwen3.5, Granite 4.0-H): its recurrent state holds only the latest position, so a rejected draft
# cannot be taken back out of it (engine/recurrent.py): `run` copies the state before a drafted step and runs the
# kept rows again from the copy where a draft is rejected; the server's batched steps do not draft on it yet
HYBRID_DECODE = GGUF_GROUPS + ("; `run` checks prompt-lookup drafts several tokens a step (greedy: the state copied "
                               "before them, the kept rows run again where a draft is rejected — the same tokens); "
                               "the server decodes a hybrid one token a step")
# A CPU without AVX512-BF16 (no panels): oneDNN's bf16 product converts to float32 there and rounds its outputs to bf16,
# so each layer's products are unpacked exactly to float32 for one float32 GEMM and the attention runs row by row as
# the decode step's (kernels/step.cpp rows_products; a block's float32 GEMM sums in a block-dependent order, and a
# reused prefix must give a cold prefill's keys and values). Measured on a 2-core AVX2 EPYC, SmolLM2 Q4_1, 256-token
# prompt, best of 3, the two builds interleaved: 66-72 tok/s (bf16 oneDNN) -> 394-416 tok/s
PREFILL_PACKED = ("same packed weights as decode (each layer's products unpacked exactly to float32 for that call, one "
                  "float32 GEMM; the attention row by row as the decode step's): without AVX512-BF16 a bf16 product is "
                  "converted to float32 anyway and rounds its outputs (256-token prefill 5.7x faster this way on an "
                  "AVX2 EPYC)")
PREFILL_DENSE = "bf16 copy (oneDNN matmul)"
# The bf16 panel GEMM (engine/kernels/panel_gemm.h): a GGUF file's groups unpacked 32 output columns at a time into a bf16
# panel in the core's cache and multiplied there with vdpbf16ps (float32 sums and outputs) — no bf16 copy of a
# weight in memory per call, no oneDNN re-blocking; the prompt's attention on the same microkernel
# (engine/kernels/panel_attention.h: 32-key panels, only those a block of queries sees, float32 scores). Built where the
# compiler targets AVX512-BF16. Measured on the
# reference CPU, in-process A/B at 256 tokens (the same build, KERNELFIT_PANEL_GEMM=0 for the former path):
# PANEL_PREFILL_GAIN; against a kept bf16 copy and the int8 GEMM (in-process A/B, and the llamacpp benchmark's 5
# interleaved rounds): DENSE_VS_PANEL, INT8_VS_PANEL. The products run at ~94% of the bf16 peak measured here
# (vdpbf16ps 7.8 G/s a core: 249 G multiply-adds/s).
PANEL_PREFILL_ISA = "avx512_bf16"
PREFILL_PANEL = ("same packed weights as decode, each product's weights unpacked 32 columns at a time into a bf16 "
                 "panel in cache and multiplied there, the attention on the same kernel (kernelfit's AVX512-BF16 "
                 "GEMM, float32 sums)")
PANEL_PREFILL_SOURCES = SOURCES + ("x86-avx512-bf16",)
PANEL_PREFILL_GAIN = ("256-token prefill 1.09x (Gemma 3 270M) and 1.10x (SmolLM2) the speed of unpacking whole "
                      "weights for oneDNN, and closer to the exact products")
DENSE_VS_PANEL = "256-token prefill 0.92-0.98x (Gemma 3 270M) and 0.85-0.93x (SmolLM2) of the panels'"
INT8_VS_PANEL = ("no faster than the bf16 panels here (256-token prefill 0.93-0.95x Gemma 3 270M, 0.99-1.06x "
                 "SmolLM2)")
# The same panels on AMX tiles (engine/kernels/amx_tiles.h: TDPBF16PS, 16 x 16 x 32 multiply-adds an instruction, the
# panel already TDPBF16PS's operand layout; float32 sums and outputs, each row computed alone) where the CPU has
# AMX-BF16 (Sapphire Rapids and newer) and Linux lends the tiles (arch_prctl ARCH_REQ_XCOMP_PERM; refused: the
# AVX512-BF16 kernel). Measured on a 2-core Intel Xeon with AMX (benchmarks/results/shapes-amx.md), the same build,
# KERNELFIT_AMX=0 for the AVX512-BF16 kernel, 3 interleaved rounds: AMX_PREFILL_GAIN; a 256 x 2048 x 4096 Q4_K product
# 2.95 ms on the tiles, 7.85 ms through the int8 GEMM (AMX_VS_INT8).
AMX_PREFILL_ISA = "amx_bf16"
PREFILL_PANEL_AMX = ("same packed weights as decode, each product's weights unpacked 32 columns at a time into a bf16 "
                     "panel in cache and multiplied there on AMX tiles, the attention on the same tiles (kernelfit's "
                     "AMX-BF16 GEMM, float32 sums)")
AMX_PREFILL_SOURCES = PANEL_PREFILL_SOURCES + ("x86-amx",)
AMX_PREFILL_GAIN = ("256-token prefill 6.2x (LFM2-1.2B shape), 5.9x (Qwen2.5-1.5B shape) and 3.9x (Qwen3.5-0.8B "
                    "shape) the speed of the AVX512-BF16 panels on a 2-core Xeon with AMX")
AMX_VS_INT8 = "2.7x slower than the AMX panels here (a 256 x 2048 x 4096 Q4_K product, 7.85 ms against 2.95)"
# a kept bf16 copy's oneDNN product (itself on AMX: brg_matmul amx) skips the panels' unpacking
AMX_DENSE_GAIN = "its products ~1.2x faster than the AMX panels' here (a 256 x 2048 x 4096 product, 2.35 ms against 2.82)"
# --prefill int8 (engine/kernels/gemm_kernels.h): a GGUF file's codes straight into an int8 GEMM (vpdpbusd, 16 weight rows x
# 12 activation rows a block), the activations quantized per group of 32 to one int8 digit — llama.cpp's own
# precision (ggml_vec_dot_q4_1_q8_1), below a bf16 product's. No bf16 copy per call, no oneDNN. Measured on the
# reference CPU (2 threads, hot caches): 256 x 640 x 4096 (Q5_0 codes) 1,346 us against 2,633 unpack + oneDNN
# (~500-600 GMAC/s: ~55% of this CPU's int8 peak — vpdpbusd 8.4 G/s a core, 539 G multiply-adds/s, 2.2x vdpbf16ps's
# — the per-group scaling and the broadcasts take the rest); whole models INT8_PREFILL_GAIN, INT8_VS_PANEL;
# its loss against the float32 file, teacher-forced over 300 positions: INT8_PREFILL_LOSS. A second activation
# digit (the decode products' ~15 bits) measured 1.2-1.6x slower than unpack + oneDNN, so the precise prompt path
# stays bf16 (now the panels). Opt-in: quality loss is the user's call, and SmolLM2's bundled answer to "What is
# the capital of France?" changes with it.
PREFILL_INT8 = ("the file's codes through kernelfit's int8 GEMM (AVX512-VNNI), the activations in one int8 digit "
                "per 32 (llama.cpp's precision)")
INT8_PREFILL_ISA = "avx512_vnni"
INT8_PREFILL_SOURCES = SOURCES + ("x86-avx512-vnni",)
INT8_PREFILL_GAIN = ("its products ~1.5x faster than unpacking to bf16 for oneDNN; 256-token prefill end to end "
                     "1.0-1.2x (SmolLM2, Gemma 3 270M)")
INT8_PREFILL_LOSS = ("prefill top-1 agreement with the float32 file 96.7% SmolLM2, 97.3% Gemma 3 270M (bf16 panels "
                     "99.7%, 99.3%); logit cosine mean 0.9996, 0.9998")


def packed_cpu(devices: list[Device], cpu: Cpu) -> str | None:
    """Why the packed weight-only kernels run here, or None: a CPU placement whose CPU has the vector ISA."""
    if not devices or any(d.kind != "cpu" for d in devices):
        return None
    isa = next((f for f in FAST_ISA if cpu.has(f)), None)
    return f"{isa} CPU" if isa else None


# the codes a GGUF tensor type keeps in kernelfit's C++ dot products (engine/kernels/code_formats.h)
DOT_CODES = {"Q4_0": "4-bit", "Q4_1": "4-bit", "Q4_K": "4-bit", "Q2_K": "4-bit", "Q3_K": "4-bit", "Q6_K": "6-bit",
             "Q5_0": "8-bit", "Q5_1": "8-bit", "Q8_0": "8-bit", "Q5_K": "8-bit", "IQ4_NL": "4-bit grid",
             "IQ4_XS": "4-bit grid", "MXFP4": "4-bit grid"}


def dot_codes(gguf_type: str) -> str:
    """How the C++ dot products hold a GGUF tensor type's values: "4-bit", "6-bit", "8-bit", "4-bit grid" (codes of a
    non-uniform grid) or "float" (bf16 rows)."""
    return "float" if gguf_type in FLOAT else DOT_CODES[gguf_type]


# rotary scalings the packed runner implements (engine/recipe.py; None: plain rotary; "rope_freqs": Llama 3.x's
# per-frequency factors, llama.cpp's converter writes them as a tensor for rope_scaling "llama3")
LEAN_ROPE_SCALINGS = (None, "linear", "yarn", "rope_freqs", "longrope")
ROPE_SCALING_SOURCES = ("transformers-rope-utils", "ggml-rope")  # the maths engine/recipe.py implements
# YaRN keys whose non-default values change the maths beyond the rotary table (explicit attention factors, a partial
# extrapolation): such a file is not run packed (model/gguf_header.py names the key in its scaling). The log
# multiplier (Mistral 3's mscale_all_dim) is the table's magnitude (engine/recipe.py Rotary.magnitude).
YARN_UNSUPPORTED_KEYS = ("rope.scaling.attn_factor", "rope.scaling.yarn_attn_factor", "rope.scaling.yarn_ext_factor")


def why_not_packed_gguf(gguf_arch: str | None, tensor_types: tuple[str, ...], rope_scaling: str | None = None) -> list[str]:
    """Short reasons this GGUF file cannot run packed (empty: it can)."""
    reasons = []
    if rope_scaling not in LEAN_ROPE_SCALINGS:
        reasons.append(f"rotary scaling '{rope_scaling}' is not implemented by the packed runner")
    if gguf_arch not in LEAN_GGUF_ARCHS:
        reasons.append(f"architecture '{gguf_arch}' is not one the packed runner covers ({', '.join(LEAN_GGUF_ARCHS)})")
    odd = [t for t in tensor_types if t not in PACKED_GGUF_TYPES]
    if odd:
        reasons.append(f"tensor types {', '.join(odd)} have no packed layout yet ({', '.join(PACKED_GGUF_TYPES)} do)")
    return reasons
