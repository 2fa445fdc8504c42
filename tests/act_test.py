"""ACT carry rules on hand-built carries: reset, halting, exploration."""

import jax
import jax.numpy as jnp
import numpy as np
import tiny

from trm_jax import recursion


def test_reset_takes_fresh_rows_only_where_halted():
  cfg = tiny.mcfg()
  v, _ = tiny.variables(cfg)
  consts = v["consts"]
  carry = recursion.initial_carry(cfg, 4)
  old = tiny.batch(seed=1)
  fresh = tiny.batch(seed=2)
  carry = dict(
    carry,
    halted=jnp.array([True, False, True, False]),
    steps=jnp.array([5, 2, 16, 1], jnp.int32),
    data=old,
    z={"z_H": jnp.full(carry["z"]["z_H"].shape, 7.0), "z_L": jnp.full(carry["z"]["z_L"].shape, 9.0)},
  )
  out = recursion.reset_carry(carry, fresh, consts, cfg)
  np.testing.assert_array_equal(out["steps"], [0, 2, 0, 1])
  for k in fresh:
    np.testing.assert_array_equal(out["data"][k][0::2], fresh[k][0::2])
    np.testing.assert_array_equal(out["data"][k][1::2], old[k][1::2])
  np.testing.assert_array_equal(out["z"]["z_H"][0, 3], consts["H_init"])
  np.testing.assert_array_equal(out["z"]["z_L"][2, 0], consts["L_init"])
  assert float(out["z"]["z_H"][1].min()) == 7.0 and float(out["z"]["z_L"][3].max()) == 9.0


def test_first_carry_is_all_halted():
  carry = recursion.initial_carry(tiny.mcfg(), 3)
  assert bool(carry["halted"].all()) and int(carry["steps"].sum()) == 0


def test_halting_rules():
  cfg = tiny.mcfg(halt_max_steps=4)
  steps = jnp.array([1, 2, 4, 3])
  q = jnp.array([[1.0, 2.0], [-1.0, -2.0], [-1.0, 0.0], [0.5, -3.0]])  # (q_halt, q_continue)
  key = jax.random.key(0)
  halted, last = recursion.halting(steps, q, cfg, False, key)
  np.testing.assert_array_equal(last, [False, False, True, False])
  np.testing.assert_array_equal(halted, last)  # evaluation: only the step limit
  # TRM (no_ACT_continue): halt where q_halt > 0.
  halted, _ = recursion.halting(steps, q, cfg, True, key)
  np.testing.assert_array_equal(halted, [True, False, True, True])
  # HRM: halt where q_halt > q_continue.
  halted, _ = recursion.halting(steps, q, tiny.mcfg(halt_max_steps=4, arch="hrm"), True, key)
  np.testing.assert_array_equal(halted, [False, True, True, True])
  # One supervision step: only the limit counts.
  halted, _ = recursion.halting(
    jnp.array([1, 1]), jnp.array([[5.0, 0.0], [-5.0, 0.0]]), tiny.mcfg(halt_max_steps=1), True, key
  )
  np.testing.assert_array_equal(halted, [True, True])


def test_exploration_min_steps_uniform_in_2_to_max():
  """With prob 1 every row draws min_steps ~ U{2..max}; q says halt everywhere."""
  max_steps, n = 6, 20000
  cfg = tiny.mcfg(halt_max_steps=max_steps, halt_exploration_prob=1.0)
  q = jnp.tile(jnp.array([[10.0, -10.0]]), (n, 1))
  for k in range(1, max_steps + 1):
    halted, _ = recursion.halting(jnp.full((n,), k), q, cfg, True, jax.random.key(k))
    # P(min_steps <= k) = (k - 1) / (max - 1) for k in 1..max.
    np.testing.assert_allclose(float(halted.mean()), (k - 1) / (max_steps - 1), atol=0.015)
  # Probability 0.1: about 10% of rows explore; at step 1 exactly those are kept going.
  cfg = tiny.mcfg(halt_max_steps=max_steps, halt_exploration_prob=0.1)
  halted, _ = recursion.halting(jnp.full((n,), 1), q, cfg, True, jax.random.key(0))
  np.testing.assert_allclose(1 - float(halted.mean()), 0.1, atol=0.01)


def test_act_forward_counts_metrics_on_halted_rows_only():
  cfg = tiny.mcfg(halt_max_steps=2)
  from trm_jax.model import RecursiveModel

  v, table = tiny.variables(cfg)
  b = tiny.batch()
  carry = recursion.reset_carry(recursion.initial_carry(cfg, tiny.B), b, v["consts"], cfg)
  rows = table[b["puzzle_identifiers"]]
  _, (c1, _, m1) = recursion.act_forward(RecursiveModel(cfg), v, carry, rows, cfg, False, None)
  assert float(m1["count"]) == 0 and not bool(c1["halted"].any())
  c1 = recursion.reset_carry(c1, tiny.batch(seed=9), v["consts"], cfg)
  np.testing.assert_array_equal(c1["data"]["inputs"], b["inputs"])  # nobody restarted
  _, (c2, _, m2) = recursion.act_forward(RecursiveModel(cfg), v, c1, rows, cfg, False, None)
  assert bool(c2["halted"].all()) and float(m2["count"]) == tiny.B
  assert float(m2["steps"]) == 2 * tiny.B
