"""What a new user meets first: --help of every script, one-line config typos, the parity report, the
module layout (no import circle), progress lines, puzzle rules and pictures."""

import ast
import importlib
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trm_jax import cli, data_cli, errors, metrics, parity, render, report, rules

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / "shared" / "parity"


def script(env, module, *args, timeout=240):
  """Runs a console script the way its installed wrapper does (`__main__` has no docstring, no flags)."""
  code = f"import sys; from {module} import run; sys.exit(run())"
  return subprocess.run(
    [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


# ---------------------------------------------------------------------------
# --help


@pytest.mark.parametrize(
  "module,flags",
  [
    ("trm_jax.main", ["config", "workdir", "verbose", "coordinator_address"]),
    ("trm_jax.solve", ["workdir", "sudoku", "maze", "arc", "png", "steps", "verbose"]),
    ("trm_jax.convert", ["torch_checkpoint", "export_torch", "config", "workdir", "export_live"]),
  ],
)
def test_help_lists_the_scripts_own_flags(env, module, flags):
  p = script(env, module, "--help")
  assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
  out = p.stdout
  assert importlib.import_module(module).__doc__.splitlines()[0] in out  # the script's own description, not "USAGE: -c"
  for name in flags:
    line = next((l for l in out.splitlines() if l.strip().startswith((f"--{name}:", f"--[no]{name}:"))), None)
    assert line is not None, f"--{name} missing from --help:\n{out}"
    assert len(line.split(":", 1)[1].strip()) > 10  # with its help text


@pytest.mark.parametrize(
  "module", ["trm_jax.main", "trm_jax.solve", "trm_jax.convert", "trm_jax.plan", "trm_jax.bench"]
)
def test_help_exits_0_with_the_usage(env, module):
  """Asking for help is no error: absl's --help exits with status 1."""
  p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert p.returncode == 0 and p.stderr == "", p.stderr
  assert importlib.import_module(module).__doc__.split()[0] in p.stdout and "Try --helpfull" in p.stdout


def test_the_documented_workdir_parent_is_ignored_by_git():
  if not (ROOT / ".git").exists():
    pytest.skip("not a git checkout")
  p = subprocess.run(["git", "check-ignore", "-q", "runs/demo/metrics.jsonl"], cwd=ROOT)
  assert p.returncode == 0  # 1: not ignored


def test_trm_data_commands_have_descriptions_and_argument_help():
  parser = data_cli._parser()
  sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
  assert set(sub.choices) == {"build", "stats", "show", "bench", "list"}
  for name, p in sub.choices.items():
    assert p.description and len(p.description) > 20, name
    for action in p._actions:
      if action.dest != "help":
        assert action.help and len(action.help) > 5, (name, action.dest)
  help_of = {a.dest: a.help for a in sub._choices_actions}
  assert all(help_of[c] for c in sub.choices)


# ---------------------------------------------------------------------------
# Config typos


def test_config_typo_is_one_plain_line(env, tmp_path):
  p = script(env, "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={tmp_path}/w", "--config.train.stpes=10")
  assert p.returncode == 1
  assert p.stderr.strip() == "error: unknown field train.stpes; did you mean train.steps?"
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "module,args,line",
  [
    ("trm_jax.solve", ["--steps=-1"], "error: flag --steps=-1: -1 is not a non-negative integer"),
    ("trm_jax.convert", ["--export_torch=x.npz", "--step=-5"], "error: flag --step=-5: -5 is not integer >= -1"),
  ],
)
def test_negative_step_counts_are_refused(env, tmp_path, module, args, line):
  p = script(env, module, f"--workdir={tmp_path}/w", *args)
  assert p.returncode == 1 and p.stderr.strip() == line


def test_config_argument_error_keeps_its_cause(env, tmp_path):
  p = script(env, "trm_jax.main", "--config=experiments/arc1.py:arch=xxx", f"--workdir={tmp_path}/w")
  assert p.returncode == 1
  want = (
    "error: flag --config=experiments/arc1.py:arch=xxx: ValueError: config argument arch='xxx': expected 'trm' or 'hrm'"
  )
  assert p.stderr.strip() == want


def test_config_error_messages():
  argv = ["prog", "--config=x.py", "--config.trian.steps=3"]
  e = KeyError('\'trian\'\nDid you mean "train" instead of "trian"?')
  assert cli.config_error(e, argv) == "unknown field trian.steps; did you mean train.steps?"
  e = AttributeError(repr("'zzz'"))
  assert cli.config_error(e, ["prog", "--config.train.zzz=1"]) == "unknown field train.zzz"


# ---------------------------------------------------------------------------
# Parity report


def test_parity_report_table_and_verdict():
  errs = {
    "eval/step1/logits": 2e-4,
    "eval/step1/preds": 0.0,
    "train/step1/loss": 3e-6,
    "train/step1/grad/w": 5e-6,
    "train/step1/puzzle_emb_after_signsgd": 0.0,
  }
  table, ok = parity.report(errs)
  rows = {l.split()[0]: l.split() for l in table.splitlines()[1:]}
  assert ok and set(rows) == {"eval", "train", "grads", "sign-SGD"}
  assert rows["eval"][2] == "2.00e-04" and rows["eval"][4] == "PASS"
  table, ok = parity.report(dict(errs, **{"train/step1/grad/w": 3e-3}))
  assert not ok and "FAIL" in table.splitlines()[3]
  _, ok = parity.report(dict(errs, **{"eval/step1/preds": 1e-6}))  # decisions must match exactly
  assert not ok


def test_parity_cli_fails_on_a_bad_group(tmp_path, monkeypatch, capsys):
  f = PARITY / "hrm.npz"
  ref = dict(np.load(f))
  ours = {k: np.array(v) for k, v in ref.items() if k.startswith(("eval/", "train/"))}
  ours["train/step1/loss"] = ours["train/step1/loss"] * 1.01
  monkeypatch.setattr(parity, "run_parity", lambda *a, **k: ours)
  assert parity.main(["--vectors", str(f), "--out", str(tmp_path / "o.npz"), "--report"]) == 1
  out = capsys.readouterr().out
  assert "FAIL" in out.splitlines()[-1] and any(l.startswith("train") and "FAIL" in l for l in out.splitlines())
  monkeypatch.setattr(parity, "run_parity", lambda *a, **k: dict(ours, **{"train/step1/loss": ref["train/step1/loss"]}))
  assert parity.main(["--vectors", str(f), "--out", str(tmp_path / "o.npz"), "--report"]) == 0


def test_parity_bad_out_directory_fails_first(env, tmp_path):
  p = subprocess.run(
    [
      sys.executable,
      "-m",
      "trm_jax.parity",
      "--vectors",
      str(tmp_path / "missing.npz"),
      "--out",
      str(tmp_path / "no" / "o.npz"),
      "--report",
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "--out=" in p.stderr  # before reading anything


# ---------------------------------------------------------------------------
# Module layout


def _imports(path: Path, top_only: bool) -> set:
  tree = ast.parse(path.read_text())
  out = set()
  for node in tree.body if top_only else ast.walk(tree):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      # `from pkg import submodule` depends on the submodule; `from mod import name` on mod.
      subs = {f"{node.module}.{a.name}" for a in node.names}
      out |= {node.module} | subs
  return out


def _cycle(graph: dict):
  state = {}

  def visit(u, path):
    state[u] = 1
    for v in graph[u]:
      if state.get(v) == 1:
        return path[path.index(v) :] + [v]
      if v not in state:
        c = visit(v, path + [v])
        if c:
          return c
    state[u] = 2
    return None

  for m in graph:
    if m not in state:
      c = visit(m, [m])
      if c:
        return c
  return None


def test_no_import_circle():
  pkg = ROOT / "trm_jax"
  files = {
    "trm_jax." + ".".join(f.relative_to(pkg).with_suffix("").parts).replace(".__init__", ""): f
    for f in pkg.rglob("*.py")
  }
  files["trm_jax"] = files.pop("trm_jax.__init__", pkg / "__init__.py")
  for top_only in (True, False):
    # Lazy (function-level) imports too. A submodule importing its own package (e.g. to register the
    # TFDS builders) is no circle: the package is already being imported.
    graph = {
      m: {d for d in _imports(f, top_only) if d in files and d != m and not m.startswith(d + ".")}
      for m, f in files.items()
    }
    assert _cycle(graph) is None, (top_only, _cycle(graph))
  # What used to go round: train -> solve -> train/main (load_run, user_errors, side_by_side).
  assert "trm_jax.train" not in _imports(pkg / "solve.py", False)
  assert "trm_jax.main" not in _imports(pkg / "solve.py", False) | _imports(pkg / "train.py", False)


# ---------------------------------------------------------------------------
# Output of training


def test_progress_is_plain_lines_off_a_terminal(tmp_path, capsys):
  w = metrics.Writer(str(tmp_path), total_steps=10, enabled=True)
  for s in (2, 4):
    w.progress(s, {"loss": 1.5, "exact": 0.25})
  w.close()
  cap = capsys.readouterr()
  lines = cap.out.strip().splitlines()
  assert lines[0] == "step 2/10 (20%) loss=1.5 exact=0.25"
  assert lines[1].startswith("step 4/10 (40%) loss=1.5 exact=0.25 | ") and "steps/s, ETA" in lines[1]
  assert "\r" not in cap.out + cap.err


def test_tensorboard_events_without_importing_torch(tmp_path):
  """tensorboardX imports torch (seconds) just to recognise its tensors; a run's writer does not."""
  code = textwrap.dedent(f"""
    import glob, sys
    from trm_jax import metrics
    w = metrics.Writer({str(tmp_path)!r}, total_steps=4, enabled=True, progress=False)
    w.write(2, {{"train/lm_loss": 1.5}})
    tb = w.tensorboard
    w.close()
    print(tb, "torch" in sys.modules, len(glob.glob({str(tmp_path / "tensorboard" / "*")!r})))
  """)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "False", "1"]
  assert metrics.read(str(tmp_path))[0]["train/lm_loss"] == 1.5


def test_closing_line_names_everything(tmp_path):
  line = report.closing_line(str(tmp_path), 12, "sudoku", np.array([2, 1, 1, 5]), tensorboard=True)
  assert str(tmp_path) in line and "checkpoint step 12" in line and "metrics.jsonl" in line
  assert f"tensorboard --logdir {tmp_path}/tensorboard" in line
  assert line.endswith(f"trm-solve --workdir={tmp_path} --sudoku='1..4'")
  assert "--arc=" in report.closing_line(str(tmp_path), 3, "arc", None, tensorboard=False)
  for task in ("sudoku", "arc"):  # no checkpoint (train.steps=0): no trm-solve to suggest, it would fail
    assert "trm-solve" not in report.closing_line(str(tmp_path), None, task, np.array([2, 1, 1, 5]), False)


def test_plural():
  assert render.plural(1, "supervision step") == "1 supervision step"
  assert render.plural(4, "supervision step") == "4 supervision steps"


# ---------------------------------------------------------------------------
# Puzzle rules


def test_sudoku_box_shapes_match_the_generator():
  from trm_jax.datasets.generated import BOXES

  assert {n: render.sudoku_box(n) for n in BOXES} == BOXES


SOLUTION = np.array([[1, 2, 3, 4], [3, 4, 1, 2], [2, 1, 4, 3], [4, 3, 2, 1]])


def test_sudoku_rules():
  puzzle = np.where(np.eye(4, dtype=bool), SOLUTION, 0)
  assert rules.check_sudoku(puzzle, SOLUTION) is None
  assert "changes the given 1 at r1c1" in rules.check_sudoku(puzzle, np.roll(SOLUTION, 1, axis=1))
  holes = SOLUTION.copy()
  holes[0, 1] = 0
  assert "without a digit" in rules.check_sudoku(puzzle, holes)
  twice = SOLUTION.copy()
  twice[0, 1] = 1
  assert rules.check_sudoku(np.zeros((4, 4), int), twice).startswith("two 1s in row 1")
  box = np.array([[1, 2, 3, 4], [2, 1, 4, 3], [3, 4, 1, 2], [4, 3, 2, 1]])  # rows/cols fine, box 1 not
  assert "box 1" in rules.check_sudoku(np.zeros((4, 4), int), box)


def _maze(text):
  return np.array([[render.MAZE_CHARS.index(c) + 1 for c in row] for row in text.split("|")])


def test_maze_rules():
  puzzle = _maze("#####|#S  #|### #|#G  #|#####")
  assert rules.maze_input_error(puzzle) is None
  assert rules.check_maze(puzzle, _maze("#####|#Soo#|###o#|#Goo#|#####")) is None
  assert rules.check_maze(puzzle, _maze("#####|#So #|### #|#G  #|#####")) == "the path does not connect S to G"
  assert "through a wall" in rules.check_maze(puzzle, _maze("#####|#Soo#|#o#o#|#Goo#|#####"))
  open3 = _maze("#####|#S  #|#   #|#G  #|#####")
  assert rules.check_maze(open3, _maze("#####|#S o#|#o  #|#G  #|#####")) == "1 cell of path not connected to S"
  assert "exactly one S, found 2" in rules.maze_input_error(_maze("SS|G "))
  assert "exactly one G, found 0" in rules.maze_input_error(_maze("S |  "))


def test_arc_output_shape_rule():
  t = np.zeros((30, 30), int)
  assert "no output grid" in rules.check_arc(t)
  t[:2, :3] = 5
  t[2, :3] = t[:2, 3] = 1  # EOS border
  assert rules.check_arc(t) is None
  t[5, 5] = 4
  assert "not a rectangle" in rules.check_arc(t)


def test_draw_pair_styles(tmp_path):
  pytest.importorskip("matplotlib")
  for task, x, y in (
    ("sudoku", np.where(np.eye(4, dtype=bool), SOLUTION, 0), SOLUTION),
    ("maze", _maze("#####|#S  #|### #|#G  #|#####"), _maze("#####|#Soo#|###o#|#Goo#|#####")),
    ("arc", np.array([[1, 2], [3, 4]]), np.zeros((0, 0), int)),
  ):
    path = tmp_path / f"{task}.png"
    render.draw_pair(str(path), task, x, y, ("puzzle", "answer"), task)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_prepare_png_makes_the_directory(tmp_path):
  pytest.importorskip("matplotlib")
  path = tmp_path / "a" / "b" / "x.png"
  assert render.prepare_png(str(path)) == str(path) and path.parent.is_dir()
  (tmp_path / "file").write_text("")
  with pytest.raises(errors.UserError, match="cannot create directory"):
    render.prepare_png(str(tmp_path / "file" / "x.png"))


def test_config_file_that_raises_names_its_line(env, tmp_path):
  """A mistake inside the experiment file is one line naming the file, the line and the error's type."""
  bad = tmp_path / "exp.py"
  bad.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n  return undefined_name\n")
  p = script(env, "trm_jax.main", f"--config={bad}", f"--workdir={tmp_path}/w")
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert p.stderr.strip() == f"error: --config: {bad}:5: NameError: name 'undefined_name' is not defined"
  assert not (tmp_path / "w").exists()


def test_background_disk_full_echoes_are_dropped():
  """What orbax's threads and asyncio log about a full disk (with tracebacks) is dropped: the run's one error line
  names the path. Other records stay."""
  full = (
    "Future exception was never retrieved\nfuture: <Future finished exception=OSError(28, 'No space left on device')>"
  )
  record = lambda name, path, msg: logging.LogRecord(name, logging.ERROR, path, 1, msg, None, None)
  assert not cli._quiet_orbax(record("asyncio", "/lib/asyncio/base_events.py", full))
  assert not cli._quiet_orbax(record("absl", "/site/orbax/checkpoint/future.py", "commit failed: " + full))
  assert cli._quiet_orbax(record("asyncio", "/lib/asyncio/base_events.py", "Future exception was never retrieved"))
  assert cli._quiet_orbax(record("absl", "/work/trm_jax/train.py", full))  # not orbax's nor asyncio's
