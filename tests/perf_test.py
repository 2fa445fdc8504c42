"""Speed knobs (issue 15) keep the function: the einsum mixer, scan unroll, per-backend remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from trm_jax.model import RecursiveModel
from trm_jax.train_state import init_variables

MIXER = dict(mlp_t=True, pos_encodings="none", L_layers=2)


def _run(cfg, b):
  v, table = tiny.variables(cfg)
  return jax.jit(lambda v, t: tiny.grads(cfg, v, t, b))(v, table)


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_einsum_mixer_equals_transpose_mixer(mode):
  """Token mixing over the sequence axis without transposes: same params, outputs and gradients."""
  b = tiny.batch()
  cfgs = {impl: tiny.mcfg(recursion=mode, mixer_impl=impl, **MIXER) for impl in ("transpose", "einsum")}
  trees = [init_variables(RecursiveModel(c), c, jax.random.key(1)) for c in cfgs.values()]
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  res = {impl: _run(c, b) for impl, c in cfgs.items()}
  tiny.assert_trees_close(res["transpose"], res["einsum"], 2e-5)
  # The mixer's own gradient is there (not trivially zero) in both.
  g = res["einsum"][1]["L_level"]["layers_0"]["mlp_t"]["gate_up_proj"]["kernel"]
  assert float(jnp.abs(g).max()) > 0


def test_einsum_mixer_bfloat16_close():
  b = tiny.batch()
  res = {impl: _run(tiny.mcfg(mixer_impl=impl, dtype="bfloat16", **MIXER), b) for impl in ("transpose", "einsum")}
  np.testing.assert_allclose(float(res["transpose"][0]), float(res["einsum"][0]), rtol=2e-2)
  assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(res["einsum"]))


@pytest.mark.parametrize("unroll", [2, 5])
def test_scan_unroll_equals_loop(unroll):
  b = tiny.batch()
  loop = _run(tiny.mcfg(recursion="loop", L_cycles=3, **MIXER), b)
  scan = _run(tiny.mcfg(recursion="scan", L_cycles=3, scan_unroll=unroll, **MIXER), b)
  tiny.assert_trees_close(loop, scan, 1e-5)


def test_auto_knobs_resolve_per_platform():
  """ "auto" follows the platform the program is compiled for, given explicitly or JAX's default."""
  for platform, remat, mixer, attention in [
    ("cpu", "dots", "transpose", "xla"),
    ("tpu", "dots", "transpose", "xla"),
    ("gpu", "none", "einsum", "cudnn"),
  ]:
    c = tiny.mcfg(platform, recursion="scan", attention_impl="auto")
    assert (c.platform, c.remat, c.mixer_impl, c.attention_impl) == (platform, remat, mixer, attention)
  assert tiny.mcfg("tpu", seq_len=900, attention_impl="auto").attention_impl == "splash"  # long: Pallas kernel
  assert tiny.mcfg("gpu", recursion="loop").remat == "none"
  assert tiny.mcfg("gpu", recursion="scan", remat="full").remat == "full"
  assert tiny.mcfg("gpu", mixer_impl="transpose").mixer_impl == "transpose"
  # This test runs on CPU: without a platform, the portable paths are the ones chosen.
  assert jax.default_backend() == "cpu"
  c = tiny.mcfg(recursion="scan")
  assert (c.platform, c.remat, c.mixer_impl) == ("cpu", "dots", "transpose")


@pytest.mark.parametrize("field,value", [("mixer_impl", "cublas"), ("scan_unroll", 0)])
def test_bad_knob_names_the_field(field, value):
  with pytest.raises(ValueError, match=f"config.model.{field}"):
    tiny.mcfg(**{field: value})
