"""When `trm_jax.main` calls `jax.distributed.initialize`, and with what.

The driver runs as a subprocess with `jax.distributed.initialize` replaced by a
recorder (prints its keyword arguments, exits 7), so the test sees exactly what
each launcher's flags/environment lead to without a cluster. The workdir is
an existing file, so a run that (rightly) does not initialise stops with one
error line right after.
"""

import json
import os
import subprocess
import sys

import pytest
from procs import finish, free_port

from trm_jax import main as main_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECORDER = """
import json, sys
import jax
def fake(**kw):
  print("INIT " + json.dumps(kw), flush=True)
  sys.exit(7)
jax.distributed.initialize = fake
sys.argv = ["trm_jax.main"] + sys.argv[1:]
from trm_jax import main
main.run()
"""


@pytest.fixture(scope="module")
def not_a_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("d") / "file"
  path.write_text("")
  return str(path)


def _run(env, not_a_dir, *args, **extra_env):
  e = dict(env, **extra_env)
  for k in ("TRM_DISTRIBUTED", "SLURM_JOB_ID", "SLURM_PROCID"):
    if k not in extra_env:
      e.pop(k, None)
  return subprocess.run(
    [sys.executable, "-c", RECORDER, "--config=experiments/smoke.py", f"--workdir={not_a_dir}", *args],
    cwd=ROOT,
    env=e,
    capture_output=True,
    text=True,
    timeout=120,
  )


def _init_args(p):
  lines = [l for l in p.stdout.splitlines() if l.startswith("INIT ")]
  assert p.returncode == 7 and len(lines) == 1, (p.returncode, p.stdout, p.stderr[-2000:])
  return json.loads(lines[0][5:])


def test_tpu_launch_flag_and_env_auto_detect(env, not_a_dir):
  assert _init_args(_run(env, not_a_dir, "--distributed")) == {}
  assert _init_args(_run(env, not_a_dir, TRM_DISTRIBUTED="1")) == {}


def test_explicit_flags_switch_detection_off(env, not_a_dir):
  got = _init_args(_run(env, not_a_dir, "--coordinator_address=h0:1234", "--num_processes=4", "--process_id=2"))
  assert got == {
    "coordinator_address": "h0:1234",
    "num_processes": 4,
    "process_id": 2,
    "cluster_detection_method": "deactivate",
  }
  # Explicit flags win over the environment's request for auto-detection.
  got = _init_args(
    _run(env, not_a_dir, "--coordinator_address=h0:1234", "--num_processes=2", "--process_id=0", TRM_DISTRIBUTED="1")
  )
  assert got["cluster_detection_method"] == "deactivate"


@pytest.mark.parametrize(
  "args,extra",
  [
    ((), {}),
    (("--num_processes=1",), {}),
    (("--num_processes=1", "--distributed"), {}),
    (("--nodistributed",), {"TRM_DISTRIBUTED": "1"}),
    ((), {"TRM_DISTRIBUTED": "0"}),
  ],
)
def test_single_process_never_initialises(env, not_a_dir, args, extra):
  p = _run(env, not_a_dir, *args, **extra)
  assert "INIT" not in p.stdout
  last = p.stderr.strip().splitlines()[-1]
  assert p.returncode == 1 and last.startswith("error: ") and "workdir" in last, p.stderr


def test_distributed_without_cluster_is_one_error_line(env, not_a_dir):
  """The real initialize with nothing to detect (no TPU metadata, no Slurm): one line, no traceback."""
  e = dict(env, TRM_DISTRIBUTED="1")
  for k in list(e):
    if k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "JAX_COORDINATOR", "TPU_WORKER")):
      e.pop(k)
  p = subprocess.run(
    [sys.executable, "-m", "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={not_a_dir}"],
    cwd=ROOT,
    env=e,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --distributed:") and "--coordinator_address" in last, last


def test_distributed_detects_slurm(env, not_a_dir):
  """--distributed inside a (simulated) 2-task Slurm step: JAX's Slurm detection, 2 real processes."""
  port = free_port()

  def argv(i):
    return [
      sys.executable,
      "-m",
      "trm_jax.main",
      "--config=experiments/smoke.py",
      f"--workdir={not_a_dir}",
      "--distributed",
    ]

  e = dict(
    env,
    SLURM_JOB_ID="77",
    SLURM_STEP_NODELIST="localhost",
    SLURM_NTASKS="2",
    JAX_COORDINATOR_PORT=str(port),
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
  )
  procs = [
    subprocess.Popen(
      argv(i),
      cwd=ROOT,
      env=dict(e, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = finish(procs, 240, check=False)  # the workdir is a file: both stop with an error once initialised
  for i, (_, _, err) in enumerate(outs):
    assert f"process {i} of 2: 2 local cpu devices, 4 in total" in err, err[-2000:]


def test_distributed_args_partial_flags_fill_from_cluster():
  assert main_lib.distributed_args(None, 8, None) == {
    "coordinator_address": None,
    "num_processes": 8,
    "process_id": None,
  }
  assert main_lib.distributed_args() is None
  assert main_lib.distributed_args(distributed=True) == {}
