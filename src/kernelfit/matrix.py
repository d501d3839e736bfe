"""The support matrix, generated from the catalog and the reference profiles (README embeds it)."""

from __future__ import annotations

from .catalog.attention import BACKENDS, AttentionQuery, why_not
from .catalog.dtypes import dtype_verdicts
from .profiles import load_profile, profile_names

ATTENTION_COLUMNS = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "sdpa", "flex_attention", "eager")


def support_matrix(markdown: bool = True, head_dim: int = 128) -> str:
    header = ["profile", "device", "CC", "bf16", "fp16", *ATTENTION_COLUMNS]
    rows = []
    for name in profile_names():
        m = load_profile(name)
        for d in m.accelerators or (m.cpu_device,):
            verdicts = {v.dtype: v for v in dtype_verdicts(d, m.cpu, m.software)}
            half = "bfloat16" if verdicts["bfloat16"].native else "float16" if verdicts["float16"].native else "float32"
            cells = []
            for attn in ATTENTION_COLUMNS:
                # a device "supports" an implementation when the hardware rules pass; a missing
                # package is marked separately (it can be installed)
                reasons = why_not(BACKENDS[attn], AttentionQuery(d, m.software, half, head_dim))
                hw = [r for r in reasons if "not installed" not in r]
                cells.append("✓" if not reasons else "✓ (install)" if not hw else "✗")
            rows.append([name, d.name, d.compute_capability or "-",
                         "✓" if verdicts["bfloat16"].native else "✗",
                         "✓" if verdicts["float16"].native else "✗", *cells])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    from .cli.render import table

    return table(rows, header)
