"""Losses and metric sums of the ACT training step (the reference's `models/losses.py`, ACTLossHead)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL = -100


def log_stablemax(logits: jax.Array) -> jax.Array:
  """log of stablemax over the last axis, in float32.

  s(x) = 1/(1-x) for x < 0, else x + 1. Each branch gets a clamped argument so that the branch `where` does not take can
  never overflow (an infinite untaken branch turns the gradient into NaN).
  """
  x = logits.astype(jnp.float32)
  neg, pos = jnp.minimum(x, 0.0), jnp.maximum(x, 0.0)
  s = jnp.where(x < 0, 1.0 / (1.0 - neg), pos + 1.0)
  # log s per branch (no log of a denormal s, whose gradient would be inf * 0).
  log_s = jnp.where(x < 0, -jnp.log1p(-neg), jnp.log1p(pos))
  return log_s - jnp.log(jnp.sum(s, axis=-1, keepdims=True))


def cross_entropy(logits, labels, loss_type: str = "stablemax"):
  """Per-position cross-entropy (B, S); ignored positions give 0."""
  mask = labels != IGNORE_LABEL
  safe = jnp.where(mask, labels, 0)
  if loss_type.startswith("stablemax"):
    logp = log_stablemax(logits)
  else:  # "softmax" (the choices are checked by `config_lib`)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return -jnp.where(mask, picked, 0.0)


def act_loss(logits, labels, q_halt, q_continue, halted, steps, target_q_continue=None, loss_type: str = "stablemax"):
  """Loss of one supervision step (unscaled sum over the batch) and metric sums.

  Returns (loss, metrics) where metrics hold raw sums: count, accuracy, exact_accuracy, q_halt_accuracy, steps, lm_loss,
  q_halt_loss (+ q_continue_loss when a target is given).
  """
  mask = labels != IGNORE_LABEL
  n_valid = mask.sum(-1)
  divisor = jnp.maximum(n_valid, 1).astype(jnp.float32)
  preds = jnp.argmax(logits, axis=-1)
  correct = mask & (preds == labels)
  seq_correct = correct.sum(-1) == n_valid
  counted = halted & (n_valid > 0)

  lm_loss = (cross_entropy(logits, labels, loss_type).sum(-1) / divisor).sum()
  q_halt_loss = optax.sigmoid_binary_cross_entropy(q_halt, seq_correct.astype(jnp.float32)).sum()
  metrics = {
    "count": counted.sum().astype(jnp.float32),
    "accuracy": jnp.where(counted, correct.sum(-1) / divisor, 0.0).sum(),
    "exact_accuracy": (counted & seq_correct).sum().astype(jnp.float32),
    "q_halt_accuracy": (counted & ((q_halt >= 0) == seq_correct)).sum().astype(jnp.float32),
    "steps": jnp.where(counted, steps, 0).sum().astype(jnp.float32),
    "lm_loss": jax.lax.stop_gradient(lm_loss),
    "q_halt_loss": jax.lax.stop_gradient(q_halt_loss),
  }
  loss = lm_loss + 0.5 * q_halt_loss
  if target_q_continue is not None:
    q_continue_loss = optax.sigmoid_binary_cross_entropy(q_continue, target_q_continue).sum()
    metrics["q_continue_loss"] = jax.lax.stop_gradient(q_continue_loss)
    loss = loss + 0.5 * q_continue_loss
  return loss, metrics, preds


def reduce_metrics(sums: dict, global_batch_size: int) -> dict:
  """Sums -> reported values: losses / global batch, the others / count."""
  count = max(float(sums.get("count", 0.0)), 1.0)
  out = {}
  for k, v in sums.items():
    if k == "count":
      out[k] = float(v)
    elif k.endswith("loss"):
      out[k] = float(v) / global_batch_size
    else:
      out[k] = float(v) / count
  return out
