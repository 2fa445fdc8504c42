"""Tests for launch/: sweep expansion, dry-run output of the shell scripts, and
the remote commands themselves, executed locally through a fake gcloud."""

import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(REPO, "launch")
SCRIPTS = [
  "tpu_create.sh",
  "tpu_setup.sh",
  "tpu_run.sh",
  "tpu_logs.sh",
  "tpu_stop.sh",
  "tpu_free.sh",
  "gpu_multinode.sh",
  "tpu_supervise.sh",
]


def _load_sweep():
  spec = importlib.util.spec_from_file_location("launch_sweep", os.path.join(LAUNCH, "sweep.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules["launch_sweep"] = module
  spec.loader.exec_module(module)
  return module


sweep = _load_sweep()

EXPERIMENT = textwrap.dedent("""\
    import ml_collections

    def get_config(arg=None):
      c = ml_collections.ConfigDict()
      c.seed = 0
      c.train = ml_collections.ConfigDict({"lr": 1e-4, "steps": 10})
      c.model = ml_collections.ConfigDict({"H_cycles": 3, "name": "x"})
      c.lock()
      return c

    def get_sweep(arg=None):
      seeds = range(int(arg)) if arg else [0]
      return [{"train.lr": lr, "seed": s} for lr in (1e-4, 3e-5) for s in seeds]
    """)


@pytest.fixture
def experiment(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text(EXPERIMENT)
  return str(path)


def _sh(script, *args, env=None, check=True):
  full_env = dict(os.environ, **(env or {}))
  for k in ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT"):
    if env is None or k not in env:
      full_env.pop(k, None)
  return subprocess.run(
    ["bash", os.path.join(LAUNCH, script), *args], capture_output=True, text=True, env=full_env, check=check, timeout=60
  )


# ----------------------------------------------------------------- sweep.py


def test_expand_sweep(experiment):
  trials = sweep.expand_sweep(experiment, "2", "gs://b/sw/")
  assert [t.name for t in trials] == ["lr=0.0001_seed=0", "lr=0.0001_seed=1", "lr=3e-05_seed=0", "lr=3e-05_seed=1"]
  t = trials[2]
  assert t.workdir == "gs://b/sw/lr=3e-05_seed=0"
  assert t.overrides == (("train.lr", 3e-5), ("seed", 0))
  assert t.args == (
    f"--config={experiment}:2",
    "--workdir=gs://b/sw/lr=3e-05_seed=0",
    "--config.train.lr=3e-05",
    "--config.seed=0",
  )
  assert t.command("py") == ["py", "-m", "trm_jax.main", *t.args]
  # Without an argument get_sweep() gets none, and --config has no colon.
  trials = sweep.expand_sweep(experiment, None, "out")
  assert [t.workdir for t in trials] == ["out/lr=0.0001_seed=0", "out/lr=3e-05_seed=0"]
  assert trials[0].args[0] == f"--config={experiment}"
  # The name written into --config= can differ from the path loaded.
  trials = sweep.expand_sweep(experiment, "1", "out", config_name="exp/x.py")
  assert trials[0].args[0] == "--config=exp/x.py:1"


def test_expand_sweep_overrides_parse_back(experiment):
  """The override strings are accepted by ml_collections' config flags."""
  from absl import flags
  from ml_collections import config_flags

  trial = sweep.expand_sweep(experiment, "2", "w")[3]
  argv = ["prog", *[a for a in trial.args if not a.startswith("--workdir")]]
  fv = flags.FlagValues()
  # Override flags are registered from the argv seen at definition time.
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.train.lr == 3e-5
  assert fv.config.seed == 1


def test_the_documented_tiny_sweep(tmp_path):
  """docs/pods.md's tiny sweep expands experiments/smoke.py's get_sweep() into runs whose overrides parse back."""
  from absl import flags
  from ml_collections import config_flags

  docs = open(os.path.join(REPO, "docs", "pods.md")).read()
  cmd = next(l for l in docs.splitlines() if l.startswith("python launch/sweep.py --config=experiments/smoke.py"))
  out = _sweep_cli(*shlex.split(cmd)[2:], "--dry_run", cwd=REPO)
  assert out.returncode == 0, out.stderr
  runs = [shlex.split(l) for l in out.stdout.splitlines()]
  assert len(runs) == 2 and all("--workdir=runs/smoke_sweep/lr=" in " ".join(r) for r in runs), out.stdout
  argv = ["prog", *[a for a in runs[1][3:] if not a.startswith("--workdir")]]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.train.lr == 3e-3


def test_trial_names_are_safe_and_unique(tmp_path):
  path = tmp_path / "odd.py"
  path.write_text(
    textwrap.dedent("""\
      import ml_collections

      def get_config(arg=None):
        return ml_collections.ConfigDict(
            {"model": {"name": "", "lr": 0.0}, "train": {"lr": 0.0}, "flag": False, "dims": (0, 0),
             "very_long_field_name": "", "seed": 0})

      def get_sweep(arg=None):
        return [{"model.name": "a b/c"}, {"model.name": "a?b/c"}, {},
                {"model.lr": 1.0, "train.lr": 2.0}, {"flag": True},
                {"dims": (1, 2)}, {"very_long_field_name": "v" * 300}]
      """)
  )
  trials = sweep.expand_sweep(str(path), None, "base")
  names = [t.name for t in trials]
  assert names[:6] == ["name=a-b-c", "name=a-b-c-2", "default", "model.lr=1.0_train.lr=2.0", "flag=true", "dims=1-2"]
  assert len(set(names)) == len(names)
  assert len(names[6]) <= 120
  for name in names:
    assert all(c.isalnum() or c in "._=+-" for c in name), name
  assert trials[0].args[-1] == "--config.model.name=a b/c"
  assert trials[4].args[-1] == "--config.flag=true"
  assert trials[5].args[-1] == "--config.dims=(1,2)"
  assert sweep.trial_name([("lr", -1.0)]) == "lr=-1.0" != sweep.trial_name([("lr", 1.0)])


def test_sweep_checks_every_trial_before_starting_any(tmp_path):
  """A misspelt field or a value trm-train refuses, in any trial, is one error naming the entry; nothing runs."""
  smoke = os.path.join(REPO, "experiments", "smoke.py")
  for entry, line in [
    ('{"train.lr": 1e-3}, {"train.nope": 1}', "sweep entry 1 (nope=1): unknown field train.nope"),
    ('{"train.lr": -1.0}', "sweep entry 0 (lr=-1.0): config.train.lr: must be a number in [0, inf], got -1.0"),
  ]:
    exp = tmp_path / "exp.py"
    exp.write_text(f"from experiments.smoke import get_config\n\ndef get_sweep(arg=None):\n  return [{entry}]\n")
    p = _sweep_cli(f"--config={exp}", f"--workdir_base={tmp_path}/w", cwd=REPO)
    assert p.returncode == 1 and p.stderr.strip() == f"error: {exp}: {line}", p.stderr
    assert not (tmp_path / "w").exists()
  assert sweep.expand_sweep(smoke, None, "w")  # the real experiments' sweeps pass


def test_expand_sweep_errors(tmp_path):
  nosweep = tmp_path / "nosweep.py"
  nosweep.write_text("def get_config(arg=None):\n  return None\n")
  with pytest.raises(ValueError, match="get_sweep"):
    sweep.expand_sweep(str(nosweep), None, "w")
  bad = tmp_path / "bad.py"
  bad.write_text("def get_sweep(arg=None):\n  return [{'a b': 1}]\n")
  with pytest.raises(ValueError, match="bad field name"):
    sweep.expand_sweep(str(bad), None, "w")
  with pytest.raises(FileNotFoundError):
    sweep.expand_sweep(str(tmp_path / "missing.py"), None, "w")


def _sweep_cli(*args, env=None, cwd=None):
  return subprocess.run(
    [sys.executable, os.path.join(LAUNCH, "sweep.py"), *args],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, **(env or {})),
    cwd=cwd,
  )


def test_sweep_cli_dry_run_local(experiment):
  out = _sweep_cli(
    f"--config={experiment}:2",
    "--workdir_base=/tmp/sw",
    "--dry_run",
    "--python=python3",
    "--extra=--config.train.steps=5",
  )
  assert out.returncode == 0, out.stderr
  expected = []
  for lr in ("0.0001", "3e-05"):
    for s in (0, 1):
      expected.append(
        f"python3 -m trm_jax.main --config={experiment}:2 "
        f"--workdir=/tmp/sw/lr={lr}_seed={s} --config.train.lr={lr} "
        f"--config.seed={s} --config.train.steps=5"
      )
  assert out.stdout.splitlines() == expected


def test_sweep_cli_dry_run_tpu(experiment):
  out = _sweep_cli(
    f"--config={experiment}",
    "--workdir_base=gs://b/sw",
    "--dry_run",
    "--launcher=tpu",
    "--tpu_args=--name=trm --zone=us-west4-a",
    "--only=1",
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines() == [
    f"launch/tpu_run.sh --name=trm --zone=us-west4-a --config={experiment} "
    "--workdir=gs://b/sw/lr=3e-05_seed=0 --run_name=exp-lr=3e-05_seed=0 "
    "--wait -- --config.train.lr=3e-05 --config.seed=0"
  ]


def test_sweep_cli_help_and_usage_errors(experiment):
  out = _sweep_cli("--help")
  assert out.returncode == 0
  assert "workdir_base" in out.stdout
  assert _sweep_cli("--workdir_base=w").returncode != 0
  assert _sweep_cli(f"--config={experiment}", "--workdir_base=w", "--only=9", "--dry_run").returncode != 0


def test_sweep_cli_runs_locally(experiment, tmp_path):
  """Without --dry_run the trials run one by one with --python."""
  fake = tmp_path / "fake_python"
  record = tmp_path / "calls.txt"
  fake.write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
  fake.chmod(0o755)
  out = _sweep_cli(f"--config={experiment}", "--workdir_base=w", f"--python={fake}", cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  lines = record.read_text().splitlines()
  assert len(lines) == 2
  assert lines[1].endswith("--workdir=w/lr=3e-05_seed=0 --config.train.lr=3e-05 --config.seed=0")


# ------------------------------------------------------ shell scripts: dry run


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script):
  out = _sh(script, "--help")
  assert out.returncode == 0
  assert out.stdout.startswith("Usage")
  assert "--dry_run" in out.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag_fails(script):
  out = _sh(script, "--name=n", "--zone=z", "--no_such_flag", check=False)
  assert out.returncode != 0
  assert "no_such_flag" in out.stderr


def test_tpu_create_dry_run():
  out = _sh(
    "tpu_create.sh",
    "--name=trm",
    "--zone",
    "us-central2-b",
    "--project=p",
    "--accelerator_type=v4-32",
    "--reserved",
    "--dry_run",
  )
  assert out.stdout.splitlines() == [
    "gcloud compute tpus queued-resources create trm --node-id=trm "
    "--zone=us-central2-b --project=p --accelerator-type=v4-32 "
    "--runtime-version=tpu-ubuntu2204-base --reserved"
  ]
  out = _sh("tpu_create.sh", "--dry_run", "--wait", env={"TPU_NAME": "t", "TPU_ZONE": "z"})
  create, describe = out.stdout.splitlines()
  assert "--accelerator-type=v5litepod-64" in create
  assert "--runtime-version=v2-alpha-tpuv5-lite --spot" in create
  assert describe.startswith("gcloud compute tpus queued-resources describe t")
  assert _sh("tpu_create.sh", "--dry_run", check=False).returncode != 0


def test_tpu_setup_dry_run():
  sha = subprocess.run(
    ["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
  ).stdout.strip()
  out = _sh("tpu_setup.sh", "--name=trm", "--zone=z", "--dry_run")
  archive, scp, ssh = out.stdout.splitlines()
  assert archive.startswith("git -C ") and archive.endswith(sha)
  assert scp.startswith("gcloud compute tpus tpu-vm scp ")
  assert f"trm:trm_jax-{sha[:12]}.tar.gz" in scp and "--worker=all" in scp
  assert ssh.startswith("gcloud compute tpus tpu-vm ssh trm --zone=z --worker=all")
  assert "pip install" in ssh and ".[tpu,gcs]" in ssh and sha in ssh


def test_tpu_run_dry_run():
  out = _sh(
    "tpu_run.sh",
    "--name=trm",
    "--zone=z",
    "--dry_run",
    "--config=experiments/arc1.py:variant=att",
    "--workdir=gs://bucket/arc1",
    "--config.train.lr=1e-4",
    "--run_name=r1",
    "--",
    "--config.seed=3",
  )
  (line,) = out.stdout.splitlines()
  words = shlex.split(line)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "trm"]
  assert "--worker=all" in words
  (cmd,) = [w for w in words if w.startswith("--command=")]
  assert "trm_jax.main --distributed --config=experiments/arc1.py:variant=att" in cmd
  assert "--workdir=gs://bucket/arc1 --config.train.lr=1e-4 --config.seed=3" in cmd
  assert "setsid nohup" in cmd
  assert "logs/r1/worker-$W.log" in cmd


def test_tpu_run_requires_config():
  out = _sh("tpu_run.sh", "--name=trm", "--zone=z", "--workdir=w", "--dry_run", check=False)
  assert out.returncode != 0 and "--config" in out.stderr


def test_tpu_logs_stop_free_dry_run():
  out = _sh("tpu_logs.sh", "--name=trm", "--zone=z", "--run=r1", "--dry_run")
  assert "--worker=all" in out.stdout and "logs/r1/worker-$W.log" in out.stdout
  out = _sh("tpu_logs.sh", "--name=trm", "--zone=z", "--worker=2", "-f", "--dry_run")
  assert "--worker=2" in out.stdout and "tail -n 50 -F" in out.stdout
  out = _sh("tpu_stop.sh", "--name=trm", "--zone=z", "--delete", "--dry_run")
  stop, delete = out.stdout.splitlines()
  assert "--worker=all" in stop and "kill -TERM" in stop
  assert delete == ("gcloud compute tpus queued-resources delete trm --zone=z --force --quiet")
  out = _sh("tpu_free.sh", "--name=trm", "--zone=z", "--dry_run")
  assert "sudo lsof" in out.stdout and "/tmp/libtpu_lockfile" in out.stdout


def test_gpu_multinode_dry_run():
  out = _sh(
    "gpu_multinode.sh",
    "--hosts=h0,h1",
    "--gpus_per_node=2",
    "--config=experiments/arc1.py",
    "--workdir=/nfs/w",
    "--run_name=r",
    "--config.seed=1",
    "--dry_run",
  )
  lines = out.stdout.splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert line.startswith(f"ssh h{i} ")
    assert (f"--coordinator_address=h0:12355 --num_processes=2 --process_id={i} --config.seed=1") in line
    assert "CUDA_VISIBLE_DEVICES=0,1" in line
  out = _sh(
    "gpu_multinode.sh",
    "--slurm",
    "--nodes=4",
    "--config=experiments/arc1.py",
    "--workdir=/nfs/w",
    "--run_name=r",
    "--dry_run",
  )
  assert "#SBATCH --nodes=4" in out.stdout
  assert '--process_id="$SLURM_PROCID"' in out.stdout
  assert out.stdout.splitlines()[-1].startswith("sbatch ")


# ------------------------------------- remote commands, run through fake tools

FAKE_GCLOUD = """\
#!/usr/bin/env bash
# Runs `tpu-vm ssh --command=...` locally once per fake worker; logs the rest.
# Files in $FAKE_STATE_DIR simulate the slice: ssh_fail (ssh exits 255, after
# touching ssh_failed), qr_state (the queued resource's state, default ACTIVE;
# NONE: it does not exist), external_ips. Its life cycle: `queued-resources
# create` (fails with the text of create_fail if that exists) starts
# generation gen+1, PROVISIONING for $FAKE_PROVISION_POLLS describes (and
# $FAKE_PROVISION_S seconds: simulated timings), then ACTIVE; `delete` kills
# every run's process group, removes the pid files (the VMs are gone) and
# makes it NONE. Line "G N" in preempt_at
# preempts generation G at its N-th ssh: once the runs have touched
# up-G-<worker>, it touches preempted-G, SIGTERMs them, SUSPENDED, and that
# ssh fails. scp copies
# NAME:path to or from $HOME/path, after $FAKE_SCP_S seconds.
set -u
echo "$*" >> "$FAKE_LOG"
S="${FAKE_STATE_DIR:-/nonexistent}"
state() { cat "$S/qr_state" 2>/dev/null || echo ACTIVE; }
kill_runs() {  # $1: signal
  for f in "$HOME"/logs/*/worker-*.pid; do [ -f "$f" ] && kill "-$1" -- "-$(cat "$f")" 2>/dev/null; done; true
}
if [[ "$1 $2 $3" == "compute tpus queued-resources" ]]; then
  case "$4" in
    describe)
      st="$(state)"
      if [[ "$st" == NONE ]]; then echo "ERROR: NOT_FOUND: $5" >&2; exit 1; fi
      if [[ "$st" == PROVISIONING ]]; then
        left="$(cat "$S/provision_left")"
        if [[ "$left" -gt 0 || "$(date +%s%N)" -lt "$(cat "$S/ready_ns")" ]]; then
          echo "$((left > 0 ? left - 1 : 0))" > "$S/provision_left"
        else
          st=ACTIVE; echo ACTIVE > "$S/qr_state"
        fi
      fi
      echo "$st"; exit 0 ;;
    create)
      if [[ -e "$S/create_fail" ]]; then cat "$S/create_fail" >&2; exit 1; fi
      if [[ "$(state)" != NONE ]]; then echo "ERROR: $5 already exists" >&2; exit 1; fi
      echo $(( $(cat "$S/gen" 2>/dev/null || echo 0) + 1 )) > "$S/gen"
      echo 0 > "$S/ssh_calls"; echo PROVISIONING > "$S/qr_state"
      echo "${FAKE_PROVISION_POLLS:-0}" > "$S/provision_left"
      echo $(( $(date +%s%N) + ${FAKE_PROVISION_S:-0} * 1000000000 )) > "$S/ready_ns"
      exit 0 ;;
    delete) kill_runs KILL; rm -f "$HOME"/logs/*/worker-*.pid; echo NONE > "$S/qr_state"; exit 0 ;;
  esac
fi
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm describe" ]]; then
  cat "$S/external_ips" 2>/dev/null || echo True; exit 0
fi
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm scp" ]]; then
  [[ "$(state)" == ACTIVE ]] || exit 255
  sleep "${FAKE_SCP_S:-0}"
  src="$5"; dst="$6"
  if [[ "$src" == *:* ]]; then src="$HOME/${src#*:}"; else dst="$HOME/${dst#*:}"; fi
  # shellcheck disable=SC2086
  cp $src "$dst"; exit
fi
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" && -e "$S/preempt_at" ]]; then
  g="$(cat "$S/gen")"; n=$(( $(cat "$S/ssh_calls") + 1 )); echo "$n" > "$S/ssh_calls"
  if grep -qx "$g $n" "$S/preempt_at"; then
    for i in $(seq 300); do
      [[ "$(ls "$S" | grep -c "^up-$g-")" -ge "$FAKE_WORKERS" ]] && break; sleep 0.1
    done
    touch "$S/preempted-$g"; kill_runs TERM; echo SUSPENDED > "$S/qr_state"
  fi
fi
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" && ( -e "$S/ssh_fail" || "$(state)" != ACTIVE ) ]]; then
  touch "$S/ssh_failed"; echo "ssh: connect to host: Connection timed out" >&2; exit 255
fi
if [[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]]; then
  worker=all; cmd=""
  for a in "$@"; do
    case "$a" in --worker=*) worker="${a#--worker=}" ;; --command=*) cmd="${a#--command=}" ;; esac
  done
  if [[ "$worker" == all ]]; then ws="$(seq 0 $((FAKE_WORKERS - 1)))"; else ws="$worker"; fi
  rc=0
  for w in $ws; do TRM_WORKER_ID="$w" bash -c "$cmd" || rc=$?; done
  exit "$rc"
fi
"""


@pytest.fixture
def fake_pod(tmp_path):
  home = tmp_path / "home"
  code = home / "code"
  code.mkdir(parents=True)
  (code / "COMMIT").write_text("abc123\n")
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(0o755)
  state = tmp_path / "state"
  state.mkdir()
  env = {
    "GCLOUD": str(gcloud),
    "HOME": str(home),
    "FAKE_WORKERS": "2",
    "FAKE_LOG": str(tmp_path / "gcloud.log"),
    "TPU_NAME": "pod",
    "TPU_ZONE": "z",
    "FAKE_STATE_DIR": str(state),
  }
  started = []
  yield home, env, started
  for pid_file in started:  # never leave a fake run behind
    try:
      os.killpg(int(open(pid_file).read()), signal.SIGKILL)
    except (OSError, ValueError):
      pass


def _fake_python(path, body):
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)
  return str(path)


def _wait_for(paths, timeout=30):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if all(os.path.exists(p) for p in paths):
      return
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {paths}")


def test_tpu_run_logs_end_to_end(fake_pod, tmp_path):
  """The quoted remote command reaches trm_jax.main with every argument intact."""
  home, env, started = fake_pod
  py = _fake_python(tmp_path / "py", 'printf "<%s>\\n" "$@"; echo "env=$FOO"\n')
  args = [
    "--remote_dir=code",
    f"--python={py}",
    "--run_name=r1",
    "--config=experiments/x.py:a=1",
    "--workdir=gs://b/w",
    "--config.train.lr=0.001",
    "--env=FOO=bar baz",
    "--",
    "--config.model.name=a b",
    "--config.note=it's $HOME",
  ]
  _sh("tpu_run.sh", *args, env=env)
  logs = home / "logs" / "r1"
  started += [str(logs / f"worker-{w}.pid") for w in (0, 1)]
  _wait_for([logs / f"worker-{w}.rc" for w in (0, 1)])
  for w in (0, 1):
    assert (logs / f"worker-{w}.rc").read_text().strip() == "0"
    log = (logs / f"worker-{w}.log").read_text()
    assert f"worker {w} commit abc123" in log
    got = [l for l in log.splitlines() if l.startswith("<")]
    assert got == [
      "<-m>",
      "<trm_jax.main>",
      "<--distributed>",
      "<--config=experiments/x.py:a=1>",
      "<--workdir=gs://b/w>",
      "<--config.train.lr=0.001>",
      "<--config.model.name=a b>",
      "<--config.note=it's $HOME>",
    ]
    assert "env=bar baz" in log
  assert os.path.realpath(home / "logs" / "latest") == str(logs)
  out = _sh("tpu_logs.sh", "--lines=100", env=env).stdout
  assert "[w0] <--config.model.name=a b>" in out
  assert "[w1] # exit status 0" in out
  out = _sh("tpu_logs.sh", "--worker=1", "--run=r1", env=env).stdout
  assert "<--config.train.lr=0.001>" in out and "[w" not in out


def test_tpu_run_then_stop(fake_pod, tmp_path):
  home, env, started = fake_pod
  marker = tmp_path / "started"
  py = _fake_python(tmp_path / "py", f"touch {marker}-$TRM_WORKER; exec sleep 60\n")
  common = ["--remote_dir=code", f"--python={py}", "--run_name=long", "--config=c.py", "--workdir=w"]
  _sh("tpu_run.sh", *common, env=env)
  logs = home / "logs" / "long"
  pid_files = [str(logs / f"worker-{w}.pid") for w in (0, 1)]
  started += pid_files
  _wait_for([f"{marker}-0", f"{marker}-1"])
  pids = [int(open(p).read()) for p in pid_files]
  # The same run cannot be started twice while it is alive.
  again = _sh("tpu_run.sh", *common, env=env, check=False)
  assert again.returncode != 0 and "already running" in again.stderr
  out = _sh("tpu_stop.sh", "--run=long", "--grace_s=5", env=env).stdout
  assert "[w0] stopped" in out and "[w1] stopped" in out
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.killpg(pid, 0)
  assert "nothing running" in _sh("tpu_stop.sh", env=env).stdout


def test_gpu_multinode_ssh_end_to_end(tmp_path):
  home = tmp_path / "home"
  (home / "code").mkdir(parents=True)
  ssh = _fake_python(tmp_path / "ssh", 'shift; exec bash -c "$1"\n')
  py = _fake_python(tmp_path / "py", 'printf "<%s>\\n" "$@"\n')
  _sh(
    "gpu_multinode.sh",
    "--hosts=h0,h1,h2",
    "--gpus_per_node=1",
    f"--ssh={ssh}",
    f"--python={py}",
    "--remote_dir=code",
    "--run_name=g",
    "--config=c.py",
    "--workdir=w",
    "--",
    "--config.x=a b",
    env={"HOME": str(home)},
  )
  logs = home / "logs" / "g"
  _wait_for([logs / f"worker-{i}.log" for i in range(3)])
  deadline = time.time() + 30
  for i in range(3):
    path = logs / f"worker-{i}.log"
    while "exit status" not in path.read_text() and time.time() < deadline:
      time.sleep(0.1)
    log = path.read_text()
    assert f"<--process_id={i}>" in log
    assert "<--coordinator_address=h0:12355>" in log and "<--num_processes=3>" in log
    assert "<--config.x=a b>" in log


# ------------------------------------------- tpu_run.sh --wait always finishes


def _start_wait(env, py, run, *extra):
  """tpu_run.sh --wait in the background (polling fast); -> Popen."""
  args = [
    "bash",
    os.path.join(LAUNCH, "tpu_run.sh"),
    "--remote_dir=code",
    f"--python={py}",
    f"--run_name={run}",
    "--config=c.py",
    "--workdir=w",
    "--wait",
    "--poll_s=0.2",
    *extra,
  ]
  full = dict(os.environ, **env)
  return subprocess.Popen(args, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p, timeout=60):
  out, err = p.communicate(timeout=timeout)
  return p.returncode, err


def test_wait_all_workers_statuses(fake_pod, tmp_path):
  """Every worker's status is collected; the first non-zero one is the exit status."""
  home, env, started = fake_pod
  py = _fake_python(tmp_path / "py", "sleep 0.5; exit $((TRM_WORKER * 3))\n")
  p = _start_wait(env, py, "r")
  started += [str(home / "logs" / "r" / f"worker-{w}.pid") for w in (0, 1)]
  rc, err = _finish(p)
  assert rc == 3, err
  assert "exit status w0=0 w1=3" in err
  py0 = _fake_python(tmp_path / "py0", "exit 0\n")
  rc, err = _finish(_start_wait(env, py0, "ok"))
  assert rc == 0 and "w0=0 w1=0" in err, err


def test_wait_survives_signalled_group(fake_pod, tmp_path):
  """SIGTERM to each worker's process group (tpu_stop.sh, preemption): the wrapper outlives the run,
  records its status, and --wait returns it."""
  home, env, started = fake_pod
  marker = tmp_path / "up"
  # Like trm_jax: on SIGTERM it saves (sleeps) and exits 0.
  py = _fake_python(tmp_path / "py", f'trap "sleep 0.5; exit 0" TERM; touch {marker}-$TRM_WORKER; sleep 60 & wait\n')
  p = _start_wait(env, py, "sig")
  logs = home / "logs" / "sig"
  pid_files = [str(logs / f"worker-{w}.pid") for w in (0, 1)]
  started += pid_files
  _wait_for([f"{marker}-0", f"{marker}-1"])
  for f in pid_files:
    os.killpg(int(open(f).read()), signal.SIGTERM)
  rc, err = _finish(p)
  assert rc == 0, err
  for w in (0, 1):
    assert (logs / f"worker-{w}.rc").read_text().strip() == "0"
    assert "# signal received" in (logs / f"worker-{w}.log").read_text()


def test_wait_worker_killed_without_status(fake_pod, tmp_path):
  home, env, started = fake_pod
  marker = tmp_path / "up"
  py = _fake_python(tmp_path / "py", f"touch {marker}-$TRM_WORKER; exec sleep 60\n")
  p = _start_wait(env, py, "k")
  pid_files = [str(home / "logs" / "k" / f"worker-{w}.pid") for w in (0, 1)]
  started += pid_files
  _wait_for([f"{marker}-0", f"{marker}-1"])
  os.killpg(int(open(pid_files[1]).read()), signal.SIGKILL)
  os.killpg(int(open(pid_files[0]).read()), signal.SIGKILL)
  rc, err = _finish(p)
  assert rc == 92, err
  assert "worker(s) 0 1 ended without an exit status" in err


@pytest.mark.parametrize(
  "state,want", [("ACTIVE", 90), ("SUSPENDED", 91), ("DELETING", 91), ("FAILED", 91), ("SUSPENDING", 91)]
)
def test_wait_gives_up_on_unreachable_or_gone_slice(fake_pod, tmp_path, state, want):
  home, env, started = fake_pod
  marker = tmp_path / "up"
  py = _fake_python(tmp_path / "py", f"touch {marker}-$TRM_WORKER; exec sleep 60\n")
  p = _start_wait(env, py, "u", "--max_unreachable=3")
  started += [str(home / "logs" / "u" / f"worker-{w}.pid") for w in (0, 1)]
  _wait_for([f"{marker}-0", f"{marker}-1"])
  state_dir = tmp_path / "state"
  (state_dir / "qr_state").write_text(state + "\n")
  (state_dir / "ssh_fail").write_text("")
  rc, err = _finish(p)
  assert rc == want, err
  if want == 90:
    assert "unreachable (3/3" in err and "giving up after 3" in err
  else:
    assert f"is {state}; giving up" in err


def test_wait_recovers_from_a_short_outage(fake_pod, tmp_path):
  """Unreachable polls fewer than --max_unreachable in a row do not end the wait."""
  home, env, started = fake_pod
  marker = tmp_path / "up"
  state_dir = tmp_path / "state"
  done = tmp_path / "done"
  # Each worker runs until the outage is over (the test creates `done`).
  py = _fake_python(tmp_path / "py", f"touch {marker}-$TRM_WORKER; while [ ! -e {done} ]; do sleep 0.1; done\n")
  p = _start_wait(env, py, "o", "--max_unreachable=100")
  started += [str(home / "logs" / "o" / f"worker-{w}.pid") for w in (0, 1)]
  _wait_for([f"{marker}-0", f"{marker}-1"])
  (state_dir / "ssh_fail").write_text("")
  _wait_for([state_dir / "ssh_failed"])  # a poll found the workers unreachable
  os.remove(state_dir / "ssh_fail")
  done.write_text("")
  rc, err = _finish(p)
  assert rc == 0 and "workers unreachable (1/100" in err, err


@pytest.mark.parametrize(
  "via,flag", [("external", None), ("internal", "--internal-ip"), ("iap", "--tunnel-through-iap")]
)
def test_ssh_via(via, flag):
  out = _sh(
    "tpu_run.sh", "--name=trm", "--zone=z", "--dry_run", f"--ssh_via={via}", "--config=c.py", "--workdir=w", "--wait"
  )
  lines = out.stdout.splitlines()
  assert len(lines) == 2  # start, poll
  for line in lines:
    words = shlex.split(line)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "trm"]
    assert ("--internal-ip" in words) == (flag == "--internal-ip")
    assert ("--tunnel-through-iap" in words) == (flag == "--tunnel-through-iap")
  out = _sh("tpu_setup.sh", "--name=trm", "--zone=z", "--dry_run", env={"TPU_SSH_VIA": via})
  scp = out.stdout.splitlines()[1]
  assert scp.startswith("gcloud compute tpus tpu-vm scp") and (flag is None or flag in scp)
  bad = _sh(
    "tpu_run.sh",
    "--name=trm",
    "--zone=z",
    "--dry_run",
    "--ssh_via=carrier-pigeon",
    "--config=c.py",
    "--workdir=w",
    check=False,
  )
  assert bad.returncode == 2 and "--ssh_via must be" in bad.stderr


@pytest.mark.parametrize("external,flag", [("False", "--tunnel-through-iap"), ("True", None)])
def test_ssh_via_auto_asks_the_slice(fake_pod, tmp_path, external, flag):
  """A slice created with internal IPs only is reached through IAP; the real commands carry the flag."""
  home, env, started = fake_pod
  (tmp_path / "state" / "external_ips").write_text(external + "\n")
  py = _fake_python(tmp_path / "py", "exit 0\n")
  p = _start_wait(dict(env, TPU_SSH_VIA="auto"), py, "a")
  rc, err = _finish(p)
  assert rc == 0, err
  calls = (tmp_path / "gcloud.log").read_text().splitlines()
  ssh = [c for c in calls if c.startswith("compute tpus tpu-vm ssh")]
  assert len(ssh) >= 2 and any("tpu-vm describe pod" in c for c in calls)
  for c in ssh:
    assert (flag is not None) == ("--tunnel-through-iap" in c), c


# ------------------------------------------------ sweeps: errors, skip, summary


def _one_error_line(out):
  assert out.returncode == 1, out.stderr
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  return lines[0]


def test_sweep_user_errors_are_one_line(tmp_path, experiment):
  nosweep = tmp_path / "nosweep.py"
  nosweep.write_text("def get_config(arg=None):\n  return None\n")
  line = _one_error_line(_sweep_cli(f"--config={nosweep}", "--workdir_base=w"))
  assert "defines no get_sweep()" in line and "experiments/arc1.py" in line
  assert "--config and --workdir_base are required" in _one_error_line(_sweep_cli(f"--config={experiment}"))
  assert "--config" in _one_error_line(_sweep_cli("--workdir_base=w"))
  assert "no experiment file" in _one_error_line(_sweep_cli("--config=nope.py", "--workdir_base=w"))
  broken = tmp_path / "broken.py"
  broken.write_text("import no_such_module_xyz\n")
  assert "ModuleNotFoundError" in _one_error_line(_sweep_cli(f"--config={broken}", "--workdir_base=w"))
  assert "--only" in _one_error_line(_sweep_cli(f"--config={experiment}", "--workdir_base=w", "--only=9"))
  assert "nosuch" in _one_error_line(_sweep_cli("--nosuch"))


def _write_metrics(workdir, last_step, total=10, acc=None):
  os.makedirs(workdir, exist_ok=True)
  events = [{"step": 0, "params": 5, "total_steps": total}]
  events += [{"step": s, "train/lm_loss": 1.0} for s in range(2, last_step + 1, 2)]
  if acc is not None:
    events.append(
      {"step": last_step, "eval/test/exact_accuracy": acc, "eval/test/accuracy": 0.5, "eval/test/lm_loss": 0.3}
    )
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(e) + "\n" for e in events)


