"""Sudoku-Extreme, TRM with self-attention and RoPE.

    trm-train --config=experiments/sudoku_att.py --workdir=runs/sudoku_att

Downloads Sudoku-Extreme on first use; offline: --config.data.manual_dir=DIR.

HRM baseline: --config=experiments/sudoku_att.py:arch=hrm.
Expected: 74.7% exact accuracy (TRM-att, 7M params); HRM 55.0%.
Runtime: ~18 h on 1 H100 (50k epochs, batch 768).
"""
from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="sudoku_extreme", config="aug1000")
  c.model.update(seq_len=81, vocab_size=11, num_puzzle_identifiers=1, pos_encodings="rope")
  c.train.update(epochs=50000, lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0)
  c.lock()
  return c
