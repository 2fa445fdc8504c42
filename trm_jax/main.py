"""trm-train: train (or resume) a run and evaluate it.

    trm-train --config=experiments/demo.py --workdir=runs/demo
    trm-train --config=experiments/smoke.py:arch=hrm --workdir=runs/smoke --config.train.steps=20

(`python -m trm_jax.main` is the same.) Fields can be overridden with
`--config.a.b=v`; configs are locked, so a misspelt field fails. Multi-host:
`--coordinator_address`, `--num_processes`, `--process_id` (on Cloud TPU pods
`jax.distributed.initialize()` finds them). `--verbose` also prints the
resolved config. User errors print one `error: ...` line and exit with status
1; set TRM_TRACEBACK=1 to see the traceback instead.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from trm_jax import cli

FLAGS = flags.FLAGS


def _define_flags():
  if "workdir" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. experiments/demo.py[:arch=hrm].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl); its parent must exist.")
  flags.DEFINE_bool("verbose", False, "Also print the resolved config and library logs (the config is saved "
                    "in the workdir's checkpoints anyway).")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def _distributed():
  if FLAGS.coordinator_address or FLAGS.num_processes:
    import jax
    # CPU hosts need cross-process collectives (set before the backend starts);
    # the option only concerns the CPU backend, so GPU/TPU hosts are unaffected.
    if jax.config.jax_cpu_collectives_implementation is None:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:
    import jax
    jax.distributed.initialize()  # Cloud TPU pod: finds its peers itself


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO if FLAGS.verbose else logging.WARNING)
  try:
    config = FLAGS.config
    if config is not None:
      config.keys()  # the config file loads lazily; fail here, in one line
  except Exception as e:  # noqa: BLE001 - whatever loading the experiment file raised
    if os.environ.get("TRM_TRACEBACK"):
      raise
    text = " ".join(l.strip() for l in str(e).strip().splitlines() if l.strip())
    text = text.replace("Configuration is not available because of an earlier failure to load: ", "")
    print(f"error: --config: {text}", file=sys.stderr, flush=True)
    sys.exit(1)
  with cli.user_errors():
    if config is None:
      raise ValueError("--config is required, e.g. --config=experiments/demo.py")
    if not FLAGS.workdir:
      raise ValueError("--workdir is required")
    _distributed()
    from trm_jax import train
    train.train_and_evaluate(config, FLAGS.workdir, verbose=FLAGS.verbose)


def run():
  _define_flags()
  cli.own_help(__name__)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
