"""ARC voting (the reference's `evaluators/arc.py`) and the run's store of votes.

A *tally* holds, per test input (task, hash of the un-augmented input), the candidate grids with their vote
counts and sums of sigmoid(q_halt), plus the label when known. Tallies add up, so the reference's aggregated
voting (over every evaluation of the run) is the sum of the per-evaluation tallies. Each is stored as
`arc_votes/<split>/step_<N>.npz` (by process 0, atomically), so pooling survives a resume: an evaluation at step
N pools the files of steps < N with its own tally, and a resumed run first removes those of later steps.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import re

import numpy as np
from etils import epath

from trm_jax import fileio, rundir

PASS_KS = (1, 2, 5, 10, 100, 1000)
_STEP_FILE = re.compile(r"step_(\d+)\.npz$")


def _grid_key(grid) -> bytes:
  g = np.asarray(grid, np.uint8)
  return np.asarray(g.shape, np.int32).tobytes() + g.tobytes()


@dataclasses.dataclass
class Group:
  """The candidates for one test input: {grid key: [grid, votes, sum of sigmoid(q)]}."""

  test_index: int
  label: np.ndarray | None = None
  cands: dict = dataclasses.field(default_factory=dict)


def tally(entries) -> dict:
  """Entries (dicts with task, test_index, input, pred, q_halt logit, label or None) -> tally."""
  out: dict = {}
  for e in entries:
    key = (e["task"], hashlib.sha256(_grid_key(e["input"])).hexdigest())
    grp = out.setdefault(key, Group(int(e["test_index"])))
    grp.test_index = min(grp.test_index, int(e["test_index"]))
    if e.get("label") is not None:
      grp.label = np.asarray(e["label"], np.uint8)
    cand = grp.cands.setdefault(_grid_key(e["pred"]), [np.asarray(e["pred"], np.uint8), 0, 0.0])
    cand[1] += 1
    cand[2] += 1.0 / (1.0 + np.exp(-float(e["q_halt"])))
  return out


def merge(*tallies) -> dict:
  """The sum of tallies (votes and q sums add; inputs keep their first test index)."""
  out: dict = {}
  for t in tallies:
    for key, grp in t.items():
      mine = out.setdefault(key, Group(grp.test_index))
      mine.test_index = min(mine.test_index, grp.test_index)
      if grp.label is not None:
        mine.label = grp.label
      for k, (grid, votes, qsum) in grp.cands.items():
        c = mine.cands.setdefault(k, [grid, 0, 0.0])
        c[1] += votes
        c[2] += qsum
  return out


def score(t: dict, ks=PASS_KS, test_counts: dict | None = None):
  """Tally -> ({"pass@K": score}, submission dict).

  Candidates are ranked by votes, then mean sigmoid(q_halt); a test input is solved at K when its label is among
  the top K; the result is the mean over tasks of the fraction of their test inputs solved. With `test_counts`
  ({task: number of test inputs}) the denominators are the reference's (every test input of every test task, with
  predictions or not); without it, the tasks and inputs seen.
  """
  by_task = collections.defaultdict(list)
  for key in t:
    by_task[key[0]].append(key)
  tasks = sorted(test_counts) if test_counts is not None else sorted(by_task)
  # (grid key, [grid, votes, q sum]) best first: most votes, then highest mean sigmoid(q_halt).
  ranked = {key: sorted(grp.cands.items(), key=lambda kv: (-kv[1][1], -kv[1][2] / kv[1][1])) for key, grp in t.items()}
  scores = {}
  for k in ks:
    per_task = []
    for task in tasks:
      keys = by_task.get(task, [])
      solved = 0
      for key in keys:
        label = t[key].label
        solved += label is not None and _grid_key(label) in [gk for gk, _ in ranked[key][:k]]
      n = test_counts[task] if test_counts is not None else len(keys)
      per_task.append(solved / max(n, 1))
    scores[f"pass@{k}"] = float(np.mean(per_task)) if per_task else 0.0

  submission = {}
  for task in tasks:
    attempts = []
    for key in sorted(by_task.get(task, []), key=lambda key: t[key].test_index):
      top = [c[0] for _, c in ranked[key][:2]]  # one candidate: both attempts
      attempts.append({"attempt_1": top[0].tolist(), "attempt_2": top[-1].tolist()})
    submission[task] = attempts
  return scores, submission


# ---------------------------------------------------------------------------
# Files.


def _write_bytes(path: str, data: bytes) -> None:
  """Writes `data` so that readers see the old file or the whole new one (never through a link)."""
  fileio.makedirs(os.path.dirname(path))
  fileio.write_bytes(path, data)


def write_submission(path, submission: dict) -> None:
  _write_bytes(path, json.dumps(submission).encode())


def save(path, t: dict) -> None:
  """One tally as a compressed .npz (no pickles)."""
  keys, grids, labels, cands = sorted(t), [], [], []  # cands: (group, grid, votes, q sum), grids by index
  for gi, key in enumerate(keys):
    if t[key].label is not None:
      grids.append(t[key].label)
    labels.append(-1 if t[key].label is None else len(grids) - 1)
    for grid, votes, qsum in t[key].cands.values():
      grids.append(grid)
      cands.append((gi, len(grids) - 1, votes, qsum))
  c_group, c_grid, c_votes, c_qsum = zip(*cands) if cands else ((),) * 4
  buf = io.BytesIO()
  np.savez_compressed(
    buf,
    task=np.asarray([key[0] for key in keys], dtype=str),
    input=np.asarray([key[1] for key in keys], dtype=str),
    test_index=np.asarray([t[key].test_index for key in keys], np.int64),
    label=np.asarray(labels, np.int64),
    cand_group=np.asarray(c_group, np.int64),
    cand_grid=np.asarray(c_grid, np.int64),
    cand_votes=np.asarray(c_votes, np.int64),
    cand_qsum=np.asarray(c_qsum, np.float64),
    grid_shape=np.asarray([np.shape(g) for g in grids], np.int64).reshape(-1, 2),
    grid_data=np.concatenate([np.asarray(g, np.uint8).ravel() for g in grids] or [np.zeros(0, np.uint8)]),
  )
  _write_bytes(path, buf.getvalue())


def load(path) -> dict:
  with np.load(io.BytesIO(epath.Path(path).read_bytes()), allow_pickle=False) as z:
    a = {k: z[k] for k in z.files}
  offsets = np.concatenate([[0], np.cumsum(np.prod(a["grid_shape"], axis=1))]).astype(np.int64)
  grid = lambda i: a["grid_data"][offsets[i] : offsets[i + 1]].reshape(a["grid_shape"][i])
  out = {}
  keys = list(zip(a["task"].tolist(), a["input"].tolist()))
  for gi, key in enumerate(keys):
    li = int(a["label"][gi])
    out[key] = Group(int(a["test_index"][gi]), None if li < 0 else grid(li))
  for gi, ci, votes, qsum in zip(a["cand_group"], a["cand_grid"], a["cand_votes"], a["cand_qsum"]):
    g = grid(int(ci))
    out[keys[gi]].cands[_grid_key(g)] = [g, int(votes), float(qsum)]
  return out


def stored_steps(workdir, split: str) -> list:
  d = epath.Path(rundir.RunDir(workdir).arc_votes(split))
  return sorted(int(m.group(1)) for p in d.iterdir() if (m := _STEP_FILE.fullmatch(p.name))) if d.exists() else []


def pool(workdir, split: str, step: int, this_eval: dict, write: bool) -> dict:
  """Stores this evaluation's tally as step `step` (when `write`); -> the sum of it and those of earlier steps."""
  run_dir = rundir.RunDir(workdir)
  if write:
    save(run_dir.arc_votes(split, step), this_eval)
  earlier = [load(run_dir.arc_votes(split, s)) for s in stored_steps(run_dir, split) if s < step]
  return merge(*earlier, this_eval)


def forget_after(workdir, step: int) -> list:
  """Removes every split's stored tallies of steps > `step` (a resumed run redoes them)."""
  run_dir = rundir.RunDir(workdir)
  root = epath.Path(run_dir.arc_votes())
  splits = [d.name for d in root.iterdir() if d.is_dir()] if root.exists() else []
  gone = [(split, s) for split in splits for s in stored_steps(run_dir, split) if s > step]
  for split, s in gone:
    epath.Path(run_dir.arc_votes(split, s)).unlink()
  return [f"{split}/step_{s}.npz" for split, s in gone]
