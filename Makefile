# Entry points; each one sets up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test test-slow lint demo bench-gmm bench-operators

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check sciprior tests benchmarks scripts
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

lint: setup
	$(VENV)/bin/ruff check sciprior tests benchmarks scripts

demo: setup
	$(VENV)/bin/sciprior reconstruct configs/ct/sparse_view.yaml

bench-gmm: setup
	$(PY) benchmarks/gmm_posterior.py

bench-operators:
	.venv-bench/bin/python benchmarks/operators.py --threads 1 2 --omp-wait-policy PASSIVE --json docs/benchmarks/operators.json
