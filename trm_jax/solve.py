"""trm-solve: load a run's latest checkpoint and solve one puzzle.

    trm-solve --workdir=runs/demo --sudoku=1.3.....2..1..4.   # n*n chars, '.' or 0 blank
    trm-solve --workdir=runs/maze --maze=maze.txt              # rows of '# SG' (file or text)
    trm-solve --workdir=runs/arc1 --arc=task.json [--task_id=ID]

Prints the answer grid, the supervision steps used (the first step whose q_halt > 0, else the maximum) and the halting
confidence sigmoid(q_halt); `--png=out.png` also draws the puzzle and the answer. The puzzle is checked before any
checkpoint is read (conflicting givens, one S and one G, ...: one `error:` line, exit status 1). An answer that breaks
the puzzle's rules (a changed given, a repeated digit, a maze path that does not join S to G, an ARC output that is not
a rectangle) is printed with an `INVALID: <why>` line and exit status 2. `--verbose` also shows the libraries' logs.
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from trm_jax import cli, rules
from trm_jax.render import MAZE_CHARS, draw_pair, plural, prepare_png, render

INVALID_EXIT = 2
ARC_TESTS_MAX = 16  # test inputs solved per ARC task (ARC-AGI tasks have 1-4); a task file is at most 16 MB
STEPS_PER_HALT_MAX = 16  # --steps: at most 16 x the run's halt_max_steps


class InputError(ValueError):
  """A bad puzzle given on the command line (one line, names the input)."""


def _side(n_cells: int, seq_len: int | None, flag: str, what: str) -> int:
  """The side of a square grid of `n_cells` cells (`seq_len` of them, when given)."""
  if seq_len is not None and n_cells != seq_len:
    n = math.isqrt(seq_len)
    raise InputError(f"{flag}: expected {seq_len} {what} ({n}x{n} grid), got {n_cells}")
  n = math.isqrt(n_cells)
  if n * n != n_cells or n == 0:
    raise InputError(f"{flag}: {n_cells} {what} do not make a square grid (n*n: 16 for 4x4, 81 for 9x9)")
  return n


def sudoku_tokens(text: str, seq_len: int | None = None) -> np.ndarray:
  """n*n characters ('.', '0' or '_' blank) -> tokens (blank 1, digit + 1); conflicting givens are an error."""
  s = "".join(text.split())
  n = _side(len(s), seq_len, "--sudoku", "characters")
  allowed = ".0_" + "123456789"[:n]  # ASCII digits only (not '²', not full-width '２')
  for i, ch in enumerate(s):
    if ch not in allowed:
      raise InputError(f"--sudoku: character {i + 1} is {ch!r}; use 1-{n} or '.' for a blank")
  tokens = np.asarray([1 if ch in ".0_" else int(ch) + 1 for ch in s], np.int32)
  conflict = rules.sudoku_conflict(tokens.reshape(n, n) - 1)
  if conflict:
    raise InputError(f"--sudoku: the givens conflict: {conflict}")
  return tokens


def maze_tokens(text: str, seq_len: int | None = None) -> np.ndarray:
  """A maze file or text ('#' wall, ' ' open, one 'S', one 'G') -> tokens 1-4."""
  if os.path.isfile(text):
    with open(text) as f:
      text = f.read()
  rows = [r for r in text.splitlines() if r.strip()] if "\n" in text else [text]
  s = "".join(rows)
  n = _side(len(s), seq_len, "--maze", "cells")
  bad = [c for c in s if c not in MAZE_CHARS[:4]]
  if bad:
    raise InputError(f"--maze: character {bad[0]!r} is not one of '#', ' ', 'S', 'G'")
  tokens = np.asarray([MAZE_CHARS.index(c) + 1 for c in s], np.int32)
  why = rules.maze_input_error(tokens.reshape(n, n))
  if why:
    raise InputError(f"--maze: {why}")
  return tokens


def arc_inputs(path: str) -> list[np.ndarray]:
  """Test input grids of an ARC task JSON ({"train": [...], "test": [{"input": grid}]})."""
  from trm_jax.datasets import arc

  if not os.path.isfile(path):
    raise InputError(f"--arc: {path}: {'not a regular file' if os.path.exists(path) else 'file not found'}")
  if os.path.getsize(path) > 1 << 24:
    raise InputError(f"--arc: {path}: {os.path.getsize(path):,} bytes; an ARC task is at most 16 MB")
  try:
    with open(path) as f:
      task = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"--arc: {path}: not valid JSON ({str(e).splitlines()[0]})") from None
  except RecursionError:
    raise InputError(f"--arc: {path}: JSON nested too deeply to be an ARC task") from None
  tests = task.get("test") if isinstance(task, dict) else None
  if not isinstance(tests, list) or not tests:
    raise InputError(f'--arc: {path}: needs a non-empty "test" list')
  if len(tests) > ARC_TESTS_MAX:
    raise InputError(f"--arc: {path}: {len(tests)} test inputs; at most {ARC_TESTS_MAX} are solved per task")
  try:
    return [
      arc._grid(t.get("input") if isinstance(t, dict) else None, f"{path} test[{i}].input") for i, t in enumerate(tests)
    ]
  except arc.DataError as e:
    raise InputError(f"--arc: {e}") from None


def display(task: str, grid: tuple, tokens) -> np.ndarray:
  """Sudoku/maze tokens -> the display grid of `trm_jax.render` (Sudoku digits, 0 blank; maze tokens)."""
  g = np.asarray(tokens).reshape(grid).astype(np.int64)
  return np.maximum(g - 1, 0) if task == "sudoku" else g


def check_answer(task: str, grid: tuple, inputs, answer) -> str | None:
  """Why a Sudoku/maze answer breaks the puzzle's rules, else None."""
  x, y = display(task, grid, inputs), display(task, grid, answer)
  return rules.check_sudoku(x, y) if task == "sudoku" else rules.check_maze(x, y)


