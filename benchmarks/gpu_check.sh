#!/usr/bin/env bash
# The GPU check: the PPO variants benchmark at llama-120m and at llama-1b (~1B, random init), its
# --memory-budget mode (Hydra vs LoRA: the largest batch each fits in one budget, and seconds per
# sample there) and, on a machine with two GPUs, a 2-process data-parallel PPO; then one table of all
# of it (benchmarks/gpu_table.py). Each part writes its JSON under $GPU_CHECK_OUT and prints as it goes,
# so a check cut short keeps what it measured.
#
#   benchmarks/gpu_check.sh                    # everything (not yet run on a GPU: no time measured)
#   GPU_CHECK_PARTS=variants benchmarks/gpu_check.sh
#
# Settings (environment): GPU_CHECK_OUT (default outputs/benchmarks/gpu_check), GPU_CHECK_PARTS (any of
# variants,budget,ddp; default all three), GPU_CHECK_BUDGET (default 24GiB), GPU_CHECK_BUDGET_SIZE
# (default llama-1b), PYTHON (default .venv/bin/python where it exists, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${GPU_CHECK_OUT:-outputs/benchmarks/gpu_check}
PARTS=",${GPU_CHECK_PARTS:-variants,budget,ddp},"
BUDGET=${GPU_CHECK_BUDGET:-24GiB}
BUDGET_SIZE=${GPU_CHECK_BUDGET_SIZE:-llama-1b}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
if [ "$gpus" -lt 1 ]; then
    echo "benchmarks/gpu_check.sh: no CUDA device visible to $PYTHON (torch.cuda.device_count() is 0)" >&2
    exit 2
fi
echo "$(date -u +%H:%M:%S) $gpus GPU(s): $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"

bench() { echo "$(date -u +%H:%M:%S) ppo_variants.py $*"; "$PYTHON" benchmarks/ppo_variants.py --timing-stat median "$@"; }
status=0
if [[ $PARTS == *,variants,* ]]; then
    bench --sizes llama-120m --batch 8 --iterations 3 --out "$OUT/llama-120m" || status=1
    # both rollout engines side by side (hydra, hydra+vllm), where vLLM is installed (./setup.sh --vllm)
    if "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
        bench --sizes llama-120m --variants hydra --rollout-engine hf,vllm --batch 8 --new-tokens 32 \
            --iterations 3 --out "$OUT/vllm" || status=1
    else
        echo "vLLM rollouts: skipped, vllm is not installed (./setup.sh --vllm)"
    fi
    bench --sizes llama-1b --batch 8 --iterations 3 --out "$OUT/llama-1b" \
        --variants sft,full,lora,lora-dynamic,j-hydra,hydra,hydra-grpo,lora-grpo || status=1
fi
if [[ $PARTS == *,budget,* ]]; then
    bench --sizes "$BUDGET_SIZE" --variants lora,hydra --memory-budget "$BUDGET" --budget-only \
        --min-batch 8 --bisect-tolerance 0.125 --iterations 1 --out "$OUT/budget" || status=1
fi
if [[ $PARTS == *,ddp,* ]]; then
    if [ "$gpus" -ge 2 ]; then
        echo "$(date -u +%H:%M:%S) 2-process PPO against 1 process"
        "$PYTHON" benchmarks/ppo_processes.py --size llama-120m --processes 2 --batch 64 --new-tokens 32 \
            --out "$OUT/ddp" || status=1
    else
        echo "2-process PPO: skipped, $gpus GPU here"
    fi
fi
"$PYTHON" benchmarks/gpu_table.py "$OUT" | tee "$OUT/table.md"
exit $status
