"""The recursion: scan == loop, stop-gradient semantics, flat memory, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from trm_jax import config_lib, optim, recursion, steps
from trm_jax.model import RecursiveModel
from trm_jax.train_state import create_train_state, init_variables

VARIANTS = [
  dict(),
  dict(arch="hrm"),
  dict(variant="separate_nets"),
  dict(variant="one_step_grad"),
  dict(variant="single_latent"),
  dict(variant="multiscale_latent"),
  dict(mlp_t=True, pos_encodings="none"),
  dict(pos_encodings="learned", puzzle_emb_len=0, L_layers=2),
]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "trm")
def test_scan_equals_loop(kw):
  b = tiny.batch()
  res = {}
  for mode in ("loop", "scan"):
    cfg = tiny.mcfg(recursion=mode, **kw)
    v, table = tiny.variables(cfg)
    res[mode] = jax.jit(lambda v, t, cfg=cfg: tiny.grads(cfg, v, t, b))(v, table)
  for a, c in zip(jax.tree.leaves(res["loop"]), jax.tree.leaves(res["scan"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-5)
  # Gradients are not trivially zero.
  assert float(jnp.abs(res["loop"][1]["L_level"]["layers_0"]["mlp"]["down_proj"]["kernel"]).max()) > 0


def test_same_parameter_tree_in_both_modes():
  trees = [
    init_variables(RecursiveModel(c), c, jax.random.key(3))
    for c in (tiny.mcfg(recursion="loop"), tiny.mcfg(recursion="scan"))
  ]
  assert jax.tree.structure(trees[0]) == jax.tree.structure(trees[1])
  for a, c in zip(jax.tree.leaves(trees[0]), jax.tree.leaves(trees[1])):
    np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_gradient_is_that_of_the_last_cycle(mode):
  """Gradients equal those of the last cycle alone, started from the stop-gradient state."""
  cfg = tiny.mcfg(recursion=mode, H_cycles=3)
  model = RecursiveModel(cfg)
  v, table = tiny.variables(cfg)
  b = tiny.batch()
  z0 = recursion.reset_carry(recursion.initial_carry(cfg, tiny.B), b, v["consts"], cfg)["z"]
  rows = table[b["puzzle_identifiers"]]

  def out_full(params):
    var = {"params": params, "consts": v["consts"]}
    x = model.apply(var, b["inputs"], rows, method=RecursiveModel.embed)
    return recursion.deep_recursion(model, var, z0, x, cfg)["z_H"].sum()

  def out_last(params):
    var = {"params": params, "consts": v["consts"]}
    L = lambda z, inj: model.apply(var, z, inj, method=RecursiveModel.L)
    x = model.apply(var, b["inputs"], rows, method=RecursiveModel.embed)
    zH, zL = z0["z_H"], z0["z_L"]
    # H_cycles - 1 cycles evaluated separately, then detached.
    for _ in range(cfg.H_cycles - 1):
      for _ in range(cfg.L_cycles):
        zL = L(zL, zH + x)
      zH = L(zH, zL)
    zH, zL = jax.lax.stop_gradient(zH), jax.lax.stop_gradient(zL)
    for _ in range(cfg.L_cycles):
      zL = L(zL, zH + x)
    return L(zH, zL).sum()

  g_full = jax.grad(out_full)(v["params"])
  g_last = jax.grad(out_last)(v["params"])
  np.testing.assert_allclose(out_full(v["params"]), out_last(v["params"]), rtol=1e-5)
  for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_last)):
    assert float(jnp.abs(a - c).max()) <= 1e-5 * float(jnp.abs(c).max()) + 1e-7

  # ... and differ from the gradient through all cycles (the test can fail).
  def out_through(params):
    var = {"params": params, "consts": v["consts"]}
    L = lambda z, inj: model.apply(var, z, inj, method=RecursiveModel.L)
    x = model.apply(var, b["inputs"], rows, method=RecursiveModel.embed)
    zH, zL = z0["z_H"], z0["z_L"]
    for _ in range(cfg.H_cycles):
      for _ in range(cfg.L_cycles):
        zL = L(zL, zH + x)
      zH = L(zH, zL)
    return zH.sum()

  g_through = jax.grad(out_through)(v["params"])
  diff = max(float(jnp.abs(a - c).max()) for a, c in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_through)))
  assert diff > 1e-4


def _temp_bytes(mode, h_cycles):
  cfg = tiny.mcfg(recursion=mode, H_cycles=h_cycles, L_cycles=3, hidden_size=64, num_heads=4)
  tcfg = config_lib.train_config(global_batch_size=8)
  model = RecursiveModel(cfg)
  tx = optim.make_optimizer(tcfg, 100)
  state = jax.eval_shape(lambda: create_train_state(model, cfg, tcfg, tx, jax.random.key(0)))
  carry = jax.eval_shape(lambda: recursion.initial_carry(cfg, 8))
  b = jax.eval_shape(lambda: tiny.batch(b=8))
  step = jax.jit(steps.make_train_step(model, cfg, tcfg, tx, 100), donate_argnums=(0, 1))
  return step.lower(state, carry, b, jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_train_step_memory_flat_in_H_cycles(mode):
  sizes = [_temp_bytes(mode, h) for h in (1, 3, 6)]
  # No residuals from the no-grad cycles: a few bytes of loop counters at most.
  assert max(sizes) - min(sizes) <= 4096, sizes
  assert sizes[0] > 0


@pytest.mark.parametrize(
  "kw", [dict(), dict(mlp_t=True, pos_encodings="none"), dict(arch="hrm")], ids=["att", "mlp", "hrm"]
)
def test_bfloat16_finite(kw):
  cfg = tiny.mcfg(dtype="bfloat16", **kw)
  v, table = tiny.variables(cfg)
  b = tiny.batch()
  b["inputs"] = jnp.asarray(np.random.default_rng(1).integers(0, tiny.V, b["inputs"].shape), jnp.int32)
  loss, g, g_rows, z, logits = jax.jit(lambda v, t: tiny.grads(cfg, v, t, b))(v, table)
  assert z["z_H"].dtype == jnp.bfloat16 and logits.dtype == jnp.bfloat16
  for leaf in jax.tree.leaves((loss, g, g_rows, z, logits)):
    assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(g))
