#!/usr/bin/env bash
# Creates .venv and installs hydra-rlhf with its test extra. Idempotent: a second run is quick.
# PyTorch is installed first, so that the package's `torch>=2.4` requirement is already met: on
# the project's CPU machines `torch==2.13.0` is the CPU build kept on local disk, where a bare
# `torch` would pull a multi-GB CUDA build. HYDRA_TORCH_SPEC picks another build (e.g. a CUDA one).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip >/dev/null
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${HYDRA_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[test]"
echo "hydra-rlhf is installed in $(pwd)/.venv ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
