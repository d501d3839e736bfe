"""A checkpoint's own quantization (its config's `quantization_config`, or a GGUF file's type), parsed
once into a typed value. The planner, loader, dequantizer and health check read this, never the dict."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..catalog.quantization import CT_MIXED
from ..errors import UsageError

# AutoAWQ's GEMM packing: nibble i of an int32 word holds output column AWQ_ORDER[i] of its 8 (the dequantizer for
# transformers, loader/dequantize.py, and the engine's reader, engine/safetensors/packed.py, both read it)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

# Methods the planner can place (it quantizes dense checkpoints itself); GGUF files are converted.
PREQUANTIZED_METHODS = ("awq", "gptq", "fp8", "compressed-tensors")
FP8_DEFAULT_BLOCK = (128, 128)


@dataclass(frozen=True)
class CheckpointQuant:
    method: str  # "awq", "gptq", "fp8", "compressed-tensors" or "gguf"
    bits: int | None = None
    group_size: int | None = None  # weights per scale (-1: per channel; fp8: elements per block)
    sym: bool | None = None  # GPTQ: symmetric
    format: str | None = None  # AWQ: gemm / gemv / gemv_fast; GPTQ: gptq / gptq_v2; GGUF: the file type (Q4_1);
    # compressed-tensors: its weights' format (CT_FORMATS, CT_MIXED)
    block: tuple[int, int] | None = None  # fp8: weight_block_size; compressed-tensors: block_structure
    file_bytes: int | None = None  # GGUF: bytes of tensor data
    float_values: bool = False  # the codes are fp8 values (fp8, compressed-tensors "float"), not integers
    strategy: str | None = None  # compressed-tensors: tensor, channel, group or block (a scale per what)
    act_order: bool = False  # GPTQ desc_act / compressed-tensors actorder "group": a g_idx maps columns to groups
    activations: str | None = None  # compressed-tensors: how its inputs were quantized in calibration ("8-bit
    # float dynamic per token"), None: weight-only
    raw: dict = field(default_factory=dict, compare=False)  # the config's own dict, handed to transformers

    @property
    def prequantized(self) -> bool:
        """Packed weights a kernel must run (AWQ/GPTQ/fp8), not a file kernelfit converts (GGUF)."""
        return self.method in PREQUANTIZED_METHODS

    def label(self) -> str:
        """"Q4_1 gguf", "4-bit awq", "4-bit int compressed-tensors (pack-quantized)"."""
        if self.method == "compressed-tensors":
            return f"{self.bits}-bit {'float' if self.float_values else 'int'} {self.method} ({self.format})"
        return f"{self.format if self.method == 'gguf' else f'{self.bits}-bit'} {self.method}"


def _int(q: dict, key: str, default, where: str) -> int | None:
    value = q.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where}: quantization_config.{key} must be a whole number, not {value!r}")
    return value


def parse_quantization(q, where: str) -> CheckpointQuant | None:
    """The typed form of a config's `quantization_config` (None for a dense checkpoint)."""
    if q is None:
        return None
    if not isinstance(q, dict):
        raise UsageError(f"{where}: quantization_config must be an object, not {type(q).__name__}")
    method = str(q.get("quant_method", "")).lower()
    if not method:
        return None
    if method not in PREQUANTIZED_METHODS:
        raise UsageError(f"{where} is quantized with '{method}', which kernelfit's planner does not handle yet "
                         f"(it plans {', '.join(PREQUANTIZED_METHODS)} checkpoints and quantizes dense ones itself)")
    if method == "fp8":
        block = q.get("weight_block_size") or FP8_DEFAULT_BLOCK
        if not (isinstance(block, (list, tuple)) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            raise UsageError(f"{where}: quantization_config.weight_block_size must be two positive whole numbers")
        return CheckpointQuant("fp8", 8, block[0] * block[1], None, None, (block[0], block[1]), float_values=True,
                               raw=dict(q))
    if method == "compressed-tensors":
        return _compressed_tensors(q, where)
    bits = _int(q, "bits", 4, where)
    group = _int(q, "group_size", None, where)
    if method == "gptq":
        return CheckpointQuant("gptq", bits, group, bool(q.get("sym", not q.get("zero_point", False))),
                               str(q.get("checkpoint_format", "gptq")).lower(), act_order=bool(q.get("desc_act")),
                               raw=dict(q))
    return CheckpointQuant("awq", bits, group, None, str(q.get("version", "gemm")).lower(), raw=dict(q))


def _ct_args(args, where: str) -> tuple:
    """One compressed-tensors QuantizationArgs dict (compressed_tensors/quantization/quant_args.py) as a comparable
    tuple: (num_bits, type, symmetric, strategy, group_size, block_structure, actorder, dynamic)."""
    if not isinstance(args, dict):
        raise UsageError(f"{where}: a compressed-tensors config group's weights must be an object")
    bits = _int(args, "num_bits", 8, where)
    group = _int(args, "group_size", None, where)
    kind = str(args.get("type", "int")).lower()
    strategy = args.get("strategy") or ("tensor" if group is None else "channel" if group == -1 else "group")
    block = args.get("block_structure")
    if block is not None and not (isinstance(block, (list, tuple)) and len(block) == 2 and
                                  all(isinstance(b, int) and b > 0 for b in block)):
        raise UsageError(f"{where}: quantization_config block_structure must be two positive whole numbers")
    order = args.get("actorder")
    order = "group" if order in (True, "dynamic") else "weight" if order == "static" else order or None
    return (bits, kind, bool(args.get("symmetric", True)), str(strategy).lower(), group,
            tuple(block) if block else None, order, args.get("dynamic", False))


def _compressed_tensors(q: dict, where: str) -> CheckpointQuant:
    """A compressed-tensors config (its config_groups' weight schemes; compressed_tensors/quantization/quant_config.py):
    one scheme for every quantized linear, else format CT_MIXED (kernelfit's readers take one scheme a checkpoint)."""
    groups = q.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise UsageError(f"{where}: a compressed-tensors quantization_config needs config_groups (re-save the "
                         "checkpoint with llm-compressor)")
    schemes, formats, inputs = set(), set(), set()
    for g in groups.values():
        if not isinstance(g, dict):
            raise UsageError(f"{where}: compressed-tensors config_groups entries must be objects")
        if g.get("weights") is None:
            continue
        schemes.add(_ct_args(g["weights"], where))
        formats.add(str(g.get("format") or q.get("format") or "").lower())
        a = g.get("input_activations")
        inputs.add(None if not isinstance(a, dict) else
                   f"{a.get('num_bits', 8)}-bit {a.get('type', 'int')} "
                   f"{'dynamic' if a.get('dynamic') else 'static'} per {a.get('strategy') or 'tensor'}")
    if not schemes:
        raise UsageError(f"{where}: compressed-tensors config_groups quantize no weights; kernelfit reads weight "
                         "quantization (remove quantization_config for a dense checkpoint)")
    one = len(schemes) == 1 and len(formats) == 1 and len(inputs) == 1
    bits, kind, sym, strategy, group, block, order, _ = next(iter(sorted(schemes, key=str)))
    fmt = next(iter(formats)) if one else CT_MIXED
    return CheckpointQuant("compressed-tensors", bits, -1 if strategy == "channel" else group, sym, fmt, block,
                           float_values=kind == "float", strategy=strategy, act_order=order == "group",
                           activations=next(iter(inputs)) if one else None, raw=dict(q))


def gguf_quantization(file_type: str, file_bytes: int) -> CheckpointQuant:
    return CheckpointQuant("gguf", None, None, None, file_type, file_bytes=file_bytes,
                           raw={"quant_method": "gguf", "file_type": file_type, "file_bytes": file_bytes})
