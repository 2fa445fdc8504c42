"""Local workdirs: parents created, no write through a link, torn metrics lines, one run per workdir."""

import json
import os
import socket
import subprocess
import sys

import pytest

from trm_jax import arc_votes, fileio, metrics, rundir, workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_workdir(workdir):
  return str(rundir.RunDir(workdir).prepare())


def smoke_cmd(workdir):
  return [sys.executable, "-m", "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={workdir}"]


def one_error_line(p):
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert p.returncode == 1, (p.stdout[-1000:], p.stderr[-2000:])
  assert len([l for l in lines if l.startswith("error: ")]) == 1 and "Traceback" not in p.stderr, p.stderr
  return next(l for l in lines if l.startswith("error: "))


def test_check_workdir_creates_parents_and_refuses_files(tmp_path):
  nested = tmp_path / "runs" / "a" / "demo"
  assert check_workdir(str(nested)) == str(nested)
  assert nested.parent.is_dir() and not nested.exists()  # parents made; the run makes the workdir
  (tmp_path / "file").write_text("x")
  with pytest.raises(fileio.FileIOError, match="exists and is not a directory"):
    check_workdir(str(tmp_path / "file"))
  with pytest.raises(fileio.FileIOError, match="cannot create parent directory"):
    check_workdir(str(tmp_path / "file" / "run"))


def test_refuses_workdir_or_run_dir_of_another_user(tmp_path, monkeypatch):
  work = tmp_path / "run"
  (work / "checkpoints").mkdir(parents=True)
  other = tmp_path / "elsewhere"
  other.mkdir()
  (work / "tensorboard").symlink_to(other)  # the user's own link to the user's own directory: fine
  check_workdir(str(work))
  me = os.geteuid()
  with monkeypatch.context() as m:
    m.setattr(os, "geteuid", lambda: me + 1)  # as if the workdir were someone else's
    with pytest.raises(fileio.FileIOError, match=r"run: owned by uid \d+, not you"):
      check_workdir(str(work))
  if me == 0:  # root can hand a run directory, or a link, to another user
    os.chown(work / "checkpoints", 65534, 65534)
    with pytest.raises(fileio.FileIOError, match="checkpoints: owned by uid 65534"):
      check_workdir(str(work))
    os.chown(work / "checkpoints", 0, 0)
    os.lchown(work / "tensorboard", 65534, 65534)
    with pytest.raises(fileio.FileIOError, match="tensorboard: is a symbolic link owned by uid 65534"):
      check_workdir(str(work))


def plant(workdir, names, target):
  for name in names:
    os.symlink(target, os.path.join(workdir, name))


