"""train_and_evaluate(config, workdir): wires data, state, steps, checkpoints and metrics.

A run always resumes its own latest checkpoint first. The checkpoint holds the
whole future of the run (state with EMA and puzzle table, the ACT carry with
its current examples, the step); batches are a pure function of (seed, step)
and so is the rng, so a resumed run ends with the same parameters as an
uninterrupted one.
"""
from __future__ import annotations

import copy
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trm_jax import arc_votes, cadence as cadence_lib, checkpoint, config_lib, data as data_lib, evaluate
from trm_jax import input_pipeline, metrics as metrics_lib, report, rundir
from trm_jax import sharding, train_state, trace, workdir_lock
from trm_jax.cli import RunStopped, UserError
from trm_jax.runs import Run, run_meta


class NonFiniteLoss(RunStopped):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def resolve_config(config, meta) -> ml_collections.ConfigDict:
  """A copy of `config` with the train split's shapes (`meta`: its DatasetMeta) and the derived step count."""
  config = copy.deepcopy(config)
  config.model.seq_len = int(meta.seq_len)
  config.model.vocab_size = int(meta.vocab_size)
  config.model.num_puzzle_identifiers = sharding.table_rows(
      int(meta.num_puzzle_identifiers), config.mesh.table_parallel)
  t = config.train
  if t.steps is None or t.steps < 0:
    t.steps = max(1, int(t.epochs * meta.total_groups * meta.mean_puzzle_examples // t.global_batch_size))
  return config


def check_workdir(workdir: str) -> str:
  """Absolute local workdir (parents created; it and its run directories must be the user's) or gs:// URI."""
  return str(rundir.RunDir(workdir).prepare())


def _finite(x) -> bool:
  return bool(np.isfinite(np.asarray(x)).all())


def _resume(mngr, abstract_state, abstract_carry, workdir: str):
  """Restores the newest intact checkpoint; newer ones that fail are set aside with one warning line."""
  step, state, carry, _, damaged = checkpoint.restore_intact(mngr, abstract_state, abstract_carry)
  if damaged:
    # Out of the checkpoints directory (re-saving that step must work, and it would shadow the
    # good one), but kept: a passing storage error can look like damage.
    dests = checkpoint.set_aside(mngr, [s for s, _ in damaged], rundir.RunDir(workdir))
    if jax.process_index() == 0:
      print(f"warning: {damaged[0][1]}; moved {len(damaged)} checkpoint(s) that did not restore "
            f"(steps {', '.join(str(s) for s, _ in damaged)}) to {', '.join(dests)} (delete once looked at); "
            f"resuming from step {step}", file=sys.stderr, flush=True)
  return state, carry


def train_and_evaluate(config, workdir: str, verbose: bool = False) -> dict:
  """Trains (resuming the workdir's latest checkpoint), evaluates, saves; returns the last metrics.

  Process 0 holds the workdir's lock (`workdir_lock`) for the whole run. `verbose`
  also prints the resolved config (it is saved in every checkpoint's metadata anyway).
  """
  config_lib.validate(config)  # before anything is allocated, built or created
  workdir = check_workdir(workdir)
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir, verbose)


def _train_and_evaluate(config, workdir: str, verbose: bool) -> dict:
  mesh = sharding.make_mesh(config.mesh.table_parallel)
  data = data_lib.load(config.data)
  config = resolve_config(config, data.train.meta)
  config_lib.validate(config)  # the dataset's shapes
  t = config.train
  try:
    sharding.check_batch(t.global_batch_size, mesh)
    sharding.check_batch(config.eval.batch_size, mesh, "eval.batch_size")
    run = Run(config, mesh)
    cad = cadence_lib.cadence(t, data.train, config.seed)
  except ValueError as e:
    raise UserError(str(e)) from None
  total, batch_size, epi = cad.end, int(t.global_batch_size), cad.epochs_per_iter
  eval_steps = frozenset(cad.eval_steps)
  profile = trace.StepTrace(t.get("profile_steps", ""), workdir)

  mngr = checkpoint.manager(workdir, t.keep_checkpoints)
  meta = run_meta(config, data)
  latest = checkpoint.latest_step(mngr)
  if latest is None:
    state = run.new_state()
    carry = run.new_carry()
  else:
    try:
      state, carry = _resume(mngr, run.abstract_state, run.abstract_carry, workdir)
    except BaseException:
      mngr.close()  # no orbax threads left to print tracebacks at exit
      raise
  start = int(state.step)
  forgotten = arc_votes.forget_after(workdir, start) if jax.process_index() == 0 else []

  writer = metrics_lib.Writer(workdir, total, start)
  tensorboard = writer.tensorboard  # (the writer is closed before the closing line)
  n_params = train_state.count_params(state.params)
  if verbose:
    writer.log(f"config:\n{config}")
  writer.log(f"parameters: {n_params:,}; devices: {jax.device_count()}; steps {start} -> {total}"
             + ("" if writer.tensorboard else "; TensorBoard off (tensorboardX not installed)"))
  writer.log(cadence_lib.describe(cad))
  if forgotten:
    writer.log(f"resuming at step {start}: dropped the ARC votes of later evaluations ({', '.join(forgotten)})")
  if start == 0:
    writer.write(0, {"params": n_params, "total_steps": total})

  train_step = run.train_step
  pidx, pcount = jax.process_index(), jax.process_count()
  batch_at = lambda s: run.make_batch(input_pipeline.train_batch(data.train, config.seed, s, batch_size,
                                                                 pidx, pcount, epi))
  last_metrics: dict = {}
  step, sums, window, t_window = start, None, 0, time.time()
  batches = None

  # The newest checkpoint whose state has not yet produced a finite loss: the loss computed from
  # the step-k state is only known after step k+1, so checkpoint k counts as good only then.
  pending = None if latest is None else start

  def stop_non_finite(what: str):
    """Deletes the unverified checkpoint (it produced the NaN) and stops, naming the last good one."""
    mngr.wait_until_finished()
    dropped = ""
    if pending is not None and pending in mngr.all_steps():
      mngr.delete(pending)
      dropped = f"deleted checkpoint step {pending} (its loss was never finite); "
    good = mngr.latest_step()
    raise NonFiniteLoss(f"{what}; stopped; {dropped}last good checkpoint: "
                        f"{'none' if good is None else f'step {good}'} in {mngr.directory}")

  def check_pending():
    """After step pending+1: the loss from the pending checkpoint's state is known; finite -> it is good."""
    nonlocal pending
    if pending is not None and step == pending + 1:
      if not _finite(jax.device_get(sums["loss"])):
        stop_non_finite(f"non-finite loss at step {step}")
      pending = None

  def flush():
    """Fetches the window's metric sums; stops the run on a non-finite loss."""
    nonlocal sums, window, t_window
    if sums is None:
      return {}
    host = jax.device_get(sums)
    if not _finite(host["loss"]):
      stop_non_finite(f"non-finite loss in steps {step - window + 1}..{step}")
    vals = {f"train/{k}": v for k, v in metrics_lib.reduce_window(host, batch_size, window).items()}
    vals["train/steps_per_sec"] = window / max(time.time() - t_window, 1e-9)
    sums, window, t_window = None, 0, time.time()
    return vals

  def save():
    """Saves step `step` (never a state holding NaN/inf); it is good once its loss is finite."""
    nonlocal pending
    try:
      checkpoint.save(mngr, step, state, carry, meta, force=True)
    except checkpoint.NonFiniteState as e:
      stop_non_finite(str(e))
    pending = step

  try:
    with checkpoint.Preemption() as preempt:
      if step < total:
        t0 = time.time()
        train_step = train_step.lower(state, carry, batch_at(step), run.step_rng).compile()
        compile_s = time.time() - t0
        writer.log(f"train step compiled in {compile_s:.1f}s")
        writer.write(step, {"compile_seconds": compile_s})
        checkpoint.barrier("trm_train_step_compiled")
      batches = input_pipeline.prefetch_train_batches(data.train, config.seed, step, batch_size, pidx, pcount, epi)
      while step < total:
        at, local = next(batches)
        assert at == step, (at, step)
        profile.before(step + 1)
        state, carry, m = train_step(state, carry, run.make_batch(local), run.step_rng)
        sums = m if sums is None else _add_metrics(sums, m)
        step += 1
        profile.after(step, m)
        window += 1
        check_pending()
        done = step == total
        stop = preempt.reached(mngr, step)
        do_eval = done or step in eval_steps
        do_save = done or stop or (t.checkpoint_every > 0 and step % t.checkpoint_every == 0)
        if done or do_eval or do_save or step % max(t.log_every, 1) == 0:
          vals = flush()
          if vals:
            writer.write(step, vals)
            writer.progress(step, {"loss": vals["train/lm_loss"], "exact": vals["train/exact_accuracy"]})
        if do_eval:
          t0 = time.time()
          last_metrics = evaluate.evaluate_all(run, state, data, workdir)
          writer.write(step, dict(last_metrics, eval_seconds=time.time() - t0))
          writer.log(report.summary(step, last_metrics))
        if do_save:
          save()
        if stop and not done:
          msg = f"SIGTERM: saved step {step}, exiting; re-run the same command to resume"
          if pidx == 0:
            writer.log(msg)
          else:
            print(f"process {pidx}: {msg}", file=sys.stderr, flush=True)
          break
      if start >= total:
        last_metrics = evaluate.evaluate_all(run, state, data, workdir)
        writer.write(step, last_metrics)
        writer.log(report.summary(step, last_metrics))
    mngr.wait_until_finished()
    saved = mngr.latest_step()
  finally:
    profile.close()
    if batches is not None:
      batches.close()
    writer.close()
    mngr.close()
  # The example is solved on one process's devices, so only single-process runs print it
  # (on a pod, `trm-solve --workdir` prints it from the checkpoint).
  example = None
  if step >= total and jax.process_count() == 1:
    example = report.print_example(run, state, data)
  if jax.process_index() == 0:
    print(report.closing_line(workdir, saved, data.task, example, tensorboard), flush=True)
  return dict(last_metrics, step=step)


@jax.jit
def _add_metrics(a: dict, b: dict) -> dict:
  """Running metric sums: one dispatch per step instead of one per metric."""
  return jax.tree.map(jnp.add, a, b)
