r"""Simulated cost of one spot preemption under launch/tpu_supervise.sh (no TPU, no gcloud needed).

    python benchmarks/supervise_sim.py [--provision_s=90] [--setup_s=30] [-- SUPERVISOR_FLAGS ...]

Runs the supervisor against the fake `gcloud` of tests/launch_test.py (one
worker, the run's stand-in `SUPERVISED_RUN`) with the supervisor's default
intervals unless flags are given after `--`. The fake slice needs
--provision_s seconds from create to ACTIVE and its `scp` (the code copy of
tpu_setup.sh) --setup_s seconds: these are SIMULATED timings, not measured
on a pod. The first slice is preempted at the run's first poll (so noticing
the preemption costs nothing here; on a pod it costs up to one --poll_s); the
second one finishes. Prints the supervisor's own lines and: time until the
first run was up, time from the preemption to the next run up, and in all.
It takes about 8 minutes with the default 60 s intervals.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

import launch_test  # noqa: E402  (the fake gcloud and the stand-in run)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--provision_s", type=int, default=90, help="simulated create -> ACTIVE seconds")
  parser.add_argument("--setup_s", type=int, default=30, help="simulated seconds of the setup's scp")
  parser.add_argument("flags", nargs="*", help="more tpu_supervise.sh flags (after --)")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="supervise_sim-")
  state, home = os.path.join(root, "state"), os.path.join(root, "home")
  os.makedirs(state)
  os.makedirs(home)
  files = {
    "state/qr_state": "NONE\n",
    "state/preempt_at": "1 3\n",  # generation 1, 3rd ssh: setup, start, first poll
    "gcloud": launch_test.FAKE_GCLOUD,
    "run": "#!/usr/bin/env bash\n" + launch_test.SUPERVISED_RUN,
  }
  for name, text in files.items():
    with open(os.path.join(root, name), "w") as f:
      f.write(text)
  for name in ("gcloud", "run"):
    os.chmod(os.path.join(root, name), 0o755)
  env = dict(
    os.environ,
    GCLOUD=os.path.join(root, "gcloud"),
    HOME=home,
    TMPDIR=root,
    FAKE_WORKERS="1",
    FAKE_LOG=os.path.join(root, "gcloud.log"),
    FAKE_STATE_DIR=state,
    FAKE_FINISH_GEN="2",
    FAKE_PROVISION_S=str(args.provision_s),
    FAKE_SCP_S=str(args.setup_s),
    TPU_NAME="pod",
    TPU_ZONE="z",
    TRM_PYTHON=sys.executable,
  )
  cmd = ["bash", os.path.join(REPO, "launch", "tpu_supervise.sh"), "--remote_dir=code", "--skip_install"]
  cmd += [f"--python={root}/run", "--run_name=sim", "--config=c.py", f"--workdir={root}/w", *args.flags]
  t0 = time.time()
  p = subprocess.run(cmd, env=env, capture_output=True, text=True)
  total = time.time() - t0
  print("\n".join(l for l in p.stderr.splitlines() if l.startswith("[tpu_supervise.sh]") and "] + " not in l))

  def at(name):
    return os.path.getmtime(os.path.join(state, name))

  print(
    f"exit {p.returncode}; simulated create->ACTIVE {args.provision_s} s, setup {args.setup_s} s, flags {args.flags}: "
    f"first run up after {at('up-1-0') - t0:.1f} s; preemption -> next run up {at('up-2-0') - at('preempted-1'):.1f} s; "
    f"in all {total:.1f} s ({root})"
  )


if __name__ == "__main__":
  main()
