"""Sudoku-Extreme, TRM with the MLP-mixer block (the paper's best Sudoku model).

    trm-train --config=experiments/sudoku_mlp.py --workdir=runs/sudoku_mlp

The first run downloads sapientinc/sudoku-extreme (pinned, sha256-checked) and
builds sudoku_extreme/aug1000; offline: --config.data.manual_dir=DIR with
train.csv / test.csv (docs/data.md).

HRM baseline: --config=experiments/sudoku_mlp.py:arch=hrm (attention, 27M).
Expected: 87.4% exact accuracy on the 423k test puzzles (TRM-MLP, 5M params);
HRM 55.0%. Runtime: ~18 h on 1 H100 in the paper's setup.

Schedule, as the reference runs it (README: epochs=50000 eval_interval=5000):
50k epochs of the 1k x 1000-augmentation set at batch 768, an evaluation every
5k epochs (`train.eval_every_epochs`): 10 evaluations, at steps 6510, 13020,
..., 65100 (learning-rate horizon 65104 steps; each 5k-epoch sampler iteration
drops its one partial batch, so the run ends at 65100).
HRM baseline (:arch=hrm) uses HRM's own schedule (HRM README: epochs=20000
eval_interval=2000, lr 1e-4): 10 evaluations at 2604, ..., 26040 steps; the
"HRM 55.0%" above is HRM's paper result for that setup.
Alternative: --config.train.eval_every_epochs=-1 --config.train.eval_every=N
evaluates every N steps instead. The step numbers above are printed by
`python benchmarks/schedules.py` and at the start of every run.
"""

from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="sudoku_extreme", config="aug1000")
  c.model.update(seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
  if a["arch"] == "trm":
    c.model.update(mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6, L_layers=2)
  c.train.update(lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0)
  if a["arch"] == "trm":
    config_lib.reference_schedule(c, epochs=50000, eval_every_epochs=5000)
  else:
    config_lib.reference_schedule(c, epochs=20000, eval_every_epochs=2000)
  c.lock()
  return c


def get_sweep(arg=None):
  del arg
  return [{"train.lr": lr, "seed": s} for lr in (1e-4, 2e-4) for s in (0, 1)]
