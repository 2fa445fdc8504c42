"""Sudoku-Extreme builder on the shared dev CSVs; augmentation; bad input."""

import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from trm_jax import input_pipeline as ip
from trm_jax.datasets import common, generated, sudoku

SHARED = Path(__file__).parents[2] / "shared" / "data" / "sudoku"
HEADER = "source,question,answer,rating\n"


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
  d = tmp_path_factory.mktemp("sudoku_raw")
  shutil.copy(SHARED / "sudoku_hard_dev.csv", d / "train.csv")
  shutil.copy(SHARED / "sudoku_17clue_dev.csv", d / "test.csv")
  return d


@pytest.fixture(scope="module")
def built(manual, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("sudoku_data")
  for cfg in ("full", "aug10_sub100"):
    common.build(f"sudoku_extreme/{cfg}", data_dir, manual)
  return data_dir


def _digits(tokens):
  return np.asarray(tokens, np.int64) - 1


def _invert_transform(grid, tr_one: dict) -> np.ndarray:
  """Inverse of sudoku.apply_transforms for a single transform (unbatched dict)."""
  g = np.asarray(grid, np.uint8).reshape(9, 9)
  inv_digits = np.zeros(10, np.uint8)
  inv_digits[tr_one["digits"]] = np.arange(10)
  g = inv_digits[g]
  out = np.empty_like(g)
  out[np.ix_(tr_one["rows"], tr_one["cols"])] = g
  if tr_one["transpose"]:
    out = out.T
  return out.reshape(81)


def _is_valid_small_solution(grid, n: int) -> bool:
  """Every row, column and box of an n x n digit grid holds 1..n."""
  g = np.asarray(grid).reshape(n, n)
  br, bc = generated.BOXES[n]
  want = list(range(1, n + 1))
  boxes = g.reshape(n // br, br, n // bc, bc).transpose(0, 2, 1, 3)
  return (
    all(sorted(x) == want for x in g)
    and all(sorted(x) == want for x in g.T)
    and all(sorted(x.ravel()) == want for x in boxes.reshape(n, n))
  )


def test_full_records_match_csv(built, manual):
  for split, f in (("train", "train.csv"), ("test", "test.csv")):
    q, a = sudoku.read_csv(manual / f)
    data = ip.load_split("sudoku_extreme/full", split, built)
    assert data.meta.seq_len == 81 and data.meta.vocab_size == 11
    assert data.num_examples == len(q) == data.meta.total_groups
    arr = data.all_arrays()
    np.testing.assert_array_equal(_digits(arr["inputs"]), q)
    np.testing.assert_array_equal(_digits(arr["labels"]), a)
    assert (data.puzzle_identifiers == 0).all()
  # lazy record reader gives the same rows, in example-id order
  lazy = ip.load_split("sudoku_extreme/full", "test", built)
  idx = np.array([999, 0, 517])
  np.testing.assert_array_equal(_digits(lazy.reader.read(idx)[0]), q[idx])


def test_augmented_set_is_valid_and_grouped(built, manual):
  q, a = sudoku.read_csv(manual / "train.csv")
  data = ip.load_split("sudoku_extreme/aug10_sub100", "train", built)
  m = data.meta
  assert (m.total_groups, m.num_puzzles, m.num_examples) == (100, 1100, 1100)
  assert m.num_puzzle_identifiers == 1 and m.mean_puzzle_examples == 1.0
  arr = data.all_arrays()
  qi, ai = _digits(arr["inputs"]), _digits(arr["labels"])
  assert sudoku.is_valid_solution(ai).all()
  assert ((qi == 0) | (qi == ai)).all()  # givens agree with the answer
  rows = {x.tobytes(): i for i, x in enumerate(q.astype(np.int64))}
  for g in range(100):
    start = data.group_indices[g]
    orig = rows[qi[start].tobytes()]  # copy 0 is the untouched puzzle
    np.testing.assert_array_equal(ai[start], a[orig])
    for k in range(start + 1, start + 11):
      assert (qi[k] == 0).sum() == (q[orig] == 0).sum()
      assert not np.array_equal(qi[k], q[orig])
  test = ip.load_split("sudoku_extreme/aug10_sub100", "test", built)
  assert test.num_examples == 1000


def test_transforms_are_bijections_and_keep_validity(manual):
  q, a = sudoku.read_csv(manual / "test.csv")
  rng = np.random.default_rng(0)
  tr = sudoku.random_transforms(rng, 200)
  qa, aa = sudoku.apply_transforms(q[3], tr), sudoku.apply_transforms(a[3], tr)
  assert sudoku.is_valid_solution(aa).all()
  assert ((qa == 0) | (qa == aa)).all()
  assert tr["transpose"].any() and not tr["transpose"].all()
  for i in range(200):
    one = {k: v[i] for k, v in tr.items()}
    np.testing.assert_array_equal(_invert_transform(qa[i], one), q[3])
    np.testing.assert_array_equal(_invert_transform(aa[i], one), a[3])
  # rows stay within bands: the band of new row r is a permutation
  bands = tr["rows"] // 3
  assert (np.sort(bands.reshape(-1, 3, 3), axis=2) == bands.reshape(-1, 3, 3)[:, :, :1]).all()


def test_generated_small_sudoku_unique():
  sets = generated.sudoku_small(30, 10, size=6, seed=1)
  for n in (4, 6):
    d = generated.sudoku_small(20, 5, size=n, seed=2)["train"]
    arr = d.all_arrays()
    assert d.meta.seq_len == n * n and d.meta.vocab_size == n + 2
    for x, y in zip(arr["inputs"].astype(int) - 1, arr["labels"].astype(int) - 1):
      assert _is_valid_small_solution(y, n)
      assert ((x == 0) | (x == y)).all()
      assert generated.count_solutions(x, n) == 1
  assert sets["train"].num_examples == 30 and sets["test"].num_examples == 10


def test_sudoku_small_builder(tmp_path):
  common.build("sudoku_small/4x4", tmp_path)
  d = ip.load_split("sudoku_small/4x4", "test", tmp_path)
  ref = generated.sudoku_small(1000, 200, size=4, seed=0)["test"]
  np.testing.assert_array_equal(d.all_arrays()["inputs"], ref.all_arrays()["inputs"])


# ------------------------------------------------------------- bad input --
def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.data_cli", *args], capture_output=True, text=True, cwd=Path(__file__).parents[1]
  )


GOOD_Q = ".3...9..2....4.7.99..2...1.1..9....6.4..5......3..8...6..7..2..........1..8..5.6."
GOOD_A = "837519642521643789964287513185972436246351897793468125619734258452896371378125964"


@pytest.mark.parametrize(
  "row, line, msg",
  [
    (f"s,{GOOD_Q[:80]},{GOOD_A},1", 3, "81 characters"),
    (f"s,{GOOD_Q[:80]}x,{GOOD_A},1", 3, "81 characters of .1-9"),
    (f"s,{GOOD_Q},{GOOD_A[:80]}0,1", 3, "answer must be 81 digits"),
    (f"s,{'4' + GOOD_Q[1:]},{GOOD_A},1", 3, "contradicts the givens"),
    (f"s,{GOOD_Q},{GOOD_A[1:] + GOOD_A[0]},1", 3, "contradicts"),
    ("s,only-two", 3, "expected 4 fields"),
  ],
)
def test_bad_rows_fail_cleanly(tmp_path, row, line, msg):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "train.csv").write_text(HEADER + f"s,{GOOD_Q},{GOOD_A},1\n" + row + "\n")
  (raw / "test.csv").write_text(HEADER + f"s,{GOOD_Q},{GOOD_A},1\n")
  out = tmp_path / "data"
  r = _cli("build", "sudoku_extreme/full", "--manual_dir", str(raw), "--data_dir", str(out))
  assert r.returncode == 1
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
  assert f"train.csv:{line}:" in err[0] and msg in err[0]
  assert not out.exists()


