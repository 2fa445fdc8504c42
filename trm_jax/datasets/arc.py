"""ARC grids: JSON loading/validation, 30x30 canvas with EOS, transforms.

Canvas tokens: PAD 0, EOS 1, colour c -> c + 2 (V = 12, S = 900). Dihedral ids: 0 id, 1 rot90, 2 rot180, 3 rot270,
4 flip left-right, 5 flip up-down, 6 transpose, 7 anti-transpose. A colour map `perm` (10,) sends colour c to perm[c];
perm[0] == 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trm_jax.datasets import common
from trm_jax.datasets.common import DataError

MAX_SIZE = 30
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = 12
SEQ_LEN = MAX_SIZE * MAX_SIZE
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
_QUARTER_TURNS = (0, 1, 2, 3, 0, 2, 3, 1)  # np.rot90 turns of each dihedral id; ids 4-7 then flip left-right


def _grid(value, where: str) -> np.ndarray:
  if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
    raise DataError(f"{where}: grid must be a non-empty list of rows")
  widths = {len(r) for r in value}
  if len(widths) != 1:
    raise DataError(f"{where}: grid is not rectangular (row lengths {sorted(widths)})")
  h, w = len(value), widths.pop()
  if w == 0:
    raise DataError(f"{where}: grid has empty rows")
  if h > MAX_SIZE or w > MAX_SIZE:
    raise DataError(f"{where}: grid is {h}x{w}, over {MAX_SIZE}x{MAX_SIZE}")
  if bad := [c for r in value for c in r if type(c) is not int or not 0 <= c <= 9]:
    raise DataError(f"{where}: colour {bad[0]!r} outside 0-9")
  return np.asarray(value, np.uint8)


JSON_MAX = 1 << 26  # bytes of one ARC JSON file, parsed whole: 16x the largest real one (4 MB, ARC-AGI-2 training)


def _load_json(path: Path):
  if common.require_file(path).stat().st_size > JSON_MAX:
    raise DataError(f"{path}: {path.stat().st_size:,} bytes; an ARC JSON file is at most {JSON_MAX:,}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
  except RecursionError:
    raise DataError(f"{path}: JSON nested too deeply to be an ARC file") from None


def load_subset(manual_dir, subset: str) -> dict[str, dict]:
  """{task_id: {'train': [(in, out)], 'test': [(in, out)]}} of arc-agi_<subset>_{challenges,solutions}.json."""
  cpath = Path(manual_dir) / f"arc-agi_{subset}_challenges.json"
  spath = Path(manual_dir) / f"arc-agi_{subset}_solutions.json"
  chal, sols = _load_json(cpath), _load_json(spath)
  for path, obj in ((cpath, chal), (spath, sols)):
    if not isinstance(obj, dict):
      raise DataError(f"{path}: top level must be an object keyed by task id")
  tasks = {}
  for tid, task in chal.items():
    where = f"{cpath}: task {tid}"
    if not isinstance(task, dict) or not isinstance(task.get("train"), list) or not isinstance(task.get("test"), list):
      raise DataError(f'{where}: needs "train" and "test" lists')
    if tid not in sols:
      raise DataError(f"{spath}: task {tid}: no solutions")
    sol = sols[tid]
    if not isinstance(sol, list) or len(sol) != len(task["test"]):
      raise DataError(f"{spath}: task {tid}: expected {len(task['test'])} solution grids")
    train = []
    for i, pair in enumerate(task["train"]):
      if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
        raise DataError(f'{where} train[{i}]: needs "input" and "output"')
      train.append(tuple(_grid(pair[k], f"{where} train[{i}].{k}") for k in ("input", "output")))
    test = []
    for i, pair in enumerate(task["test"]):
      if not isinstance(pair, dict) or "input" not in pair:
        raise DataError(f'{where} test[{i}]: needs "input"')
      x = _grid(pair["input"], f"{where} test[{i}].input")
      test.append((x, _grid(sol[i], f"{spath}: task {tid} solution[{i}]")))
    if not train or not test:
      raise DataError(f"{where}: needs at least one train and one test pair")
    tasks[tid] = {"train": train, "test": test}
  if extra := set(sols) - set(chal):
    raise DataError(f"{spath}: task {sorted(extra)[0]}: not in {cpath.name}")
  return tasks


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
  g = np.rot90(np.asarray(grid), _QUARTER_TURNS[int(tid)])
  return g[:, ::-1] if tid >= 4 else g


def transform(grid, tid: int, perm) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(perm, np.uint8)[dihedral(grid, tid)])


def invert(grid, tid: int, perm) -> np.ndarray:
  """Undoes transform(grid, tid, perm)."""
  inv = np.argsort(perm).astype(np.uint8)  # the inverse permutation
  return np.ascontiguousarray(dihedral(inv[np.asarray(grid, np.uint8)], DIHEDRAL_INVERSE[int(tid)]))


def to_canvas(grid: np.ndarray, r0: int = 0, c0: int = 0) -> np.ndarray:
  """Places a grid at (r0, c0) of a 30x30 canvas and draws EOS; (900,)."""
  h, w = grid.shape
  out = np.zeros((MAX_SIZE, MAX_SIZE), np.uint8)
  out[r0 : r0 + h, c0 : c0 + w] = grid + COLOUR_OFFSET
  if r0 + h < MAX_SIZE:
    out[r0 + h, c0 : c0 + w] = EOS
  if c0 + w < MAX_SIZE:
    out[r0 : r0 + h, c0 + w] = EOS
  return out.reshape(-1)


def from_canvas(tokens) -> np.ndarray:
  """Exact inverse of to_canvas at any offset: the box of colour tokens."""
  t = np.asarray(tokens).reshape(MAX_SIZE, MAX_SIZE)
  rows = np.flatnonzero((t >= COLOUR_OFFSET).any(1))
  cols = np.flatnonzero((t >= COLOUR_OFFSET).any(0))
  if len(rows) == 0:
    return np.zeros((0, 0), np.uint8)
  sub = t[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
  return (sub.astype(np.int64) - COLOUR_OFFSET).astype(np.uint8)


def crop_prediction(tokens) -> np.ndarray:
  """Largest top-left rectangle without PAD/EOS (the reference's `evaluators/arc.py`)."""
  t = np.asarray(tokens).reshape(MAX_SIZE, MAX_SIZE)
  ok = t >= COLOUR_OFFSET
  widths = np.minimum.accumulate(np.where(ok.all(1), MAX_SIZE, np.argmin(ok, axis=1)))  # of the top h + 1 rows
  h = int(np.argmax(widths * np.arange(1, MAX_SIZE + 1)))  # the first of the largest areas
  h, w = (h + 1, int(widths[h])) if widths[h] else (0, 0)
  return (t[:h, :w].astype(np.int64) - COLOUR_OFFSET).astype(np.uint8)
