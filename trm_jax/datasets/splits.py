"""In-memory view of one split: index arrays, metadata and an example reader.

The layout follows the reference's `dataset/common.py` and `puzzle_dataset.py`:
examples are stored in puzzle order, `puzzle_indices[p]:puzzle_indices[p+1]` are the examples of puzzle `p` and
`group_indices[g]:group_indices[g+1]` the puzzles of group `g`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from trm_jax.datasets.errors import DataError

PAD_ID = 0
IGNORE_LABEL_ID = -100
BLANK_PUZZLE_ID = 0


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
  """What the training loop needs to know about a split."""

  seq_len: int
  vocab_size: int
  num_puzzle_identifiers: int
  total_groups: int
  mean_puzzle_examples: float
  sets: tuple[str, ...] = ("all",)
  num_examples: int = 0
  num_puzzles: int = 0
  pad_id: int = PAD_ID
  ignore_label_id: int = IGNORE_LABEL_ID
  blank_identifier_id: int = BLANK_PUZZLE_ID

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> DatasetMeta:
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if k == "sets" else v for k, v in d.items() if k in names})


@dataclasses.dataclass
class InMemoryReader:
  inputs: np.ndarray
  labels: np.ndarray

  def read(self, indices):
    return self.inputs[indices], self.labels[indices]


@dataclasses.dataclass
class SplitData:
  """One split: index arrays + reader. Labels are stored with 0 = ignore."""

  meta: DatasetMeta
  puzzle_indices: np.ndarray
  group_indices: np.ndarray
  puzzle_identifiers: np.ndarray
  reader: Any
  where: str = "dataset"  # named in errors: the split's directory and name

  def __post_init__(self):
    self.puzzle_indices = np.asarray(self.puzzle_indices, np.int64)
    self.group_indices = np.asarray(self.group_indices, np.int64)
    self.puzzle_identifiers = np.asarray(self.puzzle_identifiers, np.int32)
    sizes = np.diff(self.puzzle_indices)
    self.example_puzzle = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)

  @property
  def num_examples(self) -> int:
    return int(self.puzzle_indices[-1])

  def examples(self, indices) -> dict[str, np.ndarray]:
    """Model-ready batch rows: int32, labels 0 mapped to -100."""
    indices = np.asarray(indices, np.int64)
    inputs, labels = self.reader.read(indices)
    self._check_tokens(inputs, labels, indices)
    labels = np.asarray(labels, np.int32)
    return {
      "inputs": np.asarray(inputs, np.int32),
      "labels": np.where(labels == 0, IGNORE_LABEL_ID, labels).astype(np.int32),
      "puzzle_identifiers": self.puzzle_identifiers[self.example_puzzle[indices]].astype(np.int32),
    }

  def _check_tokens(self, inputs, labels, indices) -> None:
    """Tokens past the metadata's vocab_size would index past the embedding (NaN losses later): one DataError."""
    v = self.meta.vocab_size
    for name, a in (("inputs", inputs), ("labels", labels)):
      a = np.asarray(a)
      if a.size and (a.max() >= v or a.min() < 0):
        row, col = np.argwhere((a >= v) | (a < 0))[0]
        raise DataError(
          f"{self.where}: example {int(indices[row])}: {name} token {int(a[row, col])} outside the vocab_size {v} of "
          "its metadata; rebuild the dataset with trm-data build --overwrite"
        )

  def all_arrays(self) -> dict[str, np.ndarray]:
    """The stored inputs and labels of the whole split (reads everything)."""
    inputs, labels = self.reader.read(np.arange(self.num_examples))
    return {"inputs": inputs, "labels": labels}


def make_split(
  inputs, labels, puzzle_indices, group_indices, puzzle_identifiers, vocab_size, num_puzzle_identifiers
) -> SplitData:
  """Builds an in-memory SplitData and its DatasetMeta."""
  inputs = np.asarray(inputs, np.uint8)
  labels = np.asarray(labels, np.uint8)
  meta = split_meta(inputs.shape[1], vocab_size, num_puzzle_identifiers, puzzle_indices, group_indices)
  return SplitData(meta, puzzle_indices, group_indices, puzzle_identifiers, InMemoryReader(inputs, labels))


def split_meta(seq_len, vocab_size, num_puzzle_identifiers, puzzle_indices, group_indices) -> DatasetMeta:
  n_puzzles = len(puzzle_indices) - 1
  n_examples = int(puzzle_indices[-1])
  return DatasetMeta(
    seq_len=int(seq_len),
    vocab_size=int(vocab_size),
    num_puzzle_identifiers=int(num_puzzle_identifiers),
    total_groups=len(group_indices) - 1,
    mean_puzzle_examples=n_examples / max(n_puzzles, 1),
    num_examples=n_examples,
    num_puzzles=n_puzzles,
  )


# Sane bounds for stored metadata (inclusive): implausible values fail before any allocation.
META_BOUNDS = {
  "seq_len": (1, 1 << 16),
  "vocab_size": (1, 1 << 16),
  "num_puzzle_identifiers": (1, 1 << 27),
  "total_groups": (0, 1 << 40),
  "num_examples": (0, 1 << 40),
  "num_puzzles": (0, 1 << 40),
}


def check_split(meta: DatasetMeta, puzzle_indices, group_indices, puzzle_identifiers, where: str) -> None:
  """Raises DataError naming the first implausible or inconsistent field of the split `where` ('DIR/trm_meta.json:
  splits.train')."""

  def bad(field, msg):
    raise DataError(f"{where}.{field}: {msg}; rebuild the dataset with trm-data build --overwrite")

  for field, (lo, hi) in META_BOUNDS.items():
    v = getattr(meta, field)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
      bad(field, f"{v!r} is outside the plausible range [{lo}, {hi}]")
  m = meta.mean_puzzle_examples
  if not isinstance(m, (int, float)) or not np.isfinite(m) or m < 0:
    bad("mean_puzzle_examples", f"{m!r} is not a finite number >= 0")
  p = np.asarray(puzzle_indices)
  g = np.asarray(group_indices)
  ids = np.asarray(puzzle_identifiers)
  if p.ndim != 1 or p.size < 1 or p[0] != 0 or np.any(np.diff(p) < 0):
    bad("puzzle_indices", "must start at 0 and never decrease")
  if g.ndim != 1 or g.size < 1 or g[0] != 0 or np.any(np.diff(g) < 0) or g[-1] != p.size - 1:
    bad("group_indices", f"must run from 0 to the number of puzzles ({p.size - 1}) without decreasing")
  if ids.shape != (p.size - 1,):
    bad("puzzle_identifiers", f"has {ids.size} entries for {p.size - 1} puzzles")
  if ids.size and (ids.min() < 0 or ids.max() >= meta.num_puzzle_identifiers):
    bad(
      "puzzle_identifiers",
      f"values must lie in [0, {meta.num_puzzle_identifiers}), found {int(ids.min())}..{int(ids.max())}",
    )
  if meta.total_groups != g.size - 1:
    bad("total_groups", f"{meta.total_groups} != {g.size - 1} groups in group_indices")
  if meta.num_examples and meta.num_examples != int(p[-1]):
    bad("num_examples", f"{meta.num_examples} != {int(p[-1])} examples in puzzle_indices")
