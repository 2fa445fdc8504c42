"""Every experiment file loads, locked, with its arguments; data fields match the data layer."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = ["sudoku_mlp", "sudoku_att", "maze", "arc1", "arc2", "demo", "smoke"]
ARGS = [None, "arch=trm", "arch=hrm"]


def load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("arg", ARGS)
def test_experiment_loads_locked(name, arg):
  from trm_jax import config_lib

  c = load(name).get_config(arg)
  assert c.is_locked
  for field in (
    "seed",
    "train.steps",
    "train.global_batch_size",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "model.recursion",
    "eval.supervision_steps",
  ):
    node = c
    for part in field.split("."):
      node = node[part]
  with pytest.raises(AttributeError):
    c.train.stepz = 3
  with pytest.raises(AttributeError):
    c.modle = 1
  config_lib.validate_model(c.model)
  if arg == "arch=hrm":
    assert c.model.arch == "hrm"
  assert c.model.recursion in ("scan", "loop")
  assert load(name).__doc__ and "--config=experiments/" in load(name).__doc__


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_recursion_arg(name):
  assert load(name).get_config("recursion=scan").model.recursion == "scan"
  assert load(name).get_config(None).model.recursion == "loop"


def test_bad_argument_names_the_key():
  with pytest.raises(ValueError, match="arhc"):
    load("sudoku_mlp").get_config("arhc=hrm")


@pytest.mark.parametrize("name", ["sudoku_mlp", "sudoku_att", "maze", "arc1", "arc2"])
def test_data_fields_name_real_builders(name):
  import tensorflow_datasets as tfds

  import trm_jax.datasets  # noqa: F401  (registers the builders)

  c = load(name).get_config(None)
  builder_cls = tfds.builder_cls(c.data.name)
  assert c.data.config in [bc.name for bc in builder_cls.BUILDER_CONFIGS]


@pytest.mark.parametrize("name", ["demo", "smoke"])
def test_generated_sets_need_no_files(name):
  from trm_jax import data

  c = load(name).get_config(None)
  assert c.data.name.startswith("generated/")
  d = data.load(c.data)
  assert d.train.meta.seq_len == 16 and d.task == "sudoku"
  assert set(d.evals) == set(c.data.eval_sets)
