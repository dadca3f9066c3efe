#!/usr/bin/env bash
# GPU check: peak torch.cuda.max_memory_allocated and s/step of WDM's training and sampling steps
# (128^3, 256^3 fp32/bf16, two levels at 512^3) and a 2-step DDP run, as one plain-text table.
#   bash bench/gpu_check.sh                      # on a CUDA machine (< 8 min)
#   bash bench/gpu_check.sh --out results/bench/gpu_check.txt
#   bash bench/gpu_check.sh --cpu-smoke          # tiny sizes on the CPU: tests the script (< 1 min)
# Uses the python on PATH (activate the project's environment first) unless PYTHON is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
