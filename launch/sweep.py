r"""Expand an experiment's `get_sweep()` into runs, launch them, summarise them.

  python launch/sweep.py --config=experiments/x.py[:arg] --workdir_base=DIR \
      [--dry_run] [--launcher=local|tpu|slurm] [--extra=--config.train.steps=100 ...] \
      [--tpu_names=trm-a,trm-b --tpu_args="--zone=us-west4-a"] [--summary]

The experiment file defines `get_config(arg=None)` and `get_sweep(arg=None)`;
the latter returns a list of dicts mapping dotted config fields ("train.lr",
"seed", "model.H_cycles") to values. Each dict is one trial, run as

  python -m trm_jax.main --config=<spec> --workdir=<base>/<trial name>
      --config.<field>=<value> ... <extra ...>

The trial name is made from the overridden values (e.g.
`H_cycles=3_lr=0.0001`), filesystem-safe and stable under re-ordering of the
sweep list, so a rerun of the sweep resumes each trial from its own workdir.

--dry_run prints the commands, one per line, and runs nothing. Otherwise:

  --launcher=local  trials one after another in --python, here;
  --launcher=tpu    through `launch/tpu_run.sh --wait`, one trial per TPU slice
                    at a time, the slices (--tpu_names, or --name in
                    --tpu_args) working in parallel; the experiment path must be
                    relative to the repository root, the workdir base a gs://
                    path; with --until_done each slice is created per trial by
                    `launch/tpu_supervise.sh` (spot), recreated after every
                    preemption until the trial's last step, then deleted;
  --launcher=slurm  one Slurm job array (`sbatch --array`) of
                    launch/slurm_train.sbatch, one array task per trial.

A trial whose workdir already reached its last step (metrics.jsonl) is
skipped (--rerun_finished runs it anyway: it resumes and re-evaluates). At the
end, and with --summary alone, a table lists every trial's progress and final
eval metrics read from its metrics.jsonl.
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
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

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
    inner = ",".join(repr(v) if isinstance(v, str) else format_value(v) for v in value)
    return f"({inner}{',' if len(value) == 1 else ''})"
  return str(value)


def _name_token(text: str) -> str:
  token = _SAFE.sub("-", text).strip("-")
  return ("-" + token if text.startswith("-") else token) or "x"  # a minus sign is kept: lr=-1.0 is not lr=1.0


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
    name = f"{name[: _MAX_NAME - 9]}-{digest}"
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
  except Exception as e:  # noqa: BLE001 - whatever the experiment file raised is the user's to fix
    del sys.modules[module_name]
    raise ValueError(f"{config_path}: cannot load: {type(e).__name__}: {e}") from e
  return module


def experiments_with_sweeps() -> list[str]:
  """experiments/*.py that define get_sweep (a text search: nothing is imported)."""
  d = os.path.join(REPO_ROOT, "experiments")
  if not os.path.isdir(d):
    return []
  return [
    f"experiments/{f}"
    for f in sorted(os.listdir(d))
    if f.endswith(".py") and re.search(r"^def get_sweep\(", open(os.path.join(d, f)).read(), re.M)
  ]


def _join(base: str, name: str) -> str:
  return base.rstrip("/") + "/" + name if base else name


def expand_sweep(
  config_path: str, arg: str | None, workdir_base: str, extra: Sequence[str] = (), config_name: str | None = None
) -> list[Trial]:
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
    raise ValueError(
      f"{config_path} defines no get_sweep(); experiments with sweeps: {', '.join(experiments_with_sweeps()) or 'none'}"
    )
  try:
    sweep = get_sweep(arg) if arg is not None else get_sweep()
  except Exception as e:  # noqa: BLE001
    raise ValueError(
      f"{config_path}: get_sweep({'' if arg is None else repr(arg)}) failed: {type(e).__name__}: {e}"
    ) from e
  if isinstance(sweep, Mapping) or not isinstance(sweep, Sequence) or not sweep:
    raise ValueError(f"{config_path}: get_sweep() must return a non-empty list of dicts, got {sweep!r}")
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
    trials.append(Trial(name=name, overrides=tuple(overrides), workdir=workdir, args=tuple(args)))
  for i, t in enumerate(trials):
    _check_overrides(module, arg, t.overrides, f"{config_path}: sweep entry {i} ({t.name})")
  return trials


def _check_overrides(module, arg: str | None, overrides, where: str) -> None:
  """The trial's config (get_config with its overrides) has every field it sets and passes trm-train's own
  checks: a typo or a bad value is one error before any trial (or slice) starts, not a failure in each."""
  from trm_jax import config_lib  # pylint: disable=g-import-not-at-top

  try:
    config = module.get_config(arg) if arg is not None else module.get_config()
    for key, value in overrides:
      *parents, leaf = key.split(".")
      node = config
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(f"unknown field {key}")
      node[leaf] = value
    if all(k in config for k in ("train", "model", "eval", "data")):  # a run config: trm-train's own checks
      config_lib.validate(config)
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    raise ValueError(f"{where}: {str(e).strip(chr(39)).splitlines()[0]}") from None


def tpu_command(
  trial: Trial, tpu_args: Sequence[str], sweep_name: str, tpu_name: str | None = None, until_done: bool = False
) -> list[str]:
  """launch/tpu_run.sh --wait invocation for one trial on an existing slice (blocks until it ends), or with
  until_done launch/tpu_supervise.sh (creates the slice, recreates it after preemptions, deletes it when done)."""
  config, workdir, *rest = trial.args
  name = [f"--name={tpu_name}"] if tpu_name else []
  script, wait = ("tpu_supervise.sh", []) if until_done else ("tpu_run.sh", ["--wait"])
  return [
    os.path.join("launch", script),
    *tpu_args,
    *name,
    config,
    workdir,
    f"--run_name={sweep_name}-{trial.name}",
    *wait,
    "--",
    *rest,
  ]


# ------------------------------------------------------- progress and summary


def progress(workdir: str) -> tuple[int | None, int | None, dict]:
  """(last step logged, total steps, last eval metrics) from workdir/metrics.jsonl; (None, None, {}) if none."""
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
  from trm_jax import metrics  # pylint: disable=g-import-not-at-top

  try:
    events = metrics.read(workdir)
  except (FileNotFoundError, NotADirectoryError):
    return None, None, {}
  total = next((e["total_steps"] for e in events if "total_steps" in e), None)
  last = max((int(e.get("step", 0)) for e in events), default=None)
  evals = [e for e in events if any(k.startswith("eval/") for k in e)]
  return last, total, (evals[-1] if evals else {})


def finished(workdir: str) -> bool:
  last, total, _ = progress(workdir)
  return last is not None and total is not None and last >= total


def checkpoint_step(workdir: str) -> int | None:
  """The newest step folder under workdir/checkpoints/ (local or gs://); None if there is none."""
  from trm_jax import fileio, rundir  # pylint: disable=g-import-not-at-top

  try:
    names = fileio.listdir(rundir.RunDir(workdir).checkpoints())
  except (FileNotFoundError, NotADirectoryError):
    return None
  return max((int(n) for n in names if n.isdigit()), default=None)


def progress_line(workdir: str) -> str:
  """'step=S total=T checkpoint=C' ('-' for unknown): what `--finished` prints (read by launch/tpu_supervise.sh)."""
  last, total, _ = progress(workdir)
  ckpt = checkpoint_step(workdir)
  return " ".join(f"{k}={'-' if v is None else v}" for k, v in (("step", last), ("total", total), ("checkpoint", ckpt)))


# The final eval metrics shown (the last part of `eval/<set>/<metric>`) and their column names;
# swept values and headers are cut at _CELL characters: a table of a few swept keys and eval sets fits 120 columns.
_SUMMARY_KEYS = {"exact_accuracy": "exact", "pass@2": "pass@2"}
_CELL = 22


def summary_table(trials: Sequence[Trial]) -> str:
  """One row per trial: its swept values, status, step, and its final exact accuracies (and ARC pass@2)."""
  swept = list(dict.fromkeys(k for t in trials for k, _ in t.overrides))
  rows, keys = [], []
  for t in trials:
    values = dict(t.overrides)
    ids = [format_value(values[k]) if k in values else "-" for k in swept] if swept else [t.name]
    try:
      last, total, ev = progress(t.workdir)
    except Exception as e:  # noqa: BLE001 - an unreadable file is a row, not a crash
      rows.append((ids, f"unreadable: {str(e).splitlines()[0][:60]}", "", {}))
      continue
    status = "not started" if last is None else "finished" if total is not None and last >= total else "stopped"
    step = "" if last is None else f"{last}/{total}"
    if ev and ev.get("step") != last:
      step += f" (eval @{ev.get('step')})"
    shown = {k: v for k, v in ev.items() if k.startswith("eval/") and k.rsplit("/", 1)[-1] in _SUMMARY_KEYS}
    keys += [k for k in shown if k not in keys]
    rows.append((ids, status, step, shown))
  cut = lambda cells: [c if len(c) <= _CELL else c[: _CELL - 1] + "~" for c in cells]
  head = lambda k: f"{k.split('/')[1]}/{_SUMMARY_KEYS[k.rsplit('/', 1)[-1]]}"
  header = cut([k.rsplit(".", 1)[-1] for k in swept] or ["trial"]) + ["status", "step"] + cut([head(k) for k in keys])
  table = [header] + [cut(ids) + [s, st] + [f"{m[k]:.4f}" if k in m else "-" for k in keys] for ids, s, st, m in rows]
  widths = [max(len(r[i]) for r in table) for i in range(len(header))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table)


# ---------------------------------------------------------------- launchers


def run_local(trials, commands, keep_going: bool) -> list[str]:
  failed = []
  for i, (trial, cmd) in enumerate(zip(trials, commands)):
    print(f"[sweep {i + 1}/{len(trials)}] {trial.name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
      print(f"[sweep] {trial.name} failed with status {rc}", file=sys.stderr, flush=True)
      failed.append(trial.name)
      if not keep_going:
        break
  return failed


def run_on_slices(
  trials, tpu_names: Sequence[str], tpu_args, sweep_name, keep_going: bool, until_done: bool = False
) -> list[str]:
  """One worker thread per slice takes the next trial until none is left; -> names of failed trials."""
  queue = list(trials)
  lock = threading.Lock()
  failed: list[str] = []

  def worker(tpu):
    while True:
      with lock:
        if not queue or (failed and not keep_going):
          return
        trial = queue.pop(0)
      cmd = tpu_command(trial, tpu_args, sweep_name, tpu, until_done)
      print(f"[sweep {tpu or 'tpu'}] {trial.name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
      rc = subprocess.call(cmd, cwd=REPO_ROOT)
      if rc != 0:
        print(f"[sweep {tpu or 'tpu'}] {trial.name} failed with status {rc}", file=sys.stderr, flush=True)
        with lock:
          failed.append(trial.name)

  threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in tpu_names]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return failed


def slurm_command(
  trials: Sequence[Trial], indices: Sequence[int], args_file: str, sbatch_args: Sequence[str], parallel: int
) -> list[str]:
  """sbatch of launch/slurm_train.sbatch as a job array over `indices` (lines of args_file)."""
  array = ",".join(str(i) for i in indices) + (f"%{parallel}" if parallel else "")
  return [
    "sbatch",
    f"--array={array}",
    "--job-name=" + os.path.basename(args_file).removesuffix(".args"),
    f"--export=ALL,TRM_ARGS_FILE={args_file}",
    *sbatch_args,
    os.path.join(LAUNCH_DIR, "slurm_train.sbatch"),
  ]


FLAGS = flags.FLAGS


def define_flags():
  """Defines the command-line flags (only when run as a script, so that
  importing this module for expand_sweep() does not claim global flag names)."""
  flags.DEFINE_string("config", None, "Experiment file with get_sweep(), optionally ':arg'.")
  flags.DEFINE_string("workdir_base", None, "Parent of the trials' workdirs (a gs:// path for TPU).")
  flags.DEFINE_bool("dry_run", False, "Print the commands, one per line; run nothing.")
  flags.DEFINE_enum(
    "launcher",
    "local",
    ["local", "tpu", "slurm"],
    "local: run the trials here one by one; tpu: via launch/tpu_run.sh, one trial per "
    "slice; slurm: one sbatch job array.",
  )
  flags.DEFINE_multi_string(
    "extra", [], "Extra argument for every trial, e.g. --extra=--config.train.steps=100 (repeatable)."
  )
  flags.DEFINE_string("python", sys.executable, "Interpreter for --launcher=local.")
  flags.DEFINE_string(
    "tpu_args", "", "Arguments for tpu_run.sh (one shell-quoted string), e.g. '--name=trm-v5e --zone=us-west4-a'."
  )
  flags.DEFINE_list(
    "tpu_names",
    [],
    "--launcher=tpu: slices to spread the trials over (one trial per slice at a time, "
    "in parallel); default: the one named in --tpu_args or $TPU_NAME.",
  )
  flags.DEFINE_bool(
    "until_done",
    False,
    "--launcher=tpu: each slice name is a spot slice that launch/tpu_supervise.sh creates per trial, recreates "
    "after preemptions until the trial's last step, then deletes (--tpu_args then also takes its flags, "
    "e.g. --accelerator_type, --max_attempts).",
  )
  flags.DEFINE_string(
    "sbatch_args",
    "",
    "--launcher=slurm: extra sbatch arguments (one shell-quoted string), "
    "e.g. '--nodes=1 --partition=gpu --time=12:00:00'.",
  )
  flags.DEFINE_integer("slurm_parallel", 0, "--launcher=slurm: at most this many trials at once (0: no limit).")
  flags.DEFINE_string(
    "slurm_dir", os.path.join(REPO_ROOT, "logs"), "--launcher=slurm: where the job array's argument file is written."
  )
  flags.DEFINE_list("only", [], "Run only these trials (indices or names), comma-separated.")
  flags.DEFINE_bool("keep_going", False, "Continue after a failed trial.")
  flags.DEFINE_bool("rerun_finished", False, "Also launch trials whose workdir reached its last step.")
  flags.DEFINE_string(
    "finished",
    None,
    "Only check: print 'step=S total=T checkpoint=C' and exit 0 if this workdir reached its last step, else 1 "
    "(used by launch/slurm_train.sbatch to requeue, launch/tpu_supervise.sh to recreate a slice).",
  )
  flags.DEFINE_bool("summary", False, "Only print the table of every trial's progress and final eval metrics.")


def _select(trials: list[Trial], only: Sequence[str]) -> list[Trial]:
  if not only:
    return trials
  unknown = set(only) - {str(i) for i in range(len(trials))} - {t.name for t in trials}
  if unknown:
    raise ValueError(
      f"--only: unknown trials {sorted(unknown)} (there are {len(trials)}: 0..{len(trials) - 1} or their names)"
    )
  return [t for i, t in enumerate(trials) if str(i) in only or t.name in only]


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.finished:
    print(progress_line(FLAGS.finished), flush=True)
    return 0 if finished(FLAGS.finished) else 1
  if not FLAGS.config or FLAGS.workdir_base is None:
    raise ValueError("--config and --workdir_base are required (see --help)")
  if FLAGS.until_done and FLAGS.launcher != "tpu":
    raise ValueError(f"--until_done needs --launcher=tpu, got --launcher={FLAGS.launcher}")
  path, arg = split_config_spec(FLAGS.config)
  config_name = path
  if FLAGS.launcher == "tpu":
    # The workers run the copy deployed by tpu_setup.sh: the experiment must
    # be named relative to the repository root.
    rel = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    if rel.startswith(".."):
      print(f"[sweep] warning: {path} is outside the repository; the TPU workers will not have it", file=sys.stderr)
    else:
      config_name = rel
  all_trials = expand_sweep(path, arg, FLAGS.workdir_base, FLAGS.extra, config_name=config_name)
  trials = _select(all_trials, FLAGS.only)
  sweep_name = os.path.basename(path).removesuffix(".py")
  if FLAGS.summary:
    print(summary_table(trials))
    return 0

  todo = trials
  if not FLAGS.rerun_finished and not FLAGS.dry_run:
    todo = []
    for t in trials:
      if finished(t.workdir):
        print(f"[sweep] skip {t.name}: finished ({t.workdir})", file=sys.stderr, flush=True)
      else:
        todo.append(t)

  if FLAGS.launcher == "slurm":
    os.makedirs(FLAGS.slurm_dir, exist_ok=True)
    args_file = os.path.join(os.path.abspath(FLAGS.slurm_dir), f"{sweep_name}.args")
    indices = [all_trials.index(t) for t in todo]
    commands = (
      [slurm_command(all_trials, indices, args_file, shlex.split(FLAGS.sbatch_args), FLAGS.slurm_parallel)]
      if todo
      else []
    )
  elif FLAGS.launcher == "tpu":
    tpu_args = shlex.split(FLAGS.tpu_args)
    names = FLAGS.tpu_names or [None]
    commands = [
      tpu_command(t, tpu_args, sweep_name, names[i % len(names)], FLAGS.until_done) for i, t in enumerate(todo)
    ]
  else:
    commands = [t.command(FLAGS.python) for t in todo]

  if FLAGS.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0

  if FLAGS.launcher != "tpu" and "://" not in FLAGS.workdir_base and FLAGS.workdir_base:
    os.makedirs(FLAGS.workdir_base, exist_ok=True)  # the trials' workdirs need their parent
  if FLAGS.launcher == "slurm":
    # Line i holds trial i's arguments for trm_jax.main (the array task's $SLURM_ARRAY_TASK_ID).
    with open(args_file, "w") as f:
      f.writelines(shlex.join(t.args) + "\n" for t in all_trials)
    failed = [] if not commands or subprocess.call(commands[0]) == 0 else ["sbatch"]
    print(
      f"[sweep] {len(todo)} trial(s) submitted; arguments in {args_file}; table: python launch/sweep.py "
      f"--config={FLAGS.config} --workdir_base={FLAGS.workdir_base} --summary",
      file=sys.stderr,
    )
    return 1 if failed else 0
  if FLAGS.launcher == "tpu":
    failed = run_on_slices(
      todo, FLAGS.tpu_names or [None], shlex.split(FLAGS.tpu_args), sweep_name, FLAGS.keep_going, FLAGS.until_done
    )
  else:
    failed = run_local(todo, commands, FLAGS.keep_going)
  print(summary_table(trials))
  if failed:
    print(f"[sweep] failed: {' '.join(failed)}", file=sys.stderr)
    return 1
  print(f"[sweep] {len(todo)} trial(s) run, {len(trials) - len(todo)} already finished", file=sys.stderr)
  return 0


def _one_line_errors(argv):
  """absl's main with user mistakes (missing flags, bad experiment files) as one `error:` line."""
  try:
    return main(argv)
  except (ValueError, FileNotFoundError) as e:
    if os.environ.get("TRM_TRACEBACK"):
      raise
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    return 1


def _parse(argv):
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  if {"-h", "--help", "--helpshort", "-?"} & set(sys.argv[1:]):
    # absl's own --help exits with status 1 and writes to stderr.
    print(__doc__.strip() + "\n\nflags:\n" + FLAGS.main_module_help())
    sys.exit(0)
  app.run(_one_line_errors, flags_parser=_parse)
