#!/usr/bin/env bash
# Create .venv and install sciprior with its dev extra. Installs the CPU build of torch first when
# there is no NVIDIA GPU, so pip does not pull a multi-GB CUDA build. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    python -m pip install -q "torch>=2.4"
  else
    # CPU wheel (2.13.0 lies on disk on our machines; elsewhere it comes from the PyTorch CPU index).
    python -m pip install -q torch==2.13.0 2>/dev/null \
      || python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
python -m pip install -q -e ".[dev]" 2>&1 | grep -vE "^WARNING: Location|^\s*$" || true
python -c "import sciprior, torch; print(f'sciprior ready: torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
