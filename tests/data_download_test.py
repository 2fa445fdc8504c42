"""Downloads of the raw files, offline: a local HTTP server (127.0.0.1) serves
the shared files laid out like the pinned releases (MIRROR/HOST/PATH) and the
builders' URLs are pointed at it. Good build (ARC records equal the
manual_dir build's, record by record), checksum mismatch, truncated file,
HTML page, 404, connection dropped mid-file; retry after a failure."""

import csv
import dataclasses
import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from trm_jax import input_pipeline as ip
from trm_jax.datasets import common, maze, sources, sudoku
from trm_jax.datasets.common import DataError

SHARED = Path(__file__).parents[2] / "shared" / "data"
ROOT = Path(__file__).parents[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
  """Serves files; FILE.drop next to FILE: the connection drops mid-body."""

  def log_message(self, *args):
    pass

  def do_GET(self):
    path = Path(self.translate_path(self.path))
    if not Path(f"{path}.drop").exists():
      return super().do_GET()
    data = path.read_bytes()
    self.send_response(200)
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data[: len(data) // 2])
    self.wfile.flush()
    self.close_connection = True


@pytest.fixture
def server(tmp_path):
  """(serving root, mirror URL) of an HTTP server on 127.0.0.1."""
  root = tmp_path / "srv"
  root.mkdir()
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
  t = threading.Thread(target=httpd.serve_forever, daemon=True)
  t.start()
  yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
  httpd.shutdown()
  httpd.server_close()


def _serve(root, source, name, src=None, data=None):
  path = root / source.canonical_url(name).split("://", 1)[1]
  path.parent.mkdir(parents=True, exist_ok=True)
  if data is not None:
    path.write_bytes(data)
  else:
    shutil.copyfile(src, path)
  return path


def _serve_arc(root):
  for name in sources.ARC.files:
    _serve(root, sources.ARC, name, SHARED / "arc" / name)


def _records(name, data_dir):
  out = {}
  for split in ("train", "test"):
    d = ip.load_split(name, split, data_dir)
    out[split] = (d.all_arrays(), d.puzzle_indices, d.group_indices, d.puzzle_identifiers, d.info, d.extra_arrays)
  return out


def _assert_same(a, b):
  for split in a:
    arr_a, *rest_a = a[split]
    arr_b, *rest_b = b[split]
    assert set(arr_a) == set(arr_b)
    for k in arr_a:
      np.testing.assert_array_equal(arr_a[k], arr_b[k], err_msg=f"{split} {k}")
    for x, y in zip(rest_a[:3], rest_b[:3]):
      np.testing.assert_array_equal(x, y)
    assert rest_a[3] == rest_b[3]
    assert set(rest_a[4]) == set(rest_b[4])
    for k in rest_a[4]:
      np.testing.assert_array_equal(rest_a[4][k], rest_b[4][k])


def _cli(env_extra, *args):
  env = dict(os.environ, **env_extra)
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.data_cli", *args], capture_output=True, text=True, cwd=ROOT, env=env
  )


def _left_behind(d: Path):
  """Everything under d except verified download cache files."""
  return sorted(str(p.relative_to(d)) for p in d.rglob("*") if "downloads" not in p.parts)


# ------------------------------------------------------------------ ARC --
def test_pinned_arc_files_are_the_shared_copies():
  for name, (sha, size) in sources.ARC.files.items():
    data = (SHARED / "arc" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha and len(data) == size


def test_checksums_tsv_matches_sources():
  import tensorflow_datasets as tfds

  infos = tfds.download.checksums.load_url_infos(Path(common.__file__).parent / "checksums.tsv")
  want = {
    s.canonical_url(n): (size, sha) for s in sources.ALL for n, (sha, size) in s.files.items() if size is not None
  }
  assert {u: (int(i.size), i.checksum) for u, i in infos.items()} == want
  assert sudoku.SudokuExtreme.url_infos == infos


@pytest.mark.parametrize("config", ["arc1_small", "arc2_small"])
def test_arc_download_equals_manual_dir(server, tmp_path, config):
  root, mirror = server
  _serve_arc(root)
  name = f"arc_agi/{config}"
  down, manual = tmp_path / "down", tmp_path / "manual"
  if config == "arc1_small":  # the CLI, with the mirror from the environment
    r = _cli({sources.MIRROR_ENV: mirror}, "build", name, "--data_dir", str(down))
    assert r.returncode == 0, r.stderr
  else:
    common.build(name, down, mirror=mirror)
  common.build(name, manual, manual_dir=SHARED / "arc")
  _assert_same(_records(name, down), _records(name, manual))
  cache = down / "downloads" / "arc_agi" / sources.ARC.revision
  builder = common.get_builder(name, down)
  assert sorted(p.name for p in cache.iterdir()) == sorted(builder.raw_files())
  assert not (down / common.STAGING_DIR).exists()


def _break(kind, path: Path):
  if kind == "truncated":
    path.write_bytes(path.read_bytes()[:1000])
  elif kind == "html":
    path.write_bytes(b"<!DOCTYPE html><html><body>Rate limited</body></html>")
  elif kind == "changed":  # same size, one byte different
    b = bytearray(path.read_bytes())
    b[100] ^= 1
    path.write_bytes(bytes(b))
  elif kind == "404":
    path.unlink()
  elif kind == "dropped":  # network error: the connection drops mid-file
    Path(f"{path}.drop").touch()


@pytest.mark.parametrize("kind", ["truncated", "html", "changed", "404", "dropped"])
def test_failed_download_one_error_nothing_left_then_retry(server, tmp_path, kind):
  root, mirror = server
  _serve_arc(root)
  bad = "arc-agi_evaluation_solutions.json"  # the last file arc1_small reads
  path = root / sources.ARC.canonical_url(bad).split("://", 1)[1]
  _break(kind, path)
  d = tmp_path / "data"
  with pytest.raises(DataError) as e:
    common.build("arc_agi/arc1_small", d, mirror=mirror)
  msg = str(e.value)
  assert "\n" not in msg and "--manual_dir" in msg
  assert msg.startswith(sources.ARC.url(bad, mirror) + ": "), msg
  assert ("checksum mismatch" in msg) == (kind in ("truncated", "html", "changed")), msg
  assert _left_behind(d) == [], _left_behind(d)
  cache = d / "downloads" / "arc_agi" / sources.ARC.revision
  assert not (cache / bad).exists()
  # Retry with the right file served: builds, reusing the verified files.
  Path(f"{path}.drop").unlink(missing_ok=True)
  _serve(root, sources.ARC, bad, SHARED / "arc" / bad)
  out = common.build("arc_agi/arc1_small", d, mirror=mirror)
  assert (out / common.META_FILE).is_file()


def test_cli_download_error_is_one_line(server, tmp_path):
  root, mirror = server  # nothing served: 404 for every file
  d = tmp_path / "data"
  r = _cli({sources.MIRROR_ENV: mirror}, "build", "arc_agi/arc1_small", "--data_dir", str(d))
  assert r.returncode == 1
  err = [l for l in r.stderr.splitlines() if "error" in l.lower()]
  assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
  assert err[0].startswith(f"trm-data: error: {mirror}/raw.githubusercontent")
  assert "404" in err[0] and "--manual_dir" in err[0]
  assert not d.exists()


def test_manual_dir_wins_over_download(tmp_path, monkeypatch):
  monkeypatch.setenv(sources.MIRROR_ENV, "http://127.0.0.1:9")  # unreachable
  out = common.build("arc_agi/arc1_small", tmp_path, manual_dir=SHARED / "arc")
  assert (out / common.META_FILE).is_file()
  assert not (tmp_path / "downloads").exists()


# ----------------------------------------------------- Sudoku and Maze --
def _pin(monkeypatch, cls, files: dict):
  """Points cls.SOURCE's pins at the fixture files {name: path}."""
  pins = {n: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for n, p in files.items()}
  monkeypatch.setattr(cls, "SOURCE", dataclasses.replace(cls.SOURCE, files=pins))
  return cls.SOURCE


def test_sudoku_download_equals_manual_dir(server, tmp_path, monkeypatch):
  root, mirror = server
  raw = tmp_path / "raw"
  raw.mkdir()
  shutil.copyfile(SHARED / "sudoku" / "sudoku_17clue_dev.csv", raw / "train.csv")
  lines = (SHARED / "sudoku" / "sudoku_hard_dev.csv").read_text().splitlines()
  (raw / "test.csv").write_text("\n".join(lines[:51]) + "\n")
  src = _pin(monkeypatch, sudoku.SudokuExtreme, {n: raw / n for n in ("train.csv", "test.csv")})
  for n in ("train.csv", "test.csv"):
    _serve(root, src, n, raw / n)
  name = "sudoku_extreme/aug10_sub100"
  common.build(name, tmp_path / "down", mirror=mirror)
  common.build(name, tmp_path / "manual", manual_dir=raw)
  a, b = _records(name, tmp_path / "down"), _records(name, tmp_path / "manual")
  _assert_same(a, b)
  assert len(a["train"][0]["inputs"]) == 1100 and len(a["test"][0]["inputs"]) == 50


def test_maze_csv_download(server, tmp_path, monkeypatch):
  root, mirror = server
  raw = tmp_path / "raw"
  raw.mkdir()
  q, a = maze.generate_set(4, 0, size=30, min_path=20)
  for n in ("train.csv", "test.csv"):
    with open(raw / n, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(common.CSV_FIELDS)
      for x, y in zip(q, a):
        w.writerow(["gen", maze.to_text(x), maze.to_text(y), 0])
  src = _pin(monkeypatch, maze.MazeHard, {n: raw / n for n in ("train.csv", "test.csv")})
  for n in ("train.csv", "test.csv"):
    _serve(root, src, n, raw / n)
  out = common.build("maze_hard/csv", tmp_path / "d", mirror=mirror)
  data = ip.load_split(out, "train")
  np.testing.assert_array_equal(data.all_arrays()["inputs"], q.reshape(4, -1))


def test_register_checksums_records_downloads(server, tmp_path, monkeypatch):
  """--register_checksums: TFDS writes (size, sha256) of each download."""
  root, mirror = server
  raw = tmp_path / "raw"
  raw.mkdir()
  lines = (SHARED / "sudoku" / "sudoku_hard_dev.csv").read_text().splitlines()
  for n, rows in (("train.csv", lines[:150]), ("test.csv", lines[150:170])):
    (raw / n).write_text("\n".join([lines[0]] + rows[1:]) + "\n")
  src = _pin(monkeypatch, sudoku.SudokuExtreme, {n: raw / n for n in ("train.csv", "test.csv")})
  for n in ("train.csv", "test.csv"):
    _serve(root, src, n, raw / n)
  tsv = tmp_path / "checksums.tsv"
  monkeypatch.setattr(sudoku.SudokuExtreme, "_checksums_path", tsv)
  common.build("sudoku_extreme/aug10_sub100", tmp_path / "d", mirror=mirror, register_checksums=True)
  import tensorflow_datasets as tfds

  got = tfds.download.checksums.load_url_infos(tsv)
  assert {u: (int(i.size), i.checksum) for u, i in got.items()} == {
    src.url(n, mirror): (src.files[n][1], src.files[n][0]) for n in ("train.csv", "test.csv")
  }


def test_training_entry_downloads_and_builds(server, tmp_path):
  """data.load (what trm-train calls) with no manual_dir: downloads via
  config.data.mirror, builds, loads."""
  from trm_jax import config_lib
  from trm_jax import data as data_lib

  root, mirror = server
  _serve_arc(root)
  dcfg = config_lib.data_config(name="arc_agi", config="arc1_small", data_dir=str(tmp_path), mirror=mirror)
  data = data_lib.load(dcfg)
  assert data.task == "arc" and data.train.num_examples > 0
  assert set(data.evals) == {"test"}