def test_sweep_skips_finished_and_prints_summary(experiment, tmp_path):
  base = tmp_path / "sw"
  _write_metrics(base / "lr=0.0001_seed=0", 10, acc=0.875)  # finished
  _write_metrics(base / "lr=3e-05_seed=0", 4, acc=0.25)  # stopped at step 4
  record = tmp_path / "calls.txt"
  fake = _fake_python(tmp_path / "py", f'echo "$@" >> {record}\n')
  out = _sweep_cli(f"--config={experiment}", f"--workdir_base={base}", f"--python={fake}")
  assert out.returncode == 0, out.stderr
  calls = record.read_text().splitlines()
  assert len(calls) == 1 and "--workdir=" + str(base / "lr=3e-05_seed=0") in calls[0]
  assert "skip lr=0.0001_seed=0: finished" in out.stderr
  rows = out.stdout.splitlines()
  assert rows[0].split() == ["lr", "seed", "status", "step", "test/exact"]
  assert rows[1].split() == ["0.0001", "0", "finished", "10/10", "0.8750"]
  assert rows[2].split() == ["3e-05", "0", "stopped", "4/10", "0.2500"]
  # --summary alone only reads; --rerun_finished launches both.
  assert _sweep_cli(f"--config={experiment}", f"--workdir_base={base}", "--summary").stdout == out.stdout
  out = _sweep_cli(f"--config={experiment}", f"--workdir_base={base}", f"--python={fake}", "--rerun_finished")
  assert out.returncode == 0 and len(record.read_text().splitlines()) == 3
  # A fresh base directory is created (trm_jax.main wants the workdir's parent to exist).
  fresh = tmp_path / "new" / "base"
  out = _sweep_cli(f"--config={experiment}", f"--workdir_base={fresh}", f"--python={fake}")
  assert out.returncode == 0 and fresh.is_dir(), out.stderr


