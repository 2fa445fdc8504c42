"""trm-train: train (or resume) a run and evaluate it.

    trm-train --config=experiments/demo.py --workdir=runs/demo
    trm-train --config=experiments/smoke.py:arch=hrm --workdir=runs/smoke --config.train.steps=20

(`python -m trm_jax.main` is the same.) Fields can be overridden with `--config.a.b=v`; configs are locked, so a
misspelt field fails. `--verbose` also prints the resolved config. Multi-host: `--distributed` (or TRM_DISTRIBUTED=1;
what launch/ sets) lets `jax.distributed.initialize()` find its peers itself (Cloud TPU VM metadata, GKE, Slurm);
`--coordinator_address`, `--num_processes`, `--process_id` give them explicitly (ssh/Slurm GPU launches, local tests).
Without either, the run is a single process and never initialises it. User errors print one `error: ...` line and exit
with status 1; set TRM_TRACEBACK=1 to see the traceback instead.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from trm_jax import cli, errors

FLAGS = flags.FLAGS


def distributed_args(coordinator_address=None, num_processes=None, process_id=None, distributed=False):
  """-> keyword arguments for `jax.distributed.initialize`, or None for a single process.

  Explicit flags win and switch JAX's cluster detection off (all local devices stay visible: one process per host);
  `distributed` alone lets JAX detect the cluster (Cloud TPU VM metadata, GKE, Slurm).
  """
  if num_processes == 1:
    return None
  explicit = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  if any(v is not None for v in explicit.values()):
    if None in explicit.values():  # the rest must come from the cluster (e.g. Slurm's SLURM_PROCID)
      return explicit
    return dict(explicit, cluster_detection_method="deactivate")
  return {} if distributed else None


def _distributed():
  kwargs = distributed_args(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id, FLAGS.distributed)
  if kwargs is None:
    return
  import jax

  # CPU hosts need cross-process collectives (set before the backend starts); the option only concerns the CPU backend,
  # so GPU/TPU hosts are unaffected.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # nothing detected and nothing given
    raise errors.UserError(
      f"--distributed: {errors.first_line(e)}; no cluster detected: pass --coordinator_address, "
      "--num_processes and --process_id"
    ) from None
  devices = f"{jax.local_device_count()} local {jax.default_backend()} devices, {jax.device_count()} in total"
  print(f"process {jax.process_index()} of {jax.process_count()}: {devices}", file=sys.stderr, flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
  with cli.user_errors():
    config = cli.loaded_config(FLAGS)
    if config is None:
      raise ValueError("--config is required, e.g. --config=experiments/demo.py")
    if not FLAGS.workdir:
      raise ValueError("--workdir is required")
    _distributed()
    from trm_jax import train

    train.train_and_evaluate(config, FLAGS.workdir, verbose=FLAGS.verbose)


def run():
  config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/demo.py[:arch=hrm].", lock_config=True
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics.jsonl), local or gs://; missing parents are created."
  )
  flags.DEFINE_bool(
    "verbose",
    False,
    "Also print the resolved config and library logs (the config is saved in the workdir's checkpoints anyway).",
  )
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
  flags.DEFINE_bool(
    "distributed",
    os.environ.get("TRM_DISTRIBUTED", "") not in ("", "0"),
    "Multi-host: jax.distributed.initialize() with cluster auto-detection (Cloud TPU VM, GKE, "
    "Slurm); default from $TRM_DISTRIBUTED. launch/tpu_run.sh passes it.",
  )
  cli.own_help(__name__)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