def _read_puzzle(f):
  """The command line's puzzle, checked before any checkpoint is read -> (kind, tokens or ARC grids)."""
  given = [k for k in ("sudoku", "maze", "arc") if getattr(f, k)]
  if len(given) != 1:
    raise InputError("give exactly one of --sudoku, --maze, --arc")
  if f.png:
    prepare_png(f.png)
  kind = given[0]
  read = {"sudoku": sudoku_tokens, "maze": maze_tokens, "arc": arc_inputs}[kind]
  return kind, read(getattr(f, kind))


def _check_run(kind: str, puzzle, steps: int, meta: dict) -> None:
  """The puzzle and --steps fit the run: same task, same size, at most 16 x its halt_max_steps."""
  if meta.get("task") != kind:
    raise InputError(f"--{kind}: this run was trained on {meta.get('task')!r} puzzles")
  model = json.loads(meta["config"])["model"]
  if kind != "arc":
    _side(len(puzzle), int(model["seq_len"]), f"--{kind}", "characters" if kind == "sudoku" else "cells")
  most = STEPS_PER_HALT_MAX * int(model["halt_max_steps"])
  if steps > most:
    raise InputError(f"--steps={steps}: at most {most} ({STEPS_PER_HALT_MAX} x the run's model.halt_max_steps)")


def _verdict(why: str | None, confidence: float) -> str:
  """The `INVALID: <why>` line of a broken answer, else the halting confidence (a picture's title)."""
  return f"INVALID: {why} (halting confidence {confidence:.3f})" if why else f"halting confidence {confidence:.3f}"


