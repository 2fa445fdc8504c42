"""Issue 14, checkpoints: damaged steps are detected (fingerprints, finiteness) and skipped or named;
a step is "last good" only once a finite loss came from it."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from procs import read_to_point

from trm_jax import checkpoint, faults, integrity, metrics

ROOT = Path(__file__).resolve().parents[1]


def flip_bytes(step_dir: Path, item: str = "state", n: int = 5):
  """Flips `n` bytes in the middle of the largest array file of one checkpoint item."""
  files = [p for p in (step_dir / item).rglob("*") if p.is_file() and p.parent.name == "d"]
  target = max(files, key=lambda p: p.stat().st_size)
  b = bytearray(target.read_bytes())
  for k in range(n):
    b[len(b) // 2 + 7 * k] ^= 0x5A
  target.write_bytes(bytes(b))


def steps_in(workdir) -> list[int]:
  d = Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int32, jnp.uint8, jnp.bool_])
def test_fingerprint_sees_every_single_change(dtype):
  x = (jnp.arange(24).reshape(4, 6) % 7).astype(dtype)
  base = integrity.summarize({"x": x})["['x']"][0]
  seen = set()
  for i in range(4):
    for j in range(6):
      changed = x.at[i, j].set(jnp.logical_not(x[i, j]) if dtype == jnp.bool_ else x[i, j] + 1)
      seen.add(integrity.summarize({"x": changed})["['x']"][0])
  assert base not in seen and len(seen) == 24  # every position counts, and differently
  # Same values, other layout: the fingerprint follows the row-major position, not the bytes' order.
  assert integrity.summarize({"x": x.T})["['x']"][0] != base


def test_damage_reports_mismatch_and_non_finite():
  tree = {"a": jnp.ones((3, 2)), "b": jnp.arange(4)}
  prints = {k: fp for k, (fp, _) in integrity.summarize(tree).items()}
  assert integrity.damage(tree, prints) is None
  assert "fingerprint mismatch in state['a']" in integrity.damage(
    {"a": jnp.ones((3, 2)).at[2, 1].set(1.5), "b": jnp.arange(4)}, prints, "state"
  )
  nan = {"a": jnp.ones((3, 2)).at[0, 0].set(jnp.nan), "b": jnp.arange(4)}
  assert "non-finite values in ['a']" in integrity.damage(nan, None)


def test_restore_detects_flipped_bytes_and_falls_back(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), keep=5)
  # Random values: incompressible, so the largest file holds them.
  trees = {s: {"w": jax.random.normal(jax.random.key(s), (64, 64)), "step": jnp.asarray(s)} for s in (1, 2)}
  for s, tree in trees.items():
    checkpoint.save(mngr, s, tree, {"z": jnp.zeros(3)}, {"note": "x"}, force=True)
  mngr.wait_until_finished()
  mngr.close()
  flip_bytes(tmp_path / "checkpoints" / "2")
  mngr = checkpoint.manager(str(tmp_path), keep=5)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), trees[1])
  with pytest.raises(checkpoint.CheckpointError, match=r"checkpoints/2: (damaged|cannot restore)"):
    checkpoint.restore(mngr, 2, abstract)
  got = checkpoint.restore_intact(mngr, abstract)
  assert got.step == 1 and [s for s, _ in got.damaged] == [2] and got.meta["note"] == "x"
  np.testing.assert_array_equal(got.state["w"], trees[1]["w"])
  mngr.close()


def test_save_refuses_non_finite_state(tmp_path):
  mngr = checkpoint.manager(str(tmp_path))
  with pytest.raises(checkpoint.NonFiniteState, match=r"step-3 state \(state\['w'\]\)"):
    checkpoint.save(mngr, 3, {"w": jnp.ones(4).at[1].set(jnp.inf)}, {}, {}, force=True)
  mngr.wait_until_finished()
  assert mngr.all_steps() == []
  mngr.close()


# ---------------------------------------------------------------------------
# CLI: trm-train / trm-solve / trm-convert on a damaged latest step; the non-finite-loss guard.

SMOKE = ["--config=experiments/smoke.py", "--config.train.eval_every=0"]


def run(module, *args, env):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )


def lines(text: str, prefix: str) -> list[str]:
  return [l for l in text.splitlines() if l.startswith(prefix)]


def test_damaged_latest_step_cli(tmp_path, env):
  wd = str(tmp_path / "run")
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=8", env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  assert steps_in(wd) == [4, 8]
  flip_bytes(Path(wd) / "checkpoints" / "8")
  damaged_files = {
    p.relative_to(Path(wd) / "checkpoints" / "8"): p.read_bytes()
    for p in (Path(wd) / "checkpoints" / "8").rglob("*")
    if p.is_file()
  }

  # An explicit step must be intact: one line naming it.
  p = run("trm_jax.convert", f"--workdir={wd}", "--step=8", f"--export_torch={tmp_path / 'w.npz'}", env=env)
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1 and "checkpoints/8" in err[0], p.stderr[-2000:]
  assert "Traceback" not in p.stderr and not (tmp_path / "w.npz").exists()

  # The latest step: the newest intact one is used, with one warning line.
  p = run("trm_jax.solve", f"--workdir={wd}", "--sudoku=1.3.....2..1..4.", env=env)
  warn = lines(p.stderr, "warning:")
  # Exit 2 = the answer breaks the rules (INVALID): the barely trained smoke model's answer, not an error.
  assert p.returncode in (0, 2) and len(warn) == 1 and "checkpoints/8" in warn[0] and "step 4" in warn[0], p.stderr
  assert "supervision step" in p.stdout and "Traceback" not in p.stderr

  # Training resumes from step 4 (one warning line), replaces the damaged step and ends intact.
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=8", env=env)
  warn = lines(p.stderr, "warning:")
  assert p.returncode == 0, p.stderr[-2000:]
  assert len(warn) == 1 and "checkpoints/8" in warn[0] and "resuming from step 4" in warn[0], warn
  assert steps_in(wd) == [4, 8]
  # The checkpoint that failed is kept beside the run, as it was (a storage error can look like damage).
  aside = list(Path(wd).glob("damaged_checkpoint_8_*"))
  assert len(aside) == 1 and str(aside[0]) in warn[0], warn
  assert {p.relative_to(aside[0]): p.read_bytes() for p in aside[0].rglob("*") if p.is_file()} == damaged_files
  mngr = checkpoint.manager(wd, read_only=True)
  meta = checkpoint.restore_meta(mngr, 8)
  mngr.close()
  assert set(meta["fingerprints"]) == {"state", "carry"} and meta["fingerprints"]["state"]

  # Nothing intact: one line, and no asyncio traceback from orbax's abandoned reads.
  for step in (4, 8):
    (Path(wd) / "checkpoints" / str(step) / "state" / "manifest.ocdbt").unlink()
  p = run("trm_jax.solve", f"--workdir={wd}", "--sudoku=1.3.....2..1..4.", env=env)
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1 and "no intact checkpoint (2 damaged)" in err[0], p.stderr[-3000:]
  assert "Traceback" not in p.stderr and "Event loop is closed" not in p.stderr, p.stderr[-3000:]


def test_resume_with_another_model_is_one_line_and_sets_nothing_aside(tmp_path, env):
  wd = str(tmp_path / "run")
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=4", env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=8", "--config.model.hidden_size=48", env=env)
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1, p.stderr[-3000:]
  assert err[0] == (
    f"error: {wd}/checkpoints/4: written with a different config (model.hidden_size: 32 there, 48 here): "
    "use a new --workdir, or the config this run was started with"
  )
  assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
  assert steps_in(wd) == [4] and not list(Path(wd).glob("damaged_checkpoint_*"))
  # A choice that keeps the state's shapes may change on resume.
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=8", "--config.model.recursion=scan", env=env)
  assert p.returncode == 0 and steps_in(wd) == [4, 8], p.stderr[-2000:]


def test_non_finite_guard_keeps_no_poisoned_step_and_resumes(tmp_path, env):
  wd = str(tmp_path / "run")
  # The scenario: lr 1e30 from step 1 makes the step-1 state produce a NaN loss at step 2.
  p = run(
    "trm_jax.main",
    *SMOKE,
    f"--workdir={wd}",
    "--config.train.lr=1e30",
    "--config.train.lr_warmup_steps=0",
    "--config.train.checkpoint_every=1",
    env=env,
  )
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1, p.stderr[-2000:]
  assert "non-finite loss at step 2" in err[0] and "deleted checkpoint step 1" in err[0], err[0]
  assert "last good checkpoint: none" in err[0] and "Traceback" not in p.stderr
  assert steps_in(wd) == []
  # Resuming with the experiment's own learning rate trains on, with finite losses.
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=4", env=env)
  assert p.returncode == 0, p.stderr[-2000:]
  losses = [e["train/lm_loss"] for e in metrics.read(wd) if "train/lm_loss" in e]
  assert losses and all(np.isfinite(losses)) and steps_in(wd) == [4]

  # A good step before the blow-up stays the last good one: resume from 4 with lr 1e30.
  p = run(
    "trm_jax.main",
    *SMOKE,
    f"--workdir={wd}",
    "--config.train.lr=1e30",
    "--config.train.lr_warmup_steps=0",
    "--config.train.checkpoint_every=1",
    "--config.train.steps=8",
    env=env,
  )
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1, p.stderr[-2000:]
  assert "non-finite loss at step 6" in err[0] and "deleted checkpoint step 5" in err[0], err[0]
  assert "last good checkpoint: step 4" in err[0]
  assert steps_in(wd) == [4]


MULTI = """
import sys, jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from trm_jax import integrity
data = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
mesh = Mesh(np.asarray(jax.devices()).reshape(4), ("d",))
rows = jax.make_array_from_callback(data.shape, NamedSharding(mesh, P("d")), lambda i: data[i])
repl = jax.make_array_from_callback(data.shape, NamedSharding(mesh, P()), lambda i: data[i])
print("FP", integrity.summarize({"x": rows})["['x']"][0], integrity.summarize({"x": repl})["['x']"][0], flush=True)
"""


def test_fingerprint_is_the_same_on_every_process_and_sharding(env):
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  e = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=str(ROOT))
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", MULTI, f"localhost:{port}", str(i)],
      cwd=ROOT,
      env=e,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
  data = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
  single = integrity.summarize({"x": jnp.asarray(data)})["['x']"][0]
  for out, _ in outs:
    assert f"FP {single} {single}" in out, out


@pytest.mark.parametrize("point,where", [("checkpoint_write", "checkpoints/4"), ("metrics_write", "metrics.jsonl")])
def test_disk_full_is_one_line_naming_the_path(tmp_path, env, point, where):
  """ENOSPC while a checkpoint or metrics.jsonl is written (faults.disk_full): one line naming the path, status 1,
  no traceback; the previous checkpoint is intact and the run resumes from it."""
  wd = str(tmp_path / "run")
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=2", env=env)
  assert p.returncode == 0 and steps_in(wd) == [2], p.stderr[-2000:]
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=4", env=dict(env, **{faults.ENV: point}))
  err = lines(p.stderr, "error:")
  assert p.returncode == 1 and len(err) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
  assert err[0] == f"error: {os.path.join(wd, where)}: No space left on device"
  assert steps_in(wd) == [2]
  p = run("trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=4", env=env)
  assert p.returncode == 0 and "resuming from step 2" in p.stdout and steps_in(wd) == [2, 4], p.stderr[-2000:]


def _fill(path: str) -> None:
  """Writes zeros to `path` until its file system is full."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * (1 << 20))
  except OSError as e:
    assert e.errno == errno.ENOSPC, e
  finally:
    os.close(fd)


