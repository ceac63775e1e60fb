# Quickstart: `make demo` and `make test` each create .venv when missing and install squeezer
# with its pinned dependencies (pyproject.toml) before running.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench-zoo clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/squeezer demo

# The suite CI runs; long runs (full-size models) are marked `slow` and run with `make test-slow`.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow tests

lint: $(STAMP)
	$(BIN)/ruff check compiler passes schedules targets tests
	$(BIN)/mypy compiler/api.py compiler/module.py compiler/artifact.py compiler/compression.py \
		compiler/recipe.py compiler/data.py compiler/errors.py

bench-zoo: $(STAMP)
	$(BIN)/squeezer bench zoo --threads 2

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