def test_sweep_summary_is_narrow(tmp_path):
  """Swept values, status, step and the key eval metrics only (no per-step accuracies): fits 120 columns."""
  metrics = {"step": 800, "eval_seconds": 3.0}
  for name in ("test", "eval_hard"):
    metrics.update({f"eval/{name}/{k}": 0.5 for k in ("exact_accuracy", "accuracy", "halted_exact_accuracy")})
    metrics.update({f"eval/{name}/exact_accuracy@{i}": 0.5 for i in range(1, 17)})
  metrics.update({f"eval/ARC/pass@{k}{s}": 0.25 for k in (1, 2, 5, 10, 100, 1000) for s in ("", "_this_eval")})
  overrides = (("train.puzzle_emb_lr", 0.0001), ("model.H_cycles", 3), ("note", "a long free-text value " * 4))
  w = tmp_path / "w"
  w.mkdir()
  (w / "metrics.jsonl").write_text(json.dumps({"step": 0, "total_steps": 800}) + "\n" + json.dumps(metrics) + "\n")
  table = sweep.summary_table([sweep.Trial(sweep.trial_name(overrides), overrides, str(w), ())]).splitlines()
  assert max(len(l) for l in table) <= 120, "\n".join(table)
  head = ["puzzle_emb_lr", "H_cycles", "note", "status", "step", "test/exact", "eval_hard/exact", "ARC/pass@2"]
  assert table[0].split() == head
  assert table[1].split()[:2] == ["0.0001", "3"] and table[1].split()[-5:-3] == ["finished", "800/800"]


