r"""Expand an experiment's `get_sweep()` into runs and launch them.

  python launch/sweep.py --config=experiments/x.py[:arg] --workdir_base=DIR \
      [--dry_run] [--launcher=local|tpu] [--extra=--config.train.steps=100 ...] \
      [--tpu_args="--name=trm-v5e --zone=us-west4-a"]

The experiment file defines `get_config(arg=None)` and `get_sweep(arg=None)`;
the latter returns a list of dicts mapping dotted config fields ("train.lr",
"seed", "model.H_cycles") to values. Each dict is one trial, run as

  python -m trm_jax.main --config=<spec> --workdir=<base>/<trial name>
      --config.<field>=<value> ... <extra ...>

The trial name is made from the overridden values (e.g.
`H_cycles=3_lr=0.0001`), filesystem-safe and stable under re-ordering of the
sweep list, so a rerun of the sweep resumes each trial from its own workdir.

--dry_run prints the commands, one per line, and runs nothing. Otherwise the
trials run one after another: in this process's Python (`--launcher=local`) or
on a TPU pod through `launch/tpu_run.sh --wait` (`--launcher=tpu`; the
experiment path must then be relative to the repository root, and the workdir
base should be a gs:// path).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags

LAUNCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(LAUNCH_DIR)

_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")
_MAX_NAME = 120


@dataclasses.dataclass(frozen=True)
class Trial:
  """One run of a sweep."""

  name: str  # filesystem-safe, unique within the sweep
  overrides: tuple[tuple[str, Any], ...]  # (dotted field, value), sweep order
  workdir: str
  args: tuple[str, ...]  # arguments for `python -m trm_jax.main`

  def command(self, python: str = "python") -> list[str]:
    return [python, "-m", "trm_jax.main", *self.args]


def split_config_spec(spec: str) -> tuple[str, str | None]:
  """'experiments/x.py:a=b' -> ('experiments/x.py', 'a=b'); no colon -> None."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def format_value(value: Any) -> str:
  """The text of `--config.k=<text>` that ml_collections parses back to value."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, float):
    return repr(value)  # shortest round-trip form: 0.0001, 3e-05, 1e+20
  if isinstance(value, (list, tuple)):
    inner = ",".join(repr(v) if isinstance(v, str) else format_value(v)
                     for v in value)
    return f"({inner}{',' if len(value) == 1 else ''})"
  return str(value)


def _name_token(text: str) -> str:
  return _SAFE.sub("-", text).strip("-") or "x"


def trial_name(overrides: Sequence[tuple[str, Any]]) -> str:
  """A filesystem-safe name such as 'H_cycles=3_lr=0.0001'.

  Keys are shortened to their last dotted component unless two keys of the
  trial share it (then the full key, dots kept). Long names are cut and
  completed with a hash of the full name.
  """
  if not overrides:
    return "default"
  last = [k.rsplit(".", 1)[-1] for k, _ in overrides]
  parts = []
  for (key, value), short in zip(overrides, last):
    k = short if last.count(short) == 1 else key
    parts.append(f"{_name_token(k)}={_name_token(format_value(value))}")
  name = "_".join(parts)
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f"{name[:_MAX_NAME - 9]}-{digest}"
  return name


def load_experiment(config_path: str):
  """Imports an experiment file by path (the repository root on sys.path)."""
  path = os.path.abspath(config_path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no experiment file {config_path}")
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  module_name = "_sweep_experiment_" + re.sub(r"\W", "_", path)
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module  # dataclasses etc. look themselves up here
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[module_name]
    raise
  return module


def _join(base: str, name: str) -> str:
  return base.rstrip("/") + "/" + name if base else name


def expand_sweep(config_path: str, arg: str | None, workdir_base: str,
                 extra: Sequence[str] = (),
                 config_name: str | None = None) -> list[Trial]:
  """The trials of `get_sweep(arg)` of the experiment file at config_path.

  Pure apart from importing the experiment file: no files are written and
  nothing is run. `--config=` in the trials' arguments repeats config_path
  (and ':arg') exactly as given, so relative paths stay relative, unless
  config_name gives another name for the same file (e.g. repository-relative
  for the TPU workers).
  """
  module = load_experiment(config_path)
  get_sweep = getattr(module, "get_sweep", None)
  if get_sweep is None:
    raise ValueError(f"{config_path} defines no get_sweep()")
  sweep = get_sweep(arg) if arg is not None else get_sweep()
  if isinstance(sweep, Mapping) or not isinstance(sweep, Sequence) or not sweep:
    raise ValueError(f"{config_path}: get_sweep() must return a non-empty "
                     f"list of dicts, got {sweep!r}")
  shown = config_name or config_path
  spec = shown if arg is None else f"{shown}:{arg}"
  trials, seen = [], {}
  for i, point in enumerate(sweep):
    if not isinstance(point, Mapping):
      raise ValueError(f"{config_path}: sweep entry {i} is not a dict: {point!r}")
    overrides = []
    for key, value in point.items():
      if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)*", key):
        raise ValueError(f"{config_path}: sweep entry {i}: bad field name {key!r}")
      overrides.append((key, value))
    name = trial_name(overrides)
    if name in seen:  # two entries that print alike: keep both, apart
      seen[name] += 1
      name = f"{name}-{seen[name]}"
    else:
      seen[name] = 1
    workdir = _join(workdir_base, name)
    args = [f"--config={spec}", f"--workdir={workdir}"]
    args += [f"--config.{k}={format_value(v)}" for k, v in overrides]
    args += list(extra)
    trials.append(Trial(name=name, overrides=tuple(overrides),
                        workdir=workdir, args=tuple(args)))
  return trials


def tpu_command(trial: Trial, tpu_args: Sequence[str],
                sweep_name: str) -> list[str]:
  """launch/tpu_run.sh invocation for one trial (blocks until it ends)."""
  config, workdir, *rest = trial.args
  return [os.path.join("launch", "tpu_run.sh"), *tpu_args,
          config, workdir, f"--run_name={sweep_name}-{trial.name}", "--wait",
          "--", *rest]


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command-line flags (only when run as a script, so that
  importing this module for expand_sweep() does not claim global flag names)."""
  flags.DEFINE_string("config", None,
                      "Experiment file with get_sweep(), optionally ':arg'.")
  flags.DEFINE_string("workdir_base", None,
                      "Parent of the trials' workdirs (a gs:// path for TPU).")
  flags.DEFINE_bool("dry_run", False, "Print the commands, one per line; run nothing.")
  flags.DEFINE_enum("launcher", "local", ["local", "tpu"],
                    "local: run the trials here one by one; tpu: via launch/tpu_run.sh.")
  flags.DEFINE_multi_string("extra", [],
                            "Extra argument for every trial, e.g. "
                            "--extra=--config.train.steps=100 (repeatable).")
  flags.DEFINE_string("python", sys.executable,
                      "Interpreter for --launcher=local.")
  flags.DEFINE_string("tpu_args", "",
                      "Arguments for tpu_run.sh (one shell-quoted string), "
                      "e.g. '--name=trm-v5e --zone=us-west4-a'.")
  flags.DEFINE_list("only", [],
                    "Run only these trials (indices or names), comma-separated.")
  flags.DEFINE_bool("keep_going", False, "Continue after a failed trial.")


