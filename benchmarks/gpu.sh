#!/usr/bin/env bash
# The issue-7 speed table on one NVIDIA GPU (written for an H200), both recursion modes.
#
#   bash benchmarks/gpu.sh            # from the repository root; ~5-8 minutes on an H200
#   STEPS=20 bash benchmarks/gpu.sh   # more timed steps
#
# Installs jax[cuda12]==0.10.2 (and this package, editable) with pip only if
# JAX cannot see a GPU yet. Writes every JSON line to
# benchmarks/results/gpu-<time>.jsonl (and $OUT/ when set) and prints the
# markdown table (benchmarks/table.py) to paste into benchmarks/NOTES.md.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-10}
EVAL_STEPS=${EVAL_STEPS:-5}
MODES=${MODES:-"loop scan"}

if ! python -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" 2>/dev/null; then
  echo "== installing jax[cuda12]==0.10.2" >&2
  python -m pip install -q "jax[cuda12]==0.10.2"
fi
python -c "import trm_jax" 2>/dev/null || python -m pip install -q -e .
python -c "import jax; print('devices:', jax.devices())" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || true

mkdir -p benchmarks/results
RES="benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S).jsonl"
: > "$RES"
bench() {  # label, then bench arguments
  local label=$1; shift
  echo "== $label: $*" >&2
  if ! timeout 300 python -m trm_jax.bench --label="$label" "$@" 2> >(grep -vE "^(I|W)[0-9]{4} " >&2) | tee -a "$RES"; then
    echo "!! failed: $label $*" >&2
  fi
}
for m in $MODES; do
  R="--config.model.recursion=$m"
  bench "" --config=experiments/sudoku_mlp.py $R --steps="$STEPS"
  bench "" --config=experiments/sudoku_att.py $R --steps="$STEPS"
  bench "" --config=experiments/arc1.py $R --config.train.global_batch_size=192 --steps="$STEPS"
  bench "" --config=experiments/sudoku_mlp.py $R --eval --steps="$EVAL_STEPS" --warmup=1
done
# Extra rows (e.g. EXTRA="--config.model.remat=dots") run Sudoku-MLP train in scan mode with those overrides.
if [ -n "${EXTRA:-}" ]; then
  bench "extra" --config=experiments/sudoku_mlp.py --config.model.recursion=scan $EXTRA --steps="$STEPS"
fi
[ -n "${OUT:-}" ] && cp "$RES" "$OUT/" || true
echo
python benchmarks/table.py "$RES" --reference gpu
