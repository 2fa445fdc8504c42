"""Sampler: pure in (seed, step), epoch coverage, per-process shards, eval."""

import dataclasses

import numpy as np
import pytest

from trm_jax import input_pipeline as ip
from trm_jax import sharding
from trm_jax.datasets import splits


def _toy(sizes_per_group, seq=5):
  """SplitData whose group g has puzzles with the given example counts."""
  puzzle_sizes = [s for g in sizes_per_group for s in g]
  pidx = np.concatenate([[0], np.cumsum(puzzle_sizes)])
  gidx = np.concatenate([[0], np.cumsum([len(g) for g in sizes_per_group])])
  n = int(pidx[-1])
  inputs = (np.arange(n)[:, None] % 200 + np.zeros(seq, int)).astype(np.uint8)
  labels = inputs.copy()
  labels[:, 0] = 0
  ids = np.arange(1, len(puzzle_sizes) + 1)
  return splits.make_split(inputs, labels, pidx, gidx, ids, 256, len(puzzle_sizes) + 1)


def _reset_caches():
  ip._SCHEDULES.clear()
  ip._plan.cache_clear()


def test_every_group_once_per_epoch_fixed_size():
  data = _toy([[1, 1, 1]] * 64)  # 64 groups, 3 single-example augmentations
  seen = []
  assert list(ip.iteration_ends(data, 7, 16, 1, 3)) == [4, 8, 12]  # epochs of 4 batches of 16
  for step in range(4 * 3):
    idx = ip.train_batch_indices(data, 7, step, 16)
    seen.append(np.searchsorted(data.group_indices, data.example_puzzle[idx], "right") - 1)
  for e in range(3):
    groups = np.concatenate(seen[4 * e : 4 * e + 4])
    assert sorted(groups) == list(range(64))
  # augmentation draws vary between epochs
  puzzles = [data.example_puzzle[ip.train_batch_indices(data, 7, s, 16)] for s in range(8)]
  assert not np.array_equal(np.sort(np.concatenate(puzzles[:4])), np.sort(np.concatenate(puzzles[4:])))


def test_variable_puzzles_fill_batches_and_drop_tail():
  rng = np.random.default_rng(0)
  data = _toy([list(rng.integers(1, 6, size=rng.integers(1, 4))) for _ in range(50)])
  B = 8
  nb = int(ip.iteration_ends(data, 3, B, 1, 1)[0])
  groups_used = []
  for b in range(nb):
    idx = ip.train_batch_indices(data, 3, b, B)
    assert len(idx) == B and len(set(idx.tolist())) == B
    p = data.example_puzzle[idx]
    g = np.searchsorted(data.group_indices, p, "right") - 1
    # one puzzle per group, contiguous groups in the batch
    for gg in np.unique(g):
      assert len(np.unique(p[g == gg])) == 1
    groups_used += list(dict.fromkeys(g.tolist()))
  # a group split over two batches appears twice; all others once
  unique = set(groups_used)
  assert len(groups_used) - len(unique) <= nb - 1
  assert 50 - len(unique) < B  # only the tail (< one batch) is dropped
  puzzles, starts = ip._plan(*ip._key_bytes(data), 3, 1, B, 1)  # step nb: the first batch of iteration 1
  assert set(data.example_puzzle[ip.train_batch_indices(data, 3, nb, B)]) <= set(puzzles[starts[0] : starts[1]])


def test_resume_reproduces_batches():
  data = _toy([[2, 3], [1], [4, 1, 2]] * 30)
  first = [ip.train_batch(data, 11, s, 12) for s in range(40)]
  _reset_caches()
  # resume at step 25 with fresh caches: identical batches from there
  for s in (25, 39, 30):
    again = ip.train_batch(data, 11, s, 12)
    for k in first[s]:
      np.testing.assert_array_equal(again[k], first[s][k])
  other = ip.train_batch(data, 12, 25, 12)
  assert not np.array_equal(other["inputs"], first[25]["inputs"])


