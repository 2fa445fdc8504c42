"""The paper experiments run the reference's schedules: epochs and evaluation interval per arch."""

import pytest
from configs_test import load

from trm_jax import cadence

EXPECTED = {  # (experiment, arch): (epochs, eval_every_epochs)
  ("sudoku_mlp", "trm"): (50000, 5000),
  ("sudoku_mlp", "hrm"): (20000, 2000),
  ("sudoku_att", "trm"): (50000, 5000),
  ("sudoku_att", "hrm"): (20000, 2000),
  ("maze", "trm"): (50000, 5000),
  ("maze", "hrm"): (20000, 2000),
  ("arc1", "trm"): (100000, 10000),
  ("arc1", "hrm"): (100000, 10000),
  ("arc2", "trm"): (100000, 10000),
  ("arc2", "hrm"): (100000, 10000),
}


@pytest.mark.parametrize("name,arch", sorted(EXPECTED))
def test_reference_schedule(name, arch):
  c = load(name).get_config(f"arch={arch}")
  t = c.train
  assert (t.epochs, t.eval_every_epochs) == EXPECTED[name, arch]
  assert t.steps == -1 and t.eval_every == 0 and t.epochs_per_iter == -1
  cadence.check(t)
  assert cadence.sampler_epochs_per_iter(t) == t.eval_every_epochs
  assert c.eval.arc_aggregate_voting
  doc = load(name).__doc__
  assert f"eval_interval={t.eval_every_epochs}" in doc or f"eval_interval {t.eval_every_epochs}" in doc


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_toy_runs_count_steps(name):
  t = load(name).get_config(None).train
  assert t.eval_every > 0 and t.eval_every_epochs == -1
  assert cadence.sampler_epochs_per_iter(t) == 1


@pytest.mark.parametrize("field,value", [("train.eval_every_epochs", -2), ("train.epochs_per_iter", -5)])
def test_new_fields_are_validated(field, value):
  from trm_jax import config_lib

  c = load("arc1").get_config(None)
  section, name = field.split(".")
  with c.unlocked():
    c[section][name] = value
  with pytest.raises(ValueError, match=f"config.{field}"):
    config_lib.validate(c)