def main(argv) -> int:
  from absl import flags

  from trm_jax import evaluate, runs

  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise InputError("--workdir is required (a run directory written by trm-train)")
  kind, puzzle = _read_puzzle(f)
  meta, _ = runs.read_meta(f.workdir)
  _check_run(kind, puzzle, f.steps, meta)
  run, state, meta, _ = runs.load_run(f.workdir)
  grid = tuple(meta.get("grid", (0, 0)))
  steps = f.steps if f.steps > 0 else None
  if kind == "arc":
    return _solve_arc(f, run, state, meta, puzzle, grid, steps)
  res = evaluate.solve_one(run, state, puzzle, 0, steps)
  print(render(kind, grid, res["answer"]))
  print(f"supervision steps: {res['steps']}; halting confidence: {res['confidence']:.3f}")
  why = check_answer(kind, grid, puzzle, res["answer"])
  verdict = _verdict(why, res["confidence"])
  if why:
    print(verdict)
  if f.png:
    pair = display(kind, grid, puzzle), display(kind, grid, res["answer"])
    draw_pair(f.png, kind, *pair, ("puzzle", "answer"), verdict)
    print(f"wrote {f.png}")
  sys.stdout.flush()
  return INVALID_EXIT if why else 0


def _solve_arc(f, run, state, meta, grids, grid, steps) -> int:
  from trm_jax import evaluate
  from trm_jax.datasets import arc

  tid = f.task_id or os.path.splitext(os.path.basename(f.arc))[0]
  pid = int(meta.get("arc_ids", {}).get(tid, 0))
  invalid = False
  for i, g in enumerate(grids):
    res = evaluate.solve_one(run, state, arc.to_canvas(g), pid, steps)
    answer = arc.crop_prediction(res["answer"])
    why = rules.check_arc(res["answer"], arc.MAX_SIZE, arc.COLOUR_OFFSET)
    invalid |= bool(why)
    used = plural(res["steps"], "supervision step")
    print(f"test[{i}] (task {tid}, puzzle id {pid}): {used}, halting confidence {res['confidence']:.3f}")
    print(render("arc", grid, answer))
    if why:
      print(_verdict(why, res["confidence"]))
    if f.png:
      root, ext = os.path.splitext(f.png)
      path = f.png if i == 0 else f"{root}_{i}{ext}"
      draw_pair(path, "arc", g, answer, ("input", "answer"), f"{tid} test[{i}]: {_verdict(why, res['confidence'])}")
      print(f"wrote {path}")
  sys.stdout.flush()
  return INVALID_EXIT if invalid else 0


def run():
  import logging as std_logging

  from absl import app, flags, logging

  flags.DEFINE_string("workdir", None, "Required: run directory holding checkpoints/ (written by trm-train).")
  flags.DEFINE_string("sudoku", None, "Sudoku as n*n characters, row by row ('.' or 0 = blank).")
  flags.DEFINE_string(
    "maze", None, "Maze as a text file or a string of '#' (wall), ' ', 'S', 'G' cells (exactly one S and one G)."
  )
  flags.DEFINE_string("arc", None, 'ARC task JSON file (its "test" inputs are solved).')
  flags.DEFINE_string("task_id", None, "ARC task id (default: the JSON file's name).")
  flags.DEFINE_string(
    "png", None, "Also draw the puzzle and the answer here (needs matplotlib; the directory is created)."
  )
  flags.DEFINE_integer(
    "steps", 0, "Supervision steps (default: the run's eval setting; at most 16 x its halt_max_steps).", lower_bound=0
  )
  flags.DEFINE_bool("verbose", False, "Also show the libraries' logs (orbax, jax).")
  cli.own_help(__name__)

  def wrapped(argv):
    verbose = flags.FLAGS.verbose  # only the answer on the terminal: library logs (orbax, jax) only with --verbose
    logging.set_verbosity(logging.INFO if verbose else logging.ERROR)
    std_logging.getLogger().setLevel(std_logging.INFO if verbose else std_logging.ERROR)
    with cli.user_errors():
      sys.exit(main(argv))

  app.run(wrapped, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
