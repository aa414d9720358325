# SparseSight: `make demo`, `make test` (what CI runs), `make bench`, `make serve`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STUDIES ?= out/demo/datastore
MODEL_DIR ?= apps/sparsesight/model
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint format bench serve view sample-data clean

setup: $(VENV)/.installed

# CPU torch 2.13.0 and the pinned set; --no-deps keeps pip away from monailabel's CUDA/torchvision extras.
$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $@

sample-data: setup
	$(PY) -m sparsesight.cli sample-data

# PACS=1: the demo against a local Orthanc over DICOMweb (apt-get install orthanc orthanc-dicomweb first)
demo: setup
	$(PY) -m sparsesight.cli $(if $(PACS),pacs-demo,demo $(if $(RETRAIN),--retrain))

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the quick tier while working: unit tests without the slow ones (< 60 s on 2 cores)
test-fast: setup
	$(PY) -m pytest -q tests/unit -m "not slow" $(PYTEST_ARGS)

# what tests/unit/test_lint.py enforces in CI
lint: setup
	$(PY) -m ruff check lib apps tests slicer_extension
	$(PY) -m mypy

format: setup
	$(PY) -m ruff check --fix lib apps tests slicer_extension

# every benchmark at its default size (each prints its ratio table and writes bench/results or out/bench)
BENCHES ?= segmentation readout_grid explanations robustness off_grid_ablation reconstruction microstructure attribution active_learning reliability
bench: setup
	set -e; for b in $(BENCHES); do echo "== sparsesight.bench.$$b"; $(PY) -m sparsesight.bench.$$b; done

# Serve your own images: STUDIES=/path/to/niftis make serve (monailabel CLI needs the venv on PATH)
serve: setup
	source $(VENV)/bin/activate && monailabel start_server --app apps/sparsesight --studies $(STUDIES) \
	  --host $(HOST) --port $(PORT) --conf model_dir $(abspath $(MODEL_DIR))

# The browser review page over a running server (make serve): VIEW_PORT, SERVER (URL), TOKEN; headless by default
SERVER ?= http://$(HOST):$(PORT)
VIEW_PORT ?= 8080
view: setup
	$(PY) -m sparsesight.cli view --url $(SERVER) --host $(HOST) --port $(VIEW_PORT) $(if $(TOKEN),--token $(TOKEN))

clean:
	rm -rf out .pytest_cache
