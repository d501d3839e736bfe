"""The support matrix, generated from the catalog and the reference profiles (README embeds it)."""

from __future__ import annotations

from ..catalog.attention import BACKENDS, AttentionQuery, why_not
from ..catalog.dtypes import DTYPES, dtype_verdicts
from ..catalog.packed_kernels import packed_cpu
from ..catalog.quantization import ON_THE_FLY, PREQUANTIZED, why_not_backend
from ..profiles import load_profile, profile_names

ATTENTION_COLUMNS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "sdpa", "flex_attention", "eager")


# (column, method, bits, group_size, format): a typical checkpoint of each kind
QUANT_COLUMNS = (("AWQ 4-bit", "awq", 4, 128, "gemm"), ("GPTQ 4-bit", "gptq", 4, 128, None),
                 ("fp8", "fp8", 8, None, None), ("bitsandbytes", "bitsandbytes", 4, None, None),
                 ("quanto", "quanto", 4, None, None))


def _half(verdicts) -> str:
    return "bfloat16" if verdicts["bfloat16"].native else "float16" if verdicts["float16"].native else "float32"


def _devices():
    for name in profile_names():
        m = load_profile(name)
        for d in m.accelerators or (m.cpu_device,):
            yield name, m, d, {v.dtype: v for v in dtype_verdicts(d, m.cpu, m.software)}


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    from .render import table

    return table(rows, header)


def quantization_matrix(markdown: bool = True) -> str:
    """The fastest kernel for each kind of quantized weights each device runs (hardware and dtype
    rules; whether its package is installed is the plan's business)."""
    rows = []
    for name, m, d, verdicts in _devices():
        # the dtypes a plan may compute in here: native ones, and fp16 kept for memory (Pascal)
        dtypes = [t for t in DTYPES
                  if verdicts[t].native or (t == "float16" and verdicts[t].runnable)]
        cells = []
        for _, method, bits, group, fmt in QUANT_COLUMNS:
            pool = sorted((b for b in (*PREQUANTIZED, *ON_THE_FLY) if b.method == method), key=lambda b: -b.priority)
            ok = [b for b in pool if any(not why_not_backend(b, d, m.software, t, bits, group_size=group, sym=True,
                                                             fmt=fmt, check_package=False) for t in dtypes)]
            cells.append(ok[0].name if ok else "✗")
        # a GGUF file: packed weight-only CPU kernels (catalog/packed_kernels.py), or dequantized on accelerators
        cells.append("packed int4/int8" if packed_cpu([d], m.cpu) else "dequantized")
        rows.append([name, d.name, *cells])
    return _table(["profile", "device", *(c[0] for c in QUANT_COLUMNS), "GGUF"], rows, markdown)


def support_matrix(markdown: bool = True, head_dim: int = 128) -> str:
    """Attention and dtypes per reference device, then quantization kernels."""
    return _attention_matrix(markdown, head_dim) + "\n\n" + quantization_matrix(markdown)


def _attention_matrix(markdown: bool = True, head_dim: int = 128) -> str:
    header = ["profile", "device", "CC", "bf16", "fp16", *ATTENTION_COLUMNS]
    rows = []
    for name, m, d, verdicts in _devices():
        half = _half(verdicts)
        cells = []
        for attn in ATTENTION_COLUMNS:
            # a device "supports" an implementation when the hardware rules pass; a missing
            # package is marked separately (it can be installed)
            q = AttentionQuery(d, m.software, half, head_dim)
            hardware_ok = not why_not(BACKENDS[attn], q, check_package=False)
            cells.append("✗" if not hardware_ok else "✓" if not why_not(BACKENDS[attn], q) else "✓ (install)")
        rows.append([name, d.name, str(d.compute_capability or "-"), "✓" if verdicts["bfloat16"].native else "✗",
                     "✓" if verdicts["float16"].native else "✗", *cells])
    return _table(header, rows, markdown)