def test_sweep_spreads_trials_over_slices_in_parallel(fake_pod, experiment, tmp_path):
  """Two slices, two trials: each trial waits until the other one has started, so the sweep only
  finishes if they run at the same time, one per slice."""
  home, env, started = fake_pod
  marks = tmp_path / "marks"
  marks.mkdir()
  py = _fake_python(
    tmp_path / "py",
    textwrap.dedent(f"""\
      for a; do case "$a" in --config.train.lr=*) me="${{a#*=}}" ;; esac; done
      touch "{marks}/$me"
      for i in $(seq 150); do [ "$(ls {marks} | wc -l)" -ge 2 ] && exit 0; sleep 0.2; done
      exit 1
      """),
  )
  out = _sweep_cli(
    f"--config={experiment}",
    f"--workdir_base={tmp_path}/sw",
    "--launcher=tpu",
    "--tpu_names=s0,s1",
    f"--tpu_args=--remote_dir=code --python={py} --poll_s=0.2",
    env=env,
  )
  for run in ("exp-lr=0.0001_seed=0", "exp-lr=3e-05_seed=0"):
    started += [str(home / "logs" / run / f"worker-{w}.pid") for w in (0, 1)]
  assert out.returncode == 0, out.stderr
  assert sorted(os.listdir(marks)) == ["0.0001", "3e-05"]
  calls = (tmp_path / "gcloud.log").read_text()
  assert "tpu-vm ssh s0" in calls and "tpu-vm ssh s1" in calls
  assert "not started" in out.stdout  # the summary (the fake runs wrote no metrics)


