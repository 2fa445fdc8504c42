"""Small generated sets needing no files: 4x4/6x6 Sudoku, small mazes.

`sudoku_small` / `maze_small` return {'train': SplitData, 'test': SplitData} in memory (no TFDS) for the demo and tests;
`SudokuSmall` is the TFDS builder. Small Sudoku tokens: digit + 1 (blank -> 1), V = n + 2, S = n * n.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from trm_jax.datasets import common, maze, splits

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}
MIN_GIVENS = {4: 4, 6: 8, 9: 17}


def count_solutions(grid, n: int, limit: int = 2) -> int:
  """Number of completions of a digit grid (0 = blank), counted up to limit."""
  br, bc = BOXES[n]
  units = [(i // n, n + i % n, 2 * n + i // n // br * (n // bc) + i % n // bc) for i in range(n * n)]  # row, col, box
  used = [0] * (3 * n)  # per unit, bit d set: digit d is placed in it
  empties = []
  for i, v in enumerate(int(x) for x in np.asarray(grid).ravel()):
    if not v:
      empties.append(units[i])
    elif any(used[u] >> v & 1 for u in units[i]):
      return 0
    else:
      for u in units[i]:
        used[u] |= 1 << v
  full = (1 << n + 1) - 2  # digits 1..n

  def rec(todo):
    if not todo:
      return 1
    k, bits = 0, full
    for j, (a, b, c) in enumerate(todo):  # the cell with the fewest candidates (a forced one ends the search)
      free = full & ~(used[a] | used[b] | used[c])
      if free.bit_count() < bits.bit_count():
        k, bits = j, free
        if free.bit_count() <= 1:
          break
    a, b, c = todo[k]
    rest, total = todo[:k] + todo[k + 1 :], 0
    while bits and total < limit:
      bit = bits & -bits
      bits ^= bit
      used[a] |= bit
      used[b] |= bit
      used[c] |= bit
      total += rec(rest)
      used[a] ^= bit
      used[b] ^= bit
      used[c] ^= bit
    return total

  return rec(empties)


def random_solution(rng, n: int) -> np.ndarray:
  """A random valid n x n grid: a base pattern under random symmetries."""
  br, bc = BOXES[n]
  r, c = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
  base = (bc * (r % br) + r // br + c) % n
  bands = np.argsort(rng.random(n // br))
  rows = np.concatenate([b * br + rng.permutation(br) for b in bands])
  stacks = np.argsort(rng.random(n // bc))
  cols = np.concatenate([s * bc + rng.permutation(bc) for s in stacks])
  digits = rng.permutation(n) + 1
  return digits[base[np.ix_(rows, cols)]].astype(np.uint8)


def make_puzzle(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
  """(question, answer) flat digit grids; the question has one solution."""
  answer = random_solution(rng, n)
  q = answer.ravel().copy()
  for i in rng.permutation(n * n):
    if np.count_nonzero(q) <= MIN_GIVENS[n]:
      break
    v = q[i]
    q[i] = 0
    if count_solutions(q, n) != 1:
      q[i] = v
  return q, answer.ravel()


def plan_to_split(plan: common.SplitPlan, vocab_size) -> splits.SplitData:
  """The SplitData of a grouped_plan (one block, one puzzle identifier)."""
  ((inputs, labels),) = plan.blocks()
  return splits.make_split(
    inputs, labels, plan.puzzle_indices, plan.group_indices, plan.puzzle_identifiers, vocab_size, 1
  )


def sudoku_small_plans(n_train, n_test, size, seed):
  out = {}
  for k, (split, count) in enumerate((("train", n_train), ("test", n_test))):
    rng = np.random.default_rng([seed, k])
    q, a = (np.stack(grids) for grids in zip(*[make_puzzle(rng, size) for _ in range(count)]))
    out[split] = common.grouped_plan(q + 1, a + 1)
  return out


def sudoku_small(n_train=1000, n_test=200, size=4, seed=0):
  """In-memory 4x4 or 6x6 Sudoku with unique solutions."""
  return {s: plan_to_split(p, size + 2) for s, p in sudoku_small_plans(n_train, n_test, size, seed).items()}


def maze_small(n_train=200, n_test=100, size=10, min_path=12, seed=0, aug8=False):
  """In-memory small mazes (tokens as Maze-Hard, V = 6, S = size**2)."""
  out = {}
  for k, (split, count) in enumerate((("train", n_train), ("test", n_test))):
    q, a = maze.generate_set(count, [seed, k], size=size, min_path=min_path)
    plan = maze.make_plan(q, a, aug8 and split == "train")
    out[split] = plan_to_split(plan, maze.VOCAB_SIZE)
  return out


@dataclasses.dataclass(eq=False)
class SudokuSmallConfig(tfds.core.BuilderConfig):
  size: int = 4
  n_train: int = 1000
  n_test: int = 200
  seed: int = 0
  seq_len: int = 16
  vocab_size: int = 6
  needs_files: bool = False


class SudokuSmall(common.TrmBuilder):
  """Generated 4x4 / 6x6 Sudoku with unique solutions (no files needed)."""

  BUILDER_CONFIGS = [
    SudokuSmallConfig(name="4x4", size=4, seq_len=16, vocab_size=6, description="1000/200 generated 4x4 Sudoku."),
    SudokuSmallConfig(name="6x6", size=6, seq_len=36, vocab_size=8, description="1000/200 generated 6x6 Sudoku."),
  ]

  def make_plans(self, manual_dir):
    cfg = self.builder_config
    plans = sudoku_small_plans(cfg.n_train, cfg.n_test, cfg.size, cfg.seed)
    return plans, 1, {"task": "sudoku", "grid": [cfg.size, cfg.size]}, {}
