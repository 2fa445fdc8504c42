"""trm-solve: input parsing, solving from a checkpoint, CLI output and errors."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trm_jax import evaluate, runs, solve, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUZZLE = "1.........3..2.."  # a 4x4 Sudoku


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  spec = importlib.util.spec_from_file_location("smoke", os.path.join(ROOT, "experiments", "smoke.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(None)
  c.train.steps = 4
  c.train.eval_every = 0
  w = str(tmp_path_factory.mktemp("solve") / "run")
  train.train_and_evaluate(c, w)
  return w


def test_sudoku_tokens():
  t = solve.sudoku_tokens(PUZZLE, 16)
  assert t.tolist() == [2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4, 1, 1, 3, 1, 1]
  np.testing.assert_array_equal(solve.sudoku_tokens(PUZZLE), t)  # size from the text alone
  with pytest.raises(solve.InputError, match="expected 16 characters"):
    solve.sudoku_tokens("123", 16)
  with pytest.raises(solve.InputError, match="3 characters do not make a square grid"):
    solve.sudoku_tokens("123")
  for odd in ("\u00b2", "\uff12"):  # superscript two, full-width two: only ASCII digits are digits
    with pytest.raises(solve.InputError, match=f"character 1 is '{odd}'; use 1-4"):
      solve.sudoku_tokens(odd + "." * 15)
  with pytest.raises(solve.InputError, match="character 2 is '7'"):
    solve.sudoku_tokens("17" + "." * 14, 16)


@pytest.mark.parametrize(
  "text,needle",
  [
    ("11" + "." * 14, "two 1s in row 1"),
    ("1...1" + "." * 11, "two 1s in column 1"),
    ("1....1" + "." * 10, "two 1s in box 1"),
    ("1" * 81, "two 1s in row 1"),  # a full invalid grid
  ],
)
def test_conflicting_givens(text, needle):
  with pytest.raises(solve.InputError, match=f"givens conflict: {needle}"):
    solve.sudoku_tokens(text)


def test_maze_tokens_from_text_and_file(tmp_path):
  text = "####\n#S #\n# G#\n####\n"
  t = solve.maze_tokens(text, 16)
  assert t[:4].tolist() == [1, 1, 1, 1] and t[5] == 3 and t[10] == 4
  f = tmp_path / "m.txt"
  f.write_text(text)
  np.testing.assert_array_equal(solve.maze_tokens(str(f), 16), t)
  with pytest.raises(solve.InputError, match="not one of"):
    solve.maze_tokens("####\n#X #\n# G#\n####\n", 16)
  with pytest.raises(solve.InputError, match="'o' is not one of"):  # the path is the answer, not the puzzle
    solve.maze_tokens("####\n#So#\n# G#\n####\n", 16)
  with pytest.raises(solve.InputError, match="exactly one S, found 2"):
    solve.maze_tokens("####\n#SS#\n# G#\n####\n", 16)
  with pytest.raises(solve.InputError, match="exactly one G, found 0"):
    solve.maze_tokens("####\n#S #\n#  #\n####\n", 16)


def test_arc_inputs(tmp_path):
  f = tmp_path / "task.json"
  f.write_text(json.dumps({"train": [], "test": [{"input": [[1, 2], [3, 4]]}]}))
  (g,) = solve.arc_inputs(str(f))
  assert g.tolist() == [[1, 2], [3, 4]]
  f.write_text(json.dumps({"test": [{"input": [[1, 12]]}]}))
  with pytest.raises(solve.InputError, match="outside 0-9"):
    solve.arc_inputs(str(f))
  with pytest.raises(solve.InputError, match="not found"):
    solve.arc_inputs(str(tmp_path / "missing.json"))
  with pytest.raises(solve.InputError, match=rf"--arc: {tmp_path}: not a regular file"):
    solve.arc_inputs(str(tmp_path))  # was "file not found"
  f.write_text("[" * 100_000 + "]" * 100_000)
  with pytest.raises(solve.InputError, match="JSON nested too deeply"):
    solve.arc_inputs(str(f))
  f.write_text(json.dumps({"test": [{"input": [[1]]}] * 100_000}))  # used to be solved one by one, for hours
  with pytest.raises(solve.InputError, match=rf"{f}: 100000 test inputs; at most 16 are solved per task"):
    solve.arc_inputs(str(f))
  with open(f, "wb") as big:  # sparse: nothing is written, nothing is read
    big.truncate((1 << 24) + 1)
  with pytest.raises(solve.InputError, match=rf"{f}: 16,777,217 bytes; an ARC task is at most 16 MB"):
    solve.arc_inputs(str(f))


def test_solve_one_from_checkpoint(workdir):
  run, state, meta, _ = runs.load_run(workdir)
  assert meta["task"] == "sudoku" and meta["grid"] == [4, 4]
  res = evaluate.solve_one(run, state, solve.sudoku_tokens(PUZZLE, 16))
  assert res["per_step"].shape == (4, 16)  # eval.supervision_steps=4
  assert 1 <= res["steps"] <= 4 and 0.0 < res["confidence"] < 1.0
  np.testing.assert_array_equal(res["answer"], res["per_step"][res["steps"] - 1])
  more = evaluate.solve_one(run, state, solve.sudoku_tokens(PUZZLE, 16), n_steps=6)
  assert more["per_step"].shape == (6, 16)
  np.testing.assert_array_equal(more["per_step"][:4], res["per_step"])


def cli(*args, env=None):
  env = dict(env or os.environ, JAX_PLATFORMS="cpu")
  env.pop("TRM_TRACEBACK", None)
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.solve", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240
  )


def test_check_answer():
  x = solve.sudoku_tokens("1.....1.........")
  good = solve.sudoku_tokens("1234341221434321")
  assert solve.check_answer("sudoku", (4, 4), x, good) is None
  assert "changes the given 1" in solve.check_answer("sudoku", (4, 4), x, np.ones(16, np.int32))


def test_cli_prints_only_the_answer_and_flags_an_invalid_one(workdir, tmp_path):
  png = tmp_path / "new" / "dir" / "out.png"  # a missing directory is created
  p = cli(f"--workdir={workdir}", f"--sudoku={PUZZLE}", f"--png={png}")
  assert p.stderr.strip() == "", p.stderr[-2000:]  # no orbax/absl logs
  lines = p.stdout.strip().splitlines()
  assert all(len(l.split()) == 4 for l in lines[:4])
  assert "supervision steps:" in lines[4] and "halting confidence:" in lines[4]
  # The tiny smoke model cannot solve Sudoku: its answer breaks the rules, and says so.
  conf = lines[4].split("halting confidence: ")[1]
  assert lines[5].startswith("INVALID: ") and lines[5].endswith(f"(halting confidence {conf})")
  assert p.returncode == solve.INVALID_EXIT
  assert lines[6] == f"wrote {png}" and png.stat().st_size > 1000


def test_cli_verbose_shows_the_logs(workdir):
  p = cli(f"--workdir={workdir}", f"--sudoku={PUZZLE}", "--verbose")
  assert "checkpoint" in p.stderr.lower() and p.returncode == solve.INVALID_EXIT


@pytest.mark.parametrize(
  "args,needle",
  [
    (["--sudoku=12"], "do not make a square grid"),
    (["--sudoku=" + "." * 81], "expected 16 characters (4x4 grid), got 81"),
    (["--maze=#S G"], "trained on 'sudoku'"),
    (["--arc=TASK"], "--arc: this run was trained on 'sudoku' puzzles"),
    (
      [f"--sudoku={PUZZLE}", "--steps=100000000"],
      "--steps=100000000: at most 48 (16 x the run's model.halt_max_steps)",
    ),
  ],
)
def test_cli_errors_are_one_line(workdir, args, needle, tmp_path):
  task = tmp_path / "task.json"
  task.write_text(json.dumps({"train": [], "test": [{"input": [[1] * 30] * 30}]}))
  p = cli(f"--workdir={workdir}", *(a.replace("TASK", str(task)) for a in args))
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr[-2000:]
  assert p.stderr.startswith("error: ") and needle in p.stderr, p.stderr[-2000:]


def test_cli_checks_the_puzzle_before_the_run(tmp_path):
  """Conflicting givens / a bad maze fail in one line even where no run exists (nothing was read)."""
  for arg, needle in ((f"--sudoku=11{'.' * 14}", "givens conflict"), ("--maze=S  S", "exactly one S")):
    p = cli(f"--workdir={tmp_path / 'nothing'}", arg)
    assert p.returncode == 1 and p.stderr.startswith("error: ") and needle in p.stderr, p.stderr[-2000:]


def test_cli_png_without_matplotlib(tmp_path):
  fake = tmp_path / "site" / "matplotlib"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
  p = cli(f"--workdir={tmp_path / 'nothing'}", f"--sudoku={PUZZLE}", f"--png={tmp_path / 'o.png'}", env=env)
  assert p.returncode == 1 and "Traceback" not in p.stderr
  assert p.stderr.strip() == "error: --png needs matplotlib: pip install -e '.[plots]'"


def test_cli_missing_run(tmp_path):
  p = cli(f"--workdir={tmp_path}", f"--sudoku={PUZZLE}")
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("error: --workdir")
  p = cli(f"--sudoku={PUZZLE}")
  assert p.returncode == 1 and p.stderr.strip() == "error: --workdir is required (a run directory written by trm-train)"
