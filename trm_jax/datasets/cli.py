"""`trm-data`: build, inspect and draw the TRM puzzle datasets.

  trm-data build NAME[/CONFIG] --data_dir DIR [--manual_dir DIR] [--overwrite]
  trm-data stats NAME[/CONFIG] --data_dir DIR [--split train]
  trm-data show  NAME[/CONFIG] --data_dir DIR [--split train] [--index 0]
                 [--png FILE]
  trm-data bench NAME[/CONFIG] --data_dir DIR [--batch 768] [--process_count 1]
  trm-data list
User errors (bad raw files, unknown names) print one line and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

def _parser():
  p = argparse.ArgumentParser(prog='trm-data', description=__doc__.split(
      '\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  b = sub.add_parser('build', help='build a dataset from raw files')
  b.add_argument('name')
  b.add_argument('--data_dir', required=True)
  b.add_argument('--manual_dir', default=None)
  b.add_argument('--overwrite', action='store_true')
  b.add_argument('--register_checksums', action='store_true',
                 help='record size/sha256 of downloads in checksums.tsv')
  for cmd in ('stats', 'show'):
    s = sub.add_parser(cmd)
    s.add_argument('name', help='NAME[/CONFIG] or a dataset directory')
    s.add_argument('--data_dir', default=None)
    s.add_argument('--split', default='train')
    if cmd == 'show':
      s.add_argument('--index', type=int, default=0)
      s.add_argument('--png', default=None)
    else:
      s.add_argument('--sample', type=int, default=20000,
                     help='records used for the token histogram')
  bn = sub.add_parser('bench', help='loader throughput (examples/s)')
  bn.add_argument('name')
  bn.add_argument('--data_dir', default=None)
  bn.add_argument('--split', default='train')
  bn.add_argument('--batch', type=int, default=768)
  bn.add_argument('--steps', type=int, default=20)
  bn.add_argument('--process_count', type=int, default=1)
  bn.add_argument('--epochs_per_iter', type=int, default=1)
  sub.add_parser('list', help='list builders and configs')
  return p


def _cmd_build(args):
  from trm_jax.datasets import common
  t = time.time()
  path = common.build(args.name, args.data_dir, args.manual_dir,
                      overwrite=args.overwrite,
                      register_checksums=args.register_checksums)
  size = sum(f.stat().st_size for f in path.rglob('*') if f.is_file())
  print(f'built {args.name} in {time.time() - t:.1f}s: {path} '
        f'({size / 2**20:.1f} MiB)')


def _load(args, in_memory=False):
  from trm_jax import input_pipeline
  return input_pipeline.load_split(args.name, args.split, args.data_dir,
                                   in_memory=in_memory)


def _cmd_stats(args):
  from trm_jax import input_pipeline
  data = _load(args)
  d = input_pipeline.dataset_dir(args.name, args.data_dir)
  m = data.meta
  size = sum(f.stat().st_size for f in d.rglob('*') if f.is_file())
  print(f'dataset   {d}  ({size / 2**20:.1f} MiB on disk, all splits)')
  print(f'split     {args.split}: {m.num_examples} examples, {m.num_puzzles} '
        f'puzzles, {m.total_groups} groups')
  print(f'meta      seq_len={m.seq_len} vocab={m.vocab_size} '
        f'puzzle_ids={m.num_puzzle_identifiers} '
        f'mean_puzzle_examples={m.mean_puzzle_examples:.3f}')
  n = data.num_examples
  idx = np.unique(np.linspace(0, n - 1, min(n, args.sample)).astype(np.int64))
  inputs, labels = data.reader.read(idx)
  note = '' if len(idx) == n else f' (sample of {len(idx)} records)'
  print(f'tokens{note}:')
  hi = np.bincount(inputs.ravel(), minlength=m.vocab_size)
  hl = np.bincount(labels.ravel(), minlength=m.vocab_size)
  for t in range(max(len(hi), len(hl))):
    print(f'  {t:3d}  inputs {hi[t] if t < len(hi) else 0:>12d}  '
          f'labels {hl[t] if t < len(hl) else 0:>12d}')
  from trm_jax.datasets import overlap
  others = {s: input_pipeline.load_split(args.name, s, args.data_dir)
            for s in data.info.get('splits', {}) if s != args.split}
  for line in overlap.warnings(args.name, args.split, data, others):
    print(line, file=sys.stderr)


def _task(data):
  return data.info.get('task', 'grid'), tuple(data.info.get('grid', ()))


def _grids(data, index):
  from trm_jax.datasets import arc, maze
  inputs, labels = data.reader.read(np.array([index]))
  task, shape = _task(data)
  x, y = inputs[0], labels[0]
  if task == 'arc':
    return task, arc.from_canvas(x), arc.from_canvas(y)
  if task == 'sudoku':
    return task, x.reshape(shape).astype(int) - 1, y.reshape(shape) - 1
  if task == 'maze':
    return task, x.reshape(shape), y.reshape(shape)
  return task, x[None], y[None]


def _text(task, g):
  from trm_jax.datasets import maze
  if task == 'sudoku':
    return [' '.join('.' if v == 0 else str(v) for v in r) for r in g]
  if task == 'maze':
    return [maze.to_text(r) for r in g]
  return [' '.join(str(int(v)) for v in r) for r in g]


def _cmd_show(args):
  from trm_jax.datasets.common import DataError
  data = _load(args)
  if not 0 <= args.index < data.num_examples:
    raise DataError(f'{args.name}: index {args.index} outside 0..'
                    f'{data.num_examples - 1} of split {args.split}')
  task, x, y = _grids(data, args.index)
  p = int(data.example_puzzle[args.index])
  g = int(np.searchsorted(data.group_indices, p, 'right') - 1)
  print(f'{args.name} {args.split}[{args.index}]: puzzle {p} '
        f'(id {int(data.puzzle_identifiers[p])}), group {g}')
  left, right = _text(task, x), _text(task, y)
  width = max(len(s) for s in left) if left else 0
  print(f'{"input":<{width}}   label')
  for i in range(max(len(left), len(right))):
    a = left[i] if i < len(left) else ''
    b = right[i] if i < len(right) else ''
    print(f'{a:<{width}}   {b}')
  if args.png:
    from trm_jax import render
    render.draw_example(task, x, y, args.png, f'{args.name} {args.split}[{args.index}]')
    print(f'wrote {args.png}')


def _cmd_bench(args):
  from trm_jax import input_pipeline as ip
  data = _load(args)
  from trm_jax.datasets.common import DataError
  pc, b, e = args.process_count, args.batch, args.epochs_per_iter
  try:
    ip.train_batch(data, 0, 0, b, 0, pc, e)
  except ValueError as err:
    raise DataError(f'{args.name}: {err}') from None
  t = time.perf_counter()
  for step in range(1, args.steps + 1):
    ip.train_batch(data, 0, step, b, 0, pc, e)
  dt = time.perf_counter() - t
  print(f'{args.name} {args.split}: {args.steps * b // pc / dt:,.0f} '
        f'examples/s on process 0 of {pc} (global batch {b}, '
        f'{args.steps} steps, seq_len {data.meta.seq_len})')


def _cmd_list(args):
  import tensorflow_datasets as tfds
  from trm_jax.datasets import arc_builder, generated, maze, sudoku
  for cls in (sudoku.SudokuExtreme, maze.MazeHard, arc_builder.ArcAgi,
              generated.SudokuSmall):
    for cfg in cls.BUILDER_CONFIGS:
      files = 'downloads' if cfg.needs_files else 'generated'
      print(f'{tfds.core.naming.camelcase_to_snakecase(cls.__name__)}/'
            f'{cfg.name:<16} {files:<18} {cfg.description}')


def _check_counts(args):
  """Counts that must be >= 1 (0 would read nothing or loop forever)."""
  from trm_jax.datasets.common import DataError
  for flag in ('sample', 'batch', 'steps', 'process_count', 'epochs_per_iter'):
    v = getattr(args, flag, None)
    if v is not None and v < 1:
      raise DataError(f'--{flag}={v}: must be >= 1')


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  logging.getLogger('absl').setLevel(logging.WARNING)
  from trm_jax.datasets.common import DataError
  try:
    _check_counts(args)
    {'build': _cmd_build, 'stats': _cmd_stats, 'show': _cmd_show,
     'bench': _cmd_bench, 'list': _cmd_list}[args.cmd](args)
  except DataError as e:
    print(f'trm-data: error: {e}', file=sys.stderr)
    return 1
  except OSError as e:  # read-only or full data_dir, missing permissions: one line
    from trm_jax import cli
    if e.errno not in cli.USER_ERRNOS or os.environ.get('TRM_TRACEBACK'):
      raise
    print(f'trm-data: error: {cli.os_error_line(e)}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print('trm-data: interrupted', file=sys.stderr)
    return 130
  return 0


def run():
  sys.exit(main())


if __name__ == '__main__':
  run()