# ------------------------------------------ tpu_supervise.sh: spot until done

# The run's stand-in on a supervised slice: worker 0 records a checkpoint at step 10 x (the slice's
# generation), or the last step (30) from generation $FAKE_FINISH_GEN on, in metrics.jsonl and
# checkpoints/; then it touches up-<gen>-<worker> (the fake gcloud preempts only after that) and
# exits 0 if it reached the last step (unless $FAKE_LINGER), else runs until SIGTERM (then exits 0).
SUPERVISED_RUN = """\
for a; do case "$a" in --workdir=*) w="${a#--workdir=}" ;; esac; done
g="$(cat "$FAKE_STATE_DIR/gen")"
step=$((g * 10)); if [ "$g" -ge "$FAKE_FINISH_GEN" ]; then step=30; fi
if [ "$TRM_WORKER" = 0 ]; then
  mkdir -p "$w/checkpoints/$step"
  printf '{"step": 0, "total_steps": 30}\\n{"step": %d}\\n' "$step" >> "$w/metrics.jsonl"
fi
touch "$FAKE_STATE_DIR/up-$g-$TRM_WORKER"
if [ "$step" = 30 ] && [ -z "${FAKE_LINGER:-}" ]; then exit 0; fi
trap "exit 0" TERM; sleep 3600 & wait
"""


