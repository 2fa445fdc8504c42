"""trm-data CLI: build/stats/show (text and PNG) on small generated sets."""

import subprocess
import sys
from pathlib import Path

import pytest

from trm_jax.datasets import cli, common


def _cli(*args):
  return subprocess.run([sys.executable, '-m', 'trm_jax.datasets.cli', *args],
                        capture_output=True, text=True,
                        cwd=Path(__file__).parents[1])


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('cli_data')
  r = _cli('build', 'sudoku_small/4x4', '--data_dir', str(d))
  assert r.returncode == 0, r.stderr
  assert 'built sudoku_small/4x4' in r.stdout
  common.build('maze_hard/small', d)
  return d


def test_stats(data_dir, capsys):
  assert cli.main(['stats', 'sudoku_small/4x4', '--data_dir', str(data_dir),
                   '--split', 'test']) == 0
  out = capsys.readouterr().out
  assert 'test: 200 examples, 200 puzzles, 200 groups' in out
  assert 'seq_len=16 vocab=6' in out
  lines = [l.split() for l in out.splitlines() if l.strip().startswith(
      ('0 ', '1 ', '5 '))]
  hist = {int(l[0]): (int(l[2]), int(l[4])) for l in lines}
  assert hist[0] == (0, 0) and hist[1][1] == 0 and hist[1][0] > 0


def test_show_text_and_png(data_dir, tmp_path, capsys):
  png = tmp_path / 'maze.png'
  assert cli.main(['show', 'maze_hard/small', '--data_dir', str(data_dir),
                   '--index', '3', '--png', str(png)]) == 0
  out = capsys.readouterr().out
  assert 'train[3]' in out and 'S' in out and 'o' in out
  assert png.stat().st_size > 1000
  png2 = tmp_path / 'sudoku.png'
  assert cli.main(['show', 'sudoku_small/4x4', '--data_dir', str(data_dir),
                   '--png', str(png2)]) == 0
  assert png2.read_bytes()[:4] == b'\x89PNG'


def test_user_errors_are_one_line(data_dir):
  for args, msg in (
      (['show', 'sudoku_small/4x4', '--data_dir', str(data_dir), '--index',
        '5000'], 'index 5000 outside'),
      (['stats', 'sudoku_small/6x6', '--data_dir', str(data_dir)],
       'not built'),
      (['build', 'no_such_set', '--data_dir', str(data_dir)], 'no_such_set'),
      (['build', 'arc_agi/arc1_small', '--data_dir', str(data_dir),
        '--manual_dir', str(data_dir / 'missing')], 'manual_dir not found'),
  ):
    r = _cli(*args)
    assert r.returncode == 1, (args, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and 'Traceback' not in r.stderr, \
        r.stderr
  assert not (data_dir / 'arc_agi').exists()
