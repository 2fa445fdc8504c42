"""The paper experiments' evaluation steps, as `trm_jax.cadence` computes them for a run.

    python benchmarks/schedules.py                       # Sudoku-Extreme and Maze (seconds)
    python benchmarks/schedules.py --arc_dir shared/data/arc   # + ARC-AGI-1 (builds the plan: minutes)

Sudoku-Extreme aug1000 and Maze-Hard have 1,000 groups whose puzzles all hold
one example, so a split of that shape gives the real step counts without the
data; ARC's counts depend on every task's number of pairs, so they are computed
from the JSON files (the same augmentation plan `trm-data build` makes).
"""

import argparse
import importlib.util
import os

import numpy as np

from trm_jax import cadence
from trm_jax.datasets import splits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def experiment(name, arch):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(f"arch={arch}")


def shaped_split(puzzle_indices, group_indices):
  n = int(puzzle_indices[-1])
  x = np.ones((n, 1), np.uint8)
  return splits.make_split(x, x, puzzle_indices, group_indices, np.zeros(len(puzzle_indices) - 1, np.int32), 3, 1)


def arc_split(arc_dir):
  from pathlib import Path

  from trm_jax.datasets import arc, arc_builder

  tasks = [
    (s, tid, role, t)
    for role, subsets in (("train", ("training", "concept")), ("eval", ("evaluation",)))
    for s in subsets
    for tid, t in arc.load_subset(Path(arc_dir), s).items()
  ]
  plan = arc_builder.build_plans(tasks, 1000, 42)[0]["train"]
  return shaped_split(plan.puzzle_indices, plan.group_indices)


def row(name, arch, data):
  c = experiment(name, arch)
  t = c.train
  m = data.meta
  t.steps = max(1, int(t.epochs * m.total_groups * m.mean_puzzle_examples // t.global_batch_size))
  cad = cadence.cadence(t, data, c.seed)
  steps = cad.eval_steps
  shown = ", ".join(map(str, steps[:2])) + ", ..., " + str(steps[-1]) if len(steps) > 3 else ", ".join(map(str, steps))
  return (
    f"| {name} | {arch} | {t.epochs} / {t.eval_every_epochs} | {m.total_groups} | "
    f"{m.mean_puzzle_examples:.4f} | {cad.lr_steps} | {cad.end} | {len(steps)} | {shown} |"
  )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--arc_dir", default="", help="folder with arc-agi_*_challenges.json / _solutions.json")
  args = p.parse_args()
  print("| experiment | arch | epochs / eval every | groups | mean examples | lr horizon | end | evals | at steps |")
  print("|---|---|---|---|---|---|---|---|---|")
  one = shaped_split(np.arange(1001), np.arange(1001))
  for name in ("sudoku_mlp", "maze"):
    for arch in ("trm", "hrm"):
      print(row(name, arch, one), flush=True)
  if args.arc_dir:
    data = arc_split(args.arc_dir)
    for arch in ("trm",):
      print(row("arc1", arch, data), flush=True)


if __name__ == "__main__":
  main()
