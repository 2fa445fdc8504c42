"""Sudoku-Extreme, TRM with the MLP-mixer block (the paper's best Sudoku model).

    trm-train --config=experiments/sudoku_mlp.py --workdir=runs/sudoku_mlp

The first run downloads sapientinc/sudoku-extreme (pinned, sha256-checked) and
builds sudoku_extreme/aug1000; offline: --config.data.manual_dir=DIR with
train.csv / test.csv (docs/data.md).

HRM baseline: --config=experiments/sudoku_mlp.py:arch=hrm (attention, 27M).
Expected: 87.4% exact accuracy on the 423k test puzzles (TRM-MLP, 5M params);
HRM 55.0%. Runtime: ~18 h on 1 H100 in the paper's setup (50k epochs of the
1k x 1000-augmentation set at batch 768, ~65k steps).
"""
from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="sudoku_extreme", config="aug1000")
  c.model.update(seq_len=81, vocab_size=11, num_puzzle_identifiers=1)
  if a["arch"] == "trm":
    c.model.update(mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6, L_layers=2)
  c.train.update(epochs=50000, lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0)
  c.lock()
  return c


def get_sweep(arg=None):
  del arg
  return [{"train.lr": lr, "seed": s} for lr in (1e-4, 2e-4) for s in (0, 1)]