@pytest.mark.parametrize("line", ["1," * 2_500_000, "s," + "1" * 5_000_000 + ",x,1"])  # short fields; one long one
def test_an_overlong_line_is_refused_after_reading_at_most_the_cap(tmp_path, line):
  """A 2 GB one-line CSV was read whole (4.3 GB resident, or a MemoryError): now one line, after 64 K characters."""
  f = tmp_path / "train.csv"
  f.write_text(HEADER + line)
  tracemalloc.start()
  try:
    with pytest.raises(common.DataError, match=rf"^{f}:2: line longer than 65536 characters"):
      sudoku.read_csv(f)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1_000_000, peak


def test_missing_file_and_bad_header(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "train.csv").write_text(HEADER + f"s,{GOOD_Q},{GOOD_A},1\n")
  out = tmp_path / "data"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  r = _cli("build", "sudoku_extreme/full", "--manual_dir", str(raw), "--data_dir", str(out))
  assert r.returncode == 1 and "test.csv: file not found" in r.stderr
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
  (raw / "test.csv").write_text("a,b\n1,2\n")
  r = _cli("build", "sudoku_extreme/full", "--manual_dir", str(raw), "--data_dir", str(out))
  assert r.returncode == 1 and "test.csv:1: header" in r.stderr
  assert "Traceback" not in r.stderr
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
  # an invalid answer grid that agrees with the givens
  bad = GOOD_A[:9][::-1] + GOOD_A[9:]
  (raw / "test.csv").write_text(HEADER + f"s,{'.' * 81},{bad},1\n")
  with pytest.raises(common.DataError, match="not a valid Sudoku"):
    sudoku.read_csv(raw / "test.csv")
