"""Pure train and eval steps, ready for `jax.jit` with shardings and donation."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from trm_jax import config_lib, optim, recursion
from trm_jax.model import RecursiveModel, puzzle_emb_len
from trm_jax.train_state import TrainState


class LossAndGrads(NamedTuple):
  """One training call: gradients are of `loss * scale`; `row_grads` are w.r.t. each row's gathered
  puzzle embedding (None without puzzle embeddings)."""

  loss: Any
  param_grads: Any
  row_grads: Any
  carry: Any  # the new ACT carry
  outputs: Any
  metrics: Any  # metric sums


def loss_and_grads(
  model: RecursiveModel, mcfg, params, consts, carry, puzzle_table, rng, scale: float = 1.0
) -> LossAndGrads:
  """One training-mode ACT call on a reset carry, with gradients."""
  ids = carry["data"]["puzzle_identifiers"]
  rows = puzzle_table[ids] if puzzle_emb_len(mcfg) else None

  def fn(params, rows):
    loss, aux = recursion.act_forward(model, {"params": params, "consts": consts}, carry, rows, mcfg, True, rng)
    return loss * scale, (loss, aux)

  (_, (loss, (new_carry, outputs, metrics))), (g, g_rows) = jax.value_and_grad(fn, (0, 1), has_aux=True)(params, rows)
  return LossAndGrads(loss, g, g_rows, new_carry, outputs, metrics)


def make_train_step(model: RecursiveModel, mcfg, tcfg, tx: optax.GradientTransformation, total_steps: int):
  """train_step(state, carry, batch, rng) -> (state, carry, metric sums)."""
  emb_lr = optim.lr_schedule(tcfg.puzzle_emb_lr, tcfg.lr_warmup_steps, total_steps, tcfg.lr_min_ratio)

  def train_step(state: TrainState, carry, batch, rng):
    rng = jax.random.fold_in(rng, state.step)
    carry = recursion.reset_carry(carry, batch, state.consts, mcfg)
    batch_size = batch["inputs"].shape[0]
    out = loss_and_grads(model, mcfg, state.params, state.consts, carry, state.puzzle_table, rng, 1.0 / batch_size)
    carry, metrics = out.carry, out.metrics
    updates, opt_state = tx.update(out.param_grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    table = state.puzzle_table
    if out.row_grads is not None:
      ids = carry["data"]["puzzle_identifiers"]
      table = optim.sign_sgd_rows(table, ids, out.row_grads, emb_lr(state.step), tcfg.puzzle_emb_weight_decay)
    ema = None if state.ema is None else optim.ema_update(state.ema, params, tcfg.ema_rate)
    metrics = dict(metrics, loss=out.loss)
    state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema, puzzle_table=table)
    return state, carry, metrics

  return train_step


def rollout(
  model: RecursiveModel, mcfg, params, consts, puzzle_table, batch, n_steps: int | None = None, collect=("preds",)
):
  """Evaluation: `n_steps` supervision steps (default halt_max_steps) on a fixed batch.

  Every row runs all steps (no early halt). Returns (final carry, final outputs, final metric sums, per-step stack of
  the `collect` keys, taken from the outputs plus "loss", "halted" and "metrics").
  """
  if n_steps is not None and n_steps != mcfg.halt_max_steps:
    mcfg = config_lib.replace(mcfg, halt_max_steps=n_steps)
  variables = {"params": params, "consts": consts}
  use_table = puzzle_emb_len(mcfg) > 0

  def one(state, _):
    carry = recursion.reset_carry(state[0], batch, consts, mcfg)
    rows = puzzle_table[carry["data"]["puzzle_identifiers"]] if use_table else None
    loss, (carry, outputs, metrics) = recursion.act_forward(model, variables, carry, rows, mcfg, False, None)
    everything = dict(outputs, loss=loss, halted=carry["halted"], metrics=metrics)
    return (carry, outputs, metrics), {k: everything[k] for k in collect}

  carry = recursion.initial_carry(mcfg, batch["inputs"].shape[0])
  # The last step's outputs ride in the scan carry, so only `collect` is stacked.
  shapes = jax.eval_shape(one, (carry, None, None), None)[0]
  init = (carry,) + jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[1:])
  (carry, outputs, metrics), per_step = jax.lax.scan(one, init, None, length=mcfg.halt_max_steps)
  return carry, outputs, metrics, per_step
