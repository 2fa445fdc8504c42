"""Maze-Hard: CSV parsing/validation, seeded maze generation, TFDS builder.

Characters `# SGo` (wall, open, start, goal, path) -> tokens 1..5, V = 6. Grids are (n, n) uint8 token arrays; the label
has the shortest path drawn.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from trm_jax.datasets import arc, common, sources
from trm_jax.datasets.common import DataError

CHARS = "# SGo"
WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5
VOCAB_SIZE = 6
_LUT = np.zeros(256, np.uint8)  # character code -> token
_LUT[np.frombuffer(CHARS.encode(), np.uint8)] = np.arange(1, len(CHARS) + 1)


def to_text(grid) -> str:
  return "".join(CHARS[t - 1] if t else "?" for t in np.asarray(grid).ravel())


def _parse_row(path, line, q, a) -> tuple[np.ndarray, np.ndarray]:
  where = f"{path}:{line}"
  n = int(round(len(q) ** 0.5))
  if n * n != len(q) or n == 0:
    raise DataError(f"{where}: question of {len(q)} characters is not a square grid")
  if len(a) != len(q):
    raise DataError(f"{where}: answer has {len(a)} characters, question {len(q)}")
  for what, s in (("question", q), ("answer", a)):
    if bad := set(s) - set(CHARS):
      raise DataError(f'{where}: {what} has characters {sorted(bad)!r} outside "{CHARS}"')
  if q.count("S") != 1 or q.count("G") != 1:
    raise DataError(f"{where}: maze must have exactly one S and one G (found {q.count('S')} S, {q.count('G')} G)")
  qt = _LUT[np.frombuffer(q.encode(), np.uint8)]
  at = _LUT[np.frombuffer(a.encode(), np.uint8)]
  if (qt == PATH).any() or np.any((qt != at) & ~((qt == OPEN) & (at == PATH))):
    raise DataError(f"{where}: answer must equal the question with open cells marked o")
  if (stray := _path_stray(at.reshape(n, n))) is not None:
    raise DataError(f"{where}: answer's o cells must form one connected path from S to G; {stray}")
  return qt.reshape(n, n), at.reshape(n, n)


def _neighbours(mask) -> np.ndarray:
  """How many of each cell's 4 neighbours are in `mask`."""
  p = np.pad(mask, 1).astype(int)
  return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]


def _path_stray(label) -> str | None:
  """None if the o cells of `label` join S to G (4-neighbour moves) with none left over, else why not."""
  dist, _ = bfs(np.where(label == PATH, OPEN, WALL), tuple(np.argwhere(label == START)[0]))  # from S over o cells
  r, c = np.argwhere(label == GOAL)[0]
  if not _neighbours(dist >= 0)[r, c]:
    return f"G at row {r}, column {c} is not reached from S"
  left = np.argwhere((label == PATH) & (dist < 0))
  if len(left):
    return f"{len(left)} o cell(s) off the path (first at row {left[0][0]}, column {left[0][1]})"
  # A path, not a tree: S and G touch one path cell, every o cell two.
  on = np.isin(label, (PATH, START, GOAL))
  wrong = np.argwhere(on & (_neighbours(on) != np.where(label == PATH, 2, 1)))
  if len(wrong):
    r, c = wrong[0]
    return f"the path branches or touches itself at row {r}, column {c}"
  return None


def read_csv(path) -> tuple[np.ndarray, np.ndarray]:
  """Reads a Maze-Hard CSV; returns (questions, answers) as (m, n, n)."""
  qs, as_ = [], []
  for line, question, answer in common.iter_csv_rows(path):
    q, a = _parse_row(path, line, question, answer)
    if qs and q.shape != qs[0].shape:
      raise DataError(f"{path}:{line}: grid size {q.shape} differs from {qs[0].shape}")
    qs.append(q)
    as_.append(a)
  if not qs:
    raise DataError(f"{path}: no mazes")
  return np.stack(qs), np.stack(as_)


_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


def bfs(grid, start):
  """Distances (-1 = unreachable) and parents over non-wall cells."""
  n, m = grid.shape
  dist = np.full((n, m), -1, np.int64)
  parent = {}
  dist[start] = 0
  queue = collections.deque([start])
  while queue:
    r, c = queue.popleft()
    for dr, dc in _MOVES:
      rr, cc = r + dr, c + dc
      if 0 <= rr < n and 0 <= cc < m and dist[rr, cc] < 0 and grid[rr, cc] != WALL:
        dist[rr, cc] = dist[r, c] + 1
        parent[(rr, cc)] = (r, c)
        queue.append((rr, cc))
  return dist, parent


