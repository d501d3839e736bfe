"""model: a model's shape from its config or GGUF header only (never its weights) -> `ModelSpec`."""
