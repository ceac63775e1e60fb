# Quickstart: `make demo` and `make test` each create .venv when missing and install squeezer
# with its pinned dependencies (pyproject.toml) before running.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench-zoo tune-zoo tune-sparse tune-lowbit tune-vta clean install

# tuning_logs/ holds one record directory per target key (CPU classes, vta-<config>): pack each
PACK_RECORDS = for d in tuning_logs/*/; do $(BIN)/squeezer tune-pack "$$d" || exit 1; done

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
		compiler/recipe.py compiler/data.py compiler/errors.py compiler/tune/records.py \
		compiler/tune/farm.py compiler/tune/tracker.py compiler/tune/report.py

bench-zoo: $(STAMP)
	$(BIN)/squeezer bench zoo --threads 2

# Regenerate the shipped records for this machine's CPU class (quiet machine: measurements).
TUNE_MODELS ?= mobilenetv2:22m resnet18:17m
tune-zoo: $(STAMP)
	for m in $(TUNE_MODELS); do \
		$(BIN)/squeezer tune zoo:$${m%%:*} --records tuning_logs --trials 5000 \
			--time-budget $${m##*:} --threads 2 --png tune-$${m%%:*}.png || exit 1; \
	done
	$(PACK_RECORDS)

# Records for every case of `squeezer bench sparse` (kernel and conv cases gathered into a few
# models; the end-to-end model has its own). SPARSE_BUDGET is per model.
SPARSE_BUDGET ?= 10m
tune-sparse: $(STAMP)
	$(BIN)/python -m squeezer.bench_sparse_tune --records tuning_logs \
		--time-budget $(SPARSE_BUDGET) --threads 2
	$(PACK_RECORDS)

# Records for every case of `squeezer bench lowbit` (quick-suite cases first; sections gathered
# into one model each, the MobileNetV2 end-to-end models as themselves). LOWBIT_BUDGET is the
# search time of the whole run, shared by the models in proportion to their untuned kernels.
LOWBIT_BUDGET ?= 40m
tune-lowbit: $(STAMP)
	$(BIN)/python -m squeezer.bench_lowbit_tune --records tuning_logs \
		--time-budget $(LOWBIT_BUDGET) --threads 2 --remeasure-defaults
	$(PACK_RECORDS)

# VTA records for every layer of `squeezer bench vta` (MetaSchedule against the simulator's
# cycle count; one process, the simulator is fast). VTA_BUDGET bounds the whole run.
VTA_BUDGET ?= 14m
tune-vta: $(STAMP)
	$(BIN)/python -m squeezer.bench_vta_tune --records tuning_logs \
		--time-budget $(VTA_BUDGET) --trials-per-layer 32 --per-iter 8
	$(PACK_RECORDS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
