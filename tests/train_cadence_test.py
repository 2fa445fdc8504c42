"""A smoke run evaluating every N epochs: evaluations at the sampler's iteration ends, as the reference."""

import pytest
from train_test import smoke

from trm_jax import cadence, input_pipeline, metrics, train
from trm_jax import data as data_lib


def test_smoke_run_evaluates_every_n_epochs(tmp_path):
  c = smoke()
  # 64 train puzzles (one group each), batch 16: 2 epochs = 128 examples = 8 batches per iteration.
  c.train.update(steps=-1, epochs=6, eval_every=0, eval_every_epochs=2, checkpoint_every=0)
  out = train.train_and_evaluate(c, str(tmp_path))
  events = metrics.read(str(tmp_path))
  evals = [e["step"] for e in events if "eval/test/exact_accuracy" in e]
  d = data_lib.load(c.data)
  ends = input_pipeline.iteration_ends(d.train, c.seed, 16, 2, 3)
  n = d.train.meta.total_groups
  assert list(ends) == [2 * n // 16 * k for k in (1, 2, 3)]
  assert evals == list(ends) and out["step"] == ends[-1]
  assert any("total_steps" in e and e["total_steps"] == ends[-1] for e in events)


def test_conflicting_cadence_is_a_user_error(tmp_path):
  c = smoke()
  c.train.update(eval_every=5, eval_every_epochs=2, epochs=6, steps=-1)
  with pytest.raises(train.UserError, match="set only one"):
    train.train_and_evaluate(c, str(tmp_path))
  assert cadence.sampler_epochs_per_iter(c.train) == 2
