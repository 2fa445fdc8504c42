"""Maze-Hard 30x30, TRM with self-attention and RoPE.

    trm-train --config=experiments/maze.py --workdir=runs/maze

The first run downloads sapientinc/maze-30x30-hard-1k (1,000 train / 1,000
test mazes, pinned revision, sha256-checked; docs/data.md) and builds
maze_hard/csv, as the reference's build_maze_dataset.py (default: no
augmentation). Offline: --config.data.manual_dir=DIR with train.csv / test.csv.
--config.data.config=csv_aug8 adds the 8 dihedral images; =generated uses
seeded generated mazes instead (no download).

HRM baseline: --config=experiments/maze.py:arch=hrm.
Expected: 85.3% exact accuracy (TRM, 7M); HRM 74.5%.
Runtime: ~24 h on 4 H100s (50k epochs of 1000 mazes; data.config=csv_aug8 adds the 8 dihedral images).
"""
from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="maze_hard", config="csv")
  c.model.update(seq_len=900, vocab_size=6, num_puzzle_identifiers=1, pos_encodings="rope")
  if a["arch"] == "trm":
    c.model.update(H_cycles=3, L_cycles=4)
  c.train.update(epochs=50000, lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0)
  c.lock()
  return c
