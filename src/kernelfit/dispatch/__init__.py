"""dispatch: `attn_implementation="kernelfit"` — per-call attention kernel choice with fallback on
"cannot run here" (dispatcher.py), the kernels (kernels.py), and the FlashAttention guard (guard.py)."""