@pytest.fixture
def spot(fake_pod, tmp_path):
  """fake_pod with no slice yet (the supervisor creates it), one worker, the stand-in run; -> (env, args, state dir)."""
  home, env, started = fake_pod
  state = tmp_path / "state"
  (state / "qr_state").write_text("NONE\n")
  started.append(str(home / "logs" / "sup" / "worker-0.pid"))
  env = dict(env, FAKE_WORKERS="1", TMPDIR=str(tmp_path), TRM_PYTHON=sys.executable, FAKE_FINISH_GEN="9")
  py = _fake_python(tmp_path / "py", SUPERVISED_RUN)
  args = ["--remote_dir=code", f"--python={py}", "--run_name=sup", "--config=c.py", f"--workdir={tmp_path}/w"]
  args += ["--skip_install", "--poll_s=0", "--backoff_s=0", "--max_attempts=5"]
  return env, args, state


def _supervise(env, *args):
  """-> (exit status, supervisor's own log lines, gcloud calls)."""
  p = _sh("tpu_supervise.sh", *args, env=env, check=False)
  own = [l for l in p.stderr.splitlines() if l.startswith("[tpu_supervise.sh]") and "] + " not in l]
  calls = open(env["FAKE_LOG"]).read().splitlines() if os.path.exists(env["FAKE_LOG"]) else []
  return p.returncode, own, calls, p.stderr


def _count(calls, what):
  return sum(c.startswith(f"compute tpus queued-resources {what} pod") for c in calls)


def test_supervise_recreates_a_preempted_slice_until_done(spot):
  env, args, state = spot
  # Generations 1 and 2 are preempted at their 4th ssh (setup, start, poll 1, poll 2); the third finishes.
  (state / "preempt_at").write_text("1 4\n2 4\n")
  rc, own, calls, err = _supervise(dict(env, FAKE_FINISH_GEN="3", FAKE_PROVISION_POLLS="2"), *args)
  assert rc == 0, err
  assert _count(calls, "create") == 3 and _count(calls, "delete") == 3, calls
  assert (state / "qr_state").read_text().strip() == "NONE"  # the last slice is deleted too
  ends = [l for l in own if "(started " in l]
  assert len(ends) == 3, own
  for line, frm, outcome, now in zip(
    ends,
    ("-", "10", "20"),
    ("run exit 91 (queued resource SUSPENDED)", "run exit 91 (queued resource SUSPENDED)", "run exit 0"),
    ("10", "20", "30"),
  ):
    assert f"resumed from checkpoint {frm}): {outcome}" in line and line.endswith(f"checkpoint now {now}"), line
  assert own[-1].endswith("reached its last step (checkpoint 30) after 3 attempt(s); pod deleted")
  # It waited for ACTIVE: two PROVISIONING polls per slice before the setup.
  describes = [c for c in calls if c.startswith("compute tpus queued-resources describe")]
  assert len(describes) >= 3 * 3
  # Every attempt deployed the same pinned commit.
  sha = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
  assert sum(f"trm_jax-{sha[:12]}.tar.gz" in c for c in calls if "tpu-vm scp" in c) == 3


def test_supervise_does_not_restart_a_finished_run(spot):
  """Preempted after it reached its last step (e.g. during the final eval): not created again."""
  env, args, state = spot
  (state / "preempt_at").write_text("1 4\n")
  rc, own, calls, err = _supervise(dict(env, FAKE_FINISH_GEN="1", FAKE_LINGER="1"), *args)
  assert rc == 0, err
  assert "run exit 91 (queued resource SUSPENDED); checkpoint now 30" in own[-2]
  assert _count(calls, "create") == 1 and _count(calls, "delete") == 1
  # A workdir that is done already creates nothing at all.
  open(env["FAKE_LOG"], "w").close()
  rc, own, calls, err = _supervise(env, *args)
  assert rc == 0 and calls == [c for c in calls if "describe" in c] and "after 0 attempt(s)" in own[-1], err


