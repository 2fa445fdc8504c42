"""`train.profile_steps="a,b"`: a jax.profiler trace of train steps a..b on process 0.

The trace lands in <workdir>/profile/plugins/profile/<time>/ as `*.xplane.pb`
(TensorBoard's Profile tab: `tensorboard --logdir=<workdir>/profile`) and
`perfetto_trace.json.gz` (open it at https://ui.perfetto.dev). Step n is the
train step that produces checkpoint step n; the trace waits for step b's
results before it stops, so it holds whole steps.
"""

from __future__ import annotations

import jax

from trm_jax import hooks, rundir
from trm_jax.errors import UserError


def parse_steps(spec: str) -> tuple[int, int] | None:
  """'a,b' -> (a, b) with 1 <= a <= b; '' -> None."""
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


class StepTrace(hooks.Hook):
  """The loop's profiling hook: starts the trace before step `first`, stops it after step `last` (process 0)."""

  def __init__(self, spec: str, workdir):
    self.steps = parse_steps(spec)
    self.dir = rundir.RunDir(workdir).profile
    self.active = False
    self.done = self.steps is None or jax.process_index() != 0

  def before(self, step: int) -> None:
    if not self.done and not self.active and self.steps[0] <= step <= self.steps[1]:
      jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
      self.active = True

  def __call__(self, tick: hooks.Tick) -> None:
    if self.active and tick.step >= self.steps[1]:
      jax.block_until_ready(tick.metrics)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.done = True
      print(f"profile trace written to {self.dir} (tensorboard --logdir={self.dir}: Profile tab)", flush=True)
