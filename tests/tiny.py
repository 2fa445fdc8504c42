"""Tiny configs and random data shared by the core tests."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import config_lib, recursion, steps
from trm_jax.model import RecursiveModel
from trm_jax.train_state import init_variables

B, S, V, N_IDS = 4, 12, 6, 5


def mcfg(platform=None, **kw):
  base = dict(
    hidden_size=32,
    num_heads=2,
    seq_len=S,
    vocab_size=V,
    num_puzzle_identifiers=N_IDS,
    puzzle_emb_ndim=32,
    puzzle_emb_len=2,
    H_cycles=2,
    L_cycles=2,
    L_layers=1,
    halt_max_steps=3,
    halt_exploration_prob=0.0,
    dtype="float32",
    attention_impl="xla",
  )
  if kw.get("arch") == "hrm":
    base.update(H_layers=1, puzzle_emb_len=0)
  base.update(kw)
  return config_lib.frozen_model(config_lib.model_config(**base), platform)


def batch(seed=0, b=B):
  r = np.random.default_rng(seed)
  labels = r.integers(1, V, (b, S)).astype(np.int32)
  labels[r.random((b, S)) < 0.2] = -100
  return {
    "inputs": jnp.asarray(r.integers(1, V, (b, S)), jnp.int32),
    "labels": jnp.asarray(labels),
    "puzzle_identifiers": jnp.asarray(r.integers(0, N_IDS, (b,)), jnp.int32),
  }


def variables(cfg, seed=0):
  """Random variables with a non-zero q head (so gradients reach everything)."""
  v = init_variables(RecursiveModel(cfg), cfg, jax.random.key(seed))
  keys = iter(jax.random.split(jax.random.key(seed + 100), 2))
  p = dict(v["params"])
  p["q_head"] = {"kernel": 0.1 * jax.random.normal(next(keys), p["q_head"]["kernel"].shape), "bias": jnp.zeros((2,))}
  table = 0.1 * jax.random.normal(next(keys), (cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim))
  return {"params": p, "consts": v["consts"]}, table


def grads(cfg, v, table, b):
  """One train step's loss, gradients (params, table rows), new z and logits from a fresh carry."""
  model = RecursiveModel(cfg)
  carry = recursion.reset_carry(recursion.initial_carry(cfg, B), b, v["consts"], cfg)
  out = steps.loss_and_grads(model, cfg, v["params"], v["consts"], carry, table, jax.random.key(0))
  return out.loss, out.param_grads, out.row_grads, out.carry["z"], out.outputs["logits"]


def assert_trees_close(a, c, tol):
  """Every leaf of `c` equals `a`'s within `tol`, relative to each leaf's largest magnitude (at least 1)."""
  la, lc = jax.tree.leaves(a), jax.tree.leaves(c)
  assert len(la) == len(lc)
  for x, y in zip(la, lc):
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol * max(1.0, float(np.abs(x).max())))


def run_on_cpu_devices(tmp_path, script: str, devices: int = 4) -> dict:
  """Runs `script` in a fresh process with `devices` CPU devices (the flag must be set before JAX starts; the script
  gets this directory as argv[1], to import tiny) -> the JSON of its last stdout line."""
  path = tmp_path / "run.py"
  path.write_text(script)
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, str(path), os.path.dirname(__file__)], capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])
