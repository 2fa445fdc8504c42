"""The training loop's hooks: small objects with one job each, run after every train step.

`train.train_loop` calls `before(step)` on every hook before train step `step`, then every hook, in list order,
with the `Tick` of that step; a hook decides itself whether it acts (`due`). Order matters: `Preempted` sets
`tick.stop` (`SaveCheckpoint` saves, the loop ends); `LogEvery` writes before any evaluation or save of the step.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import checkpoint, losses, report, rundir
from trm_jax.errors import RunStopped, UserError


class NonFiniteLoss(RunStopped):
  """Training produced a NaN/inf loss; the last good checkpoint is kept."""


@dataclasses.dataclass
class Tick:
  """What the hooks see after train step `step` (whose results are `state`, `carry` and `metrics`)."""

  step: int
  state: Any
  carry: Any
  metrics: dict  # this step's metric sums, on the device
  last: bool  # the run's final step
  stop: bool = False  # preempted: save now and end the loop (set by `Preempted`)


class Hook:
  """A hook that does nothing; subclasses override what they need."""

  def before(self, step: int) -> None:
    """Called before train step `step` runs."""

  def __call__(self, tick: Tick) -> None:
    """Called after train step `tick.step`."""


@jax.jit
def _add_metrics(a: dict, b: dict) -> dict:
  """Running metric sums: one dispatch per step instead of one per metric."""
  return jax.tree.map(jnp.add, a, b)


class NonFiniteGuard(Hook):
  """Stops the run at a NaN/inf loss and deletes the checkpoint that led to it.

  The loss of the step-k state is only known after step k+1, so a checkpoint of step k (or a resumed run's) is
  *pending* until then. `stop` deletes the pending checkpoint and raises NonFiniteLoss naming the last good one.
  """

  def __init__(self, mngr, pending: int | None = None):
    self.mngr, self.pending = mngr, pending

  def __call__(self, tick: Tick) -> None:
    if self.pending is not None and tick.step == self.pending + 1:
      self.check(jax.device_get(tick.metrics["loss"]), f"non-finite loss at step {tick.step}")
      self.pending = None

  def check(self, loss, what: str) -> None:
    if not np.isfinite(np.asarray(loss)).all():
      self.stop(what)

  def stop(self, what: str):
    self.mngr.wait_until_finished()
    dropped = ""
    if self.pending is not None and self.pending in self.mngr.all_steps():
      self.mngr.delete(self.pending)
      dropped = f"deleted checkpoint step {self.pending} (its loss was never finite); "
    good = self.mngr.latest_step()
    raise NonFiniteLoss(
      f"{what}; stopped; {dropped}last good checkpoint: "
      f"{'none' if good is None else f'step {good}'} in {self.mngr.directory}"
    )


class Preempted(Hook):
  """SIGTERM (`checkpoint.Preemption`, agreed on by every process): the run saves this step and exits."""

  def __init__(self, preemption: checkpoint.Preemption, mngr, writer):
    self.preemption, self.mngr, self.writer = preemption, mngr, writer

  def __call__(self, tick: Tick) -> None:
    tick.stop = self.preemption.reached(self.mngr, tick.step) and not tick.last

  def announce(self, step: int) -> None:
    """The line saying so, once the loop has ended (every process says it: their logs are apart)."""
    msg = f"SIGTERM: saved step {step}, exiting; re-run the same command to resume"
    if jax.process_index() == 0:
      self.writer.log(msg)
    else:
      print(f"process {jax.process_index()}: {msg}", file=sys.stderr, flush=True)


class LogEvery(Hook):
  """Writes the train metrics of the last `every` steps, and of the steps before any `also(tick)` acts.
  The sums stay on the device until written (one fetch per window); a non-finite loss goes to `check`."""

  def __init__(self, writer, every: int, batch_size: int, check: Callable, also: tuple = ()):
    self.writer, self.every, self.batch_size, self.check, self.also = writer, max(every, 1), batch_size, check, also
    self.sums, self.window, self.t = None, 0, time.time()

  def __call__(self, tick: Tick) -> None:
    self.sums = tick.metrics if self.sums is None else _add_metrics(self.sums, tick.metrics)
    self.window += 1
    if tick.step % self.every == 0 or any(due(tick) for due in self.also):
      self.flush(tick.step)

  def flush(self, step: int) -> None:
    host = jax.device_get(self.sums)
    self.check(host["loss"], f"non-finite loss in steps {step - self.window + 1}..{step}")
    vals = {f"train/{k}": v for k, v in losses.reduce_metrics(host, self.batch_size * self.window).items()}
    vals["train/steps_per_sec"] = self.window / max(time.time() - self.t, 1e-9)
    self.sums, self.window, self.t = None, 0, time.time()
    self.writer.write(step, vals)
    self.writer.progress(step, {"loss": vals["train/lm_loss"], "exact": vals["train/exact_accuracy"]})


class EvaluateAt(Hook):
  """Evaluates (`evaluate(state) -> metrics`) at `steps` and the last step; writes and summarises the metrics."""

  def __init__(self, steps, evaluate: Callable, writer):
    self.steps, self.evaluate, self.writer = frozenset(steps), evaluate, writer
    self.latest: dict = {}  # the metrics of the latest evaluation

  def due(self, tick: Tick) -> bool:
    return tick.last or tick.step in self.steps

  def __call__(self, tick: Tick) -> None:
    if self.due(tick):
      self.run(tick.step, tick.state, timed=True)

  def run(self, step: int, state, timed: bool = False) -> None:
    t0 = time.time()
    self.latest = self.evaluate(state)
    self.writer.write(step, dict(self.latest, eval_seconds=time.time() - t0) if timed else self.latest)
    self.writer.log(report.summary(step, self.latest))


class SaveCheckpoint(Hook):
  """Saves every `every` steps (0: never), at the last step and when preempted; tells the guard."""

  def __init__(self, mngr, meta: dict, every: int, guard: NonFiniteGuard):
    self.mngr, self.meta, self.every, self.guard = mngr, meta, every, guard

  def due(self, tick: Tick) -> bool:
    return tick.last or tick.stop or (self.every > 0 and tick.step % self.every == 0)

  def __call__(self, tick: Tick) -> None:
    if not self.due(tick):
      return
    try:  # never a state holding NaN/inf; the checkpoint is good once its loss is finite
      checkpoint.save(self.mngr, tick.step, tick.state, tick.carry, self.meta, force=True)
    except checkpoint.NonFiniteState as e:
      self.guard.stop(str(e))
    self.guard.pending = tick.step


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """`train.profile_steps`: 'a,b' -> (a, b) with 1 <= a <= b; '' -> None."""
  spec = (spec or "").strip()
  if not spec:
    return None
  try:
    a, b = (int(x) for x in spec.split(","))
  except ValueError:
    a = b = 0
  if not 1 <= a <= b:
    raise UserError(f"config.train.profile_steps: want 'first,last' with 1 <= first <= last, got {spec!r}")
  return a, b


class StepTrace(Hook):
  """`train.profile_steps="a,b"`: a jax.profiler trace of train steps a..b on process 0.

  It lands in <workdir>/profile/plugins/profile/<time>/ (`*.xplane.pb` for TensorBoard's Profile tab, and
  `perfetto_trace.json.gz`); it waits for step b's results before it stops, so it holds whole steps.
  """

  def __init__(self, spec: str, workdir):
    self.steps = parse_profile_steps(spec)
    self.dir = rundir.RunDir(workdir).profile
    self.active = False
    self.done = self.steps is None or jax.process_index() != 0

  def before(self, step: int) -> None:
    if not self.done and not self.active and self.steps[0] <= step <= self.steps[1]:
      jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
      self.active = True

  def __call__(self, tick: Tick) -> None:
    if self.active and tick.step >= self.steps[1]:
      jax.block_until_ready(tick.metrics)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active, self.done = False, True
      print(f"profile trace written to {self.dir} (tensorboard --logdir={self.dir}: Profile tab)", flush=True)
