# Entry points; each one sets up .venv first (idempotent).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-bench test test-slow test-cpu-variants lint demo train-priors train-mri-native train-mri-native-complex bench-priors bench-training \
	bench-reconstruction bench-reconstruction-native \
	bench-gmm bench-operators

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/ruff check sciprior tests benchmarks scripts docs/examples
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

# the default selection at 1 and 2 threads and on MKL's other code paths (MKL_CBWR pins the code path MKL would
# take on another CPU, e.g. AVX2-only or AVX-512 Xeons): results that are only equal up to rounding must be
# tested as such (docs/reproducibility.md). About 1.5 min per setting on 2 cores.
test-cpu-variants: setup
	@set -e; for v in OMP_NUM_THREADS=1 OMP_NUM_THREADS=2 MKL_CBWR=COMPATIBLE MKL_CBWR=AVX512; do \
		echo "== $$v"; env $$v $(PY) -m pytest -q; \
	done

lint: setup
	$(VENV)/bin/ruff check sciprior tests benchmarks scripts docs/examples
	$(VENV)/bin/lint-imports

demo: setup
	$(VENV)/bin/sciprior reconstruct configs/ct/sparse_view.yaml --overwrite true

# ~30 min on 1 thread; deepinv's DPS runs side by side, so it needs the benchmark venv
bench-gmm: setup-bench
	OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/gmm_posterior.py --threads 1

# peers (deepinv, ASTRA, sigpy) in their own venv: deepinv upgrades torch (from PyPI: a large download) and
# pulls torchvision
setup-bench:
	VENV=.venv-bench bash scripts/setup.sh
	.venv-bench/bin/python -m pip install -q -e ".[bench]"

# the shipped demo priors, from scratch, one after the other on 2 threads each (measured on 2 idle cores:
# MRI 50 min, CT about 50 min); then install them into sciprior/modalities/<name>/prior and regenerate docs/priors.md
# with `make bench-priors`
train-priors: setup
	OMP_NUM_THREADS=2 $(VENV)/bin/sciprior train configs/ct/train.yaml --export.dirpath runs/ct_prior/export
	OMP_NUM_THREADS=2 $(VENV)/bin/sciprior train configs/mri/train.yaml --export.dirpath runs/mri_prior/export
	for m in ct mri; do cp runs/$$m''_prior/export/config.yaml runs/$$m''_prior/export/model.safetensors \
		sciprior/modalities/$$m/prior/; done

# the 1 mm MRI patch prior of configs/mri/own_kspace.yaml (builtin:mri/native): ~30 min on 2 idle cores with bf16
train-mri-native: setup
	OMP_NUM_THREADS=2 $(VENV)/bin/sciprior train configs/mri/train_native.yaml --export.dirpath runs/mri_native_prior/export
	mkdir -p sciprior/modalities/mri/prior_native
	cp runs/mri_native_prior/export/config.yaml runs/mri_native_prior/export/model.safetensors sciprior/modalities/mri/prior_native/

# its complex (2-channel) twin, builtin:mri/native_complex (same cost)
train-mri-native-complex: setup
	OMP_NUM_THREADS=2 $(VENV)/bin/sciprior train configs/mri/train_native_complex.yaml \
		--export.dirpath runs/mri_native_complex_prior/export
	mkdir -p sciprior/modalities/mri/prior_native_complex
	cp runs/mri_native_complex_prior/export/config.yaml runs/mri_native_complex_prior/export/model.safetensors \
		sciprior/modalities/mri/prior_native_complex/

bench-priors: setup
	OMP_NUM_THREADS=1 $(PY) benchmarks/prior_quality.py --prior all --out docs

bench-training: setup
	$(PY) benchmarks/training.py

# ~40 min on 2 cores (CT and MRI in parallel, 1 thread each); writes docs/benchmarks/reconstruction.md
bench-reconstruction: setup-bench
	OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --tasks ct --json docs/benchmarks/reconstruction_ct.json --no-write & \
	OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --tasks mri --json docs/benchmarks/reconstruction_mri.json --no-write & \
	wait
	.venv-bench/bin/python benchmarks/reconstruction.py --render docs/benchmarks/reconstruction_ct.json docs/benchmarks/reconstruction_mri.json

# the native-resolution MRI tasks alone (~20 min each, in parallel on the 2 cores), then the table of every task from the
# stored JSON results
bench-reconstruction-native: setup-bench
	for t in mri-native-4x mri-native-8x; do \
		OMP_NUM_THREADS=1 .venv-bench/bin/python benchmarks/reconstruction.py --tasks $$t --problems 3 \
			--json docs/benchmarks/reconstruction_$$t.json --no-write & \
	done; wait
	.venv-bench/bin/python benchmarks/reconstruction.py --render docs/benchmarks/reconstruction_ct.json \
		docs/benchmarks/reconstruction_mri.json docs/benchmarks/reconstruction_mri-native-4x.json \
		docs/benchmarks/reconstruction_mri-native-8x.json

bench-operators: setup-bench
	.venv-bench/bin/python benchmarks/operators.py --threads 1 2 --omp-wait-policy PASSIVE --json docs/benchmarks/operators.json
