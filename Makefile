# Two commands set everything up: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean

venv: $(STAMP)

# torch first, pinned, so that no other requirement can pull a different (multi-GB) build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,optim,lycoris,log]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sdxl_lora.demo --workdir demo_run

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks sdxl_train_network.py
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks sdxl_train_network.py

clean:
	rm -rf demo_run .pytest_cache
