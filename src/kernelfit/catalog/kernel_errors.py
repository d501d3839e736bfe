"""Error messages that mean "this kernel cannot run on this device/install" — the dispatcher
falls back on these and only these. Anything else (shape bugs, out of memory) is re-raised.

Each pattern is the text a real kernel raises, with where it comes from.
"""

from __future__ import annotations

import re

CANNOT_RUN_HERE: tuple[tuple[str, str], ...] = (
    (r"FlashAttention only supports Ampere GPUs or newer", "fa2-readme"),
    (r"no kernel image is available for execution on the device", "cuda-binary-compat"),
    (r"invalid device function", "cuda-binary-compat"),
    (r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0", "vllm-dtype"),
    (r"Flash Attention 3 requires compute capability", "transformers-fa3-gate"),
    (r"FlashAttention2? has been toggled on, but it cannot be used", "transformers-fa2-nocheck"),
    (r"No available kernel\.\s*Aborting execution", "torch-sdp-utils"),
    (r"CUDA capability sm_\d+ is not compatible with the current PyTorch installation", "pytorch-pr-158700"),
    (r"Could not run '[^']+' with arguments from the '[^']+' backend", "torch-sdp-utils"),
    (r"(?:only|not) supported on (?:this|the current) (?:GPU|device|architecture)", "vllm-dtype"),
)
_COMPILED = tuple(re.compile(p) for p, _ in CANNOT_RUN_HERE)
# Never swallowed, even if a pattern above happened to match too.
_NEVER = re.compile(r"out of memory|OutOfMemory", re.I)


def cannot_run_here(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    if _NEVER.search(text):
        return False
    if isinstance(exc, ImportError):  # ModuleNotFoundError too: the kernel's package is missing/broken
        return True
    return any(p.search(text) for p in _COMPILED)
