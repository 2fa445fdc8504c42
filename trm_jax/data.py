"""Thin adapter from `config.data` to the data layer (`datasets/`, `input_pipeline`).

`config.data.name` is a TFDS builder name (`sudoku_extreme`, `maze_hard`, `arc_agi`, `sudoku_small`) with
`config.data.config` its builder config, or `generated/<set>` for the in-memory toy sets (`sudoku_small`, `maze_small`)
with `config.data.config` holding their keyword arguments (`"size=4,n_train=2000"`); their test split drops the
puzzles that also occur in train, so test accuracy is on unseen puzzles. A TFDS set that is not built yet is built on
first use: from `data.manual_dir` when given, else from its downloaded, checksum-verified raw files (`data.mirror`
rewrites the download URLs); with several processes only process 0 builds and the others wait up to
`data.build_timeout_s` for it (data_dir must then be shared, e.g. gs://).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

GENERATED = {"sudoku_small": ("sudoku", 4), "maze_small": ("maze", 10)}  # name: (task, default size)


class DataConfigError(ValueError):
  """A user error in `config.data` (one line, names the field)."""


@dataclasses.dataclass
class Data:
  train: Any  # SplitData
  evals: dict  # {split name: SplitData}
  info: dict  # dataset JSON metadata (only task and grid for generated sets)
  arrays: dict  # extra metadata arrays (ARC puzzle-id mapping)
  task: str  # "sudoku" | "maze" | "arc"
  grid: tuple  # (rows, cols) of one example as a grid


def _kwargs(text: str) -> dict:
  out = {}
  for part in filter(None, (text or "").split(",")):
    k, sep, v = part.partition("=")
    if not sep:
      raise DataConfigError(f"config.data.config: expected key=value pairs, got {part!r}")
    try:
      out[k.strip()] = int(v)
    except ValueError:
      out[k.strip()] = {"true": True, "false": False}.get(v.strip().lower(), v.strip())
  return out


def _generated(name: str, cfg: str) -> Data:
  from trm_jax.datasets import common, generated

  if name not in GENERATED:
    raise DataConfigError(f"config.data.name: unknown generated set {name!r} (have {list(GENERATED)})")
  kw = _kwargs(cfg)
  try:
    train, test = getattr(generated, name)(**kw).values()
  except TypeError as e:
    raise DataConfigError(f"config.data.config: {e}") from None
  task, n = GENERATED[name]
  n = kw.get("size", n)
  # Test keeps only the puzzles whose input does not occur in train (small grids repeat).
  seen = {row.tobytes() for row in train.all_arrays()["inputs"]}
  arrays = test.all_arrays()
  keep = np.asarray([row.tobytes() not in seen for row in arrays["inputs"]])
  plan = common.grouped_plan(arrays["inputs"][keep], arrays["labels"][keep])
  test = generated.plan_to_split(plan, test.meta.vocab_size)
  return Data(train, {"test": test}, {"task": task, "grid": [n, n]}, {}, task, (n, n))


def load(dcfg) -> Data:
  """Loads the train split and every split in `dcfg.eval_sets`."""
  name = dcfg.name
  if name.startswith("generated/"):
    data = _generated(name.partition("/")[2], dcfg.config)
  else:
    import jax

    from trm_jax import input_pipeline
    from trm_jax.datasets import common

    full = f"{name}/{dcfg.config}" if dcfg.config else name
    data_dir = os.path.expanduser(dcfg.data_dir)
    try:
      builder = common.get_builder(full, data_dir)
      if not os.path.isfile(os.path.join(builder.data_dir, common.META_FILE)):
        if jax.process_count() > 1 and jax.process_index() != 0:  # process 0 builds it, the others wait
          common.wait_for(full, data_dir, float(dcfg.get("build_timeout_s", 7200)))
        else:
          manual = os.path.expanduser(dcfg.manual_dir) if dcfg.manual_dir else None
          common.build(full, data_dir, manual_dir=manual, mirror=dcfg.get("mirror", "") or None)
      train = input_pipeline.load_split(full, "train", data_dir)
      evals = {s: input_pipeline.load_split(full, s, data_dir) for s in dcfg.eval_sets}
    except common.DataError as e:
      raise DataConfigError(f"config.data: {e}") from None
    task = train.info.get("task", name.split("_")[0])
    data = Data(train, evals, train.info, train.extra_arrays, task, tuple(train.info.get("grid", (30, 30))))
  if missing := [s for s in dcfg.eval_sets if s not in data.evals]:
    raise DataConfigError(f"config.data.eval_sets: no split {missing[0]!r} (have {sorted(data.evals)})")
  data.evals = {s: data.evals[s] for s in dcfg.eval_sets}
  return data


def arc_identity_ids(data: Data) -> dict:
  """{task id: puzzle id of its un-augmented copy} for ARC sets, else {}."""
  if data.task != "arc" or "puzzle_task" not in data.arrays:
    return {}
  a = data.arrays
  ident = np.arange(10)
  out = {}
  for pid, ti in enumerate(a["puzzle_task"]):
    if ti >= 0 and int(a["puzzle_dihedral"][pid]) == 0 and np.array_equal(a["puzzle_colours"][pid], ident):
      out.setdefault(data.info["tasks"][ti][1], pid)
  return out