def _carve(rng, size: int, loop_frac: float) -> np.ndarray:
  """Perfect maze on cells at even coordinates, plus a few loops."""
  k = (size + 1) // 2
  grid = np.full((size, size), WALL, np.uint8)
  seen = np.zeros((k, k), bool)
  stack = [(int(rng.integers(k)), int(rng.integers(k)))]
  seen[stack[0]] = True
  grid[2 * stack[0][0], 2 * stack[0][1]] = OPEN
  while stack:
    r, c = stack[-1]
    nbrs = [(r + dr, c + dc) for dr, dc in _MOVES if 0 <= r + dr < k and 0 <= c + dc < k and not seen[r + dr, c + dc]]
    if not nbrs:
      stack.pop()
      continue
    nr, nc = nbrs[int(rng.integers(len(nbrs)))]
    seen[nr, nc] = True
    grid[2 * nr, 2 * nc] = OPEN
    grid[r + nr, c + nc] = OPEN
    stack.append((nr, nc))
  walls = [(r, c) for r in range(2 * k - 1) for c in range(2 * k - 1) if (r + c) % 2 == 1 and grid[r, c] == WALL]
  for i in rng.permutation(len(walls))[: int(loop_frac * len(walls))]:
    grid[walls[i]] = OPEN
  return grid


def generate(rng, size: int = 30, min_path: int = 110, loop_frac: float = 0.08, max_tries: int = 1000):
  """One (question, label) maze whose shortest S->G path > min_path steps."""
  for _ in range(max_tries):
    grid = _carve(rng, size, loop_frac)
    cells = np.argwhere(grid == OPEN)
    start = tuple(int(x) for x in cells[rng.integers(len(cells))])
    dist, parent = bfs(grid, start)
    far = np.argwhere(dist > min_path)
    if len(far) == 0:
      continue
    goal = tuple(int(x) for x in far[rng.integers(len(far))])
    q = grid.copy()
    q[start], q[goal] = START, GOAL
    label, cell = q.copy(), parent[goal]
    while cell != start:  # one shortest S->G path
      label[cell] = PATH
      cell = parent[cell]
    return q, label
  raise RuntimeError(f"no {size}x{size} maze with a path > {min_path} found")


def generate_set(n: int, seed, size=30, min_path=110, loop_frac=0.08, desc="mazes"):
  rng = np.random.default_rng(seed)
  out = [generate(rng, size, min_path, loop_frac) for _ in tqdm(range(n), desc=desc, disable=n < 500)]
  return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def make_plan(q, a, aug8: bool) -> common.SplitPlan:
  """One group per maze; with aug8, its 8 dihedral images are its puzzles."""
  if aug8:
    q = np.stack([arc.dihedral(x, d) for x in q for d in range(8)])
    a = np.stack([arc.dihedral(x, d) for x in a for d in range(8)])
  flat = lambda g: g.reshape(len(g), -1).astype(np.uint8)
  return common.grouped_plan(flat(q), flat(a), 8 if aug8 else 1)


@dataclasses.dataclass(eq=False)
class MazeConfig(tfds.core.BuilderConfig):
  generated: bool = False
  aug8: bool = False
  size: int = 30
  n_train: int = 1000
  n_test: int = 1000
  min_path: int = 110
  seed: int = 0
  seq_len: int = 900
  vocab_size: int = VOCAB_SIZE

  @property
  def needs_files(self) -> bool:
    return not self.generated


class MazeHard(common.TrmBuilder):
  """Maze-Hard 30x30 from train.csv/test.csv, or generated (seeded)."""

  SOURCE = sources.MAZE_HARD
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put train.csv and test.csv of sapientinc/maze-30x30-hard-1k in "
    "manual_dir (csv configs), or let them be downloaded."
  )
  BUILDER_CONFIGS = [
    MazeConfig(name="csv", description="Maze-Hard CSV files."),
    MazeConfig(name="csv_aug8", aug8=True, description="Maze-Hard CSV, 8 dihedral augmentations."),
    MazeConfig(name="generated", generated=True, description="1000/1000 generated 30x30 mazes, path > 110."),
    MazeConfig(
      name="generated_aug8", generated=True, aug8=True, description="Generated mazes, 8 dihedral augmentations."
    ),
    MazeConfig(
      name="small",
      generated=True,
      size=10,
      n_train=200,
      n_test=100,
      min_path=12,
      seq_len=100,
      description="200/100 generated 10x10 mazes (demo/tests).",
    ),
  ]

  def make_plans(self, manual_dir):
    cfg = self.builder_config
    if cfg.generated:
      kw = dict(size=cfg.size, min_path=cfg.min_path)
      train = generate_set(cfg.n_train, [cfg.seed, 0], desc="train mazes", **kw)
      test = generate_set(cfg.n_test, [cfg.seed, 1], desc="test mazes", **kw)
    else:
      train, test = [read_csv(Path(manual_dir) / f) for f in ("train.csv", "test.csv")]
      n = cfg.size
      for what, (q, _) in (("train.csv", train), ("test.csv", test)):
        if q.shape[1:] != (n, n):
          raise DataError(f"{Path(manual_dir) / what}: grids are {q.shape[1]}x{q.shape[2]}, config expects {n}x{n}")
    plans = {"train": make_plan(*train, cfg.aug8), "test": make_plan(*test, False)}
    return plans, 1, {"task": "maze", "grid": [cfg.size, cfg.size]}, {}
