# Quick start:  make demo   (set up, fetch the embedded models and data, run the main job:
#                            the generation composition benchmark, quick preset -> results/composition/gen-quick)
#               make test   (set up, lint, type-check, run the test suite)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint typecheck pytest

$(BIN)/road-interp: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet "pip<26"          # pip 26 refuses to download the bigbench sdist
	$(BIN)/pip install --quiet torch==2.13.0          # the CPU wheel; install it first
	$(BIN)/pip install --quiet -e ".[dev,data,notebooks]"
	touch $@

setup: $(BIN)/road-interp
	$(BIN)/road-interp fetch

PRESET ?= quick
demo: setup
	$(BIN)/road-interp demo
	$(BIN)/python -m experiments.composition.generation_bench --preset $(PRESET) -o results/composition/gen-$(PRESET)

lint: $(BIN)/road-interp
	$(BIN)/ruff check road_interp tests experiments
	$(BIN)/ruff format --check road_interp tests experiments

typecheck: $(BIN)/road-interp
	$(BIN)/mypy road_interp

pytest: setup
	$(BIN)/pytest -q

test: lint typecheck pytest
