"""TrainState: everything an optimiser step reads and writes."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from trm_jax.model import RecursiveModel, puzzle_emb_len


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trained core parameters (float32)
  consts: Any  # fixed H_init / L_init buffers, never trained
  opt_state: optax.OptState
  ema: Any  # EMA of params, or None when EMA is off
  puzzle_table: jax.Array  # (N, puzzle_emb_ndim), sign-SGD only, no optimiser state

  def eval_params(self):
    """EMA weights when EMA is on, else the live parameters."""
    return self.params if self.ema is None else self.ema


def init_variables(model: RecursiveModel, mcfg, rng):
  """Initial {'params', 'consts'} of the model."""
  inputs = jnp.zeros((1, mcfg.seq_len), jnp.int32)
  rows = jnp.zeros((1, mcfg.puzzle_emb_ndim), jnp.float32) if puzzle_emb_len(mcfg) else None
  return model.init(rng, inputs, rows)


def create_train_state(model: RecursiveModel, mcfg, tcfg, tx: optax.GradientTransformation, rng) -> TrainState:
  """A fresh TrainState (jit it with out_shardings to create it sharded)."""
  variables = init_variables(model, mcfg, rng)
  params = variables["params"]
  table = jnp.zeros((mcfg.num_puzzle_identifiers, max(mcfg.puzzle_emb_ndim, 0)), jnp.float32)
  ema = jax.tree.map(jnp.copy, params) if tcfg.ema else None
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    consts=variables["consts"],
    opt_state=tx.init(params),
    ema=ema,
    puzzle_table=table,
  )


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))
