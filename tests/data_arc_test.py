"""ARC builder on the shared JSON (small configs): exact decoding, transforms,
split/puzzle-id rules of REFERENCE.md section 7, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trm_jax import input_pipeline as ip
from trm_jax.datasets import arc, arc_builder, common

SHARED = Path(__file__).parents[2] / "shared" / "data" / "arc"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  d = tmp_path_factory.mktemp("arc_data")
  common.build("arc_agi/arc1_small", d, SHARED)
  return d


def _load(built, split):
  return ip.load_split("arc_agi/arc1_small", split, built)


def _expected_pairs(task, role, split):
  if split == "test":
    return task["test"] if role == "eval" else []
  return task["train"] + (task["test"] if role == "train" else [])


def test_records_decode_to_source_grids(built):
  subsets = {s: arc.load_subset(SHARED, s) for s in ("training", "concept", "evaluation")}
  for split in ("train", "test"):
    data = _load(built, split)
    info, extra = data.info, data.extra_arrays
    arr = data.all_arrays()
    assert data.meta.seq_len == 900 and data.meta.vocab_size == 12
    first_moved = 0
    for p in range(len(data.puzzle_indices) - 1):
      pid = int(data.puzzle_identifiers[p])
      subset, tid, d, perm = arc_builder.original_of(pid, info, extra)
      role = info["tasks"][int(extra["puzzle_task"][pid])][2]
      pairs = _expected_pairs(subsets[subset][tid], role, split)
      lo, hi = data.puzzle_indices[p], data.puzzle_indices[p + 1]
      assert hi - lo == len(pairs)
      at_origin = []
      for k, (a, b) in zip(range(lo, hi), pairs):
        x, y = arc.from_canvas(arr["inputs"][k]), arc.from_canvas(arr["labels"][k])
        np.testing.assert_array_equal(arc.invert(x, d, perm), a)
        np.testing.assert_array_equal(arc.invert(y, d, perm), b)
        np.testing.assert_array_equal(x, arc.transform(a, d, perm))
        at_origin.append(arr["labels"][k].reshape(30, 30)[0, 0] >= 2 and arr["inputs"][k].reshape(30, 30)[0, 0] >= 2)
        if at_origin[-1]:  # untranslated: EOS right and below
          canvas = arr["labels"][k].reshape(30, 30)
          h, w = y.shape
          assert (canvas[:h, :w] >= 2).all()
          if h < 30:
            assert (canvas[h, :w] == 1).all()
          if w < 30:
            assert (canvas[:h, w] == 1).all()
          assert (canvas == 1).sum() == (w if h < 30 else 0) + (h if w < 30 else 0)
          np.testing.assert_array_equal(arc.crop_prediction(arr["labels"][k]), y)
      # Test pairs stay at the origin; of a training puzzle's pairs at least
      # one (chosen at random, as in the reference) does.
      assert all(at_origin) if split == "test" else any(at_origin)
      first_moved += not at_origin[0]
    # The pair kept at the origin is not always the first one.
    assert (first_moved > 0) == (split == "train")


def test_translation_keeps_a_random_pair_at_the_origin():
  pairs = [(np.full((2, 3), i, np.uint8), np.full((3, 2), i, np.uint8)) for i in range(4)]
  ident = np.arange(10, dtype=np.uint8)
  kept = []
  for seed in range(200):
    inputs, labels = arc_builder.render_pairs(pairs, 0, ident, True, np.random.default_rng([42, seed]))
    again = arc_builder.render_pairs(pairs, 0, ident, True, np.random.default_rng([42, seed]))
    np.testing.assert_array_equal(again[0], inputs)  # deterministic
    origin = [
      i
      for i in range(4)
      if np.array_equal(inputs[i], arc.to_canvas(pairs[i][0])) and np.array_equal(labels[i], arc.to_canvas(pairs[i][1]))
    ]
    assert origin  # one pair is always kept (others land there by chance)
    if len(origin) == 1:
      kept.append(origin[0])
  # every position gets to be the kept one, each about a quarter of the time
  counts = np.bincount(kept, minlength=4)
  assert (counts > len(kept) / 8).all(), counts
  inputs, _ = arc_builder.render_pairs(pairs, 0, ident, False, np.random.default_rng(0))
  for i in range(4):
    np.testing.assert_array_equal(inputs[i], arc.to_canvas(pairs[i][0]))


def test_split_and_puzzle_id_rules(built):
  train, test = _load(built, "train"), _load(built, "test")
  info, extra = train.info, train.extra_arrays
  n_tasks = len(info["tasks"])
  assert n_tasks == 18  # 6 per subset: training, concept, evaluation
  assert train.meta.num_puzzle_identifiers == test.meta.num_puzzle_identifiers
  n_ids = train.meta.num_puzzle_identifiers
  # every id 1..N is one augmented copy; all appear in train exactly once
  assert sorted(train.puzzle_identifiers) == list(range(1, n_ids))
  assert train.meta.total_groups == n_tasks
  assert test.meta.total_groups == 6
  eval_ids = {i for i in range(1, n_ids) if info["tasks"][extra["puzzle_task"][i]][2] == "eval"}
  assert set(test.puzzle_identifiers.tolist()) == eval_ids
  # each group holds the copies of one task; copy 0 is the identity
  for g in range(train.meta.total_groups):
    ids = train.puzzle_identifiers[train.group_indices[g] : train.group_indices[g + 1]]
    assert len({int(extra["puzzle_task"][i]) for i in ids}) == 1
    assert extra["puzzle_dihedral"][ids[0]] == 0
    np.testing.assert_array_equal(extra["puzzle_colours"][ids[0]], np.arange(10))
    assert 2 <= len(ids) <= 11
  assert (extra["puzzle_colours"][1:, 0] == 0).all()
  # no two copies of a task are the same puzzle (duplicates removed)
  arr = train.all_arrays()
  for g in range(train.meta.total_groups):
    seen = set()
    for p in range(train.group_indices[g], train.group_indices[g + 1]):
      lo, hi = train.puzzle_indices[p], train.puzzle_indices[p + 1]
      key = b"".join(
        arc.from_canvas(arr[k][e]).tobytes() + bytes(arc.from_canvas(arr[k][e]).shape)
        for e in range(lo, hi)
        for k in ("inputs", "labels")
      )
      assert key not in seen
      seen.add(key)


def test_transforms_are_bijections():
  rng = np.random.default_rng(0)
  g = rng.integers(0, 10, (3, 5)).astype(np.uint8)
  images = set()
  for d in range(8):
    perm = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
    t = arc.transform(g, d, perm)
    np.testing.assert_array_equal(arc.invert(t, d, perm), g)
    images.add(arc.transform(g, d, np.arange(10, dtype=np.uint8)).tobytes() + bytes(arc.dihedral(g, d).shape))
  assert len(images) == 8
  for r0, c0 in ((0, 0), (5, 7), (27, 25)):
    np.testing.assert_array_equal(arc.from_canvas(arc.to_canvas(g, r0, c0)), g)
  full = rng.integers(0, 10, (30, 30)).astype(np.uint8)
  assert (arc.to_canvas(full) >= 2).all()
  np.testing.assert_array_equal(arc.crop_prediction(arc.to_canvas(full)), full)


def test_invert_prediction_roundtrip(built):
  test = _load(built, "test")
  arr = test.all_arrays()
  subsets = arc.load_subset(SHARED, "evaluation")
  for p in (0, 7, 30, 65):
    pid = int(test.puzzle_identifiers[p])
    subset, tid, _, _ = arc_builder.original_of(pid, test.info, test.extra_arrays)
    k = test.puzzle_indices[p]
    pred = arc_builder.invert_prediction(arr["labels"][k], pid, test.info, test.extra_arrays)
    np.testing.assert_array_equal(pred, subsets[tid]["test"][0][1])


def test_arc2_small_builds(tmp_path):
  common.build("arc_agi/arc2_small", tmp_path, SHARED)
  test = ip.load_split("arc_agi/arc2_small", "test", tmp_path)
  assert test.meta.total_groups == 6
  tasks = {t[0] for t in test.info["tasks"]}
  assert tasks == {"training2", "concept", "evaluation2"}


# ------------------------------------------------------------- bad input --
GOOD = {"t1": {"train": [{"input": [[1, 2], [3, 4]], "output": [[4]]}], "test": [{"input": [[0]]}]}}
GOOD_SOL = {"t1": [[[5, 5]]]}


def _write(d, subset, chal, sol):
  (d / f"arc-agi_{subset}_challenges.json").write_text(chal if isinstance(chal, str) else json.dumps(chal))
  (d / f"arc-agi_{subset}_solutions.json").write_text(sol if isinstance(sol, str) else json.dumps(sol))


def _bad_case(name):
  chal, sol = json.loads(json.dumps(GOOD)), json.loads(json.dumps(GOOD_SOL))
  if name == "json":
    return '{"t1": {"train": [', sol, "malformed JSON at line 1"
  if name == "deep":
    return "[" * 100_000 + "]" * 100_000, sol, "JSON nested too deeply"
  if name == "ragged":
    chal["t1"]["train"][0]["input"] = [[1, 2], [3]]
    return chal, sol, "task t1 train[0].input: grid is not rectangular"
  if name == "colour":
    chal["t1"]["test"][0]["input"] = [[0, 10]]
    return chal, sol, "task t1 test[0].input: colour 10 outside 0-9"
  if name == "big":
    sol["t1"] = [[[1] * 31] * 2]
    return chal, sol, "task t1 solution[0]: grid is 2x31, over 30x30"
  if name == "nosol":
    sol = {}
    return chal, sol, "task t1: no solutions"
  if name == "float":
    chal["t1"]["train"][0]["output"] = [[1.5]]
    return chal, sol, "colour 1.5 outside 0-9"
  raise ValueError(name)


@pytest.mark.parametrize("case", ["json", "deep", "ragged", "colour", "big", "nosol", "float"])
def test_bad_json_fails_cleanly(tmp_path, case):
  raw = tmp_path / "raw"
  raw.mkdir()
  chal, sol, msg = _bad_case(case)
  for s in ("training", "concept"):
    _write(raw, s, GOOD, GOOD_SOL)
  _write(raw, "evaluation", chal, sol)
  out = tmp_path / "data"
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "trm_jax.data_cli",
      "build",
      "arc_agi/arc1_small",
      "--manual_dir",
      str(raw),
      "--data_dir",
      str(out),
    ],
    capture_output=True,
    text=True,
    cwd=Path(__file__).parents[1],
  )
  err = r.stderr.strip().splitlines()
  assert r.returncode == 1 and len(err) == 1, r.stderr
  assert "arc-agi_evaluation_" in err[0] and msg in err[0], err[0]
  assert not out.exists()


def test_missing_subset_file(tmp_path):
  _write(tmp_path, "training", GOOD, GOOD_SOL)
  with pytest.raises(common.DataError, match="arc-agi_concept_challenges.json: file not found"):
    common.build("arc_agi/arc1_small", tmp_path / "out", tmp_path)
  assert not (tmp_path / "out").exists()


def test_oversized_or_irregular_json_is_refused_unread(tmp_path):
  """An ARC JSON file is parsed whole, so one over JSON_MAX (16x the largest real one) is refused before it is read;
  a directory or device where a file belongs is named as such, not as missing."""
  big = tmp_path / "arc-agi_training_challenges.json"
  with open(big, "wb") as f:
    f.truncate(arc.JSON_MAX + 1)  # sparse: nothing is written, and nothing may be read
  with pytest.raises(common.DataError, match=rf"{big}: 67,108,865 bytes; an ARC JSON file is at most 67,108,864"):
    arc._load_json(big)
  with pytest.raises(common.DataError, match=rf"{tmp_path}: not a regular file"):
    arc._load_json(tmp_path)
