"""loader: apply a Plan — weights cache (GGUF conversion, dequantization), from_pretrained through
the one translator (planner.hf_args), health check, generation, the CPU decode hook. Imports torch."""
