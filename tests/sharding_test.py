"""A train step on 4 fake CPU devices equals the single-device step.

Each case runs in its own process so that the device-count flag applies.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from trm_jax import config_lib, optim, recursion, sharding, steps
  from trm_jax.model import RecursiveModel
  from trm_jax.train_state import create_train_state
  sys.path.insert(0, sys.argv[2])
  import tiny

  table_parallel = int(sys.argv[1])
  assert jax.device_count() == 4, jax.devices()
  cfg = tiny.mcfg(num_puzzle_identifiers=8, halt_max_steps=3)
  tcfg = config_lib.train_config(global_batch_size=8, lr_warmup_steps=1, puzzle_emb_lr=0.01, weight_decay=0.1,
                                 puzzle_emb_weight_decay=0.1)
  model = RecursiveModel(cfg)
  tx = optim.make_optimizer(tcfg, 10)
  step_fn = steps.make_train_step(model, cfg, tcfg, tx, 10)
  create = lambda: create_train_state(model, cfg, tcfg, tx, jax.random.key(0))
  # Repeated ids in a batch: their row gradients must be summed across devices.
  batches = []
  for i in range(3):
    b = tiny.batch(seed=i, b=8)
    b["puzzle_identifiers"] = jnp.asarray(np.random.default_rng(i).integers(0, 3, 8), jnp.int32)
    batches.append(b)

  def run(jitted, state, carry, put):
    out = []
    for i, b in enumerate(batches):
      state, carry, m = jitted(state, carry, put(b), jax.random.key(i))
      out.append(float(m["loss"]))
    return state, carry, out

  # Single device.
  one = jax.jit(step_fn, donate_argnums=(0, 1))
  s1, c1, l1 = run(one, create(), recursion.initial_carry(cfg, 8), lambda b: b)
  # Four devices.
  mesh = sharding.make_mesh(table_parallel)
  s4 = jax.jit(create, out_shardings=sharding.state_shardings(mesh, jax.eval_shape(create)))()
  carry_sh = sharding.carry_shardings(mesh, jax.eval_shape(lambda: recursion.initial_carry(cfg, 8)))
  carry = jax.device_put(recursion.initial_carry(cfg, 8), carry_sh)
  jitted = sharding.jit_train_step(step_fn, mesh, sharding.state_shardings(mesh, jax.eval_shape(create)), carry_sh)
  put = lambda b: jax.device_put(b, sharding.batch_sharding(mesh))
  s4, c4, l4 = run(jitted, s4, carry, put)
  assert len(s4.puzzle_table.sharding.device_set) == 4
  if table_parallel > 1:
    assert s4.puzzle_table.addressable_shards[0].data.shape[0] == 8 // table_parallel
  # Relative error per array (max-abs error / max-abs single-device value), worst over the tree.
  def diff(a, b):
    out = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
      out = max(out, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
    return out
  moved = float(jnp.abs(s1.puzzle_table).max())
  print(json.dumps({"loss": max(abs(a - b) / abs(a) for a, b in zip(l1, l4)), "params": diff(s1.params, s4.params),
                    "ema": diff(s1.ema, s4.ema), "table": diff(s1.puzzle_table, s4.puzzle_table),
                    "carry": diff(c1, c4), "table_moved": moved}))
""")


@pytest.mark.parametrize("table_parallel", [1, 2])
def test_four_devices_equal_one(table_parallel, tmp_path):
  script = tmp_path / "run.py"
  script.write_text(SCRIPT)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  r = subprocess.run(
    [sys.executable, str(script), str(table_parallel), os.path.dirname(__file__)],
    capture_output=True,
    text=True,
    env=env,
  )
  assert r.returncode == 0, r.stderr[-3000:]
  d = json.loads(r.stdout.strip().splitlines()[-1])
  assert d["table_moved"] > 0  # the sparse update really ran
  for k in ("loss", "params", "ema", "table", "carry"):
    assert d[k] <= 1e-5, (k, d)


def test_batch_must_divide_devices():
  import jax

  from trm_jax import sharding

  mesh = sharding.make_mesh(devices=jax.devices()[:1] * 1)
  sharding.check_batch(8, mesh)
  with pytest.raises(ValueError, match="table_parallel=3"):
    sharding.make_mesh(3)

  class TwoDevices:
    size = 2

  with pytest.raises(ValueError, match="train.global_batch_size=7 must be divisible by the 2 devices"):
    sharding.check_batch(7, TwoDevices())
