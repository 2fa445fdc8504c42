"""Optimisers (the reference's `pretrain.py`, `models/sparse_embedding.py`, `models/ema.py`): AdamATan2, the LR schedule, sparse sign-SGD, EMA."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScaleByAdamAtan2State(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adam_atan2(b1: float = 0.9, b2: float = 0.95) -> optax.GradientTransformation:
  """Direction atan2(m, sqrt(v)/sqrt(1-b2^t)) / (1-b1^t); no epsilon."""

  def init_fn(params):
    zeros = lambda p: jnp.zeros_like(p, dtype=jnp.float32)
    return ScaleByAdamAtan2State(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params), jax.tree.map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    count = state.count + 1
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
    t = count.astype(jnp.float32)
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    out = jax.tree.map(lambda m, v: jnp.arctan2(m, jnp.sqrt(v) / jnp.sqrt(bc2)) / bc1, mu, nu)
    return out, ScaleByAdamAtan2State(count, mu, nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adam_atan2(learning_rate, b1=0.9, b2=0.95, weight_decay=0.0) -> optax.GradientTransformation:
  """p <- p(1 - lr wd) - lr/(1-b1^t) atan2(m, sqrt(v)/sqrt(1-b2^t))."""
  return optax.chain(
    scale_by_adam_atan2(b1, b2), optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(learning_rate)
  )


def lr_schedule(base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0):
  """Linear warm-up from 0, then cosine to base_lr * min_ratio.

  Takes optax's 0-based update count; the reference evaluates its schedule
  at the 1-based step number, so update k uses step k + 1.
  """

  def schedule(count):
    step = jnp.asarray(count, jnp.float32) + 1.0
    warm = base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cos = base_lr * (min_ratio + jnp.maximum(0.0, (1 - min_ratio) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))))
    return jnp.where(step < warmup_steps, warm, cos)

  return schedule


def make_optimizer(tcfg, total_steps: int) -> optax.GradientTransformation:
  """The core-parameter optimiser named by `train.optimizer` ("adam_atan2" or "adamw"; checked by `config_lib`)."""
  sched = lr_schedule(tcfg.lr, tcfg.lr_warmup_steps, total_steps, tcfg.lr_min_ratio)
  if tcfg.optimizer == "adam_atan2":
    return adam_atan2(sched, tcfg.beta1, tcfg.beta2, tcfg.weight_decay)
  return optax.adamw(sched, tcfg.beta1, tcfg.beta2, eps=1e-8, weight_decay=tcfg.weight_decay)


def sign_sgd_rows(table: jax.Array, ids: jax.Array, row_grads: jax.Array, lr, weight_decay) -> jax.Array:
  """Sparse sign-SGD of the puzzle-embedding table on the batch's rows only.

  Gradients of rows sharing an id are summed (over the global batch, so across devices too) before the sign; only those
  rows decay and move. The table gets no optimiser state.
  """
  # Sorted, equal ids are neighbours: one float32 segment sum per run of them, read back by each of its rows (duplicates
  # then write equal rows). The row gradients cross devices once, where an ids x ids float32 dot had XLA gather them
  # dozens of times per train step on a TPU pod.
  order = jnp.argsort(ids, stable=True)
  ids = ids[order]
  seg = jnp.cumsum(jnp.concatenate([jnp.zeros(1, jnp.int32), (ids[1:] != ids[:-1]).astype(jnp.int32)]))
  sums = jax.ops.segment_sum(row_grads.astype(jnp.float32)[order], seg, ids.shape[0], indices_are_sorted=True)
  rows = table[ids] * (1.0 - lr * weight_decay) - lr * jnp.sign(sums[seg])
  return table.at[ids].set(rows.astype(table.dtype))


def ema_update(ema, params, decay: float):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
