"""Maze builders: generated labels are BFS shortest paths, length rule, CSV
round trip with dihedral augmentation, bad input."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trm_jax import input_pipeline as ip
from trm_jax.datasets import arc, common, generated, maze


def _check_label(q, a, min_path):
  q, a = np.asarray(q), np.asarray(a)
  assert (q == maze.START).sum() == 1 and (q == maze.GOAL).sum() == 1
  s = tuple(np.argwhere(q == maze.START)[0])
  g = tuple(np.argwhere(q == maze.GOAL)[0])
  dist, _ = maze.bfs(q, s)
  # label = question with open cells on the path marked
  assert ((a == q) | ((q == maze.OPEN) & (a == maze.PATH))).all()
  path = {tuple(x) for x in np.argwhere(a == maze.PATH)}
  assert len(path) + 1 == dist[g] > min_path  # shortest length, rule kept
  # the marked cells form a connected S->G walk of that length
  cur, steps, visited = s, 0, {s}
  while cur != g:
    nxt = [(cur[0] + dr, cur[1] + dc) for dr, dc in maze._MOVES]
    nxt = [p for p in nxt if (p in path or p == g) and p not in visited]
    assert len(nxt) >= 1
    cur = g if g in nxt else nxt[0]
    visited.add(cur)
    steps += 1
  assert steps == dist[g]


def test_generated_30x30_labels_are_shortest_paths():
  q, a = maze.generate_set(6, [5, 0], size=30, min_path=110)
  assert q.shape == (6, 30, 30)
  for x, y in zip(q, a):
    _check_label(x, y, 110)
  q2, _ = maze.generate_set(6, [5, 0], size=30, min_path=110)
  np.testing.assert_array_equal(q, q2)  # seeded


def test_small_maze_builder_matches_in_memory_set(tmp_path):
  common.build("maze_hard/small", tmp_path)
  for split in ("train", "test"):
    d = ip.load_split("maze_hard/small", split, tmp_path)
    assert d.meta.seq_len == 100 and d.meta.vocab_size == 6
    arr = d.all_arrays()
    for x, y in zip(arr["inputs"], arr["labels"]):
      _check_label(x.reshape(10, 10), y.reshape(10, 10), 12)
    mem = generated.maze_small(seed=0)[split].all_arrays()
    np.testing.assert_array_equal(mem["inputs"], arr["inputs"])


def _write_csv(path, q, a):
  rows = ["source,question,answer,rating"]
  rows += [f"gen,{maze.to_text(x)},{maze.to_text(y)},0" for x, y in zip(q, a)]
  path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  d = tmp_path_factory.mktemp("maze_raw")
  q, a = maze.generate_set(12, [1, 0], size=30, min_path=110)
  _write_csv(d / "train.csv", q[:8], a[:8])
  _write_csv(d / "test.csv", q[8:], a[8:])
  return d, q, a


def test_csv_roundtrip_with_dihedral_aug(raw, tmp_path):
  d, q, a = raw
  common.build("maze_hard/csv_aug8", tmp_path, d)
  tr = ip.load_split("maze_hard/csv_aug8", "train", tmp_path)
  te = ip.load_split("maze_hard/csv_aug8", "test", tmp_path)
  assert (tr.meta.total_groups, len(tr.puzzle_indices) - 1, tr.num_examples) == (8, 64, 64)
  assert te.num_examples == 4 and tr.meta.num_puzzle_identifiers == 1
  arr = tr.all_arrays()
  for i in range(64):
    m, k = divmod(i, 8)
    x, y = arr["inputs"][i].reshape(30, 30), arr["labels"][i].reshape(30, 30)
    inv = arc.DIHEDRAL_INVERSE[k]
    np.testing.assert_array_equal(arc.dihedral(x, inv), q[m])
    np.testing.assert_array_equal(arc.dihedral(y, inv), a[m])
    _check_label(x, y, 110)
  np.testing.assert_array_equal(te.all_arrays()["labels"].reshape(4, 30, 30), a[8:])


@pytest.mark.parametrize(
  "edit, msg",
  [
    (lambda q, a: (q.replace("S", " "), a.replace("S", " ")), "exactly one S and one G"),
    (lambda q, a: (q.replace(" ", "G", 1), a.replace(" ", "G", 1)), "exactly one S and one G"),
    (lambda q, a: (q[:-1], a[:-1]), "not a square grid"),
    (lambda q, a: (q.replace(" ", "x", 1), a), "outside"),
    (lambda q, a: (q, a.replace("#", "o", 1)), "open cells marked o"),
  ],
)
def test_bad_maze_rows(raw, tmp_path, edit, msg):
  d, q, a = raw
  bad = tmp_path / "raw"
  bad.mkdir()
  (bad / "test.csv").write_text((d / "test.csv").read_text())
  lines = (d / "train.csv").read_text().splitlines()
  src, qq, aa, rating = lines[3].split(",")
  qq, aa = edit(qq, aa)
  lines[3] = ",".join((src, qq, aa, rating))
  (bad / "train.csv").write_text("\n".join(lines) + "\n")
  out = tmp_path / "data"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "trm_jax.data_cli",
      "build",
      "maze_hard/csv",
      "--manual_dir",
      str(bad),
      "--data_dir",
      str(out),
    ],
    capture_output=True,
    text=True,
    cwd=Path(__file__).parents[1],
  )
  err = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(err) == 1, r.stderr
  assert "train.csv:4:" in err[0] and msg in err[0], err[0]
  assert not out.exists()
