"""The CLI: user errors are one `error:` line, no traceback, nothing half-written."""

import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(env, *args, timeout=240):
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


def one_error_line(p):
  assert p.returncode != 0
  assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
  lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: "), p.stderr[-2000:]
  assert sum(l.startswith("error: ") for l in lines) == 1
  return lines[-1]


def test_misspelt_field(env, tmp_path):
  w = tmp_path / "w"
  p = main(env, "--config=experiments/smoke.py", f"--workdir={w}", "--config.train.stepz=3")
  line = one_error_line(p)
  assert line == "error: unknown field train.stepz; did you mean train.steps?"
  assert len(p.stderr.strip().splitlines()) == 1
  assert not w.exists()


def test_bad_experiment_argument_and_missing_file(env, tmp_path):
  line = one_error_line(main(env, "--config=experiments/smoke.py:arhc=hrm", f"--workdir={tmp_path}/w"))
  assert "arhc" in line
  line = one_error_line(main(env, "--config=experiments/nope.py", f"--workdir={tmp_path}/w"))
  assert "nope.py" in line


def test_missing_workdir_parents_created_file_parent_refused(env, tmp_path):
  w = tmp_path / "missing" / "run"
  line = one_error_line(
    main(env, "--config=experiments/smoke.py", f"--workdir={w}", "--config.data.name=generated/nope")
  )
  assert "generated set 'nope'" in line
  assert not (tmp_path / "missing").exists()  # the data is read before the workdir is made: nothing created
  (tmp_path / "file").write_text("x")
  line = one_error_line(main(env, "--config=experiments/smoke.py", f"--workdir={tmp_path}/file/run"))
  assert f"{tmp_path}/file" in line and "cannot create parent directory" in line


def test_corrupt_checkpoint_directory(env, tmp_path):
  w = tmp_path / "run"
  bad = w / "checkpoints" / "4"
  bad.mkdir(parents=True)
  (bad / "state").write_text("garbage")
  line = one_error_line(main(env, "--config=experiments/smoke.py", f"--workdir={w}"))
  assert "checkpoint" in line and str(w / "checkpoints") in line
  assert not (w / "metrics.jsonl").exists()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(env, tmp_path):
  w = tmp_path / "run"
  p = main(
    env,
    "--config=experiments/smoke.py",
    f"--workdir={w}",
    "--config.train.lr=1e30",
    "--config.train.lr_warmup_steps=1",
    "--config.train.checkpoint_every=1",
    "--config.train.log_every=1",
    "--config.train.eval_every=0",
    "--config.model.halt_max_steps=1",
  )
  line = one_error_line(p)
  # Every state after the first update produces a NaN loss, so no checkpoint is good (issue 14.4;
  # tests/robust_checkpoint_test.py covers a run that keeps an earlier good step).
  assert "non-finite loss" in line and "last good checkpoint: none" in line
  steps = sorted(int(x) for x in os.listdir(w / "checkpoints") if x.isdigit())
  assert steps == []


# ---------------------------------------------------------------------------
# What a run prints (stdout is a pipe here, as in pod logs).


@pytest.fixture(scope="module")
def trained(env, tmp_path_factory):
  w = tmp_path_factory.mktemp("out") / "run"
  p = main(
    env, "--config=experiments/smoke.py", f"--workdir={w}", "--config.train.steps=4", "--config.train.eval_every=0"
  )
  assert p.returncode == 0, p.stderr[-2000:]
  return w, p


def test_output_is_short_and_ends_with_what_to_do_next(env, trained):
  w, p = trained
  out = p.stdout
  assert "config:" not in out and "seq_len:" not in out  # the dump needs --verbose
  assert "\r" not in out + p.stderr  # no bar redraws off a terminal
  lines = out.strip().splitlines()
  assert any(l.startswith("step 2/4 (50%) loss=") for l in lines)  # one line every log_every=2 steps
  assert any(l.startswith("step 4/4 (100%) loss=") for l in lines)
  example = next(l for l in lines if l.startswith("held-out example 0"))
  n = int(re.search(r"; (\d+) supervision step", example).group(1))
  assert f"{n} supervision step{'' if n == 1 else 's'}," in example
  last = lines[-1]
  assert last.startswith(f"done: {w} (checkpoint step 4; metrics {w / 'metrics.jsonl'}")
  assert (
    f"tensorboard --logdir {w / 'tensorboard'}" in last and (w / "tensorboard").is_dir()
  )  # tensorboardX is a dependency
  cmd = shlex.split(last.split("; try: ")[1])
  assert cmd[0] == "trm-solve"
  s = subprocess.run(
    [sys.executable, "-m", "trm_jax.solve", *cmd[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
  )
  assert s.returncode in (0, 2) and "halting confidence" in s.stdout, s.stderr[-2000:]


def test_verbose_prints_the_config(env, trained):
  w, _ = trained
  p = main(env, "--config=experiments/smoke.py", f"--workdir={w}", "--config.train.steps=4", "--verbose")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "config:" in p.stdout and "seq_len: 16" in p.stdout
