#!/usr/bin/env bash
# CPU rows of benchmarks/NOTES.md: Sudoku-MLP (batch 8 and 32), smoke and demo, both recursion modes
# (+ scan with remat=dots). ~10 minutes on 2 cores.   bash benchmarks/cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
RES="benchmarks/results/cpu-$(date +%Y%m%d-%H%M%S).jsonl"
: > "$RES"
bench() { echo "== $*" >&2; JAX_PLATFORMS=cpu python -m trm_jax.bench "$@" 2>/dev/null | tee -a "$RES" || echo "!! failed: $*" >&2; }
for m in loop scan; do
  bench --config=experiments/smoke.py --config.model.recursion=$m --steps=10
  bench --config=experiments/demo.py --config.model.recursion=$m --steps=10
  bench --config=experiments/sudoku_mlp.py --config.train.global_batch_size=8 --config.model.recursion=$m --steps=3 --warmup=1
  bench --config=experiments/sudoku_mlp.py --config.train.global_batch_size=32 --config.model.recursion=$m --steps=3 --warmup=1
done
for b in 8 32; do
  bench --config=experiments/sudoku_mlp.py --config.train.global_batch_size=$b --config.model.recursion=scan \
    --config.model.remat=dots --steps=3 --warmup=1 --label=remat-dots
done
python benchmarks/table.py "$RES" --reference cpu
