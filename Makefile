# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PIP     := $(BIN)/python -m pip
CONSTR  := requirements/constraints.txt
EXTRAS  ?= dev,curate,ray
PYDIRS  := $(wildcard src tests benchmarks scripts examples)

export OMP_NUM_THREADS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_AUTH_MODE ?= disabled

.PHONY: help install demo test test-all lint format bench zoo clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)

# The CPU torch wheel goes in first (it lies on local disk and installs in ~30 s); everything else
# is installed under the constraints file that pins it, so no package can pull a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml $(CONSTR)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c $(CONSTR) torch
	$(PIP) install -q -c $(CONSTR) -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install diffkit with all extras

demo: $(STAMP)  ## run the tour on the bundled tiny zoo and write out/tour/report.html
	$(BIN)/diffkit tour --out out/tour

test: $(STAMP) lint  ## lint + the default test suite
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: $(STAMP)  ## include the slow tests
	$(BIN)/python -m pytest -q --runslow

lint: $(STAMP)  ## ruff lint and format check
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/ruff format --check $(PYDIRS)

format: $(STAMP)  ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix $(PYDIRS)
	$(BIN)/ruff format $(PYDIRS)

bench: $(STAMP)  ## run every benchmark; results in benchmarks/results/
	OMP_NUM_THREADS=2 $(BIN)/python benchmarks/run_all.py

zoo: $(STAMP)  ## retrain every shipped tiny model from scratch with fixed seeds
	$(BIN)/python scripts/train_zoo.py --all

clean:  ## remove outputs (keeps .venv)
	rm -rf out .pytest_cache
