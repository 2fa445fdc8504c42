"""Entry point: python -m trm_jax.main --config=experiments/<x>.py[:args] --workdir=DIR

Fields can be overridden with `--config.a.b=v`; configs are locked, so a
misspelt field fails. Multi-host: `--coordinator_address`, `--num_processes`,
`--process_id` (on Cloud TPU pods `jax.distributed.initialize()` finds them).
User errors print one `error: ...` line and exit with status 1; set
TRM_TRACEBACK=1 to see the traceback instead.
"""
from __future__ import annotations

import contextlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags():
  if "workdir" in FLAGS:
    return
  config_flags.DEFINE_config_file("config", None, "Experiment file, e.g. experiments/demo.py[:arch=hrm].",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics.jsonl); its parent must exist.")
  flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0.")
  flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
  flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")


def _user_error_types():
  from trm_jax import checkpoint, data, solve, train
  from trm_jax.datasets import common
  return (train.UserError, checkpoint.CheckpointError, data.DataConfigError, common.DataError,
          solve.InputError, train.NonFiniteLoss, ValueError, KeyError, AttributeError, FileNotFoundError)


@contextlib.contextmanager
def user_errors():
  """Turns user errors into one `error: ...` line and exit status 1."""
  if os.environ.get("TRM_TRACEBACK"):
    yield
    return
  try:
    yield
  except _user_error_types() as e:  # noqa: B030 - computed tuple
    msg = str(e).strip().splitlines()
    if isinstance(e, KeyError) and msg:
      msg = [msg[0].strip("'\"")]
    print(f"error: {msg[0] if msg else type(e).__name__}", file=sys.stderr, flush=True)
    sys.exit(1)


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
  logging.set_verbosity(logging.WARNING)
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
  with user_errors():
    if config is None:
      raise ValueError("--config is required, e.g. --config=experiments/demo.py")
    if not FLAGS.workdir:
      raise ValueError("--workdir is required")
    _distributed()
    from trm_jax import train
    train.train_and_evaluate(config, FLAGS.workdir)


def _parse(argv):
  """absl parsing, with bad flags / config overrides reported as one line."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    text = str(e).strip().splitlines()
    print(f"error: {text[0] if text else e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except Exception as e:  # noqa: BLE001 - errors raised while loading the config file
    if os.environ.get("TRM_TRACEBACK"):
      raise
    text = str(e).strip().splitlines()
    print(f"error: --config: {text[0] if text else type(e).__name__}", file=sys.stderr, flush=True)
    sys.exit(1)


def run():
  _define_flags()
  app.run(main, flags_parser=_parse)


if __name__ == "__main__":
  run()
