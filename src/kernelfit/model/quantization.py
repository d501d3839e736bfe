"""A checkpoint's own quantization (its config's `quantization_config`, or a GGUF file's type), parsed
once into a typed value. The planner, loader, dequantizer and health check read this, never the dict."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError

# AutoAWQ's GEMM packing: nibble i of an int32 word holds output column AWQ_ORDER[i] of its 8 (the dequantizer for
# transformers, loader/dequantize.py, and the engine's reader, engine/safetensors/packed.py, both read it)
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)

# Methods the planner can place (it quantizes dense checkpoints itself); GGUF files are converted.
PREQUANTIZED_METHODS = ("awq", "gptq", "fp8")
FP8_DEFAULT_BLOCK = (128, 128)


@dataclass(frozen=True)
class CheckpointQuant:
    method: str  # "awq", "gptq", "fp8" or "gguf"
    bits: int | None = None
    group_size: int | None = None  # weights per scale (-1: per channel; fp8: elements per block)
    sym: bool | None = None  # GPTQ: symmetric
    format: str | None = None  # AWQ: gemm / gemv / gemv_fast; GPTQ: gptq / gptq_v2; GGUF: the file type (Q4_1)
    block: tuple[int, int] | None = None  # fp8: weight_block_size
    file_bytes: int | None = None  # GGUF: bytes of tensor data
    raw: dict = field(default_factory=dict, compare=False)  # the config's own dict, handed to transformers

    @property
    def prequantized(self) -> bool:
        """Packed weights a kernel must run (AWQ/GPTQ/fp8), not a file kernelfit converts (GGUF)."""
        return self.method in PREQUANTIZED_METHODS

    def label(self) -> str:
        """"Q4_1 gguf", "4-bit awq"."""
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
        return CheckpointQuant("fp8", 8, block[0] * block[1], None, None, (block[0], block[1]), raw=dict(q))
    bits = _int(q, "bits", 4, where)
    group = _int(q, "group_size", None, where)
    if method == "gptq":
        return CheckpointQuant("gptq", bits, group, bool(q.get("sym", not q.get("zero_point", False))),
                               str(q.get("checkpoint_format", "gptq")).lower(), raw=dict(q))
    return CheckpointQuant("awq", bits, group, None, str(q.get("version", "gemm")).lower(), raw=dict(q))


def gguf_quantization(file_type: str, file_bytes: int) -> CheckpointQuant:
    return CheckpointQuant("gguf", None, None, None, file_type, file_bytes=file_bytes,
                           raw={"quant_method": "gguf", "file_type": file_type, "file_bytes": file_bytes})
