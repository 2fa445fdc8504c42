"""A one-minute CPU run for tests: tiny TRM on generated 4x4 Sudoku.

    python -m trm_jax.main --config=experiments/smoke.py --workdir=/tmp/smoke
    python -m trm_jax.main --config=experiments/smoke.py:recursion=scan --workdir=/tmp/smoke_scan
    python launch/sweep.py --config=experiments/smoke.py --workdir_base=runs/smoke_sweep   # get_sweep(): 2 runs

Exercises every path of a run (puzzle-embedding table, EMA, ACT carry,
evaluation with extra supervision steps, checkpoints) in a few seconds after
compilation; accuracy is not the point.
"""

from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm", recursion="loop")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="generated/sudoku_small", config="size=4,n_train=64,n_test=24,seed=0")
  c.model.update(
    hidden_size=32,
    num_heads=2,
    expansion=2.0,
    H_cycles=2,
    L_cycles=2,
    L_layers=1,
    puzzle_emb_ndim=32,
    puzzle_emb_len=1,
    pos_encodings="rope",
    halt_max_steps=3,
    dtype="float32",
    recursion=a["recursion"],
  )
  if a["arch"] == "hrm":
    c.model.update(H_layers=1, L_layers=1, H_cycles=1, L_cycles=2)
  c.train.update(
    global_batch_size=16,
    steps=12,
    epochs=-1,
    lr=1e-3,
    lr_warmup_steps=2,
    weight_decay=0.1,
    puzzle_emb_lr=1e-2,
    puzzle_emb_weight_decay=0.1,
    eval_every=6,
    checkpoint_every=4,
    log_every=2,
    keep_checkpoints=2,
  )
  c.eval.update(batch_size=16, supervision_steps=4, max_examples=-1)
  c.lock()
  return c


def get_sweep(arg=None):
  """A tiny sweep (two learning rates) to try launch/sweep.py: 24 s on 2 CPU cores, the table included."""
  del arg
  return [{"train.lr": lr} for lr in (1e-3, 3e-3)]
