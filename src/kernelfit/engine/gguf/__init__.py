"""GGUF files: their block layouts, the reader that makes the engine's weights, and the file's own tokenizer."""
