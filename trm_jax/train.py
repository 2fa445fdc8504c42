"""train_and_evaluate(config, workdir): wires data, state, steps, checkpoints and metrics.

A run always resumes its latest checkpoint first. The checkpoint holds the whole future of the run (state, ACT
carry, step); batches and the rng are pure functions of (seed, step), so a resumed run ends with the same
parameters as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from typing import Any, NamedTuple

import jax
import ml_collections

from trm_jax import (
  arc_votes,
  checkpoint,
  config_lib,
  errors,
  evaluate,
  fileio,
  input_pipeline,
  report,
  rundir,
  runs,
  sharding,
  train_state,
  workdir_lock,
)
from trm_jax import cadence as cadence_lib
from trm_jax import data as data_lib
from trm_jax import hooks as hooks_lib
from trm_jax import metrics as metrics_lib
from trm_jax.errors import UserError
from trm_jax.runs import Run, run_meta


def resolve_config(config, meta) -> ml_collections.ConfigDict:
  """A copy of `config` with the train split's shapes (`meta`: its DatasetMeta) and the derived step count."""
  config = copy.deepcopy(config)
  config.model.seq_len = int(meta.seq_len)
  config.model.vocab_size = int(meta.vocab_size)
  config.model.num_puzzle_identifiers = sharding.table_rows(
    int(meta.num_puzzle_identifiers), config.mesh.table_parallel
  )
  t = config.train
  if t.steps is None or t.steps < 0:
    t.steps = max(1, int(t.epochs * meta.total_groups * meta.mean_puzzle_examples // t.global_batch_size))
  return config


def train_and_evaluate(config, workdir: str, verbose: bool = False) -> dict:
  """Trains (resuming the workdir's latest checkpoint), evaluates, saves; returns the last metrics.
  Process 0 holds the workdir's lock for the whole run. `verbose` also prints the resolved config."""
  config_lib.validate(config)  # before anything is allocated, built or created
  run, data, cadence, steps = _setup(config)
  run_dir = rundir.RunDir(workdir).prepare()
  with workdir_lock.hold(run_dir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(run, data, cadence, steps, run_dir, verbose)


def _train_and_evaluate(run: Run, data, cadence, steps: Steps, run_dir: rundir.RunDir, verbose: bool) -> dict:
  """Trains the run through its hooks (or evaluates it once when it is already at its last step); reports."""
  tcfg, end, batch_size = run.config.train, cadence.end, int(run.config.train.global_batch_size)
  profile = hooks_lib.StepTrace(tcfg.get("profile_steps", ""), run_dir)
  with errors.disk_full_names(run_dir.checkpoints()), contextlib.ExitStack() as resources:
    mngr = checkpoint.manager(run_dir, tcfg.keep_checkpoints)
    resources.callback(mngr.close)  # also on failure: no orbax threads left to print tracebacks at exit
    state, carry, resumed = _restore_or_init(run, mngr, run_dir)
    start = int(state.step)
    forgotten = arc_votes.forget_after(run_dir, start) if jax.process_index() == 0 else []
    writer = metrics_lib.Writer(run_dir, end, start)
    resources.callback(writer.close)  # (closed before the closing line)
    if resumed:
      writer.log(f"resuming from step {start} in {run_dir.checkpoints()}")
    _log_start(writer, run, state, cadence, forgotten, verbose)
    guard = hooks_lib.NonFiniteGuard(mngr, pending=start if resumed else None)
    evals = hooks_lib.EvaluateAt(
      cadence.eval_steps, lambda s: evaluate.evaluate_all(run, s, data, run_dir, steps.eval), writer
    )
    save = hooks_lib.SaveCheckpoint(mngr, run_meta(run.config, data), tcfg.checkpoint_every, guard)
    log = hooks_lib.LogEvery(writer, tcfg.log_every, batch_size, guard.check, also=(evals.due, save.due))
    feed = input_pipeline.prefetch_train_batches(
      data.train, run.config.seed, start, batch_size, jax.process_index(), jax.process_count(), cadence.epochs_per_iter
    )
    batches = resources.enter_context(contextlib.closing(feed))
    resources.callback(profile.close)
    with checkpoint.Preemption() as preemption:
      preempted = hooks_lib.Preempted(preemption, mngr, writer)
      step = start
      if start < end:
        writer.log(f"train step compiled in {steps.compile_seconds:.1f}s")
        writer.write(start, {"compile_seconds": steps.compile_seconds})
        train = lambda s, c, b: steps.train(s, c, run.make_batch(b), run.step_rng)
        tick = train_loop(train, state, carry, start, end, batches, [profile, guard, preempted, log, evals, save])
        state, step = tick.state, tick.step
        if tick.stop:
          preempted.announce(step)
      elif (recorded := _recorded_eval(run_dir, start)) is not None:  # a finished run started again
        evals.latest = recorded
        writer.log(f"already complete: step {start} of {end} is evaluated in {run_dir.metrics}")
      else:  # e.g. a checkpoint trm-convert wrote at the last step
        evals.run(start, state)
    mngr.wait_until_finished()
    saved, tensorboard = mngr.latest_step(), writer.tensorboard
  # Solved on one process's devices: on a pod, `trm-solve --workdir` prints it from the checkpoint instead.
  example = report.print_example(run, state, data) if step >= end and jax.process_count() == 1 else None
  if jax.process_index() == 0:
    print(report.closing_line(run_dir, saved, data.task, example, tensorboard), flush=True)
  return dict(evals.latest, step=step)


def _recorded_eval(run_dir: rundir.RunDir, step: int) -> dict | None:
  """The evaluation of `step` that the run's metrics.jsonl holds (its eval/ metrics), or None."""
  records = metrics_lib.read(run_dir) if fileio.exists(run_dir.metrics) else []
  found = [{k: v for k, v in r.items() if k.startswith("eval/")} for r in records if r.get("step") == step]
  return next((r for r in reversed(found) if r), None)


def train_loop(train_step, state, carry, start: int, end: int, batches, hooks: list) -> hooks_lib.Tick:
  """Train steps start+1..end, each followed by every hook in order (ending after one that sets `tick.stop`).
  `train_step(state, carry, batch) -> (state, carry, metric sums)`; `batches` yields (step, batch) from `start`."""
  tick = None
  for step in range(start, end):
    at, batch = next(batches)
    assert at == step, (at, step)
    for hook in hooks:
      hook.before(step + 1)
    state, carry, metrics = train_step(state, carry, batch)
    tick = hooks_lib.Tick(step + 1, state, carry, metrics, last=step + 1 == end)
    for hook in hooks:
      hook(tick)
    if tick.stop:
      break
  return tick


def _setup(config):
  """-> (Run, data, cadence, Steps) of the resolved config, its steps compiled; all processes meet here.
  A run that does not fit the devices and the host is one UserError, before anything is allocated or created."""
  mesh = sharding.make_mesh(config.mesh.table_parallel)
  data = data_lib.load(config.data)
  config = resolve_config(config, data.train.meta)
  config_lib.validate(config)  # the dataset's shapes
  try:
    sharding.check_batch(config.train.global_batch_size, mesh)
    sharding.check_batch(config.eval.batch_size, mesh, "eval.batch_size")
    run, cadence = Run(config, mesh), cadence_lib.cadence(config.train, data.train, config.seed)
  except ValueError as e:
    raise UserError(str(e)) from None
  (train_step, seconds), (eval_step, _) = runs.compile_train(run), runs.compile_eval(run)
  runs.check_fits(run, train_step, eval_step, f"{data.train.where}: num_puzzle_identifiers")
  checkpoint.barrier("trm_train_step_compiled")
  return run, data, cadence, Steps(train_step, seconds, eval_step)


def _restore_or_init(run: Run, mngr, run_dir: rundir.RunDir):
  """-> (state, carry, resumed): the newest intact checkpoint's, else a new run's.
  Newer checkpoints that fail to restore are set aside, with one warning line."""
  latest = checkpoint.latest_step(mngr)
  if latest is None:
    return run.new_state(), run.new_carry(), False
  _check_same_model(mngr, latest, run)
  got = checkpoint.restore_intact(mngr, run.abstract_state, run.abstract_carry)
  if damaged := got.damaged:
    dests = checkpoint.set_aside(mngr, [s for s, _ in damaged], run_dir)
    if jax.process_index() == 0:
      print(
        f"warning: {damaged[0][1]}; moved {len(damaged)} checkpoint(s) that did not restore "
        f"(steps {', '.join(str(s) for s, _ in damaged)}) to {', '.join(dests)} (delete once looked at); "
        f"resuming from step {got.step}",
        file=sys.stderr,
        flush=True,
      )
  return got.state, got.carry, True


def _check_same_model(mngr, step: int, run: Run) -> None:
  """A checkpoint whose state has other shapes (another model or data) is a UserError, never 'damaged'; choices
  that keep them (recursion, dtype, train.lr, ...) may change. Unreadable metadata is left to `restore_intact`."""
  try:
    saved = json.loads(checkpoint.restore_meta(mngr, step)["config"])
    theirs = Run(ml_collections.ConfigDict(saved), run.mesh).abstract_state
  except (checkpoint.CheckpointError, AttributeError, KeyError, TypeError, ValueError):
    return
  spec = lambda tree: (jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)])
  if spec(theirs) == spec(run.abstract_state):
    return
  diffs = config_lib.differences(saved, json.loads(run.config.to_json_best_effort()))
  diffs = [d for d in diffs if d.startswith(("model.", "data."))] or diffs
  raise UserError(
    f"{mngr.directory}/{step}: written with a different config ({'; '.join(diffs[:4])}"
    f"{'; ...' if len(diffs) > 4 else ''}): use a new --workdir, or the config this run was started with"
  )


def _log_start(writer, run: Run, state, cadence, forgotten: list, verbose: bool) -> None:
  """The run's first lines (and, on a new run, its size as the first metrics event)."""
  start, n_params = int(state.step), train_state.count_params(state.params)
  if verbose:
    writer.log(f"config:\n{run.config}")
  writer.log(
    f"parameters: {n_params:,}; devices: {jax.device_count()}; steps {start} -> {cadence.end}"
    + ("" if writer.tensorboard else "; TensorBoard off (tensorboardX not installed)")
  )
  writer.log(cadence_lib.describe(cadence))
  if forgotten:
    writer.log(f"resuming at step {start}: dropped the ARC votes of later evaluations ({', '.join(forgotten)})")
  if start == 0:
    writer.write(0, {"params": n_params, "total_steps": cadence.end})


class Steps(NamedTuple):
  train: Any  # the compiled train step
  compile_seconds: float
  eval: Any  # the compiled eval step
