"""Optimisers against hand-computed numbers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trm_jax import config_lib, optim
from trm_jax.model import RecursiveModel
from trm_jax.train_state import count_params, create_train_state

import tiny


def test_adam_atan2_by_hand():
  lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.95
  tx = optim.adam_atan2(lr, b1, b2, wd)
  p = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(p)
  grads = [jnp.array([0.5, -1.0]), jnp.array([-0.25, 3.0])]
  # By hand, step by step, in Python floats.
  ph, m, v = [1.0, -2.0], [0.0, 0.0], [0.0, 0.0]
  for t, g in enumerate(grads, start=1):
    for i in range(2):
      gi = float(g[i])
      ph[i] *= 1 - lr * wd
      m[i] = b1 * m[i] + (1 - b1) * gi
      v[i] = b2 * v[i] + (1 - b2) * gi * gi
      ph[i] -= lr / (1 - b1**t) * math.atan2(m[i], math.sqrt(v[i]) / math.sqrt(1 - b2**t))
    u, state = tx.update({"w": g}, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p["w"], ph, rtol=1e-6)
  assert ph == [ph[0], ph[1]] and abs(ph[0] - 1.0) > 0.05


def test_schedule_warmup_then_cosine():
  s = optim.lr_schedule(1.0, warmup_steps=4, total_steps=12, min_ratio=0.1)
  # optax count k is the reference's step k + 1.
  np.testing.assert_allclose([float(s(k)) for k in range(4)], [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(float(s(7)), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)), rtol=1e-6)
  np.testing.assert_allclose(float(s(11)), 0.1, rtol=1e-6)
  const = optim.lr_schedule(1e-4, 2, 100, 1.0)
  np.testing.assert_allclose([float(const(k)) for k in (0, 1, 50, 99)], [5e-5, 1e-4, 1e-4, 1e-4], rtol=1e-6)


def test_sign_sgd_sums_duplicates_and_touches_batch_rows_only():
  table = jnp.array([[1.0, 1.0], [2.0, -2.0], [3.0, 3.0], [4.0, 4.0]])
  ids = jnp.array([1, 3, 1])
  g = jnp.array([[1.0, -0.5], [-2.0, 0.0], [-3.0, 1.0]])  # id 1: sum (-2, 0.5)
  out = optim.sign_sgd_rows(table, ids, g, lr=0.1, weight_decay=0.5)
  decay = 1 - 0.1 * 0.5
  expected = np.array([[1.0, 1.0],
                       [2.0 * decay + 0.1, -2.0 * decay - 0.1],
                       [3.0, 3.0],
                       [4.0 * decay + 0.1, 4.0 * decay - 0.0]])
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_puzzle_table_gets_no_optimizer_state():
  cfg = tiny.mcfg(num_puzzle_identifiers=1000)
  tcfg = config_lib.train_config()
  tx = optim.make_optimizer(tcfg, 10)
  state = jax.eval_shape(lambda: create_train_state(RecursiveModel(cfg), cfg, tcfg, tx, jax.random.key(0)))
  n = count_params(state.params)
  opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  assert state.puzzle_table.shape == (1000, cfg.puzzle_emb_ndim)
  assert opt <= 2 * n + 8  # two moments of the core parameters, plus counters
  assert "puzzle" not in str(jax.tree.structure(state.params))


def test_ema_and_adamw_option():
  e = optim.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, 0.9)
  np.testing.assert_allclose(e["a"], 0.9 * 1.0 + 0.1 * 3.0)
  tcfg = config_lib.train_config(optimizer="adamw", lr_warmup_steps=0)
  tx = optim.make_optimizer(tcfg, 10)
  p = {"w": jnp.ones(3)}
  u, _ = tx.update({"w": jnp.ones(3)}, tx.init(p), p)
  assert bool(jnp.all(u["w"] < 0))
