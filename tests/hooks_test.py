"""The training loop and its hooks, each on fakes (no model, no checkpoint files)."""

import jax
import numpy as np
import pytest

from trm_jax import checkpoint, hooks, train
from trm_jax.hooks import Tick


class FakeWriter:
  def __init__(self):
    self.events, self.lines, self.progressed = [], [], []

  def write(self, step, values):
    self.events.append((step, dict(values)))

  def log(self, text):
    self.lines.append(text)

  def progress(self, step, postfix):
    self.progressed.append((step, postfix))


class FakeManager:
  directory = "/run/checkpoints"

  def __init__(self, steps=()):
    self.steps = set(steps)

  def wait_until_finished(self):
    pass

  def all_steps(self):
    return sorted(self.steps)

  def delete(self, step):
    self.steps.remove(step)

  def latest_step(self):
    return max(self.steps, default=None)


def tick(step, loss=1.0, last=False, **kw):
  m = {
    "loss": np.float32(loss),
    "lm_loss": np.float32(2 * loss),
    "exact_accuracy": np.float32(4.0),
    "count": np.float32(4.0),
  }
  return Tick(step, state=f"state{step}", carry=f"carry{step}", metrics=m, last=last, **kw)


class Recorder(hooks.Hook):
  def __init__(self, calls, stop_at=None):
    self.calls, self.stop_at = calls, stop_at

  def before(self, step):
    self.calls.append(("before", step))

  def __call__(self, t):
    self.calls.append(("after", t.step, t.state))
    t.stop = t.stop or t.step == self.stop_at


def test_train_loop_runs_hooks_in_order_and_stops_when_told():
  calls = []
  batches = iter([(s, f"batch{s}") for s in range(2, 10)])
  step = lambda state, carry, batch: (f"{state}+{batch}", carry, {"loss": 0.0})
  last = train.train_loop(step, "s", "c", 2, 9, batches, [Recorder(calls, stop_at=4), Recorder(calls)])
  assert last.step == 4 and last.stop and not last.last and last.state == "s+batch2+batch3"
  assert calls == [
    ("before", 3),
    ("before", 3),
    ("after", 3, "s+batch2"),
    ("after", 3, "s+batch2"),
    ("before", 4),
    ("before", 4),
    ("after", 4, "s+batch2+batch3"),
    ("after", 4, "s+batch2+batch3"),
  ]
  last = train.train_loop(step, "s", "c", 7, 9, iter([(7, "a"), (8, "b")]), [])
  assert last.step == 9 and last.last
  with pytest.raises(AssertionError):  # batches must start at the run's step
    train.train_loop(step, "s", "c", 7, 9, iter([(8, "b")]), [])


def test_guard_deletes_the_pending_checkpoint_whose_loss_is_not_finite():
  mngr = FakeManager([4, 6])
  guard = hooks.NonFiniteGuard(mngr, pending=4)  # resumed from step 4
  guard(tick(5))  # its loss is finite: step 4 is good
  assert guard.pending is None
  guard.pending = 6  # SaveCheckpoint saved step 6
  guard(tick(6, loss=np.nan))  # not step 6's loss yet: nothing to say
  with pytest.raises(hooks.NonFiniteLoss) as e:
    guard(tick(7, loss=np.inf))
  assert str(e.value) == (
    "non-finite loss at step 7; stopped; deleted checkpoint step 6 (its loss was never "
    "finite); last good checkpoint: step 4 in /run/checkpoints"
  )
  assert mngr.steps == {4}
  guard = hooks.NonFiniteGuard(FakeManager())
  guard.check(np.float32(1.0), "fine")
  with pytest.raises(hooks.NonFiniteLoss, match="^window; stopped; last good checkpoint: none in"):
    guard.check(np.asarray([1.0, np.nan]), "window")


