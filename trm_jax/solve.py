"""trm-solve: load a run's latest checkpoint and solve one puzzle.

    trm-solve --workdir=runs/demo --sudoku=1.3.....2..1..4.   # n*n chars, '.' or 0 blank
    trm-solve --workdir=runs/maze --maze=maze.txt              # rows of '# SG' (file or text)
    trm-solve --workdir=runs/arc1 --arc=task.json [--task_id=ID]

Prints the answer grid, the supervision steps used (the first step whose
q_halt > 0, else the maximum) and the halting confidence sigmoid(q_halt);
`--png=out.png` also draws the puzzle and the answer.
"""
from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from trm_jax.render import MAZE_CHARS, render, write_png


class InputError(ValueError):
  """A bad puzzle given on the command line (one line, names the input)."""


# ---------------------------------------------------------------------------
# Text <-> tokens.


def sudoku_tokens(text: str, seq_len: int) -> np.ndarray:
  s = "".join(text.split())
  n = math.isqrt(seq_len)
  if len(s) != seq_len:
    raise InputError(f"--sudoku: expected {seq_len} characters ({n}x{n} grid), got {len(s)}")
  out = []
  for i, ch in enumerate(s):
    if ch in ".0_":
      out.append(1)
    elif ch.isdigit() and 1 <= int(ch) <= n:
      out.append(int(ch) + 1)
    else:
      raise InputError(f"--sudoku: character {i + 1} is {ch!r}; use 1-{n} or '.' for a blank")
  return np.asarray(out, np.int32)


def maze_tokens(text: str, seq_len: int) -> np.ndarray:
  if os.path.isfile(text):
    with open(text) as f:
      text = f.read()
  rows = [r for r in text.splitlines() if r.strip()] if "\n" in text else [text]
  s = "".join(rows)
  if len(s) != seq_len:
    raise InputError(f"--maze: expected {seq_len} cells ({math.isqrt(seq_len)}x{math.isqrt(seq_len)}), got {len(s)}")
  bad = [c for c in s if c not in MAZE_CHARS]
  if bad:
    raise InputError(f"--maze: character {bad[0]!r} is not one of '#', ' ', 'S', 'G'")
  return np.asarray([MAZE_CHARS.index(c) + 1 for c in s], np.int32)


def arc_inputs(path: str) -> list[np.ndarray]:
  """Test input grids of an ARC task JSON ({"train": [...], "test": [{"input": grid}]})."""
  from trm_jax.datasets import arc
  if not os.path.isfile(path):
    raise InputError(f"--arc: {path}: file not found")
  try:
    with open(path) as f:
      task = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise InputError(f"--arc: {path}: not valid JSON ({str(e).splitlines()[0]})") from None
  tests = task.get("test") if isinstance(task, dict) else None
  if not isinstance(tests, list) or not tests:
    raise InputError(f"--arc: {path}: needs a non-empty \"test\" list")
  try:
    return [arc._grid(t.get("input") if isinstance(t, dict) else None, f"{path} test[{i}].input")
            for i, t in enumerate(tests)]
  except arc.DataError as e:
    raise InputError(f"--arc: {e}") from None


# ---------------------------------------------------------------------------
# Model.


def load_run(workdir: str):
  """-> (Run, state, meta) from the workdir's latest checkpoint (EMA weights used for solving)."""
  from trm_jax import runs
  run, state, meta, _ = runs.load_run(workdir)
  return run, state, meta


def solve_one(run, state, inputs, puzzle_id: int = 0, n_steps: int | None = None) -> dict:
  """Runs one example -> answer tokens, steps used, halting confidence, per-step answers."""
  from trm_jax import evaluate
  import jax
  rows = run.mesh.size
  seq = run.mcfg.seq_len
  batch = {"inputs": np.zeros((rows, seq), np.int32), "labels": np.full((rows, seq), -100, np.int32),
           "puzzle_identifiers": np.zeros((rows,), np.int32)}
  batch["inputs"][0] = inputs
  batch["puzzle_identifiers"][0] = puzzle_id
  step_fn = run.eval_step
  if n_steps is not None and n_steps != run.eval_steps:
    step_fn = jax.jit(evaluate.make_eval_step(run.model, run.mcfg, n_steps))
  out = step_fn(state.eval_params(), state.consts, state.puzzle_table, run.make_batch(batch))
  preds = np.asarray(jax.device_get(out["preds"]))[:, 0]
  q = np.asarray(jax.device_get(out["q_halt"]))[:, 0]
  halts = np.flatnonzero(q > 0)
  k = int(halts[0]) if len(halts) else len(q) - 1
  return {"answer": preds[k], "steps": k + 1, "confidence": float(1 / (1 + np.exp(-q[k]))),
          "per_step": preds, "q_halt": q}


# ---------------------------------------------------------------------------
# CLI.


def main(argv) -> int:
  from absl import flags
  del argv
  f = flags.FLAGS
  given = [k for k in ("sudoku", "maze", "arc") if getattr(f, k)]
  if len(given) != 1:
    raise InputError("give exactly one of --sudoku, --maze, --arc")
  if f.png and not os.path.isdir(os.path.dirname(os.path.abspath(f.png))):
    raise InputError(f"--png={f.png}: parent directory does not exist")
  run, state, meta = load_run(f.workdir)
  seq, grid = run.mcfg.seq_len, tuple(meta.get("grid", (0, 0)))
  kind = given[0]
  steps = f.steps if f.steps > 0 else None
  if kind == "arc":
    from trm_jax.datasets import arc
    tid = f.task_id or os.path.splitext(os.path.basename(f.arc))[0]
    pid = int(meta.get("arc_ids", {}).get(tid, 0))
    for i, g in enumerate(arc_inputs(f.arc)):
      res = solve_one(run, state, arc.to_canvas(g), pid, steps)
      answer = arc.crop_prediction(res["answer"])
      print(f"test[{i}] (task {tid}, puzzle id {pid}): {res['steps']} supervision steps, "
            f"halting confidence {res['confidence']:.3f}")
      print(render("arc", grid, answer))
      if f.png:
        root, ext = os.path.splitext(f.png)
        write_png(f.png if i == 0 else f"{root}_{i}{ext}", "arc", grid, g, answer)
    return 0
  if meta.get("task") != kind:
    raise InputError(f"--{kind}: this run was trained on {meta.get('task')!r} puzzles")
  tokens = sudoku_tokens(f.sudoku, seq) if kind == "sudoku" else maze_tokens(f.maze, seq)
  res = solve_one(run, state, tokens, 0, steps)
  print(render(kind, grid, res["answer"]))
  print(f"supervision steps: {res['steps']}; halting confidence: {res['confidence']:.3f}")
  if f.png:
    write_png(f.png, kind, grid, tokens, res["answer"])
  return 0


def run():
  from absl import app, flags
  flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.", required=True)
  flags.DEFINE_string("sudoku", None, "Sudoku as n*n characters ('.' or 0 = blank).")
  flags.DEFINE_string("maze", None, "Maze as a text file or a string of '# SG' cells.")
  flags.DEFINE_string("arc", None, "ARC task JSON file.")
  flags.DEFINE_string("task_id", None, "ARC task id (default: the JSON file's name).")
  flags.DEFINE_string("png", None, "Also write a picture here.")
  flags.DEFINE_integer("steps", 0, "Supervision steps (default: the run's eval setting).")

  def wrapped(argv):
    from trm_jax import cli
    with cli.user_errors():
      sys.exit(main(argv))

  app.run(wrapped)


if __name__ == "__main__":
  run()
