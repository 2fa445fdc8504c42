"""Model shapes, published parameter counts, and reference key mapping."""

import jax
import numpy as np
import pytest
import tiny

from trm_jax import config_lib, interop
from trm_jax.model import RecursiveModel, swiglu_inter
from trm_jax.train_state import count_params, init_variables


def _count(**kw):
  cfg = config_lib.frozen_model(config_lib.model_config(**kw))
  v = jax.eval_shape(lambda: init_variables(RecursiveModel(cfg), cfg, jax.random.key(0)))
  return count_params(v["params"])


def test_published_parameter_counts():
  att = _count()  # Sudoku, attention: paper "7M"
  mlp = _count(mlp_t=True, pos_encodings="none")  # Sudoku, MLP-mixer: paper "5M"
  hrm = _count(arch="hrm", H_layers=4, L_layers=4, H_cycles=2, L_cycles=2, puzzle_emb_len=0)  # "27M"
  assert 6.5e6 < att < 7.5e6, att
  assert 4.5e6 < mlp < 5.5e6, mlp
  assert 26.5e6 < hrm < 27.5e6, hrm


def test_swiglu_width():
  assert swiglu_inter(512, 4) == 1536 and swiglu_inter(97, 4) == 512 and swiglu_inter(20, 4) == 256


def test_buffers_are_not_parameters():
  cfg = tiny.mcfg()
  v = init_variables(RecursiveModel(cfg), cfg, jax.random.key(0))
  assert set(v["consts"]) == {"H_init", "L_init"}
  assert "H_init" not in str(jax.tree.structure(v["params"]))
  assert abs(float(np.std(np.asarray(v["consts"]["H_init"]))) - 1.0) < 0.5


@pytest.mark.parametrize(
  "kw",
  [dict(), dict(arch="hrm"), dict(mlp_t=True, pos_encodings="none"), dict(pos_encodings="learned", puzzle_emb_len=0)],
)
def test_reference_round_trip(kw):
  cfg = tiny.mcfg(**kw)
  v, table = tiny.variables(cfg)
  sd = interop.to_reference(v, table)
  assert "model.inner.L_level.layers.0.mlp.down_proj.weight" in sd
  like = jax.eval_shape(lambda: init_variables(RecursiveModel(cfg), cfg, jax.random.key(0)))
  v2, t2 = interop.from_reference(
    {"_orig_mod." + k: a for k, a in sd.items()}, like, cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim
  )
  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(table, t2)
  bad = dict(sd)
  bad.pop("model.inner.lm_head.weight")
  with pytest.raises(interop.KeyMismatch, match="missing keys: model.inner.lm_head.weight"):
    interop.from_reference(bad, like, cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim)
  bad = dict(sd, **{"model.inner.q_head.weight": np.zeros((3, cfg.hidden_size))})
  with pytest.raises(interop.KeyMismatch, match="model.inner.q_head.weight has shape"):
    interop.from_reference(bad, like, cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="config.model.recursion"):
    config_lib.frozen_model(config_lib.model_config(recursion="while"))
  with pytest.raises(ValueError, match="config.model.variant"):
    config_lib.frozen_model(config_lib.model_config(variant="nope"))
