"""Sudoku-Extreme: CSV parsing/validation, symmetry augmentation, TFDS builder.

Grids are (81,) uint8 digit arrays, 0 = blank; tokens = digit + 1 (V = 11).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from trm_jax.datasets import common, sources
from trm_jax.datasets.common import DataError


def _first(mask) -> int | None:
  """Index of the first True of a boolean vector, or None."""
  hits = np.flatnonzero(mask)
  return int(hits[0]) if len(hits) else None


def read_csv(path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a Sudoku-Extreme CSV; returns (questions, answers) (n, 81) uint8."""
  questions, answers = [], []
  for _, question, answer in common.iter_csv_rows(path):
    questions.append(question)
    answers.append(answer)
  lines = lambda i: i + 2  # header is line 1
  for what, rows in (("question", questions), ("answer", answers)):
    if (i := _first(np.fromiter((len(r) != 81 for r in rows), bool, len(rows)))) is not None:
      raise DataError(f"{path}:{lines(i)}: {what} must be 81 characters of .1-9, got {len(rows[i])}")
  n = len(questions)
  if n == 0:
    raise DataError(f"{path}: no puzzles")
  q = np.frombuffer("".join(questions).encode("latin-1", "replace"), np.uint8).reshape(n, 81)
  a = np.frombuffer("".join(answers).encode("latin-1", "replace"), np.uint8).reshape(n, 81)
  q_ok = (q >= ord("1")) & (q <= ord("9")) | (q == ord("."))
  a_ok = (a >= ord("1")) & (a <= ord("9"))
  if (i := _first(~q_ok.all(1))) is not None:
    raise DataError(f"{path}:{lines(i)}: question must be 81 characters of .1-9, got {questions[i]!r}")
  if (i := _first(~a_ok.all(1))) is not None:
    raise DataError(f"{path}:{lines(i)}: answer must be 81 digits 1-9, got {answers[i]!r}")
  q = np.where(q == ord("."), 0, q - ord("0")).astype(np.uint8)
  a = (a - ord("0")).astype(np.uint8)
  if (i := _first(((q != 0) & (q != a)).any(1))) is not None:
    cell = int(np.flatnonzero((q[i] != 0) & (q[i] != a[i]))[0])
    raise DataError(f"{path}:{lines(i)}: answer contradicts the givens at row {cell // 9 + 1}, column {cell % 9 + 1}")
  if (i := _first(~is_valid_solution(a))) is not None:
    raise DataError(f"{path}:{lines(i)}: answer is not a valid Sudoku solution")
  return q, a


def is_valid_solution(grids) -> np.ndarray:
  """(n, 81) digit grids -> (n,) bool: every row/column/box holds 1..9."""
  g = np.asarray(grids).reshape(-1, 9, 9)
  boxes = g.reshape(-1, 3, 3, 3, 3).transpose(0, 1, 3, 2, 4).reshape(-1, 9, 9)
  ok = np.ones(len(g), bool)
  for units in (g, g.transpose(0, 2, 1), boxes):
    s = np.sort(units, axis=-1)
    ok &= (s == np.arange(1, 10)).all(axis=(1, 2))
  return ok


def random_transforms(rng: np.random.Generator, n: int) -> dict:
  """n random symmetries: transpose, band/row and stack/col shuffles, digits."""

  def lines():
    outer = np.argsort(rng.random((n, 3)), axis=1)
    inner = np.argsort(rng.random((n, 3, 3)), axis=2)
    return (outer[:, :, None] * 3 + inner).reshape(n, 9)

  transpose = rng.random(n) < 0.5
  rows, cols = lines(), lines()
  digits = np.zeros((n, 10), np.uint8)
  digits[:, 1:] = np.argsort(rng.random((n, 9)), axis=1) + 1
  return {"transpose": transpose, "rows": rows, "cols": cols, "digits": digits}


def apply_transforms(grid, tr: dict) -> np.ndarray:
  """Applies each of the n transforms to one (81,) grid -> (n, 81): new = transpose?(grid);
  new[r, c] = new[rows[r], cols[c]]; d -> digits[d]."""
  g = np.asarray(grid, np.uint8).reshape(9, 9)
  n = len(tr["rows"])
  base = np.where(np.asarray(tr["transpose"])[:, None, None], g.T[None], g[None])
  ar = np.arange(n)[:, None, None]
  moved = base[ar, tr["rows"][:, :, None], tr["cols"][:, None, :]]
  return np.take_along_axis(tr["digits"], moved.reshape(n, 81), axis=1)


def build_train_plan(q, a, subsample, num_aug, seed) -> common.SplitPlan:
  rng = np.random.default_rng(seed)
  if subsample is not None and subsample < len(q):
    pick = np.sort(rng.choice(len(q), subsample, replace=False))
    q, a = q[pick], a[pick]
  per = 1 + num_aug
  inputs, labels = np.repeat(q + 1, per, axis=0), np.repeat(a + 1, per, axis=0)  # copy 0 of each puzzle: itself
  for i in tqdm(range(len(q) if num_aug else 0), desc="sudoku augment", disable=len(q) < 2000):
    tr = random_transforms(rng, num_aug)
    inputs[i * per + 1 : (i + 1) * per] = apply_transforms(q[i], tr) + 1
    labels[i * per + 1 : (i + 1) * per] = apply_transforms(a[i], tr) + 1
  return common.grouped_plan(inputs, labels, per)


@dataclasses.dataclass(eq=False)
class SudokuConfig(tfds.core.BuilderConfig):
  subsample: int | None = None
  num_aug: int = 0
  seed: int = 0
  seq_len: int = 81
  vocab_size: int = 11
  needs_files: bool = True


class SudokuExtreme(common.TrmBuilder):
  """Sudoku-Extreme from train.csv / test.csv (source,question,answer,rating)."""

  SOURCE = sources.SUDOKU_EXTREME
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put train.csv and test.csv of sapientinc/sudoku-extreme (or files in "
    "the same format) in manual_dir, or let them be downloaded."
  )
  BUILDER_CONFIGS = [
    SudokuConfig(name="aug1000", subsample=1000, num_aug=1000, description="Paper set: 1k train puzzles x 1000 augs."),
    SudokuConfig(name="full", description="All train rows, no augmentation."),
    SudokuConfig(
      name="aug10_sub100", subsample=100, num_aug=10, description="Small set for tests: 100 puzzles x 10 augs."
    ),
  ]

  def make_plans(self, manual_dir):
    cfg = self.builder_config
    (qt, at), (qe, ae) = [read_csv(Path(manual_dir) / f) for f in ("train.csv", "test.csv")]
    train = build_train_plan(qt, at, cfg.subsample, cfg.num_aug, cfg.seed)
    return {"train": train, "test": common.grouped_plan(qe + 1, ae + 1)}, 1, {"task": "sudoku", "grid": [9, 9]}, {}
