"""The recursion, in plain JAX over one weight-tied network application.

`deep_recursion` is one supervision step of the inner model; `act_forward` wraps it with the ACT carry rules (both in
the reference's `models/recursive_reasoning/trm.py`, the inner model's and the ACT wrapper's forward). The config field
`recursion` statically picks `jax.lax.scan` or a Python loop; both build the same parameter tree and compute the same
function.

No-grad cycles run on `stop_gradient`-ed parameters and inputs, so they
depend on nothing that is differentiated and keep no residuals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from trm_jax import losses
from trm_jax.model import RecursiveModel, puzzle_emb_len

sg = jax.lax.stop_gradient


def uses_q_continue(cfg) -> bool:
  return cfg.arch == "hrm" or not cfg.no_ACT_continue


def repeat(fn: Callable[[Any, Any], Any], z, n: int, mode: str, remat: str = "none", unroll: int = 1):
  """z <- fn(z, i) for i in range(n), unrolled ("loop") or with lax.scan.

  `remat` ("none" | "dots" | "full") checkpoints each application, in both modes; it only matters where gradients flow
  (the last cycle). `unroll` is lax.scan's unroll factor (scan mode only; the same function).
  """
  if n <= 0:
    return z
  if remat != "none":
    # Each repeated application keeps only its input (and, with "dots", the outputs of its weight matmuls) for the
    # backward pass and recomputes the rest: the same function, less memory.
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if remat == "dots" else None
    fn = jax.checkpoint(fn, policy=policy, static_argnums=(1,) if mode == "loop" else ())
  if mode == "loop":
    for i in range(n):
      z = fn(z, i)
    return z
  body = lambda c, i: (fn(c, i), None)
  return jax.lax.scan(body, z, jnp.arange(n), unroll=max(1, min(int(unroll), n)))[0]


def _nets(model: RecursiveModel, variables):
  L = lambda z, inj: model.apply(variables, z, inj, method=RecursiveModel.L)
  H = lambda z, inj: model.apply(variables, z, inj, method=RecursiveModel.H)
  return L, H


def _cycle(cfg, L, H, z, x, mode, remat="none"):
  """One full H cycle (L_cycles latent updates then the answer update)."""
  n = cfg.L_cycles
  u = cfg.scan_unroll
  if cfg.variant == "single_latent":
    zz = repeat(lambda zz, i: L(zz, x), z["z_H"], n, mode, remat, u)
    return {"z_H": L(zz, jnp.zeros((), zz.dtype))}
  zH = z["z_H"]
  if cfg.variant == "multiscale_latent":
    zl = repeat(lambda zl, i: zl.at[i].set(L(zl.sum(0), zH + x)), z["z_L"], n, mode, remat, u)
    return {"z_H": H(zH, zl.sum(0)), "z_L": zl}
  zL = repeat(lambda zl, i: L(zl, zH + x), z["z_L"], n, mode, remat, u)
  return {"z_H": H(zH, zL), "z_L": zL}


def deep_recursion(model: RecursiveModel, variables, z: dict, x: jax.Array, cfg) -> dict:
  """One supervision step of the inner model: returns the new latent dict."""
  mode, remat = cfg.recursion, cfg.remat
  L, H = _nets(model, variables)
  L0, H0 = _nets(model, sg(variables))
  x0 = sg(x)
  z = sg(z)
  one_step = cfg.arch == "hrm" or cfg.variant == "one_step_grad"
  # Cycles without gradient (H_cycles - 1 of them).
  z = repeat(lambda z, i: _cycle(cfg, L0, H0, z, x0, mode), z, cfg.H_cycles - 1, mode)
  if not one_step:
    return _cycle(cfg, L, H, z, x, mode, remat)
  # HRM's 1-step gradient: only the final L and H updates carry gradient.
  zH = z["z_H"]
  zL = repeat(lambda zl, i: L0(zl, zH + x0), z["z_L"], cfg.L_cycles - 1, mode, unroll=cfg.scan_unroll)
  zL = L(zL, zH + x)
  return {"z_H": H(zH, zL), "z_L": zL}


# ---------------------------------------------------------------------------
# The ACT carry.


def initial_carry(cfg, batch_size: int) -> dict:
  """A carry with every row halted (so the first call takes fresh examples)."""
  t = cfg.seq_len + puzzle_emb_len(cfg)
  shape = (batch_size, t, cfg.hidden_size)
  z = {"z_H": jnp.zeros(shape, cfg.dtype)}
  if cfg.variant == "multiscale_latent":
    z["z_L"] = jnp.zeros((cfg.L_cycles,) + shape, cfg.dtype)
  elif cfg.variant != "single_latent":
    z["z_L"] = jnp.zeros(shape, cfg.dtype)
  return {
    "z": z,
    "steps": jnp.zeros((batch_size,), jnp.int32),
    "halted": jnp.ones((batch_size,), bool),
    "data": {
      "inputs": jnp.zeros((batch_size, cfg.seq_len), jnp.int32),
      "labels": jnp.full((batch_size, cfg.seq_len), losses.IGNORE_LABEL, jnp.int32),
      "puzzle_identifiers": jnp.zeros((batch_size,), jnp.int32),
    },
  }


def _rows(mask, a):
  return mask.reshape(mask.shape + (1,) * (a.ndim - 1))


def reset_carry(carry: dict, batch: dict, consts: dict, cfg) -> dict:
  """Halted rows restart from H_init/L_init with the fresh batch's example."""
  halted = carry["halted"]
  h_init, l_init = consts["H_init"].astype(cfg.dtype), consts["L_init"].astype(cfg.dtype)
  z = dict(carry["z"])
  if cfg.variant == "single_latent":
    z["z_H"] = jnp.where(_rows(halted, z["z_H"]), l_init, z["z_H"])
  else:
    z["z_H"] = jnp.where(_rows(halted, z["z_H"]), h_init, z["z_H"])
    if cfg.variant == "multiscale_latent":
      z["z_L"] = jnp.where(halted[None, :, None, None], l_init[:, None, None, :], z["z_L"])
    else:
      z["z_L"] = jnp.where(_rows(halted, z["z_L"]), l_init, z["z_L"])
  data = {k: jnp.where(_rows(halted, batch[k]), batch[k].astype(v.dtype), v) for k, v in carry["data"].items()}
  return {"z": z, "steps": jnp.where(halted, 0, carry["steps"]), "halted": halted, "data": data}


