VENV ?= .venv
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup demo test test-all bench

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/hiddenkey train --overwrite

test: setup
	$(VENV)/bin/python -m pytest -q

test-all: setup
	$(VENV)/bin/python -m pytest -q -m ""

bench: setup
	$(VENV)/bin/python benchmarks/bench_step.py
