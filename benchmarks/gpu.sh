#!/usr/bin/env bash
# Issue 15's whole GPU session in one call (~8-9 minutes on one H200), from the repository root:
#
#   bash benchmarks/gpu.sh                 # needs a python whose jax sees a GPU (0.10.2 or newer)
#   BUDGET_S=400 STEPS=10 bash benchmarks/gpu.sh
#
# 1. kernel profile of the Sudoku-MLP loop train step, batch 768 (benchmarks/kernel_profile.py):
#    the top-25 kernels (name, launches, ms, % of the step) and the same by kernel kind;
# 2. the four bench rows (Sudoku-MLP train b768, Sudoku-attention train b768, ARC-attention train b192,
#    Sudoku-MLP eval 16 ACT steps b768) in both recursion modes (trm_jax.bench), then the markdown
#    table with the reference column (benchmarks/table.py);
# 3. A/B rows for the knobs whose GPU default is a prediction (run while the budget lasts):
#    scan with remat=dots (the CPU default), the transpose mixer (the CPU path), scan_unroll=2.
#
# No network: wheels in .whl/ (ml_collections, absl-py) are installed with
# `pip install --no-index --no-deps --target /tmp/site` and put first on PYTHONPATH; jax, flax, optax
# and numpy must already be installed. Every step has a timeout and the script stops starting new
# work once BUDGET_S seconds have passed. Output: stdout, and JSON lines + profile files under
# $OUT (when set, e.g. on a lent device machine) or benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS
BUDGET_S=${BUDGET_S:-480}
STEPS=${STEPS:-10}
EVAL_STEPS=${EVAL_STEPS:-3}
DEST=${OUT:-benchmarks/results}
STAMP=$(date +%Y%m%d-%H%M%S)
mkdir -p "$DEST"
RES="$DEST/gpu-$STAMP.jsonl"
: > "$RES"

if ls .whl/*.whl > /dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>&1 | grep -v WARNING >&2
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-1}
SMOKE=${SMOKE:-0}
TINY=()
PROF_TINY=()
if [ "$SMOKE" = 1 ]; then
  for kv in model.hidden_size=64 model.num_heads=2 model.H_cycles=1 model.L_cycles=1 model.L_layers=1 \
            model.halt_max_steps=2 train.global_batch_size=4 eval.batch_size=4; do
    TINY+=("--config.$kv"); PROF_TINY+=(--set "$kv")
  done
  STEPS=2; EVAL_STEPS=1
fi
SMOKE=$SMOKE python - <<'EOF' || exit 2
import os, sys, jax, flax, optax, ml_collections
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "| backend:", jax.default_backend(), jax.devices(), flush=True)
sys.exit(0 if jax.default_backend() == "gpu" or os.environ["SMOKE"] == "1" else "error: jax sees no GPU")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true

left() { echo $((BUDGET_S - (SECONDS - T0))); }
# run NEED_S CMD...: run CMD with a timeout of what is left of the budget, if at least NEED_S remain.
run() {
  local need=$1; shift
  if [ "$(left)" -lt "$need" ]; then echo "!! skipped (budget, $(left) s left): $*" >&2; return 1; fi
  timeout "$(left)" "$@"
}
bench() {  # label, then bench arguments
  local label=$1; shift
  echo "== [$((SECONDS - T0)) s] bench $label $*" >&2
  run 45 python -m trm_jax.bench --label="$label" "$@" "${TINY[@]}" 2> >(grep -vE "^(I|W)[0-9]{4} " >&2) | tee -a "$RES"
}

echo "== [$((SECONDS - T0)) s] kernel profile: Sudoku-MLP loop train, batch 768" >&2
run 90 python benchmarks/kernel_profile.py --config=experiments/sudoku_mlp.py --recursion=loop --steps=3 \
  --top=25 --out="$DEST/profile-$STAMP" "${PROF_TINY[@]}" 2> >(grep -vE "^(I|W)[0-9]{4} " >&2) | tee "$DEST/profile-$STAMP.md"

for m in loop scan; do
  R="--config.model.recursion=$m"
  bench "" --config=experiments/sudoku_mlp.py $R --steps="$STEPS"
  bench "" --config=experiments/sudoku_att.py $R --steps="$STEPS"
  bench "" --config=experiments/arc1.py $R --config.train.global_batch_size=192 --steps="$STEPS"
  bench "" --config=experiments/sudoku_mlp.py $R --eval --steps="$EVAL_STEPS" --warmup=1
done
echo
python benchmarks/table.py "$RES" --reference gpu

# A/B rows: each is the Sudoku-MLP (or attention) train row with one knob set back to its alternative.
bench "remat=dots" --config=experiments/sudoku_mlp.py --config.model.recursion=scan --config.model.remat=dots --steps="$STEPS"
bench "mixer=transpose" --config=experiments/sudoku_mlp.py --config.model.recursion=loop \
  --config.model.mixer_impl=transpose --steps="$STEPS"
bench "scan_unroll=2" --config=experiments/sudoku_mlp.py --config.model.recursion=scan --config.model.scan_unroll=2 \
  --steps="$STEPS"
bench "remat=dots" --config=experiments/sudoku_att.py --config.model.recursion=scan --config.model.remat=dots --steps="$STEPS"
echo
python benchmarks/table.py "$RES" --reference gpu
echo "== done in $((SECONDS - T0)) s; results: $RES" >&2
