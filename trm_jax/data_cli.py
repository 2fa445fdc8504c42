"""`trm-data`: build, inspect and draw the TRM puzzle datasets.

  trm-data build NAME[/CONFIG] [--data_dir DIR] [--manual_dir DIR] [--overwrite]
  trm-data stats NAME[/CONFIG] [--data_dir DIR] [--split SPLIT]
  trm-data show  NAME[/CONFIG] [--data_dir DIR] [--split train] [--index 0] [--png FILE]
  trm-data bench NAME[/CONFIG] [--data_dir DIR] [--batch 768] [--process_count 1]
  trm-data list
--data_dir defaults to ~/tensorflow_datasets, like trm-train's config.
User errors (bad raw files, unknown names) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from trm_jax import config_lib, errors

NAME_HELP = "NAME[/CONFIG], e.g. sudoku_small/4x4 (see `trm-data list`)"
DATA_HELP = "where built sets live (default: %(default)s, the same as trm-train's config.data.data_dir)"


def _command(sub, cmd, summary, text, named=True):
  s = sub.add_parser(cmd, help=summary, description=text)
  if named:
    s.add_argument("name", help=NAME_HELP + ("" if cmd == "build" else ", or a dataset directory"))
    s.add_argument("--data_dir", default=os.path.expanduser(config_lib.data_config().data_dir), help=DATA_HELP)
  return s


def _parser():
  epilog = "`trm-data CMD --help` describes each command."
  p = argparse.ArgumentParser(prog="trm-data", description=__doc__.split("\n")[0], epilog=epilog)
  sub = p.add_subparsers(dest="cmd", required=True, metavar="CMD")
  what = "Builds NAME/CONFIG into --data_dir. Raw files are checked before anything is written; an existing set is "
  what += "kept (--overwrite rebuilds it)."
  b = _command(sub, "build", "build a dataset from raw files (or generate it)", what)
  raw = "raw files, offline (e.g. ../shared/data/arc from the repository root); without it they are downloaded"
  b.add_argument("--manual_dir", default=None, help=raw + " and checked")
  b.add_argument("--overwrite", action="store_true", help="rebuild even if the set is already built")
  checksums = "record size/sha256 of downloads in checksums.tsv (maintainers, online)"
  b.add_argument("--register_checksums", action="store_true", help=checksums)
  what = "Prints the metadata of every split (or --split) and how often each token (named) occurs in inputs and labels."
  st = _command(sub, "stats", "sizes, shapes and a token histogram of every split", what)
  st.add_argument("--split", default=None, help="only this split (default: every split)")
  sample = "records per split read for the token histogram (default: %(default)s)"
  st.add_argument("--sample", type=int, default=20000, help=sample)
  what = "Prints one example (input and label) as text; --png also draws it."
  sh = _command(sub, "show", "print (and draw) one example", what)
  sh.add_argument("--split", default="train", help="split to read (default: %(default)s)")
  sh.add_argument("--index", type=int, default=0, help="example index in the split (default: %(default)s)")
  png = "also draw the example here (needs matplotlib: pip install -e '.[plots]'; the directory is created)"
  sh.add_argument("--png", default=None, help=png)
  what = "Times train_batch, the training input pipeline, on process 0's rows of each global batch."
  bn = _command(sub, "bench", "loader throughput (examples/s)", what)
  bn.add_argument("--split", default="train", help="split to read (default: %(default)s)")
  bn.add_argument("--batch", type=int, default=768, help="global batch size (default: %(default)s)")
  bn.add_argument("--steps", type=int, default=20, help="batches timed (default: %(default)s)")
  bn.add_argument("--process_count", type=int, default=1, help="processes sharing each batch (default: %(default)s)")
  bn.add_argument("--epochs_per_iter", type=int, default=1, help="epochs sampled per plan (default: %(default)s)")
  listing = "Lists every builder/config, whether it needs raw files, and what it holds."
  _command(sub, "list", "list builders and configs", listing, named=False)
  return p


def _size_mib(path) -> float:
  return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def _cmd_build(args):
  from trm_jax.datasets import common

  where = common.published_dir(args.name, Path(args.data_dir), args.overwrite)
  if where.exists() and not args.overwrite:
    common.check_complete(args.name, where)
    print(f"{args.name}: already built: {where} ({_size_mib(where):.1f} MiB; --overwrite rebuilds it)")
    return
  t = time.time()
  path = common.build(
    args.name, args.data_dir, args.manual_dir, overwrite=args.overwrite, register_checksums=args.register_checksums
  )
  print(f"built {args.name} in {time.time() - t:.1f}s: {path} ({_size_mib(path):.1f} MiB)")


def _load(args, split=None):
  from trm_jax import input_pipeline

  return input_pipeline.load_split(args.name, split or args.split, args.data_dir)


def token_names(task: str, vocab: int) -> list[str]:
  """What each token id means (inputs; in labels 0 means 'ignore')."""
  named = {
    "sudoku": ["PAD", "blank"] + [f"digit {d}" for d in range(1, vocab - 1)],
    "maze": ["PAD", "'#' wall", "' ' open", "'S' start", "'G' goal", "'o' path"],
    "arc": ["PAD", "EOS"] + [f"colour {c}" for c in range(vocab - 2)],
  }.get(task, [])
  return (named + [""] * vocab)[:vocab]


def _cmd_stats(args):
  from trm_jax import input_pipeline
  from trm_jax.datasets import common, overlap

  d = input_pipeline.dataset_dir(args.name, args.data_dir)
  splits = every = sorted(common.read_metadata(d)["json"]["splits"])
  if args.split is not None:
    if args.split not in every:
      raise common.DataError(f"{d}: no split {args.split!r} (have {every})")
    splits = [args.split]
  print(f"dataset   {d}  ({_size_mib(d):.1f} MiB on disk, all splits)")
  hists, task, shape, vocab, notes, loaded = {}, "grid", (), 0, [], {}
  for split in splits:
    data = loaded[split] = _load(args, split=split)
    m = data.meta
    task, shape = _task(data)
    vocab = max(vocab, int(m.vocab_size))
    print(
      f"split     {split}: {m.num_examples} examples, {m.num_puzzles} puzzles, {m.total_groups} groups; "
      f"seq_len={m.seq_len} vocab={m.vocab_size} puzzle_ids={m.num_puzzle_identifiers} "
      f"mean_puzzle_examples={m.mean_puzzle_examples:.3f}"
    )
    n = data.num_examples
    idx = np.unique(np.linspace(0, max(n - 1, 0), min(n, args.sample)).astype(np.int64))
    inputs, labels = data.reader.read(idx) if len(idx) else (np.zeros((0,), np.int64),) * 2
    if len(idx) != n:
      notes.append(f"{split}: {len(idx)} of {n} records")
    hists[split] = (np.bincount(np.ravel(inputs), minlength=vocab), np.bincount(np.ravel(labels), minlength=vocab))
  grid = f", {shape[0]}x{shape[1]} grid" if len(shape) == 2 else ""
  print(f"task      {task}{grid}; in labels 0 means ignore")
  print("tokens" + (f" (sample: {', '.join(notes)})" if notes else "") + ":")
  names = token_names(task, vocab)
  w = max([len("name")] + [len(x) for x in names])
  cols = [f"{s} {k}" for s in hists for k in ("inputs", "labels")]
  cw = [max(12, len(c)) for c in cols]
  print(f"  {'id':>3}  {'name':<{w}}  " + "  ".join(f"{c:>{x}}" for c, x in zip(cols, cw)))
  for t in range(vocab):
    vals = [int(h[t]) if t < len(h) else 0 for pair in hists.values() for h in pair]
    print(f"  {t:>3}  {names[t]:<{w}}  " + "  ".join(f"{v:>{x}d}" for v, x in zip(vals, cw)))
  for split in splits:
    others = {o: loaded.get(o) or _load(args, split=o) for o in every if o != split}
    for line in overlap.warnings(args.name, split, loaded[split], others):
      print(line, file=sys.stderr)


def _task(data):
  return data.info.get("task", "grid"), tuple(data.info.get("grid", ()))


def _grids(data, index):
  from trm_jax.datasets import arc

  inputs, labels = data.reader.read(np.array([index]))
  task, shape = _task(data)
  x, y = inputs[0], labels[0]
  if task == "arc":
    return task, arc.from_canvas(x), arc.from_canvas(y)
  if task == "sudoku":
    return task, x.reshape(shape).astype(int) - 1, y.reshape(shape) - 1
  if task == "maze":
    return task, x.reshape(shape), y.reshape(shape)
  return task, x[None], y[None]


def _text(task, g):
  from trm_jax.datasets import maze

  if task == "sudoku":
    return [" ".join("." if v == 0 else str(v) for v in r) for r in g]
  if task == "maze":
    return [maze.to_text(r) for r in g]
  return [" ".join(str(int(v)) for v in r) for r in g]


def _cmd_show(args):
  from trm_jax import render

  if args.png:
    render.prepare_png(args.png)
  data = _load(args)
  if not 0 <= args.index < data.num_examples:
    raise errors.UserError(f"{args.name}: index {args.index} outside 0..{data.num_examples - 1} of split {args.split}")
  task, x, y = _grids(data, args.index)
  p = int(data.example_puzzle[args.index])
  g = int(np.searchsorted(data.group_indices, p, "right") - 1)
  print(f"{args.name} {args.split}[{args.index}]: puzzle {p} (id {int(data.puzzle_identifiers[p])}), group {g}")
  left, right = _text(task, x), _text(task, y)
  width = max(len(s) for s in left) if left else 0
  print(f"{'input':<{width}}   label")
  for a, b in itertools.zip_longest(left, right, fillvalue=""):
    print(f"{a:<{width}}   {b}")
  if args.png:
    render.draw_pair(args.png, task, x, y, ("input", "label"), f"{args.name} {args.split}[{args.index}]")
    print(f"wrote {args.png}")


def _cmd_bench(args):
  from trm_jax import input_pipeline as ip

  data = _load(args)
  pc, b, e = args.process_count, args.batch, args.epochs_per_iter
  try:
    ip.train_batch(data, 0, 0, b, 0, pc, e)
  except ValueError as err:
    raise errors.UserError(f"{args.name}: {err}") from None
  t = time.perf_counter()
  for step in range(1, args.steps + 1):
    ip.train_batch(data, 0, step, b, 0, pc, e)
  dt = time.perf_counter() - t
  print(
    f"{args.name} {args.split}: {args.steps * b // pc / dt:,.0f} examples/s on process 0 of {pc} "
    f"(global batch {b}, {args.steps} steps, seq_len {data.meta.seq_len})"
  )


def _cmd_list(args):
  from trm_jax.datasets import arc_builder, generated, maze, sudoku

  rows = [
    (f"{cls.name}/{cfg.name}", "downloads" if cfg.needs_files else "generated", cfg.description)
    for cls in (sudoku.SudokuExtreme, maze.MazeHard, arc_builder.ArcAgi, generated.SudokuSmall)
    for cfg in cls.BUILDER_CONFIGS
  ]
  w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
  for a, b, c in rows:
    print(f"{a:<{w0}}  {b:<{w1}}  {c}")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.getLogger("absl").setLevel(logging.WARNING)
  from trm_jax.datasets.common import DataError

  try:
    for flag in ("sample", "batch", "steps", "process_count", "epochs_per_iter"):  # 0 reads nothing or loops forever
      v = getattr(args, flag, None)
      if v is not None and v < 1:
        raise errors.UserError(f"--{flag}={v}: must be >= 1")
    commands = {"build": _cmd_build, "stats": _cmd_stats, "show": _cmd_show, "bench": _cmd_bench, "list": _cmd_list}
    commands[args.cmd](args)
  except (DataError, errors.UserError) as e:
    print(f"trm-data: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:  # read-only or full data_dir, missing permissions: one line
    if e.errno not in errors.USER_ERRNOS or os.environ.get("TRM_TRACEBACK"):
      raise
    print(f"trm-data: error: {errors.os_error_line(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("trm-data: interrupted", file=sys.stderr)
    return 130
  return 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