def test_a_really_full_disk_is_one_line(tmp_path, env):
  """A real full file system (a tmpfs in a private mount namespace, filled while the run waits where step 2 is
  committed): one line naming the checkpoints directory, none of orbax's background tracebacks, step 2 intact;
  with the space freed the same command resumes from step 2 and finishes."""
  disk, out = tmp_path / "disk", tmp_path / "out"
  disk.mkdir(), out.mkdir()
  probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", str(disk)], capture_output=True)
  if probe.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs in a user namespace here ({probe.stderr.decode().strip()[:200]})")
  wd = disk / "run"
  train = [sys.executable, "-m", "trm_jax.main", *SMOKE, f"--workdir={wd}", "--config.train.steps=6"]
  train += ["--config.train.checkpoint_every=2", "--config.train.log_every=1"]
  script = (
    f'mount -t tmpfs -o size=64m tmpfs {disk} && "$@" 2> {out}/err1; echo $? > {out}/rc1; ls {wd}/checkpoints > {out}/ls1;'
    f' rm {disk}/fill; "$@" < /dev/null > {out}/out2 2> {out}/err2; echo $? > {out}/rc2'
  )
  e = dict(env, **{faults.ENV: "checkpoint_saved"})
  cmd = ["unshare", "-rm", "sh", "-c", script, "sh", *train]
  p = subprocess.Popen(cmd, cwd=ROOT, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    read_to_point(p, "checkpoint_saved", out / "err1")
    _fill(f"/proc/{p.pid}/root{disk}/fill")  # the namespace's tmpfs, seen through the shell's root
    p.communicate(timeout=300)  # releases the point; both runs go on
  finally:
    if p.poll() is None:
      p.kill()
      p.wait()
  err1 = (out / "err1").read_text()
  assert (out / "rc1").read_text().strip() == "1", err1[-3000:]
  assert "Traceback" not in err1 and lines(err1, "error:") == [f"error: {wd}/checkpoints: No space left on device"], (
    err1
  )
  assert [n for n in (out / "ls1").read_text().split() if n.isdigit()] == ["2"]
  assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()[-3000:]
  assert f"resuming from step 2 in {wd}/checkpoints" in (out / "out2").read_text()
