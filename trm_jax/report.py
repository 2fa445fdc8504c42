"""What `trm-train` prints about its results: evaluation summaries, a held-out example, the closing line."""

from __future__ import annotations

import numpy as np

from trm_jax import evaluate, render, rundir


def summary(step, m: dict) -> str:
  """`step N: eval/<set>/exact_accuracy=..., ...`, saying so when an evaluation was partial."""
  keys = [k for k in m if k.endswith("/exact_accuracy") or k.endswith("/accuracy") or "pass@2" in k]
  partial = [k[: -len("/partial")] for k in m if k.endswith("/partial")]
  line = f"step {step}: " + ", ".join(f"{k}={m[k]:.4f}" for k in keys)
  if partial:
    note = f"{', '.join(partial)}: eval.max_examples; ARC scores still divide by every test task"
    line += f" (PARTIAL evaluation of {note})"
  return line


def print_example(run, state, data):
  """Solves the first held-out example, prints puzzle, answer and whether it is right; -> its input tokens."""
  split = next(iter(data.evals.values()), None)
  if split is None or split.num_examples == 0:
    return None
  ex = split.examples(np.arange(1))
  res = evaluate.solve_one(run, state, ex["inputs"][0], int(ex["puzzle_identifiers"][0]))
  label = np.where(ex["labels"][0] < 0, 0, ex["labels"][0])
  right = bool(np.array_equal(np.where(ex["labels"][0] < 0, 0, res["answer"]), label))
  shown = (ex["inputs"][0], res["answer"])
  if data.task == "arc":
    from trm_jax.datasets import arc  # noqa: PLC0415

    shown = tuple(arc.crop_prediction(x) for x in shown)
  print(
    f"held-out example 0 ({'solved' if right else 'NOT solved'}; "
    f"{render.plural(res['steps'], 'supervision step')}, halting confidence {res['confidence']:.3f}):"
  )
  print(render.side_by_side(data.task, tuple(data.grid), *shown), flush=True)
  return ex["inputs"][0]


def closing_line(workdir, saved, task: str, example, tensorboard: bool) -> str:
  """Where the run's results are and what to try next (the last line `trm-train` prints)."""
  run_dir = rundir.RunDir(workdir)
  ckpt = "no checkpoint" if saved is None else f"checkpoint step {saved}"
  line = f"done: {run_dir} ({ckpt}; metrics {run_dir.metrics}"
  line += f"; tensorboard --logdir {run_dir.tensorboard})" if tensorboard else ")"
  puzzle = {"sudoku": "--sudoku=", "maze": "--maze="}.get(task) if saved is not None else None  # trm-solve needs one
  if puzzle and example is not None:
    line += f"; try: trm-solve --workdir={run_dir} {puzzle}'{render.puzzle_text(task, example)}'"
  elif task == "arc" and saved is not None:
    line += f"; try: trm-solve --workdir={run_dir} --arc=TASK.json"
  return line
