"""Duplicate puzzles within a split and puzzles shared between splits (for `trm-data stats`).

Rows are compared by a 64-bit hash of their stored input tokens (a random linear form modulo 2**64, computed in chunks,
so a 1M-example split needs 8 MB of hashes, not a copy of its records).
"""

from __future__ import annotations

import numpy as np

CHUNK = 8192


def input_hashes(data) -> np.ndarray:
  """uint64 hash of every example's input row of a split, in example order."""
  n = data.num_examples
  out = np.empty(n, np.uint64)
  weights = np.random.default_rng(0).integers(1, 2**63, data.meta.seq_len, dtype=np.uint64) * np.uint64(2) + 1  # odd
  for s in range(0, n, CHUNK):
    inputs, _ = data.reader.read(np.arange(s, min(s + CHUNK, n)))
    rows = np.asarray(inputs).reshape(len(inputs), -1).astype(np.uint64)
    with np.errstate(over="ignore"):
      out[s : s + len(rows)] = (rows * weights).sum(1, dtype=np.uint64) + np.uint64(rows.shape[1])
  return out


def warnings(name: str, split: str, data, others: dict) -> list[str]:
  """`warning: ...` lines for duplicate inputs in `split` and inputs shared with each of `others`."""
  h = input_hashes(data)
  out = []
  _, counts = np.unique(h, return_counts=True)
  if (counts > 1).any():
    out.append(
      f"warning: {name} {split}: {int((counts - 1).sum())} of {len(h)} examples repeat the input of an earlier one "
      f"({int((counts > 1).sum())} distinct inputs occur more than once)"
    )
  for other_split, other in others.items():
    n = int(np.isin(h, input_hashes(other)).sum())
    if n:
      out.append(
        f"warning: {name} {split}: {n} of {len(h)} examples have an input that also occurs in split {other_split!r}"
      )
  return out
