#!/usr/bin/env bash
# The prepared one-GPU check (H100/H200; torch + transformers + the project's other dependencies,
# no vLLM, no internet): a few bf16 GRPO steps of SmolLM2 with HF generation, the step time split,
# MFU against the bf16 matmul measured in the same process, and the CPU-only tuning checked off.
# Under 8 minutes; writes runs/gpu_check/gpu_check.json. Extra flags go to gpu_check.py, e.g.
#   bash benchmarks/gpu_check.sh --model /path/to/smollm2 --random-weights
# Exit status: 0 all checks passed, 1 a check failed, other: it could not run (the message says why).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
"$PY" -c 'import torch, sys; torch.cuda.is_available() or (print("no CUDA device visible to torch", file=sys.stderr), sys.exit(2))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
