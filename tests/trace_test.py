"""--config.train.profile_steps=a,b writes a jax.profiler trace of those steps into the workdir."""

import glob
import gzip
import json
import os
import subprocess
import sys

import pytest

from trm_jax import hooks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_steps_writes_a_trace(env, tmp_path):
  w = tmp_path / "run"
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "trm_jax.main",
      "--config=experiments/smoke.py",
      f"--workdir={w}",
      "--config.train.steps=4",
      "--config.train.profile_steps=2,3",
      "--config.train.eval_every=0",
      "--config.model.H_cycles=1",
      "--config.model.L_cycles=1",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert f"profile trace written to {w / 'profile'} " in p.stdout  # the run says where
  runs = glob.glob(str(w / "profile" / "plugins" / "profile" / "*"))
  assert len(runs) == 1, runs
  assert glob.glob(os.path.join(runs[0], "*.xplane.pb"))
  with gzip.open(os.path.join(runs[0], "perfetto_trace.json.gz")) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  assert any("train_step" in str(e.get("name", "")) or "jit" in str(e.get("name", "")) for e in events)


def test_no_trace_by_default_and_bad_spec(tmp_path):
  assert hooks.parse_profile_steps("") is None and hooks.parse_profile_steps("2,2") == (2, 2)
  for bad in ("3", "0,2", "5,4", "a,b", "1,2,3"):
    with pytest.raises(ValueError, match="config.train.profile_steps"):
      hooks.parse_profile_steps(bad)
  t = hooks.StepTrace("", str(tmp_path))
  t.before(1)
  t(hooks.Tick(1, None, None, {}, last=False))
  assert not t.active and not os.path.exists(tmp_path / "profile")