def test_supervise_max_attempts(spot):
  env, args, state = spot
  (state / "preempt_at").write_text("1 4\n2 4\n3 4\n")
  rc, own, calls, err = _supervise(env, *args, "--max_attempts=2")
  assert rc == 93, err
  (line,) = [l for l in own if "giving up" in l]
  assert line.endswith(
    "giving up after 2 attempt(s) (last: run exit 91 (queued resource SUSPENDED)); "
    f"{env['TMPDIR']}/w at checkpoint 20 (exit 93)"
  )
  assert line == own[-1]
  assert _count(calls, "create") == 2 and _count(calls, "delete") == 2
  assert (state / "qr_state").read_text().strip() == "NONE"


def test_supervise_create_failure_backs_off_and_gives_up(spot):
  env, args, state = spot
  (state / "create_fail").write_text("ERROR: (gcloud.compute.tpus.queued-resources.create) Quota limit exceeded\n")
  rc, own, calls, err = _supervise(env, *args, "--max_attempts=3", "--backoff_s=0.01", "--max_backoff_s=0.03")
  assert rc == 93, err
  assert [l.rsplit(" ", 2)[-2] for l in own if "next attempt in" in l] == ["0.01", "0.02"]
  assert [l for l in own if "giving up" in l] == [own[-1]]
  assert "giving up after 3 attempt(s) (last: create failed)" in own[-1]
  assert _count(calls, "create") == 3 and _count(calls, "delete") == 0  # nothing was created
  assert err.count("Quota limit exceeded") == 3


def test_supervise_leaves_an_existing_slice_alone(spot):
  """A queued resource of the same name that the supervisor did not create is neither used nor deleted."""
  env, args, state = spot
  (state / "qr_state").write_text("ACTIVE\n")
  rc, own, calls, err = _supervise(env, *args)
  assert rc == 2
  assert err.strip().splitlines() == [
    "[tpu_supervise.sh] error: queued resource pod already exists (ACTIVE); it is left alone: delete it "
    "(launch/tpu_stop.sh --no_stop --delete) or choose another --name"
  ]
  assert [c.split()[3] for c in calls] == ["describe"]
  # Taken between the check and the create (create says it exists): nothing is deleted either.
  (state / "qr_state").write_text("NONE\n")
  (state / "create_fail").write_text("ERROR: pod already exists\n")
  rc, own, calls, err = _supervise(env, *args, "--max_attempts=1")
  assert rc == 93 and _count(calls, "create") == 1 and _count(calls, "delete") == 0, err


def test_supervise_run_failure_is_not_retried(spot, tmp_path):
  """A run that fails by itself (not a preemption) ends the supervisor with its status; its logs are fetched."""
  env, args, state = spot
  py = _fake_python(tmp_path / "bad", 'echo "Traceback: boom"; exit 3\n')
  p = subprocess.run(
    ["bash", os.path.join(LAUNCH, "tpu_supervise.sh"), *args, f"--python={py}"],
    env=dict(os.environ, **env),
    capture_output=True,
    text=True,
    timeout=60,
    cwd=tmp_path,
  )
  assert p.returncode == 3, p.stderr
  assert "the run failed with status 3 (not a preemption)" in p.stderr
  assert "Traceback: boom" in (tmp_path / "logs" / "sup" / "worker-0.log").read_text()
  calls = open(env["FAKE_LOG"]).read().splitlines()
  assert _count(calls, "create") == 1 and _count(calls, "delete") == 1


def test_supervise_interrupted_stops_the_run_and_deletes_its_slice(spot, tmp_path):
  env, args, state = spot
  # As in a terminal, SIGINT is not ignored: a suite started in the background (`cmd &`) passes it on ignored, and
  # bash cannot trap a signal ignored at its start. (A Python exec, not preexec_fn: no fork hook in a JAX process.)
  default_int = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp('bash', sys.argv[1:])"
  p = subprocess.Popen(
    [sys.executable, "-c", default_int, "bash", os.path.join(LAUNCH, "tpu_supervise.sh"), *args],
    env=dict(os.environ, **env),
    stderr=subprocess.PIPE,
    text=True,
    start_new_session=True,
  )
  try:
    _wait_for([state / "up-1-0"])  # the run is up
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
    _, err = p.communicate(timeout=60)
  finally:
    if p.poll() is None:  # no supervisor left polling after a failure
      os.killpg(p.pid, signal.SIGKILL)
      p.wait()
  assert p.returncode == 130, err
  assert "interrupted: stopping sup and deleting pod" in err
  log = (tmp_path / "home" / "logs" / "sup" / "worker-0.log").read_text()
  assert "# signal received" in log and "# exit status 0" in log  # SIGTERM: saved and exited
  calls = open(env["FAKE_LOG"]).read().splitlines()
  assert _count(calls, "delete") == 1 and (state / "qr_state").read_text().strip() == "NONE"


@pytest.mark.parametrize(
  "flag,msg",
  [
    ("--max_attempts=0", "--max_attempts must be a positive number, got 0"),
    ("--backoff_s=soon", "--backoff_s must be a number of seconds, got soon"),
    ("--poll_s=-1", "--poll_s must be a number of seconds, got -1"),
    ("--commit=no-such-rev", "--commit: unknown revision no-such-rev"),
  ],
)
def test_supervise_bad_flags_are_one_line(spot, flag, msg):
  env, args, state = spot
  rc, own, calls, err = _supervise(env, *args, flag)
  assert rc == 2 and err.strip().splitlines() == [f"[tpu_supervise.sh] error: {msg}"] and calls == []


def test_supervise_dry_run():
  out = _sh(
    "tpu_supervise.sh",
    "--name=trm",
    "--zone=z",
    "--config=experiments/arc1.py",
    "--workdir=gs://b/w",
    "--accelerator_type=v4-32",
    "--run_name=r",
    "--dry_run",
    "--",
    "--config.seed=1",
  )
  lines = out.stdout.splitlines()
  assert lines[0].startswith("gcloud compute tpus queued-resources create trm ") and lines[0].endswith("--spot")
  assert "--accelerator-type=v4-32" in lines[0]
  assert lines[1].startswith("gcloud compute tpus queued-resources describe trm")
  assert lines[2].startswith("git -C ") and lines[3].startswith("gcloud compute tpus tpu-vm scp")
  assert "--workdir=gs://b/w --config.seed=1" in lines[5] and "logs/r/worker-" in lines[5]
  assert lines[-1] == "gcloud compute tpus queued-resources delete trm --zone=z --force --quiet"


def test_sweep_until_done_supervises_each_trial(spot, experiment, tmp_path):
  env, args, state = spot
  py = args[1]
  base = tmp_path / "sw"
  common = [f"--config={experiment}", f"--workdir_base={base}", "--launcher=tpu", "--until_done", "--only=0"]
  tpu_args = f"--remote_dir=code {py} --skip_install --poll_s=0 --backoff_s=0"
  dry = _sweep_cli(*common, "--dry_run", f"--tpu_args={tpu_args}", env=env)
  assert dry.stdout.splitlines() == [
    f"launch/tpu_supervise.sh --remote_dir=code {py} --skip_install --poll_s=0 --backoff_s=0 --config={experiment} "
    f"--workdir={base}/lr=0.0001_seed=0 --run_name=exp-lr=0.0001_seed=0 -- --config.train.lr=0.0001 --config.seed=0"
  ]
  (state / "preempt_at").write_text("1 4\n")
  out = _sweep_cli(*common, f"--tpu_args={tpu_args}", env=dict(env, FAKE_FINISH_GEN="2"))
  assert out.returncode == 0, out.stderr
  calls = open(env["FAKE_LOG"]).read().splitlines()
  assert _count(calls, "create") == 2 and _count(calls, "delete") == 2
  assert "0.0001  0     finished  30/30" in out.stdout
  bad = _sweep_cli(*common[:2], "--until_done")
  assert _one_error_line(bad) == "error: --until_done needs --launcher=tpu, got --launcher=local"