def test_log_every_writes_windows_and_before_other_hooks_act():
  writer, checked = FakeWriter(), []
  log = hooks.LogEvery(
    writer,
    every=2,
    batch_size=4,
    check=lambda loss, what: checked.append((float(loss), what)),
    also=(lambda t: t.step == 3,),
  )
  for s in range(1, 6):
    log(tick(s, loss=float(s)))
  assert [s for s, _ in writer.events] == [2, 3, 4]
  # Window 1..2: loss sums 1 + 2 over 2 steps of batch 4; lm_loss = 2 * loss.
  assert writer.events[0][1]["train/lm_loss"] == pytest.approx(6.0 / 8)
  assert writer.events[1][1]["train/lm_loss"] == pytest.approx(6.0 / 4)
  assert set(writer.events[0][1]) >= {"train/lm_loss", "train/exact_accuracy", "train/steps_per_sec"}
  assert checked == [
    (3.0, "non-finite loss in steps 1..2"),
    (3.0, "non-finite loss in steps 3..3"),
    (4.0, "non-finite loss in steps 4..4"),
  ]
  assert writer.progressed[0] == (2, {"loss": pytest.approx(0.75), "exact": 1.0})
  assert log.window == 1  # step 5 waits for the next write


def test_evaluate_at_its_steps_and_the_last():
  writer, seen = FakeWriter(), []
  evaluate = lambda state: seen.append(state) or {"eval/test/exact_accuracy": 0.5}
  hook = hooks.EvaluateAt([2], evaluate, writer)
  for t in (tick(1), tick(2), tick(3, last=True)):
    hook(t)
  assert seen == ["state2", "state3"] and [s for s, _ in writer.events] == [2, 3]
  assert "eval_seconds" in writer.events[0][1] and hook.latest == {"eval/test/exact_accuracy": 0.5}
  assert writer.lines == ["step 2: eval/test/exact_accuracy=0.5000", "step 3: eval/test/exact_accuracy=0.5000"]
  hook.run(3, "restored")  # a run already at its last step: evaluates once, untimed
  assert writer.events[-1] == (3, {"eval/test/exact_accuracy": 0.5})


def test_save_checkpoint_when_due_and_tells_the_guard(monkeypatch):
  saved = []

  def save(mngr, step, state, carry, meta, force):
    if state == "bad":
      raise checkpoint.NonFiniteState(f"non-finite values in the step-{step} state (state.w); not saved")
    saved.append((step, state, carry, meta, force))
    mngr.steps.add(step)

  monkeypatch.setattr(checkpoint, "save", save)
  mngr = FakeManager()
  guard = hooks.NonFiniteGuard(mngr)
  hook = hooks.SaveCheckpoint(mngr, {"task": "x"}, every=3, guard=guard)
  for t in (tick(1), tick(2, stop=True), tick(3), tick(4), tick(5, last=True)):
    hook(t)
  assert [s[0] for s in saved] == [2, 3, 5] and saved[0] == (2, "state2", "carry2", {"task": "x"}, True)
  assert guard.pending == 5
  with pytest.raises(
    hooks.NonFiniteLoss,
    match=r"^non-finite values in the step-6 state .*; deleted checkpoint "
    r"step 5 .*last good checkpoint: step 3 in",
  ):
    hook(Tick(6, "bad", "c", {}, last=True))
  assert not hooks.SaveCheckpoint(mngr, {}, every=0, guard=guard).due(tick(6))


def test_preempted_stops_before_the_last_step_and_says_so():
  class FakePreemption:
    asked = []

    def reached(self, mngr, step):
      self.asked.append(step)
      return step >= 2

  writer = FakeWriter()
  hook = hooks.Preempted(FakePreemption(), FakeManager(), writer)
  ticks = [tick(1), tick(2), tick(3, last=True)]
  for t in ticks:
    hook(t)
  assert [t.stop for t in ticks] == [False, True, False] and FakePreemption.asked == [1, 2, 3]
  hook.announce(2)
  assert writer.lines == ["SIGTERM: saved step 2, exiting; re-run the same command to resume"]


def test_profile_traces_whole_steps(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d, **kw: calls.append(("start", d)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
  monkeypatch.setattr(jax, "block_until_ready", lambda x: calls.append(("wait", sorted(x))))
  hook = hooks.StepTrace("2,3", str(tmp_path))
  for s in range(1, 5):
    hook.before(s)
    hook(tick(s))
  hook.close()
  assert calls == [
    ("start", str(tmp_path / "profile")),
    ("wait", ["count", "exact_accuracy", "lm_loss", "loss"]),
    ("stop",),
  ]
