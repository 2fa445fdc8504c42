"""A run's jitted pieces (`Run`), its metadata, and loading a run back from its checkpoints (`load_run`).

`trm-train` builds a `Run` from a resolved config; `trm-solve` and `trm-convert` from a checkpoint's saved config.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from trm_jax import (
  checkpoint,
  config_lib,
  errors,
  evaluate,
  fileio,
  optim,
  recursion,
  rundir,
  sharding,
  steps,
  train_state,
)
from trm_jax import data as data_lib
from trm_jax.errors import UserError
from trm_jax.model import RecursiveModel


class Run:
  """The jitted pieces of one run: `train_step(state, carry, batch, rng) -> (state, carry, metric sums)` donates
  state and carry; `eval_step(params, consts, table, batch)` returns per-step predictions (`evaluate`)."""

  def __init__(self, config, mesh):
    self.config, self.mesh = config, mesh
    self.mcfg = config_lib.frozen_model(config.model, sharding.platform(mesh), mesh.devices.flat[0].device_kind)
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
    n_eval = config.eval.supervision_steps
    self.eval_supervision_steps = n_eval if n_eval > 0 else self.mcfg.halt_max_steps
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
    return fn, sharding.carry_shardings(self.mesh, jax.eval_shape(fn))

  def make_batch(self, local: dict) -> dict:
    return sharding.global_batch(local, self.mesh)


def with_shardings(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def abstract_batch(run: Run, batch_size: int) -> dict:
  seq = (batch_size, run.mcfg.seq_len)
  shapes = {"inputs": seq, "labels": seq, "puzzle_identifiers": (batch_size,)}
  return {k: jax.ShapeDtypeStruct(v, jnp.int32, sharding=run.batch_sh) for k, v in shapes.items()}


def compile_train(run: Run):
  """The run's train step, lowered for its mesh's devices and compiled (nothing allocated) -> (compiled, seconds)."""
  rng = jax.ShapeDtypeStruct(run.step_rng.shape, run.step_rng.dtype, sharding=run.repl)
  batch = abstract_batch(run, int(run.config.train.global_batch_size))
  return _compile(run.train_step, (run.abstract_state, run.abstract_carry, batch, rng), run, "train.global_batch_size")


def compile_eval(run: Run):
  """The run's eval step (all supervision steps on one eval batch), compiled -> (compiled, seconds)."""
  s = run.abstract_state
  args = (s.eval_params(), s.consts, s.puzzle_table, abstract_batch(run, int(run.config.eval.batch_size)))
  return _compile(run.eval_step, args, run, "eval.batch_size")


def _compile(jitted, args, run: Run, field: str):
  """-> (`jitted` lowered for `args` and compiled, seconds); the compiler's refusal for memory is one UserError."""
  t0 = time.perf_counter()
  try:
    return jitted.lower(*args).compile(), time.perf_counter() - t0
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    section, name = field.split(".")
    table = " or --config.mesh.table_parallel=K" if run.config.model.num_puzzle_identifiers > 1 else ""
    raise UserError(
      f"config.{field}={run.config[section][name]} does not fit a {run.mesh.devices.flat[0].device_kind}: "
      f"{errors.first_line(e, 300).removeprefix('RESOURCE_EXHAUSTED: ').rstrip('.')}; "
      f"try a smaller config.{field}{table}"
    ) from None