SBATCH = os.path.join(LAUNCH, "slurm_train.sbatch")


def test_sweep_slurm_job_array(experiment, tmp_path):
  base = tmp_path / "sw"
  _write_metrics(base / "lr=0.0001_seed=0", 10, acc=1.0)
  bindir = tmp_path / "bin"
  bindir.mkdir()
  record = tmp_path / "sbatch.txt"
  _fake_python(bindir / "sbatch", f'printf "%s\\n" "$@" > {record}; echo "Submitted batch job 7"\n')
  env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
  common = [
    f"--config={experiment}:2",
    f"--workdir_base={base}",
    "--launcher=slurm",
    f"--slurm_dir={tmp_path}/logs",
    "--sbatch_args=--partition=gpu --nodes=2",
    "--slurm_parallel=2",
  ]
  out = _sweep_cli(*common, env=env)
  assert out.returncode == 0, out.stderr
  args = record.read_text().splitlines()
  args_file = str(tmp_path / "logs" / "exp.args")
  assert args == [
    "--array=1,2,3%2",
    "--job-name=exp",
    f"--export=ALL,TRM_ARGS_FILE={args_file}",
    "--partition=gpu",
    "--nodes=2",
    SBATCH,
  ]
  lines = open(args_file).read().splitlines()
  assert len(lines) == 4
  assert shlex.split(lines[3]) == list(sweep.expand_sweep(experiment, "2", str(base))[3].args)
  dry = _sweep_cli(*common, "--dry_run", env=env)
  assert dry.stdout.splitlines() == [
    shlex.join(
      [
        "sbatch",
        "--array=0,1,2,3%2",
        "--job-name=exp",
        f"--export=ALL,TRM_ARGS_FILE={args_file}",
        "--partition=gpu",
        "--nodes=2",
        SBATCH,
      ]
    )
  ]


# --------------------------------------------------------- slurm_train.sbatch


def test_sbatch_directives():
  text = open(SBATCH).read()
  directives = [l.split(None, 1)[1] for l in text.splitlines() if l.startswith("#SBATCH")]
  assert "--requeue" in directives
  assert any(d.startswith("--signal=TERM@") and int(d.split("@")[1]) >= 60 for d in directives)
  assert "--ntasks-per-node=1" in directives


def test_sbatch_help_prints_its_usage():
  p = subprocess.run(["bash", SBATCH, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
  assert p.returncode == 0 and p.stderr == "", p.stderr
  assert p.stdout.startswith("Usage") and "--workdir=" in p.stdout and "#SBATCH" not in p.stdout


@pytest.fixture
def fake_slurm(tmp_path):
  """Fake srun (runs the task locally as SLURM_PROCID=0), scontrol (hostnames, records requeue), python."""
  bindir = tmp_path / "bin"
  bindir.mkdir()
  log = tmp_path / "slurm.log"
  _fake_python(
    bindir / "srun",
    textwrap.dedent(f"""\
      echo "srun $*" >> {log}
      while [[ "$1" == --* ]]; do shift; done
      SLURM_PROCID=0 exec "$@"
      """),
  )
  _fake_python(
    bindir / "scontrol",
    textwrap.dedent(f"""\
      echo "scontrol $*" >> {log}
      if [[ "$1 $2" == "show hostnames" ]]; then echo node0; echo node1; fi
      """),
  )
  # The run's stand-in: records its arguments, writes metrics up to $FAKE_LAST of 10 steps, exits $FAKE_RC.
  py = _fake_python(
    tmp_path / "python",
    textwrap.dedent(f"""\
      if [[ "$1" == *sweep.py ]]; then exec {sys.executable} "$@"; fi
      printf "<%s>\\n" "$@" >> {log}
      for a; do case "$a" in --workdir=*) w="${{a#--workdir=}}" ;; esac; done
      {sys.executable} -c "import json,os,sys; os.makedirs(sys.argv[1], exist_ok=True); \\
      open(os.path.join(sys.argv[1], 'metrics.jsonl'), 'w').write(json.dumps(dict(step=0, total_steps=10)) + \\
      chr(10) + json.dumps(dict(step=int(sys.argv[2]))) + chr(10))" "$w" "$FAKE_LAST"
      exit "${{FAKE_RC:-0}}"
      """),
  )
  env = dict(
    os.environ,
    PATH=f"{bindir}:{os.environ['PATH']}",
    TRM_PYTHON=py,
    SLURM_JOB_ID="4242",
    SLURM_NTASKS="2",
    SLURM_JOB_NODELIST="node[0-1]",
    SLURM_SUBMIT_DIR=REPO,
  )
  for k in ("TRM_ARGS_FILE", "SLURM_ARRAY_TASK_ID", "VIRTUAL_ENV"):
    env.pop(k, None)
  return env, log


def _sbatch(env, *args, **extra):
  return subprocess.run(
    ["bash", SBATCH, *args], env=dict(env, **extra), capture_output=True, text=True, timeout=60, cwd=REPO
  )


@pytest.mark.parametrize("last,rc,requeued", [(10, 0, False), (4, 0, True), (4, 3, False)])
def test_sbatch_runs_and_requeues_until_done(fake_slurm, tmp_path, last, rc, requeued):
  env, log = fake_slurm
  w = tmp_path / "w"
  p = _sbatch(
    env, "--config=experiments/arc1.py", f"--workdir={w}", "--config.seed=1", FAKE_LAST=str(last), FAKE_RC=str(rc)
  )
  assert p.returncode == rc, p.stdout + p.stderr
  got = log.read_text().splitlines()
  port = 4242 % 4096 + 61440
  args = [l for l in got if l.startswith("<")]
  assert args == [
    "<-m>",
    "<trm_jax.main>",
    f"<--coordinator_address=node0:{port}>",
    "<--num_processes=2>",
    "<--process_id=0>",
    "<--config=experiments/arc1.py>",
    f"<--workdir={w}>",
    "<--config.seed=1>",
  ]
  assert any(l.startswith("srun --kill-on-bad-exit=1") for l in got)
  assert ("scontrol requeue 4242" in got) == requeued


def test_sbatch_job_array_reads_its_line(fake_slurm, tmp_path):
  env, log = fake_slurm
  args_file = tmp_path / "x.args"
  args_file.write_text(
    f"--config=a.py --workdir={tmp_path}/t0\n--config=a.py --workdir={tmp_path}/t1 '--config.note=a b'\n"
  )
  p = _sbatch(env, TRM_ARGS_FILE=str(args_file), SLURM_ARRAY_TASK_ID="1", FAKE_LAST="10")
  assert p.returncode == 0, p.stderr
  args = [l for l in log.read_text().splitlines() if l.startswith("<")]
  assert args[-3:] == ["<--config=a.py>", f"<--workdir={tmp_path}/t1>", "<--config.note=a b>"]
  p = _sbatch(env, TRM_ARGS_FILE=str(args_file), SLURM_ARRAY_TASK_ID="5", FAKE_LAST="10")
  assert p.returncode == 2 and "no line 6" in p.stderr
