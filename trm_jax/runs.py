"""A run's jitted pieces (`Run`), its metadata, and loading a run back from its checkpoints.

`trm-train` builds a `Run` from a resolved config; `trm-solve`, `trm-convert`
and the tests rebuild one from the config saved in a checkpoint (`load_run`),
without the data.
"""

from __future__ import annotations

import functools
import json
import sys

import jax
import ml_collections

from trm_jax import checkpoint, config_lib, evaluate, fileio, optim, recursion, rundir, sharding, steps, train_state
from trm_jax import data as data_lib
from trm_jax.model import RecursiveModel


class Run:
  """The jitted pieces of one run (shared by training, evaluation and `trm-solve`).

  `train_step(state, carry, batch, rng) -> (state, carry, metric sums)` donates state and carry;
  `eval_step(params, consts, table, batch)` returns per-step predictions (`evaluate.make_eval_step`).
  """

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.mcfg = config_lib.frozen_model(config.model, sharding.platform(mesh))
    self.model = RecursiveModel(self.mcfg)
    self.tx = optim.make_optimizer(config.train, config.train.steps)
    self.create = functools.partial(train_state.create_train_state, self.model, self.mcfg, config.train, self.tx)
    self.init_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0)
    self.step_rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    abstract_state = jax.eval_shape(self.create, self.init_rng)
    self.state_sh = sharding.state_shardings(mesh, abstract_state)
    self.abstract_state = with_shardings(abstract_state, self.state_sh)
    self.batch_sh = sharding.batch_sharding(mesh)
    self.repl = sharding.replicated(mesh)
    self.eval_supervision_steps = (
      config.eval.supervision_steps if config.eval.supervision_steps > 0 else self.mcfg.halt_max_steps
    )
    eval_step = evaluate.make_eval_step(self.model, self.mcfg, self.eval_supervision_steps)
    self.eval_step = jax.jit(
      sharding.under_mesh(eval_step, mesh),
      in_shardings=(self.repl, self.repl, self.state_sh.puzzle_table, self.batch_sh),
    )
    self.carry_fn, self.carry_sh = self.carry_parts(int(config.train.global_batch_size))
    self.abstract_carry = with_shardings(jax.eval_shape(self.carry_fn), self.carry_sh)
    train_step = steps.make_train_step(self.model, self.mcfg, config.train, self.tx, config.train.steps)
    self.train_step = sharding.jit_train_step(train_step, mesh, self.state_sh, self.carry_sh)

  def new_state(self):
    return jax.jit(self.create, out_shardings=self.state_sh)(self.init_rng)

  def new_carry(self):
    """The ACT carry of a fresh run (every row halted: the first step loads a batch)."""
    return jax.jit(self.carry_fn, out_shardings=self.carry_sh)()

  def carry_parts(self, batch_size: int):
    fn = lambda: recursion.initial_carry(self.mcfg, batch_size)
    shardings = sharding.carry_shardings(self.mesh, jax.eval_shape(fn))
    return fn, shardings

  def make_batch(self, local: dict) -> dict:
    return sharding.global_batch(local, self.mesh)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def run_meta(config, data: data_lib.Data) -> dict:
  """What `trm-solve` needs to rebuild the model and read its inputs."""
  return {
    "config": config.to_json_best_effort(),
    "task": data.task,
    "grid": list(data.grid),
    "arc_ids": data_lib.arc_identity_ids(data),
  }


def _open(workdir: str, step: int | None):
  """-> (read-only manager, saved steps newest first); an explicit `step` must be one of them."""
  directory = rundir.RunDir(workdir).checkpoints()
  if not fileio.isdir(directory):
    raise checkpoint.CheckpointError(f"--workdir={workdir}: no checkpoints directory")
  mngr = checkpoint.manager(workdir, read_only=True)
  try:
    steps_saved = sorted(mngr.all_steps(), reverse=True)
    if not steps_saved:
      raise checkpoint.CheckpointError(f"--workdir={workdir}: no checkpoint found")
    if step is not None and step not in steps_saved:
      raise checkpoint.CheckpointError(f"--step={step}: no such checkpoint in {directory} (have {sorted(steps_saved)})")
  except BaseException:
    mngr.close()
    raise
  return mngr, steps_saved


def read_meta(workdir: str, step: int | None = None):
  """-> (meta, step): a run's record (config, task, grid) without restoring any array."""
  mngr, steps_saved = _open(workdir, step)
  step = steps_saved[0] if step is None else step
  try:
    return checkpoint.restore_meta(mngr, step), step
  finally:
    mngr.close()


def load_run(workdir: str, step: int | None = None):
  """-> (Run, state, meta, step) from a run's checkpoint (the latest intact one, or `step`).

  Used by trm-solve, trm-convert's export and the tests; needs no data. An
  explicit step must be intact; otherwise the newest intact one is used, with
  one warning line.
  """
  mngr, steps_saved = _open(workdir, step)
  candidates = [step] if step is not None else steps_saved
  damaged = []
  try:
    for step in candidates:
      try:
        meta = checkpoint.restore_meta(mngr, step)
        config = ml_collections.ConfigDict(json.loads(meta["config"]))
        run = Run(config, sharding.make_mesh())
        state, _, _ = checkpoint.restore(mngr, step, run.abstract_state)
        break
      except checkpoint.CheckpointError as e:
        damaged.append(str(e))
    else:
      if len(candidates) == 1:
        raise checkpoint.CheckpointError(damaged[0])
      raise checkpoint.CheckpointError(f"no intact checkpoint ({len(damaged)} damaged); newest: {damaged[0]}")
    if damaged:
      print(f"warning: {damaged[0]}; using step {step} (the newest intact checkpoint)", file=sys.stderr, flush=True)
  finally:
    mngr.close()
  return run, state, meta, step
