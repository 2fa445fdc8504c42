"""trm-data CLI: build/stats/show (text and PNG) on small generated sets."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trm_jax import data_cli as cli
from trm_jax.datasets import common


def _cli(*args, env=None):
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.data_cli", *args],
    capture_output=True,
    text=True,
    env=env,
    cwd=Path(__file__).parents[1],
  )


@pytest.fixture(scope="module")
def home(tmp_path_factory):
  """A HOME whose ~/tensorflow_datasets is the default --data_dir."""
  h = tmp_path_factory.mktemp("home")
  return h, dict(os.environ, HOME=str(h))


@pytest.fixture(scope="module")
def data_dir(home):
  h, env = home
  r = _cli("build", "sudoku_small/4x4", env=env)  # no --data_dir: trm-train's default
  assert r.returncode == 0, r.stderr
  assert "built sudoku_small/4x4" in r.stdout
  d = h / "tensorflow_datasets"
  assert (d / "sudoku_small" / "4x4").is_dir()
  common.build("maze_hard/small", d)
  return d


def test_build_prints_our_lines_naming_the_final_path(tmp_path):
  """No TFDS lines naming the staging directory, no progress bars (cursor escapes off a terminal)."""
  r = _cli("build", "sudoku_small/4x4", "--data_dir", str(tmp_path))
  assert r.returncode == 0 and r.stderr == "", r.stderr
  final = tmp_path / "sudoku_small" / "4x4" / "1.0.0"
  lines = r.stdout.splitlines()
  assert lines[0] == f"building sudoku_small/4x4 into {final}", r.stdout
  assert len(lines) == 2 and lines[1].startswith("built sudoku_small/4x4 in ") and str(final) in lines[1], r.stdout
  assert common.STAGING_DIR not in r.stdout


def test_rebuild_says_already_built(data_dir, home):
  r = _cli("build", "sudoku_small/4x4", env=home[1])
  assert r.returncode == 0 and r.stdout.startswith("sudoku_small/4x4: already built: ")
  assert str(data_dir / "sudoku_small" / "4x4") in r.stdout


def test_stats_every_split_with_token_names(data_dir, capsys):
  assert cli.main(["stats", "sudoku_small/4x4", "--data_dir", str(data_dir)]) == 0
  out = capsys.readouterr().out
  assert "test: 200 examples, 200 puzzles, 200 groups" in out
  assert "train: 1000 examples" in out and "seq_len=16 vocab=6" in out
  head = next(l for l in out.splitlines() if l.strip().startswith("id "))
  assert head.split()[:4] == ["id", "name", "test", "inputs"]
  rows = {l[:18].strip(): l.split() for l in out.splitlines() if l.startswith("  ") and l.split()[0].isdigit()}
  rows = {int(v[0]): v for v in rows.values()}
  assert set(rows) == set(range(6))
  assert rows[0][1] == "PAD" and rows[1][1] == "blank" and rows[5][1:3] == ["digit", "4"]
  test_in, test_lab, train_in = (int(x) for x in rows[1][2:5])
  assert test_in > 0 and test_lab == 0 and train_in > test_in  # blanks: inputs only
  assert cli.main(["stats", "maze_hard/small", "--data_dir", str(data_dir), "--split", "test"]) == 0
  out = capsys.readouterr().out
  assert "train:" not in out and "'S' start" in out and "'o' path" in out


def test_list_is_aligned(capsys):
  assert cli.main(["list"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  cols = [re.match(r"^\S+ +(downloads|generated) +\S", l) for l in lines]
  assert len(lines) > 10 and all(cols)
  assert len({m.start(1) for m in cols}) == 1 and len({m.end() for m in cols}) == 1


def test_show_text_and_png(data_dir, tmp_path, capsys):
  png = tmp_path / "maze.png"
  assert cli.main(["show", "maze_hard/small", "--data_dir", str(data_dir), "--index", "3", "--png", str(png)]) == 0
  out = capsys.readouterr().out
  assert "train[3]" in out and "S" in out and "o" in out
  assert png.stat().st_size > 1000
  png2 = tmp_path / "new" / "sudoku.png"  # the directory is made
  assert cli.main(["show", "sudoku_small/4x4", "--data_dir", str(data_dir), "--png", str(png2)]) == 0
  assert png2.read_bytes()[:4] == b"\x89PNG"
  assert capsys.readouterr().out.strip().endswith(f"wrote {png2}")


def test_show_png_without_matplotlib(data_dir, tmp_path):
  fake = tmp_path / "site" / "matplotlib"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("raise ImportError('no matplotlib')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
  r = _cli("show", "sudoku_small/4x4", "--data_dir", str(data_dir), "--png", str(tmp_path / "x.png"), env=env)
  assert r.returncode == 1 and r.stdout == ""  # checked before reading
  assert r.stderr.strip() == ("trm-data: error: --png needs matplotlib: pip install -e '.[plots]'")
  readme = (Path(__file__).parents[1] / "README.md").read_text()
  assert "pip install -e '.[plots]'" in readme  # the install --png needs is where trm-solve --png is shown


def test_user_errors_are_one_line(data_dir):
  for args, msg in (
    (["show", "sudoku_small/4x4", "--data_dir", str(data_dir), "--index", "5000"], "index 5000 outside"),
    (["stats", "sudoku_small/6x6", "--data_dir", str(data_dir)], "not built"),
    (["build", "no_such_set", "--data_dir", str(data_dir)], "no_such_set"),
    (
      ["build", "arc_agi/arc1_small", "--data_dir", str(data_dir), "--manual_dir", str(data_dir / "missing")],
      "manual_dir not found",
    ),
  ):
    r = _cli(*args)
    assert r.returncode == 1, (args, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and msg in err[0] and "Traceback" not in r.stderr, r.stderr
  assert not (data_dir / "arc_agi").exists()


def test_damaged_built_set_is_one_line_and_overwrite_repairs_it(tmp_path):
  d = tmp_path / "data"
  assert _cli("build", "sudoku_small/4x4", f"--data_dir={d}").returncode == 0
  built = d / "sudoku_small" / "4x4" / "1.0.0"
  (built / "dataset_info.json").write_text("garbage{")
  for cmd in ("stats", "build"):
    r = _cli(cmd, "sudoku_small/4x4", f"--data_dir={d}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip() == (
      f"trm-data: error: sudoku_small/4x4 in {d}: damaged dataset_info.json (Expecting value: line 1 column 1 "
      "(char 0)); rebuild it with trm-data build sudoku_small/4x4 --overwrite"
    )
  assert _cli("build", "sudoku_small/4x4", f"--data_dir={d}", "--overwrite").returncode == 0
  assert _cli("stats", "sudoku_small/4x4", f"--data_dir={d}").returncode == 0
  # Without its trm_meta.json (written last) a set is damaged, not "not built" nor "already built".
  (built / common.META_FILE).unlink()
  for cmd in ("stats", "build"):
    r = _cli(cmd, "sudoku_small/4x4", f"--data_dir={d}")
    assert r.returncode == 1 and r.stderr.strip() == (
      f"trm-data: error: {built}: damaged dataset (no trm_meta.json); "
      "rebuild it with trm-data build sudoku_small/4x4 --overwrite"
    ), r.stderr[-2000:]
  assert _cli("build", "sudoku_small/4x4", f"--data_dir={d}", "--overwrite").returncode == 0
  assert (built / common.META_FILE).is_file()
