"""Optimisers against hand-computed numbers."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trm_jax import config_lib, optim, sharding
from trm_jax.model import RecursiveModel
from trm_jax.train_state import count_params, create_train_state


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
  expected = np.array(
    [[1.0, 1.0], [2.0 * decay + 0.1, -2.0 * decay - 0.1], [3.0, 3.0], [4.0 * decay + 0.1, 4.0 * decay - 0.0]]
  )
  np.testing.assert_allclose(out, expected, rtol=1e-6)


def _sign_sgd_rows_bxb(table, ids, g, lr, weight_decay):
  """The former formulation: per-id sums by an ids x ids float32 dot."""
  same = (ids[:, None] == ids[None, :]).astype(jnp.float32)
  summed = jnp.dot(same, g.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST)
  rows = table[ids] * (1.0 - lr * weight_decay) - lr * jnp.sign(summed)
  return table.at[ids].set(rows.astype(table.dtype))


_ID_CASES = {
  "duplicated": lambda r: r.integers(10, 16, 96),  # 6 ids, each ~16 times
  "distinct": lambda r: r.permutation(40)[:32],
  "identical": lambda r: np.full(24, 7),
}


@pytest.mark.parametrize("case", sorted(_ID_CASES))
def test_sign_sgd_rows_equals_the_ids_by_ids_dot(case):
  # Dyadic gradients (k / 8, |k| <= 64) sum exactly in any order, with exact
  # zeros where an id's gradients cancel: every sign, so every row, is the same.
  r = np.random.default_rng(0)
  ids = jnp.asarray(_ID_CASES[case](r), jnp.int32)
  table = jnp.asarray(r.normal(size=(48, 8)), jnp.float32)
  g = r.integers(-64, 65, (ids.shape[0], 8)) / 8
  g[:, 0] = 0.0  # a column summing to exactly 0 for every id
  if case == "duplicated":  # and one id whose gradients cancel in every column
    first = np.flatnonzero(np.asarray(ids) == int(ids[0]))
    g[first[1]] = -g[first[0]]
    g[first[2:]] = 0.0
  g = jnp.asarray(g, jnp.float32)
  out = optim.sign_sgd_rows(table, ids, g, 0.25, 0.5)
  np.testing.assert_array_equal(out, _sign_sgd_rows_bxb(table, ids, g, 0.25, 0.5))
  untouched = np.setdiff1d(np.arange(48), np.asarray(ids))
  np.testing.assert_array_equal(np.asarray(out)[untouched], np.asarray(table)[untouched])
  assert not np.array_equal(np.asarray(out)[np.asarray(ids)], np.asarray(table)[np.asarray(ids)])


def test_sign_sgd_rows_random_floats_agree_except_within_rounding_of_zero():
  r = np.random.default_rng(1)
  ids = np.concatenate([r.integers(0, 30, 240), np.arange(100, 116)])  # duplicates and singletons
  r.shuffle(ids)
  table = jnp.asarray(r.normal(size=(128, 64)), jnp.float32)
  g = r.normal(size=(ids.size, 64)).astype(np.float32)
  lr, wd = 0.125, 0.5
  out = np.asarray(optim.sign_sgd_rows(table, jnp.asarray(ids), jnp.asarray(g), lr, wd))
  ref = np.asarray(_sign_sgd_rows_bxb(table, jnp.asarray(ids), jnp.asarray(g), lr, wd))
  # Per (id, column): float64 sum, and the float32 rounding any summation order can add.
  same = ids[:, None] == ids[None, :]
  exact = same.astype(np.float64) @ g.astype(np.float64)
  slack = same.sum(1, keepdims=True) * np.finfo(np.float32).eps * (same @ np.abs(g.astype(np.float64)))
  clear = np.abs(exact) > slack
  assert clear.mean() > 0.99
  np.testing.assert_array_equal(out[ids][clear], ref[ids][clear])
  decayed = np.asarray(table)[ids] * np.float32(1.0 - lr * wd)
  assert np.all(np.isin(np.abs(out[ids] - decayed)[~clear].round(4), [0.0, lr]))
  untouched = np.setdiff1d(np.arange(128), ids)
  np.testing.assert_array_equal(out[untouched], np.asarray(table)[untouched])


def _collectives(hlo_text):
  """(opcode, result type) of each collective instruction; async ones counted at their start."""
  ops = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
  return [(op, ty) for ty, op in re.findall(rf"= (.*?) ({ops})(?:-start)?\(", hlo_text)]


def test_sign_sgd_rows_moves_row_grads_once_on_a_tpu_pod(monkeypatch):
  """Compile-only, for 16 v5e chips (data parallel, batch 768 over all of them).

  XLA moves the sorted gradients as one masked all-reduce rather than an
  all-gather, so besides the all-gathers this counts every collective of
  row-gradient size: the ids x ids dot has two here (and dozens in a step).
  """
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    pytest.skip(f"libtpu cannot be imported ({e}): no compile-only TPU topology")
  monkeypatch.setenv("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # a test beside this one may hold libtpu's lock
  devs = topologies.get_topology_desc(topology_name="v5e:4x4", platform="tpu").devices
  mesh = sharding.make_mesh(1, devs)
  batch, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  args = [
    jax.ShapeDtypeStruct((4096, 512), jnp.float32, sharding=NamedSharding(mesh, P("table", None))),
    jax.ShapeDtypeStruct((768,), jnp.int32, sharding=batch),
    jax.ShapeDtypeStruct((768, 512), jnp.float32, sharding=batch),
    jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
    jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
  ]
  shardings = tuple(a.sharding for a in args)

  def counts(fn):
    text = jax.jit(fn, in_shardings=shardings).lower(*args).compile().as_text()
    found = _collectives(text)
    return (sum(op == "all-gather" for op, _ in found), sum(len(re.findall(r"f32\[768,512\]", ty)) for _, ty in found))

  gathers, row_sized = counts(optim.sign_sgd_rows)
  assert gathers <= 2, "at most the ids and the row gradients"
  assert row_sized == 1, "the row gradients (or their sums) cross devices once"
  assert counts(_sign_sgd_rows_bxb)[1] == 2  # the check tells the two apart


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
