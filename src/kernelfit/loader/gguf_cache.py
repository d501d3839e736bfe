"""Dequantized GGUF checkpoints, cached as safetensors.

Without the `kernels` package transformers dequantizes a GGUF file on every load, and its GGUF
path re-parses the file's metadata several times (≈15 s for the 100 MB SmolLM2 file on 2 cores).
The first load writes the dense model + tokenizer to the user cache dir; later loads read that
(≈1 s). Entries are keyed by the file's content (paths.files_key: name, size, both ends hashed),
so clones and venvs share one, and are written to a temporary directory
and renamed into place, so an interrupted write leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path

from ..model.spec import ModelSpec
from ..cache_entry import build_entry, verified_entry
from ..paths import files_key, writable_cache_root

FORMAT_VERSION = 1


def _key(gguf: Path) -> str:
    return f"{gguf.stem}-{files_key([gguf], FORMAT_VERSION)}"


def _entry(spec: ModelSpec, root: Path | None = None) -> tuple[Path, Path]:
    gguf = Path(spec.model_dir or "") / (spec.gguf_file or "")
    return gguf, (root or writable_cache_root()) / "gguf" / _key(gguf)


def cached_dir(spec: ModelSpec) -> Path | None:
    """The cache entry for this GGUF model, if complete and intact (a damaged one is removed)."""
    gguf, final = _entry(spec)
    return verified_entry(final) if gguf.is_file() else None


def materialise(spec: ModelSpec, progress=print) -> Path:
    """Return a directory holding the dequantized model and tokenizer, creating it if needed."""
    hit = cached_dir(spec)
    if hit is not None:
        return hit
    gguf, final = _entry(spec, writable_cache_root())
    # float32 safetensors of every parameter, plus the tokenizer
    return build_entry(final, lambda tmp: _convert_into(tmp, spec, gguf), need_bytes=spec.params * 4 + (64 << 20),
                       what=f"dequantizing {gguf.name}", progress=progress)


def _convert_into(tmp: Path, spec: ModelSpec, gguf: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.model_dir, gguf_file=spec.gguf_file)
    # float32 keeps the dequantized values exactly; the plan's dtype is applied when loading
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, gguf_file=spec.gguf_file, dtype=torch.float32,
                                                 device_map={"": "cpu"})
    # The weights are dense now: drop the GGUF quantizer so save_pretrained writes plain safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return {"source": str(gguf), "format": FORMAT_VERSION, "gguf_quantization": spec.quantization.raw}
