"""trm-solve: input parsing, solving from a checkpoint, CLI output and errors."""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trm_jax import solve, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUZZLE = "1.........3..2.."   # a 4x4 Sudoku


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
  with pytest.raises(solve.InputError, match="expected 16 characters"):
    solve.sudoku_tokens("123", 16)
  with pytest.raises(solve.InputError, match="character 2 is '7'"):
    solve.sudoku_tokens("17" + "." * 14, 16)


def test_maze_tokens_from_text_and_file(tmp_path):
  text = "####\n#S #\n# G#\n####\n"
  t = solve.maze_tokens(text, 16)
  assert t[:4].tolist() == [1, 1, 1, 1] and t[5] == 3 and t[10] == 4
  f = tmp_path / "m.txt"
  f.write_text(text)
  np.testing.assert_array_equal(solve.maze_tokens(str(f), 16), t)
  with pytest.raises(solve.InputError, match="not one of"):
    solve.maze_tokens("####\n#X #\n# G#\n####\n", 16)


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


def test_solve_one_from_checkpoint(workdir):
  run, state, meta = solve.load_run(workdir)
  assert meta["task"] == "sudoku" and meta["grid"] == [4, 4]
  res = solve.solve_one(run, state, solve.sudoku_tokens(PUZZLE, 16))
  assert res["per_step"].shape == (4, 16)            # eval.supervision_steps=4
  assert 1 <= res["steps"] <= 4 and 0.0 < res["confidence"] < 1.0
  np.testing.assert_array_equal(res["answer"], res["per_step"][res["steps"] - 1])
  more = solve.solve_one(run, state, solve.sudoku_tokens(PUZZLE, 16), n_steps=6)
  assert more["per_step"].shape == (6, 16)
  np.testing.assert_array_equal(more["per_step"][:4], res["per_step"])


def cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TRM_TRACEBACK", None)
  return subprocess.run([sys.executable, "-m", "trm_jax.solve", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=240)


def test_cli_prints_grid_steps_confidence_and_png(workdir, tmp_path):
  png = tmp_path / "out.png"
  p = cli(f"--workdir={workdir}", f"--sudoku={PUZZLE}", f"--png={png}")
  assert p.returncode == 0, p.stderr[-2000:]
  lines = p.stdout.strip().splitlines()
  assert len(lines) == 5 and all(len(l.split()) == 4 for l in lines[:4])
  assert "supervision steps:" in lines[4] and "halting confidence:" in lines[4]
  assert png.stat().st_size > 1000


@pytest.mark.parametrize("args,needle", [
    (["--sudoku=12"], "expected 16 characters"),
    (["--maze=####"], "trained on 'sudoku'"),
])
def test_cli_errors_are_one_line(workdir, args, needle):
  p = cli(f"--workdir={workdir}", *args)
  assert p.returncode != 0 and "Traceback" not in p.stderr
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and needle in last, p.stderr[-2000:]


def test_cli_missing_run(tmp_path):
  p = cli(f"--workdir={tmp_path}", f"--sudoku={PUZZLE}")
  assert p.returncode != 0 and "Traceback" not in p.stderr
  assert p.stderr.strip().splitlines()[-1].startswith("error: --workdir")
