"""Stablemax / softmax cross-entropy and the ACT loss on hand-made numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from trm_jax import losses


def _stablemax_np(x):
  x = x.astype(np.float64)
  s = np.where(x < 0, 1 / (1 - np.minimum(x, 0)), x + 1)
  return np.log(s / s.sum(-1, keepdims=True))


def test_log_stablemax_matches_float64():
  x = np.random.default_rng(0).normal(0, 5, (7, 11)).astype(np.float32)
  np.testing.assert_allclose(losses.log_stablemax(jnp.asarray(x)), _stablemax_np(x), rtol=1e-5, atol=1e-6)


def test_stablemax_gradients_finite_at_extremes():
  x = jnp.array([[-3e38, 3e38, 0.0, -1.0], [1e30, -1e30, 1e-30, 5.0], [-80.0, 90.0, -1e6, 1e6]], jnp.float32)
  labels = jnp.array([[1, 0, 2, 3], [0, 1, 2, 3], [3, 2, 1, 0]])

  def f(x):
    return losses.cross_entropy(x[:, None, :], labels[:, :1]).sum()

  g = jax.grad(f)(x)
  assert bool(jnp.all(jnp.isfinite(g))), g
  # The naive formula does produce NaN here: the guard matters.
  naive = lambda x: jnp.log(jnp.where(x < 0, 1 / (1 - x), x + 1)).sum()
  assert not bool(jnp.all(jnp.isfinite(jax.grad(naive)(x))))


def test_cross_entropy_ignores_and_softmax_option():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5)), jnp.float32)
  labels = jnp.array([[1, -100, 4], [0, 2, -100]])
  ce = losses.cross_entropy(logits, labels, "softmax")
  ref = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
  np.testing.assert_allclose(ce, jnp.where(labels >= 0, ref, 0), rtol=1e-6)
  assert float(losses.cross_entropy(logits, labels)[0, 1]) == 0.0


def test_act_loss_by_hand():
  # Row 0: 2 valid labels, both right. Row 1: 1 valid of 2, wrong. Row 2: no valid label.
  logits = jnp.array([[[0.0, 3.0], [2.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
  labels = jnp.array([[1, 0], [0, -100], [-100, -100]])
  q_halt = jnp.array([2.0, 1.0, -1.0])
  halted = jnp.array([True, True, True])
  steps = jnp.array([3, 4, 5])
  loss, m, preds = losses.act_loss(logits, labels, q_halt, jnp.zeros(3), halted, steps, None, "softmax")
  ce = lambda z, k: -jax.nn.log_softmax(jnp.asarray(z))[k]
  lm = (ce([0.0, 3.0], 1) + ce([2.0, 0.0], 0)) / 2 + ce([0.0, 1.0], 0) / 1
  bce = optax.sigmoid_binary_cross_entropy(q_halt, jnp.array([1.0, 0.0, 1.0])).sum()
  np.testing.assert_allclose(m["lm_loss"], lm, rtol=1e-6)
  np.testing.assert_allclose(loss, lm + 0.5 * bce, rtol=1e-6)
  assert float(m["count"]) == 2 and float(m["exact_accuracy"]) == 1 and float(m["steps"]) == 7
  np.testing.assert_allclose(m["accuracy"], 1.0 + 0.0)
  assert float(m["q_halt_accuracy"]) == 1  # row 0 right (2>=0, correct); row 1 wrong (1>=0, incorrect)
  np.testing.assert_array_equal(preds, [[1, 0], [1, 0], [1, 0]])
  # The Q-continue target adds its BCE with weight 0.5.
  target = jnp.array([0.2, 0.9, 0.5])
  loss2, m2, _ = losses.act_loss(logits, labels, q_halt, jnp.ones(3), halted, steps, target, "softmax")
  np.testing.assert_allclose(
    loss2 - loss, 0.5 * optax.sigmoid_binary_cross_entropy(jnp.ones(3), target).sum(), rtol=1e-5
  )


def test_reduce_metrics():
  out = losses.reduce_metrics({"count": 4.0, "exact_accuracy": 2.0, "lm_loss": 8.0, "steps": 12.0}, 16)
  assert out == {"count": 4.0, "exact_accuracy": 0.5, "lm_loss": 0.5, "steps": 3.0}
