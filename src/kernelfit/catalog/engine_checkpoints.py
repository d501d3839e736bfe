"""Which transformers checkpoints (config.json + safetensors) kernelfit's CPU engine reads itself, as data.

The engine's recipe (engine/recipe.py recipe_from_config) is filled from config.json and its weights from the
safetensors shards under llama.cpp's tensor names (engine/safetensors/reader.py) — the mapping llama.cpp's own
converter applies (convert_hf_to_gguf.py through gguf-py's tensor_mapping.py). A checkpoint outside these rows
loads through transformers, which the plan says with the reason.
"""

from __future__ import annotations

from .checkpoint_layout import LayoutError
from .converted_checkpoints import (BLOCK_ROPE_TYPES, CONVERTED_CHECKPOINT_ARCHS, CONVERTED_CHECKPOINT_SOURCES,
                                    ROPE_TYPES_BY_ARCH, layout)
from .hybrid_checkpoints import HYBRID_CHECKPOINT_ARCHS
from .quantization import CT_FORMATS, CT_MIXED

# model_type -> what its modeling file adds to the llama block (transformers models/<type>/modeling_<type>.py); the
# others' (the hybrids, Gemma 2/3, Phi-3, Qwen2/3-MoE) tensors and keys are catalog/converted_checkpoints.py's
LLAMA_CONFIG_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
ENGINE_CONFIG_ARCHS = LLAMA_CONFIG_ARCHS + tuple(CONVERTED_CHECKPOINT_ARCHS)
# safetensors dtypes the engine reads: bf16 and fp16 products as stored (exact: kernels/bf16_rows.h widens either);
# fp32, and an fp16 token table, rounded to bf16 once at load, the error reported per tensor (`run --json`)
ENGINE_CHECKPOINT_DTYPES = ("bfloat16", "float16", "float32")
# rope_parameters' rope_type values engine/recipe.py implements (transformers modeling_rope_utils.py)
ENGINE_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# --quantization q8_0 (engine/safetensors/reader.py: llama.cpp's Q8_0 blocks made at load), measured on the
# safetensors SmolLM2 (benchmarks/checkpoints.py writes it) against its own bf16 weights on the engine
ENGINE_Q8_0_LOSS = ("SmolLM2-135M, 300 positions of prose teacher-forced against its bf16 weights: top-1 97.3% "
                    "(prompt) / 97.7% (decode steps), logit cosine mean 0.9997; 0.55% relative weight error")
# pre-quantized checkpoints whose integer codes the engine runs as stored (engine/safetensors/packed.py): the codes,
# scales and zeros become the dot products' groups of 32 — AWQ's GEMM packing (4-bit, a zero per group), GPTQ 4/8-bit
# (v1 zeros stored minus one, v2 as they are; act-order's columns read in group order, each product's input gathered
# so), compressed-tensors' int weights (4/8-bit codes packed in int32 words or one an int8; a scale per group, channel
# or tensor; zero points where asymmetric); a group size splits into 32s
ENGINE_PACKED_METHODS = ("awq", "gptq", "compressed-tensors")
ENGINE_PACKED_BITS = {"awq": (4,), "gptq": (4, 8), "compressed-tensors": (4, 8)}
ENGINE_PACKED_FORMATS = {"awq": ("gemm",), "gptq": ("gptq", "gptq_v2"), "compressed-tensors": CT_FORMATS}
CT_INT_STRATEGIES = ("group", "channel", "tensor")  # a scale per group of columns, per row, per matrix
# every linear of these is packed: a dense projection in such a checkpoint is damage (a compressed-tensors
# checkpoint keeps its config's `ignore` modules dense)
ALL_PACKED_METHODS = ("awq", "gptq")
# fp8 weights (transformers' block fp8 "quant_method": "fp8", compressed-tensors' float-quantized): each value times
# its scale, rounded to bf16 once at load (engine/safetensors/widened.py) — what transformers does where no fp8
# kernel runs (its FP8 quantizer: "We will default to dequantizing the model to bf16")
ENGINE_FP8_NOTE = ("its fp8 weights are widened to bf16 at load (each value times its block's scale, rounded "
                   "once: 2 bytes a weight, no CPU runs fp8 products) and run as bf16 rows")