def _select(trials: list[Trial], only: Sequence[str]) -> list[Trial]:
  if not only:
    return trials
  chosen = []
  for i, t in enumerate(trials):
    if str(i) in only or t.name in only:
      chosen.append(t)
  unknown = set(only) - {str(i) for i in range(len(trials))} - {t.name for t in trials}
  if unknown:
    raise app.UsageError(f"--only: unknown trials {sorted(unknown)}")
  return chosen


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.config or FLAGS.workdir_base is None:
    raise app.UsageError("--config and --workdir_base are required")
  path, arg = split_config_spec(FLAGS.config)
  config_name = path
  if FLAGS.launcher == "tpu":
    # The workers run the copy deployed by tpu_setup.sh: the experiment must
    # be named relative to the repository root.
    rel = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    if rel.startswith(".."):
      print(f"[sweep] warning: {path} is outside the repository; the TPU "
            "workers will not have it", file=sys.stderr)
    else:
      config_name = rel
  trials = _select(expand_sweep(path, arg, FLAGS.workdir_base, FLAGS.extra,
                                config_name=config_name), FLAGS.only)
  sweep_name = os.path.basename(path).removesuffix(".py")
  if FLAGS.launcher == "local":
    commands = [t.command(FLAGS.python) for t in trials]
    cwd = None
  else:
    tpu_args = shlex.split(FLAGS.tpu_args)
    commands = [tpu_command(t, tpu_args, sweep_name) for t in trials]
    cwd = REPO_ROOT

  if FLAGS.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0

  failed = []
  for i, (trial, cmd) in enumerate(zip(trials, commands)):
    print(f"[sweep {i + 1}/{len(trials)}] {trial.name}: {shlex.join(cmd)}",
          file=sys.stderr, flush=True)
    rc = subprocess.call(cmd, cwd=cwd)
    if rc != 0:
      print(f"[sweep] {trial.name} failed with status {rc}", file=sys.stderr)
      failed.append(trial.name)
      if not FLAGS.keep_going:
        break
  if failed:
    print(f"[sweep] failed: {' '.join(failed)}", file=sys.stderr)
    return 1
  print(f"[sweep] {len(trials)} trial(s) done", file=sys.stderr)
  return 0


if __name__ == "__main__":
  define_flags()
  if {"-h", "--help", "--helpshort", "-?"} & set(sys.argv[1:]):
    # absl's own --help exits with status 1 and writes to stderr.
    print(__doc__.strip() + "\n\nflags:\n" + FLAGS.main_module_help())
    sys.exit(0)
  app.run(main)
