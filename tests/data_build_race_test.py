"""Atomic, race-safe builds: concurrent builds of one set, a build killed
midway, a loser that finds the set published, processes that wait for
process 0."""

import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from trm_jax import config_lib, faults
from trm_jax import data as data_lib
from trm_jax import input_pipeline as ip
from trm_jax.datasets import common
from trm_jax.datasets.common import DataError

ROOT = Path(__file__).parents[1]
SHARED = Path(__file__).parents[2] / "shared" / "data"


def _build_proc(*args, **kw):
  kw = dict(dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE), **kw)
  return subprocess.Popen([sys.executable, "-m", "trm_jax.data_cli", "build", *args], cwd=ROOT, text=True, **kw)


def _arrays(name, data_dir):
  out = {}
  for s in ("train", "test"):
    d = ip.load_split(name, s, data_dir)
    out[s] = {**d.all_arrays(), "index": np.concatenate([d.puzzle_indices, d.group_indices, d.puzzle_identifiers])}
  return out


def test_two_concurrent_builds_both_succeed(tmp_path):
  name = "sudoku_small/4x4"
  d = tmp_path / "data"
  procs = [_build_proc(name, "--data_dir", str(d)) for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err
    assert "Traceback" not in err and f"built {name}" in out
  assert not (d / common.STAGING_DIR).exists()
  ref = tmp_path / "ref"
  common.build(name, ref)
  got, want = _arrays(name, d), _arrays(name, ref)
  for s in want:
    for k in want[s]:
      np.testing.assert_array_equal(got[s][k], want[s][k])


def test_loser_uses_the_published_set(tmp_path, monkeypatch):
  """Another process publishes while this one builds: no error, the
  published set stays, this build's files are removed."""
  name = "sudoku_small/4x4"
  winner = common.build(name, tmp_path / "winner")
  marker = winner / "winner.txt"
  marker.write_text("first")
  real = common._publish  # pylint: disable=protected-access

  def racing_publish(built, final, staging, overwrite):
    shutil.copytree(winner, final)  # the other process got there first
    real(built, final, staging, overwrite)

  monkeypatch.setattr(common, "_publish", racing_publish)
  d = tmp_path / "data"
  out = common.build(name, d)
  assert (out / "winner.txt").read_text() == "first"
  assert not (d / common.STAGING_DIR).exists()
  assert len(_arrays(name, d)["train"]["inputs"]) == 1000


def test_killed_build_publishes_nothing_and_rebuild_works(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  shutil.copyfile(SHARED / "sudoku" / "sudoku_hard_dev.csv", raw / "train.csv")
  shutil.copyfile(SHARED / "sudoku" / "sudoku_hard_dev.csv", raw / "test.csv")
  name = "sudoku_extreme/aug10_sub100"
  d = tmp_path / "data"
  env = dict(os.environ, **{faults.ENV: "data_build_before_publish"})
  with open(tmp_path / "stderr", "w") as err:
    # Stops where every record is written and nothing is published yet.
    p = _build_proc(name, "--data_dir", str(d), "--manual_dir", str(raw), env=env, stdin=subprocess.PIPE, stderr=err)
    lines = iter(p.stdout.readline, "")  # TFDS's lines, then the point (or EOF)
    out = next((x for x in lines if x.startswith("fault point:")), "EOF")
    assert out == "fault point: data_build_before_publish\n", (tmp_path / "stderr").read_text()
    staging = d / common.STAGING_DIR
    assert any(staging.iterdir())
    p.send_signal(signal.SIGKILL)
    p.wait()
  final = common.get_builder(name, d).data_dir
  assert not Path(final).exists()
  assert any(staging.iterdir())  # the dead process's private directory
  out = common.build(name, d, manual_dir=raw)
  assert not staging.exists()  # stale directory of the dead build removed
  assert len(_arrays(name, d)["test"]["inputs"]) == 3919
  assert out == Path(final)


def test_wait_for_times_out_with_one_line(tmp_path):
  t = time.monotonic()
  with pytest.raises(DataError) as e:
    common.wait_for("sudoku_small/4x4", tmp_path, timeout_s=0.3, poll_s=0.05)
  assert time.monotonic() - t < 5
  msg = str(e.value)
  assert "\n" not in msg and "trm-data build sudoku_small/4x4" in msg


def test_other_processes_wait_for_process_0(tmp_path, monkeypatch):
  """Process 1 of 2 never builds; it returns once process 0 publishes."""
  import jax

  real_build = common.build
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  called = []
  monkeypatch.setattr(common, "build", lambda *a, **k: called.append(a))
  polls = []

  def poll_sleep(seconds):
    # Process 1 found nothing and waits: process 0 publishes during its first wait.
    polls.append(seconds)
    if len(polls) == 1:
      real_build("sudoku_small/4x4", tmp_path)

  monkeypatch.setattr(common, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=poll_sleep))
  dcfg = config_lib.data_config(name="sudoku_small", config="4x4", data_dir=str(tmp_path), build_timeout_s=60)
  data = data_lib.load(dcfg)
  assert not called
  assert len(polls) == 1  # waited once, then found the published set
  assert data.train.num_examples == 1000
  monkeypatch.setattr(common, "time", time)
  dcfg.build_timeout_s = 0.2
  dcfg.config = "6x6"
  with pytest.raises(data_lib.DataConfigError, match="waiting"):
    data_lib.load(dcfg)
