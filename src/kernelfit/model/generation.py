"""A checkpoint's generation_config.json: the sampling defaults and end-of-sequence ids its authors ship, which
`kernelfit serve` uses where a request does not say (as vLLM's `--generation-config auto` and transformers'
generate() do) and `run` / `serve` stop on. A GGUF file has none (llama.cpp uses its own defaults)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GenerationDefaults:
    temperature: float | None = None  # None: the request's own default (OpenAI's 1.0)
    top_p: float | None = None
    eos_token_ids: tuple[int, ...] = ()
    source: str | None = None  # the file they came from


def _number(cfg: dict, key: str, lo: float, hi: float) -> float | None:
    v = cfg.get(key)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
    return float(v) if ok else None


def generation_defaults(model_dir: str | None, gguf_file: str | None = None) -> GenerationDefaults:
    """The defaults of a checkpoint folder's generation_config.json (none for a GGUF file, a missing or unreadable
    file, or values outside their ranges: those are left to the request). As vLLM's server: the values present are
    used whatever do_sample says (a chat client asks for greedy with temperature 0)."""
    if not model_dir or gguf_file:
        return GenerationDefaults()
    f = Path(model_dir) / "generation_config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict):
        return GenerationDefaults()
    eos = cfg.get("eos_token_id")
    ids = tuple(i for i in (eos if isinstance(eos, list) else [eos]) if isinstance(i, int) and not isinstance(i, bool)
                and i >= 0)
    return GenerationDefaults(_number(cfg, "temperature", 0.0, 2.0), _number(cfg, "top_p", 1e-6, 1.0), ids, str(f))