def program_bytes(compiled) -> int:
  """Arguments + temporaries + outputs (less the outputs that reuse arguments) of a compiled program, per device."""
  m = compiled.memory_analysis()
  return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def device_bytes(tree) -> int:
  """Bytes of an abstract tree's arrays on one device (its shard of each)."""
  return sum(math.prod(a.sharding.shard_shape(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def available_ram() -> int | None:
  """Bytes this host can still give: MemAvailable, less under a cgroup (v2 or v1) memory limit; None if unknown."""
  found = []
  with contextlib.suppress(OSError, TypeError):
    found.append(int(re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)[1]) << 10)
  for d, limit, usage, cache in (
    ("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
    ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
  ):
    with contextlib.suppress(OSError, TypeError, ValueError):  # "max", or no such cgroup
      stat = re.search(rf"^{cache} (\d+)$", Path(d, "memory.stat").read_text(), re.M)
      used = int(Path(d, usage).read_text()) - (int(stat[1]) if stat else 0)
      found.append(int(Path(d, limit).read_text()) - used)
  return min(found, default=None)


def memory_limit(devices) -> int | None:
  """The smallest `bytes_limit` of the devices' memory; None on CPU and for compile-only devices."""
  limits = []
  for d in devices:
    with contextlib.suppress(jax.errors.JaxRuntimeError):  # compile-only devices have no memory stats
      if (m := d.memory_stats()) and "bytes_limit" in m:
        limits.append(m["bytes_limit"])
  return min(limits, default=None)


def check_fits(run: Run, train_c, eval_c, table_field: str, device_limit: int | None = None) -> None:
  """A run that needs more memory than the devices or the host have is one UserError, before anything is allocated.

  Needs: the compiled train step, the state and carry during the eval step, and a host copy of the state (to
  write checkpoints); on CPU all of it is host RAM. The error names the field with the largest part and about
  the largest value that fits. `device_limit`: bytes per device instead of `memory_limit` (compile-only devices).
  """
  s, devices = run.abstract_state, run.mesh.local_devices
  state, table, carry = device_bytes(s), device_bytes(s.puzzle_table), device_bytes(run.abstract_carry)
  train = program_bytes(train_c) - state  # grows with the batch
  evals = program_bytes(eval_c) - device_bytes((s.eval_params(), s.consts, s.puzzle_table))
  host_table, host_state = (
    sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(t)) // jax.process_count()
    for t in (s.puzzle_table, s)
  )
  limit, ram, n = device_limit or memory_limit(devices), available_ram(), len(devices)
  fields = {
    "table": (table_field, int(run.config.model.num_puzzle_identifiers), 1),
    "train": ("config.train.global_batch_size", int(run.config.train.global_batch_size), run.mesh.size),
    "eval": ("config.eval.batch_size", int(run.config.eval.batch_size), run.mesh.size),
  }
  if limit:  # each device's memory, and the host's RAM for the state's copy
    checks = [({"table": table, "train": train, "": state - table}, limit, f"memory of a {devices[0].device_kind}")]
    checks += [({"table": table, "eval": evals, "": state - table + carry}, limit, checks[0][2])]
    checks += [({"table": host_table, "": host_state - host_table}, ram, "available host RAM")]
  else:  # CPU devices: all of it is host RAM
    copy = {"table": n * table + host_table, "": n * (state - table) + host_state - host_table}
    checks = [({**copy, "train": n * train}, ram, "available host RAM")]
    checks += [({**copy, "eval": n * evals, "": copy[""] + n * carry}, ram, "available host RAM")]
  for parts, budget, where in checks:
    need = sum(parts.values())
    if budget is None or need <= budget:
      continue
    name = max((k for k in parts if k), key=parts.get)
    field, value, step = fields[name]
    fits = int(value * (budget - need + parts[name]) / max(parts[name], 1)) // step * step
    rest = (
      f"about {fits} fits" if fits >= step else f"the rest of the run alone needs {(need - parts[name]) / 1e9:,.1f} GB"
    )
    raise UserError(
      f"{field}={value} does not fit this machine: the run needs about {need / 1e9:,.1f} GB of the "
      f"{budget / 1e9:,.1f} GB {where}; {rest}"
    )


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
  with contextlib.closing(mngr):
    return checkpoint.restore_meta(mngr, step), step


def load_run(workdir: str, step: int | None = None):
  """-> (Run, state, meta, step) from a run's checkpoint, without the data.
  An explicit `step` must be intact; otherwise the newest intact one is used (one warning line if not the newest)."""
  mngr, steps_saved = _open(workdir, step)
  candidates = [step] if step is not None else steps_saved
  damaged = []
  with contextlib.closing(mngr):
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
  return run, state, meta, step
