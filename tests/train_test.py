"""The training loop end to end: smoke runs in both recursion modes, restore, kill-and-resume, SIGTERM."""

import importlib.util
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from procs import read_to_point

from trm_jax import faults, metrics, runs, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke(arg=None):
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(ROOT, "experiments", "smoke.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def ckpt_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


@pytest.mark.parametrize("recursion", ["loop", "scan"])
def test_smoke_trains_evaluates_restores(tmp_path, recursion):
  c = smoke(f"recursion={recursion}")
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(c, workdir)
  assert out["step"] == 12
  events = metrics.read(workdir)
  train_events = [e for e in events if "train/lm_loss" in e]
  assert [e["step"] for e in train_events] == [2, 4, 6, 8, 10, 12]
  assert train_events[-1]["train/lm_loss"] < train_events[0]["train/lm_loss"]
  for k in ("train/exact_accuracy", "train/steps", "train/accuracy", "train/q_halt_loss"):
    assert k in train_events[-1]
  evals = [e for e in events if "eval/test/exact_accuracy" in e]
  assert [e["step"] for e in evals] == [6, 12]
  # eval.supervision_steps=4 > halt_max_steps=3: accuracy after every step up to 4.
  assert "eval/test/exact_accuracy@4" in evals[-1] and "eval/test/exact_accuracy@5" not in evals[-1]
  assert evals[-1]["eval/test/count"] == 24
  assert any("compile_seconds" in e for e in events) and events[0]["params"] > 0
  assert ckpt_steps(workdir) == [8, 12]  # keep_checkpoints=2

  # Re-running the same command restores the latest checkpoint and only evaluates.
  again = train.train_and_evaluate(c, workdir)
  assert again["step"] == 12
  for k, v in out.items():
    if k.startswith("eval/"):
      assert again[k] == pytest.approx(v, abs=1e-6), k

  # Restored with an abstract target: optimiser state keeps its types.
  run, state, meta, _ = runs.load_run(workdir)
  fresh = run.new_state()
  assert int(state.step) == 12 and meta["task"] == "sudoku"
  assert jax.tree.structure(state) == jax.tree.structure(fresh)
  assert type(state.opt_state) is type(fresh.opt_state)


def test_resume_says_so_and_a_finished_run_started_again_adds_no_record(tmp_path, capsys):
  c = smoke()
  c.train.update(steps=2, eval_every=0, checkpoint_every=0)
  c.model.update(H_cycles=1, L_cycles=1)
  w = str(tmp_path / "run")
  train.train_and_evaluate(c, w)
  assert "resuming" not in capsys.readouterr().out
  train.train_and_evaluate(c, w)
  out = capsys.readouterr().out
  assert f"resuming from step 2 in {os.path.join(w, 'checkpoints')}\n" in out
  assert f"already complete: step 2 of 2 is evaluated in {os.path.join(w, 'metrics.jsonl')}" in out
  assert [e["step"] for e in metrics.read(w) if "eval/test/exact_accuracy" in e] == [2]  # not a second one


# ---------------------------------------------------------------------------
# Subprocess runs: kill -9 and SIGTERM, then resume; parameters equal an uninterrupted run's.

STEPS = 300
FLAGS = [
  f"--config.train.steps={STEPS}",
  "--config.train.checkpoint_every=25",
  "--config.train.eval_every=0",
  "--config.train.log_every=25",
  "--config.train.keep_checkpoints=20",
]


def cmd(workdir):
  return [sys.executable, "-m", "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={workdir}"] + FLAGS


def run_to_end(workdir, env):
  p = subprocess.run(cmd(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def start_and_signal(workdir, env, sig, tmp_path):
  """Starts a run, stops it where its first checkpoint (step 25) is committed, sends `sig` there and
  lets it go on; -> (returncode, stdout + stderr)."""
  e = dict(env, **{faults.ENV: "checkpoint_saved"})
  err_path = tmp_path / f"{os.path.basename(workdir)}.stderr"
  with open(err_path, "w") as err:  # a file: no pipe fills while the run waits at the point
    p = subprocess.Popen(
      cmd(workdir), cwd=ROOT, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
    )
    try:
      out = read_to_point(p, "checkpoint_saved", err_path)
      assert ckpt_steps(workdir) == [25]
      p.send_signal(sig)
      out += p.communicate(timeout=120)[0]  # closes stdin: releases the point (SIGTERM: saves, exits)
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()
  return p.returncode, out + err_path.read_text()


def assert_same_state(a, b):
  _, sa, _, _ = runs.load_run(a)
  _, sb, _, _ = runs.load_run(b)
  assert int(sa.step) == int(sb.step) == STEPS
  la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_kill_and_resume_equals_uninterrupted(tmp_path, env):
  ref, killed, termed = (str(tmp_path / n) for n in ("ref", "killed", "termed"))
  run_to_end(ref, env)

  rc, _ = start_and_signal(killed, env, signal.SIGKILL, tmp_path)
  assert rc == -signal.SIGKILL
  assert ckpt_steps(killed) == [25]  # killed where step 25 was committed
  run_to_end(killed, env)
  assert_same_state(ref, killed)
  # metrics.jsonl neither loses nor repeats the steps redone after the crash.
  train_steps = lambda w: [e["step"] for e in metrics.read(w) if any(k.startswith("train/") for k in e)]
  assert train_steps(killed) == train_steps(ref) and len(train_steps(ref)) > 1

  rc, err = start_and_signal(termed, env, signal.SIGTERM, tmp_path)
  assert rc == 0, err[-2000:]
  saved = ckpt_steps(termed)
  assert saved == [25, 26], saved  # SIGTERM during step 25's save: saves step 26
  assert f"SIGTERM: saved step {max(saved)}" in err
  run_to_end(termed, env)
  assert_same_state(ref, termed)