def test_whole_file_writes_replace_links_never_follow_them(tmp_path):
  outside = tmp_path / "outside.txt"
  outside.write_text("precious")
  work = tmp_path / "run"
  work.mkdir()
  plant(work, ["submission.json", "submission.json.tmp", "metrics.jsonl.tmp"], outside)
  arc_votes.write_submission(str(work / "submission.json"), {"task": [{"attempt_1": [[1]], "attempt_2": [[2]]}]})
  assert not os.path.islink(work / "submission.json")
  assert json.loads((work / "submission.json").read_text())["task"][0]["attempt_1"] == [[1]]
  # Resume rewrites metrics.jsonl (events past the checkpoint dropped): never through metrics.jsonl.tmp.
  (work / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "x": s}) + "\n" for s in range(6)))
  w = metrics.Writer(str(work), 10, start_step=3, enabled=True, progress=False)
  w.write(4, {"x": 40})
  w.close()
  assert [e["step"] for e in metrics.read(str(work))] == [0, 1, 2, 3, 4]
  assert outside.read_text() == "precious"
  assert oct(os.stat(work / "metrics.jsonl").st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
  m = os.umask(0)
  os.umask(m)
  return m


def test_run_refuses_metrics_link_and_leaves_target_alone(tmp_path, env):
  outside = tmp_path / "outside.txt"
  outside.write_text("precious")
  work = tmp_path / "run"
  work.mkdir()
  plant(work, ["metrics.jsonl", "metrics.jsonl.tmp", "submission.json.tmp"], outside)
  p = subprocess.run(smoke_cmd(work), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  line = one_error_line(p)
  assert "metrics.jsonl: is a symbolic link; refusing to write through it" in line, line
  assert outside.read_text() == "precious"
  assert os.path.islink(work / "metrics.jsonl")


def test_torn_last_metrics_line_dropped_other_bad_line_named(tmp_path, capsys):
  work = tmp_path / "run"
  work.mkdir()
  good = "".join(json.dumps({"step": s, "train/loss": 1.0 / (s + 1)}) + "\n" for s in range(4))
  (work / "metrics.jsonl").write_text(good + '{"step": 4, "train/lo')  # a crash mid-write
  assert [e["step"] for e in metrics.read(str(work))] == [0, 1, 2, 3]
  w = metrics.Writer(str(work), 10, start_step=4, enabled=True, progress=False)
  w.write(5, {"train/loss": 0.1})
  w.close()
  assert "dropped a torn last line" in capsys.readouterr().err
  assert [e["step"] for e in metrics.read(str(work))] == [0, 1, 2, 3, 5]
  # A complete last record without its newline is kept, and the next one starts on its own line.
  (work / "metrics.jsonl").write_text(good.rstrip("\n"))
  w = metrics.Writer(str(work), 10, start_step=4, enabled=True, progress=False)
  w.write(4, {"train/loss": 0.2})
  w.close()
  assert [e["step"] for e in metrics.read(str(work))] == [0, 1, 2, 3, 4]
  # A damaged line that is not the last one: one error naming the file and line.
  lines = good.splitlines(keepends=True)
  (work / "metrics.jsonl").write_text(lines[0] + "{oops\n" + "".join(lines[1:]))
  with pytest.raises(metrics.MetricsError, match=r"metrics\.jsonl:2: not a JSON record"):
    metrics.Writer(str(work), 10, start_step=4, enabled=True, progress=False)
  # Bytes that are not UTF-8: named by file and line too; in the last line they are a torn write.
  (work / "metrics.jsonl").write_bytes(lines[0].encode() + b'{"step": 1, "x": "\xff"}\n' + "".join(lines[2:]).encode())
  with pytest.raises(metrics.MetricsError, match=r"metrics\.jsonl:2: not a JSON record \('utf-8' codec"):
    metrics.read(str(work))
  (work / "metrics.jsonl").write_bytes(good.encode() + b'{"step": 4, "note": "\xe2\x82')  # torn inside a character
  assert [e["step"] for e in metrics.read(str(work))] == [0, 1, 2, 3]


def test_damaged_metrics_line_is_one_error_line(tmp_path, env):
  work = tmp_path / "run"
  work.mkdir()
  (work / "metrics.jsonl").write_text('{"step": 0}\n[1, 2\n{"step": 1}\n')
  p = subprocess.run(smoke_cmd(work), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert f"{work}/metrics.jsonl:2: not a JSON record" in one_error_line(p)


# Holds the lock until the test kills it (its stdin stays open until then).
HOLD = (
  "import sys; from trm_jax import workdir_lock; "
  "lock = workdir_lock.hold(sys.argv[1]); lock.__enter__(); print('held', flush=True); sys.stdin.read()"
)


def test_second_run_fails_naming_holder_dead_holder_taken_over(tmp_path, env):
  work = tmp_path / "run"
  work.mkdir()
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD, str(work)], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    p = subprocess.run(smoke_cmd(work), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    line = one_error_line(p)
    assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in line, line
    assert not (work / "checkpoints").exists() and not (work / "metrics.jsonl").exists()
  finally:
    holder.kill()
    holder.communicate()
  # The holder died without releasing: its lock file remains, and the next run takes it over.
  assert json.loads((work / "run.lock").read_text())["pid"] == holder.pid
  with workdir_lock.hold(str(work)):
    assert json.loads((work / "run.lock").read_text())["pid"] == os.getpid()
    with pytest.raises(workdir_lock.LockBusy, match=f"pid {os.getpid()} on host"):
      with workdir_lock.hold(str(work)):
        pass
  assert not (work / "run.lock").exists()  # removed at release
  # A lock file planted as a link is refused, not followed.
  outside = tmp_path / "outside.txt"
  outside.write_text("precious")
  os.symlink(outside, work / "run.lock")
  with pytest.raises(fileio.FileIOError, match="symbolic link"):
    with workdir_lock.hold(str(work)):
      pass
  assert outside.read_text() == "precious"