@pytest.mark.parametrize("pc", [1, 2, 4])
def test_process_shards_disjoint_and_complete(pc):
  data = _toy([[1, 2], [3], [2, 2, 2]] * 20)
  for step in (0, 5, 17):
    full = ip.train_batch(data, 1, step, 16)
    parts = [ip.train_batch(data, 1, step, 16, pi, pc) for pi in range(pc)]
    for k in full:
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    idx = ip.train_batch_indices(data, 1, step, 16)
    shards = np.split(idx, pc)
    assert sum(len(set(s)) for s in shards) == len(set(idx.tolist())) == 16
  with pytest.raises(ValueError):
    ip.train_batch(data, 1, 0, 15, 0, 2)


@pytest.mark.parametrize("pc", [1, 2, 4])
def test_eval_order_and_padding(pc):
  data = _toy([[3], [2]] * 5)  # 25 examples
  batches = [list(ip.eval_batches(data, 8, pi, pc, with_index=True)) for pi in range(pc)]
  assert all(len(b) == 4 for b in batches)
  idx = np.concatenate([np.concatenate([batches[pi][j]["example_index"] for pi in range(pc)]) for j in range(4)])
  np.testing.assert_array_equal(idx[:25], np.arange(25))
  assert (idx[25:] == -1).all()
  rows = {
    k: np.concatenate([np.concatenate([batches[pi][j][k] for pi in range(pc)]) for j in range(4)])
    for k in ("inputs", "labels", "puzzle_identifiers")
  }
  assert (rows["inputs"][25:] == 0).all()
  assert (rows["labels"][25:] == -100).all()
  assert (rows["puzzle_identifiers"][25:] == 0).all()
  # stored label 0 becomes -100; puzzle ids follow the example's puzzle
  assert (rows["labels"][:25, 0] == -100).all()
  np.testing.assert_array_equal(rows["inputs"][:25, 1], np.arange(25))
  np.testing.assert_array_equal(rows["puzzle_identifiers"][:25], data.puzzle_identifiers[data.example_puzzle])


def test_batch_dtypes_and_global_array():

  data = _toy([[1]] * 32)
  local = ip.train_batch(data, 0, 0, 8)
  assert {k: v.dtype for k, v in local.items()} == {
    "inputs": np.int32,
    "labels": np.int32,
    "puzzle_identifiers": np.int32,
  }
  mesh = sharding.make_mesh(1)
  glob = sharding.global_batch(local, mesh)
  assert glob["inputs"].shape == (8, 5)
  np.testing.assert_array_equal(np.asarray(glob["labels"]), local["labels"])


def test_batch_larger_than_epoch_is_an_error():
  data = _toy([[1]] * 10)
  with pytest.raises(ValueError, match="epochs_per_iter"):
    ip.train_batch(data, 0, 0, 16)
  assert ip.train_batch(data, 0, 0, 16, epochs_per_iter=2)["inputs"].shape[0] == 16


def test_prefetch_matches_direct_calls():
  data = _toy([[1, 2], [3]] * 20)
  it = ip.prefetch_train_batches(data, 4, 10, 8, 1, 2)
  for expect_step in range(10, 16):
    step, batch = next(it)
    assert step == expect_step
    ref = ip.train_batch(data, 4, step, 8, 1, 2)
    for k in ref:
      np.testing.assert_array_equal(batch[k], ref[k])
  it.close()


def test_tokens_past_the_vocab_size_are_a_data_error():
  """Metadata whose vocab_size is below the records' tokens: one error naming the example, not NaN losses."""
  data = _toy([[1]] * 32)  # tokens 0..31
  data.meta = dataclasses.replace(data.meta, vocab_size=20)
  data.where = "toy split train"
  assert data.examples([3, 19])["inputs"].max() == 19  # rows whose tokens fit still read
  with pytest.raises(splits.DataError, match=r"toy split train: example 25: inputs token 25 outside the vocab_size 20"):
    data.examples([3, 25])
