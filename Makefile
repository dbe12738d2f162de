# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   ?= torch==2.14.1 torchvision==0.29.1
ARGS    ?=

.PHONY: venv run test test-fast lint bench report advise clean

# a bare `make` prepares the environment (the first target would otherwise come from the docker include)
.DEFAULT_GOAL := venv

include docker/docker.mk

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

## the main job on the embedded default (1 server + 8 workers, MNIST-5k, ByzSGDnm, 3 Byzantine workers)
run: $(STAMP)
	$(BIN)/python -m launch.run $(ARGS)

## the whole test suite (unit, property and short multi-process end-to-end tests)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

## unit tests only (no process groups)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not e2e" $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m launch.bench $(or $(ARGS),all)

report: $(STAMP)
	$(BIN)/python -m launch.report $(or $(ARGS),runs)

advise: $(STAMP)
	$(BIN)/python -m launch.advise $(ARGS)

clean:
	rm -rf runs outputs multirun .pytest_cache