def forward(model: RecursiveModel, variables, z: dict, data: dict, puzzle_rows, cfg):
  """Inner model: (z, example) -> (new z without gradient, logits, q (B, 2))."""
  x = model.apply(variables, data["inputs"], puzzle_rows, method=RecursiveModel.embed)
  z = deep_recursion(model, variables, z, x, cfg)
  logits, q = model.apply(variables, z["z_H"], method=RecursiveModel.heads)
  return sg(z), logits, q


def halting(steps, q, cfg, train: bool, rng):
  """-> (halted, is_last_step) after this step (the reference's `models/recursive_reasoning/trm.py`, the ACT wrapper's forward)."""
  is_last = steps >= cfg.halt_max_steps
  halted = is_last
  if train and cfg.halt_max_steps > 1:
    q_halt, q_cont = q[:, 0], q[:, 1]
    halted = halted | ((q_halt > q_cont) if uses_q_continue(cfg) else (q_halt > 0))
    k1, k2 = jax.random.split(rng)
    explore = jax.random.uniform(k1, steps.shape) < cfg.halt_exploration_prob
    min_steps = explore * jax.random.randint(k2, steps.shape, 2, cfg.halt_max_steps + 1)
    halted = halted & (steps >= min_steps)
  return halted, is_last


def act_forward(model: RecursiveModel, variables, carry: dict, puzzle_rows, cfg, train: bool, rng):
  """One ACT call on an already-reset carry -> (loss, (new carry, outputs, metric sums)).

  Differentiable in `variables["params"]` and `puzzle_rows`.
  """
  data = carry["data"]
  z, logits, q = forward(model, variables, carry["z"], data, puzzle_rows, cfg)
  steps = carry["steps"] + 1
  halted, is_last = halting(steps, sg(q), cfg, train, rng)
  target = None
  if train and cfg.halt_max_steps > 1 and uses_q_continue(cfg):
    rows0 = None if puzzle_rows is None else sg(puzzle_rows)
    _, _, q_next = forward(model, sg(variables), z, data, rows0, cfg)
    target = jax.nn.sigmoid(jnp.where(is_last, q_next[:, 0], jnp.maximum(q_next[:, 0], q_next[:, 1])))
  loss, metrics, preds = losses.act_loss(logits, data["labels"], q[:, 0], q[:, 1], halted, steps, target, cfg.loss_type)
  new_carry = {"z": z, "steps": steps, "halted": halted, "data": data}
  outputs = {"logits": logits, "q_halt_logits": q[:, 0], "q_continue_logits": q[:, 1], "preds": preds}
  return loss, (new_carry, outputs, metrics)
