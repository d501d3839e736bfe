"""export: hand a plan to vLLM or SGLang — the engine command line (and environment) that its own parser and\nhardware checks accept for a machine, or a one-line refusal with the reason."""
