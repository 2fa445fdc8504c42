"""RunDir: the one place that names the paths of a run directory, local or gs://."""

import os

import pytest

from trm_jax import fileio, rundir


def test_local_and_remote_layout(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  r = rundir.RunDir("runs/demo")
  root = str(tmp_path / "runs" / "demo")
  assert str(r) == os.fspath(r) == root and rundir.RunDir(r).root == root
  assert r.checkpoints() == f"{root}/checkpoints" and r.checkpoints(12) == f"{root}/checkpoints/12"
  assert r.damaged_checkpoint(8, "20250101-120000") == f"{root}/damaged_checkpoint_8_20250101-120000"
  assert (r.metrics, r.tensorboard, r.submission, r.profile, r.lock) == tuple(
    f"{root}/{n}" for n in ("metrics.jsonl", "tensorboard", "submission.json", "profile", "run.lock")
  )
  assert r.arc_votes() == f"{root}/arc_votes" and r.arc_votes("test", 300) == f"{root}/arc_votes/test/step_300.npz"
  g = rundir.RunDir("gs://bucket/runs/demo/")
  assert str(g) == "gs://bucket/runs/demo" and g.checkpoints(4) == "gs://bucket/runs/demo/checkpoints/4"
  assert g.arc_votes("eval") == "gs://bucket/runs/demo/arc_votes/eval"


def test_prepare_makes_parents_and_checks_the_run_folders(tmp_path):
  r = rundir.RunDir(tmp_path / "a" / "run").prepare()
  assert str(r) == str(tmp_path / "a" / "run") and (tmp_path / "a").is_dir() and not (tmp_path / "a" / "run").exists()
  (tmp_path / "b" / "run").mkdir(parents=True)
  (tmp_path / "b" / "run" / "arc_votes").write_text("x")
  with pytest.raises(fileio.FileIOError, match=r"--workdir=.*/b/run: arc_votes: exists and is not a directory"):
    rundir.RunDir(tmp_path / "b" / "run").prepare()