PACKED_SUFFIXES = ("qweight", "qzeros", "scales", "g_idx")  # one packed linear's tensors (AutoAWQ / AutoGPTQ names)
# compressed-tensors' (compressors/pack_quantized): codes, scales, zero points, the dense shape, the act-order map
CT_PACKED_SUFFIXES = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
# beside a quantized linear's .weight of int8 / fp8 values: its scales (compressed-tensors' weight_scale, transformers'
# block fp8 weight_scale_inv), zero points, and the input scales of static activation quantization
SCALED_SUFFIXES = ("weight_scale", "weight_scale_inv", "weight_zero_point", "weight_g_idx", "input_scale",
                   "input_zero_point")
CODE_LEAVES = ("qweight", "weight_packed")  # the tensor that holds a packed linear's codes
ENGINE_CHECKPOINT_SOURCES = ("transformers-modeling-llama", "llama-cpp-tensor-mapping", "transformers-rope-utils",
                             "gptqmodel-packing", "compressed-tensors-formats") + CONVERTED_CHECKPOINT_SOURCES

# transformers' tensor names -> llama.cpp's (gguf-py tensor_mapping.py), the names the engine's builder reads
GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight"}
LAYER_NAMES = {  # after "model.layers.N."
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # a buffer older checkpoints saved: the recipe computes it
LAYER_REQUIRED = ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.q_proj.weight",
                  "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                  "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
LAYER_REQUIRED_BY_TYPE = {  # what each model type's block adds (Qwen2: Q/K/V biases; Qwen3: per-head Q/K norms)
    "qwen2": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
    "qwen3": ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
}


def llama_cpp_name(name: str) -> str | None:
    """llama.cpp's name for a transformers tensor name (None: not one the engine's recipe reads)."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[2].isdigit() and parts[3] in LAYER_NAMES:
        return f"blk.{parts[2]}.{LAYER_NAMES[parts[3]]}"
    return None


def packed_bytes_per_weight(bits: int, symmetric: bool, group: int | None) -> float:
    """Bytes an AWQ / GPTQ weight takes on the engine (engine/safetensors/packed.py): its code, and per dot group (128
    where the checkpoint's groups split into 128s or it has one per channel, else 32) a float16 scale, plus a float16
    minimum where each group has its own zero."""
    g = 128 if group in (None, -1) or group % 128 == 0 else 32
    return bits / 8 + (2 + (0 if symmetric else 2)) / g


def dense_names(names: set[str]) -> set[str]:
    """The names with each quantized linear as the dense prefix.weight it stands for: its codes (qweight,
    weight_packed) under that name, its scales, zeros and act-order map (PACKED_SUFFIXES, CT_PACKED_SUFFIXES,
    SCALED_SUFFIXES) dropped."""
    linears = {n.rpartition(".")[0] for n in names if n.rpartition(".")[2] in CODE_LEAVES + ("weight",)}
    out = set()
    for n in names:
        prefix, _, leaf = n.rpartition(".")
        if leaf in CODE_LEAVES:
            out.add(prefix + ".weight")
        elif prefix not in linears or leaf not in PACKED_SUFFIXES + CT_PACKED_SUFFIXES + SCALED_SUFFIXES:
            out.add(n)
    return out


def tensor_problem(names: set[str], model_type: str, layers: int, tied: bool, packed: bool = False,
                   cfg: dict | None = None) -> str | None:
    """Why the engine cannot build from these checkpoint tensors (one it would not read, one it needs and the
    checkpoint lacks), or None. Such a checkpoint goes to transformers, whose health check names the damage.
    Packed linears (AWQ / GPTQ) count as the weights they stand for; `packed`: the config declares them, so a dense
    projection is damage (a checkpoint saved after dequantizing, with the old config). A converted architecture's
    (`cfg`: its config.json) are checked by the layout the engine's reader uses."""
    if model_type in CONVERTED_CHECKPOINT_ARCHS:
        try:
            layout(model_type, cfg or {}, names, "the checkpoint")
        except LayoutError as exc:
            return exc.problem
        return None
    dense = sorted(n for n in names if packed and n.endswith("_proj.weight"))
    if dense:
        return f"tensor {dense[0]} is dense in a checkpoint whose config declares packed weights"
    names = dense_names(names)
    odd = sorted(n for n in names if llama_cpp_name(n) is None and not n.endswith(IGNORED_SUFFIXES))
    if odd:
        return f"tensor {odd[0]} is not one the engine's recipe reads" + (f" (+{len(odd) - 1} more)" if len(odd) > 1
                                                                          else "")
    need = ["model.embed_tokens.weight", "model.norm.weight"] + ([] if tied else ["lm_head.weight"])
    need += [f"model.layers.{i}.{n}" for i in range(layers)
             for n in LAYER_REQUIRED + LAYER_REQUIRED_BY_TYPE.get(model_type, ())]
    missing = [n for n in need if n not in names]
    return f"tensor {missing[0]} is missing from the checkpoint" if missing else None


def why_not_engine_quant(q) -> list[str]:
    """Why the engine cannot run a pre-quantized checkpoint's weights (empty: it can); `q`: the checkpoint's
    model.quantization.CheckpointQuant (method, bits, group_size, format, ...). fp8 weights are widened to bf16."""
    if q.method == "fp8":
        return []
    if q.method not in ENGINE_PACKED_METHODS:
        return [f"its {q.method} weights have no engine reader yet (the engine runs "
                f"{', '.join(m.upper() for m in ENGINE_PACKED_METHODS)} and fp8 checkpoints)"]
    name, reasons = q.method.upper(), []
    if q.method == "compressed-tensors":
        name = "compressed-tensors"
        if q.format == CT_MIXED:
            return ["a compressed-tensors checkpoint whose config groups differ in weight scheme or format (the "
                    "engine reads one scheme a checkpoint)"]
        if q.float_values:
            return [] if q.bits == 8 and q.format in CT_FORMATS else \
                [f"{q.bits}-bit float compressed-tensors '{q.format}' weights (the engine widens 8-bit fp8 ones)"]
        if q.strategy not in CT_INT_STRATEGIES:
            reasons.append(f"compressed-tensors int weights with a scale per {q.strategy} (the engine reads a scale "
                           f"per {', '.join(CT_INT_STRATEGIES)})")
    if q.bits not in ENGINE_PACKED_BITS[q.method]:
        reasons.append(f"{q.bits}-bit {name} (the engine runs {', '.join(map(str, ENGINE_PACKED_BITS[q.method]))}-bit)")
    if q.format not in ENGINE_PACKED_FORMATS[q.method]:
        reasons.append(f"{name} '{q.format}' packing (the engine reads {', '.join(ENGINE_PACKED_FORMATS[q.method])})")
    if q.group_size not in (None, -1) and (q.group_size <= 0 or q.group_size % 32):
        reasons.append(f"{name} groups of {q.group_size} weights (the engine's dot products take multiples of 32)")
    if q.method == "awq" and q.raw.get("zero_point") is False:
        reasons.append("AWQ without zero points (the engine reads zero_point=True checkpoints)")
    return reasons


def why_not_engine_checkpoint(model_type: str, dtype: str | None, rope_type: str | None,
                              quant, tensors: str | None = None) -> list[str]:
    """Short reasons the engine does not read this transformers checkpoint (empty: it does); `tensors`: the
    checkpoint's tensor_problem, read by the model stage from the shards' headers; `quant`: its
    CheckpointQuant (None: dense)."""
    reasons = [tensors] if tensors else []
    if model_type not in ENGINE_CONFIG_ARCHS:
        reasons.append(f"model type '{model_type}' is not one the engine reads from config.json "
                       f"({', '.join(ENGINE_CONFIG_ARCHS)})")
    hybrid, converted = model_type in HYBRID_CHECKPOINT_ARCHS, model_type in CONVERTED_CHECKPOINT_ARCHS
    if quant is not None and converted:
        reasons.append(f"a {quant.method} {model_type} checkpoint (the engine reads this architecture's bf16, fp16 "
                       "and fp32 weights)")
    elif quant is not None:
        reasons += why_not_engine_quant(quant)
    elif dtype not in ENGINE_CHECKPOINT_DTYPES:
        reasons.append(f"weights in {dtype or 'an unstated dtype'} (the engine reads "
                       f"{', '.join(ENGINE_CHECKPOINT_DTYPES)})")
    if not converted:
        allowed = ENGINE_ROPE_TYPES
    else:  # the hybrids: the plain rotary only
        allowed = ("default",) if hybrid else ROPE_TYPES_BY_ARCH.get(model_type, BLOCK_ROPE_TYPES)
    if (rope_type or "default") not in allowed:
        where = f"on a {model_type} checkpoint " if converted else ""
        reasons.append(f"rotary scaling '{rope_type}' {where}is not implemented by the engine")
    return reasons
