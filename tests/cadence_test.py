"""Evaluation cadence in epochs and sampler iterations, against direct
re-implementations of the reference's rules (pretrain.py, puzzle_dataset.py)."""

import ml_collections
import numpy as np
import pytest

from trm_jax import cadence
from trm_jax import input_pipeline as ip
from trm_jax.datasets import splits


def _toy(sizes_per_group):
  puzzle_sizes = [s for grp in sizes_per_group for s in grp]
  pidx = np.concatenate([[0], np.cumsum(puzzle_sizes)])
  gidx = np.concatenate([[0], np.cumsum([len(grp) for grp in sizes_per_group])])
  n = int(pidx[-1])
  inputs = np.ones((n, 3), np.uint8)
  return splits.make_split(inputs, inputs, pidx, gidx, np.arange(1, len(puzzle_sizes) + 1), 4, len(puzzle_sizes) + 1)


def _reference_pack(puzzle_sizes, batch):
  """The reference's `_sample_batch` loop over one iteration's puzzles: [first, end) of each full batch."""
  out, start = [], 0
  while start < len(puzzle_sizes):
    first, size = start, 0
    while start < len(puzzle_sizes) and size < batch:
      size += min(puzzle_sizes[start], batch - size)
      start += 1
    if size < batch:  # "Drop last batch"
      break
    out.append((first, start))
  return out


def _reference_run(data, epochs, eval_interval, batch):
  """Steps at which the reference evaluates, and its total_steps (group order does not matter
  for single-example puzzles)."""
  m = data.meta
  total_steps = int(epochs * m.total_groups * m.mean_puzzle_examples / batch)
  step, evals = 0, []
  for _ in range(epochs // eval_interval):
    n_batches = len(_reference_pack([1] * (m.total_groups * eval_interval), batch))
    step += n_batches  # train_state.step counts every batch ...
    evals.append(min(step, total_steps))  # ... but no batch past total_steps trains
  return total_steps, evals


def _train_cfg(**kw):
  c = dict(steps=-1, epochs=9, global_batch_size=4, eval_every=0, eval_every_epochs=3, epochs_per_iter=-1)
  c.update(kw)
  return ml_collections.ConfigDict(c)


def _resolved(t, data):
  m = data.meta
  if t.steps < 0:
    t.steps = int(t.epochs * m.total_groups * m.mean_puzzle_examples // t.global_batch_size)
  return t


@pytest.mark.parametrize(
  "groups,batch,epochs,every", [(10, 4, 9, 3), (10, 4, 12, 12), (7, 3, 10, 5), (64, 16, 4, 1), (1000, 768, 20, 5)]
)
def test_eval_steps_match_the_reference(groups, batch, epochs, every):
  data = _toy([[1, 1]] * groups)  # groups of two single-example augmentations
  t = _resolved(_train_cfg(epochs=epochs, global_batch_size=batch, eval_every_epochs=every), data)
  c = cadence.cadence(t, data, seed=0)
  total_steps, evals = _reference_run(data, epochs, every, batch)
  assert c.lr_steps == total_steps
  assert list(c.eval_steps) == sorted(set(evals))
  assert len(c.eval_steps) == epochs // every
  assert c.end == evals[-1] and c.epochs_per_iter == every


def test_small_numbers_by_hand():
  # 10 groups, batch 4: 3 epochs hold 30 examples -> 7 full batches, 2 examples dropped.
  data = _toy([[1]] * 10)
  c = cadence.cadence(_resolved(_train_cfg(), data), data, seed=0)
  assert (c.lr_steps, c.end, c.eval_steps) == (22, 21, (7, 14, 21))
  # Per-epoch iterations (the previous trm_jax rule) drop 2 examples every epoch: 2 batches an epoch.
  assert list(ip.iteration_ends(data, 0, 4, 1, 3)) == [2, 4, 6]


def test_steps_mode_and_bad_settings():
  data = _toy([[1]] * 10)
  c = cadence.cadence(_resolved(_train_cfg(eval_every_epochs=-1, eval_every=5), data), data, seed=0)
  assert (c.end, c.eval_steps, c.epochs_per_iter) == (22, (5, 10, 15, 20, 22), 1)
  c = cadence.cadence(_resolved(_train_cfg(eval_every_epochs=-1, eval_every=0), data), data, seed=0)
  assert c.eval_steps == (22,)
  with pytest.raises(ValueError, match="eval_every_epochs=3: must divide config.train.epochs=10"):
    cadence.check(_train_cfg(epochs=10))
  with pytest.raises(ValueError, match="set only one"):
    cadence.check(_train_cfg(eval_every=100))
  # An explicit, shorter train.steps ends the run early (its last evaluation included).
  c = cadence.cadence(_train_cfg(steps=10), data, seed=0)
  assert (c.end, c.eval_steps) == (10, (7, 10))


@pytest.mark.parametrize("epochs_per_iter", [1, 3, 8])
def test_iteration_batches_match_the_reference_packing(epochs_per_iter):
  rng = np.random.default_rng(0)
  data = _toy([list(rng.integers(1, 6, size=rng.integers(1, 4))) for _ in range(23)])
  batch = 8
  ends = ip.iteration_ends(data, 5, batch, epochs_per_iter, 3)
  for it in range(3):
    puzzles, starts = ip._plan(*ip._key_bytes(data), 5, it, batch, epochs_per_iter)
    sizes = np.diff(data.puzzle_indices)[puzzles]
    ref = _reference_pack(sizes.tolist(), batch)
    assert [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])] == ref
    assert ends[it] - (ends[it - 1] if it else 0) == len(ref)
    # Coverage: every group epochs_per_iter times in the iteration; all but the last partial batch's puzzles used.
    groups = np.searchsorted(data.group_indices, puzzles, "right") - 1
    assert np.array_equal(np.bincount(groups, minlength=23), np.full(23, epochs_per_iter))
    assert sizes[ref[-1][1] :].sum() < batch
  # The batches the sampler serves are those puzzles' examples, iteration by iteration.
  for step in (0, int(ends[0]) - 1, int(ends[0]), int(ends[1])):
    it = int(np.searchsorted(ends, step, "right"))
    b = step - (ends[it - 1] if it else 0)
    idx = ip.train_batch_indices(data, 5, step, batch, epochs_per_iter)
    puzzles, starts = ip._plan(*ip._key_bytes(data), 5, it, batch, epochs_per_iter)
    assert set(data.example_puzzle[idx].tolist()) <= set(puzzles[starts[b] : starts[b + 1]].tolist())
