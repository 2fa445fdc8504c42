#!/usr/bin/env bash
# The README's CPU table: trm_jax vs our eager-PyTorch re-implementation of the reference (Sudoku TRM-MLP
# train step), side by side and interleaved, in bf16 and float32. Needs `pip install torch`.
#   bash benchmarks/cpu.sh                 # batch 32, 3 runs each (~15-60 min on 2 cores, CPU-dependent)
#   BATCH=8 REPS=2 bash benchmarks/cpu.sh  # quicker
# Run it on a quiet machine: it prints the load average; above the CPU count the numbers are not clean.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
export PYTHONPATH=$PWD JAX_PLATFORMS=cpu
python benchmarks/cpu_vs_reference.py --batch="${BATCH:-32}" --reps="${REPS:-3}" --steps="${STEPS:-2}" \
  --variants="${VARIANTS:-torch-bf16,jax-bf16,torch-f32,jax-f32}" \
  --jsonl="benchmarks/results/cpu-vs-reference-$(date +%Y%m%d-%H%M%S).jsonl"
