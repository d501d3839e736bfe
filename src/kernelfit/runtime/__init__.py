"""runtime: load (plan -> from_pretrained -> health check), dispatch (per-call attention kernel
choice with fallback), guard (code that hard-codes FlashAttention-2), generate. Imports torch."""
