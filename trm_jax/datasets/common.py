"""Shared TFDS machinery: errors, split plans, metadata files, build()."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

from trm_jax import errors, faults
from trm_jax.datasets import splits as splits_lib
from trm_jax.datasets.errors import DataError  # noqa: F401  (re-exported: common.DataError)

META_FILE = "trm_meta.json"
ARRAYS_FILE = "trm_arrays.npz"
_UNSET = object()


def require_local(path, what: str) -> None:
  """Datasets are built and read on local disk (a gs:// path would silently become ./gs:/...)."""
  if path is not None and "://" in os.fspath(path):
    scheme = os.fspath(path).partition("://")[0]
    raise DataError(
      f"{what}={path}: datasets are read from local disk, not {scheme}://; build on each host "
      f"(trm-data build NAME --data_dir DIR) or copy a built set down (gcloud storage cp -r "
      f"{os.fspath(path).rstrip('/')}/NAME DIR/), then set {what}=DIR"
    )


def require_manual_dir(path) -> Path:
  require_local(path, "manual_dir")
  if not Path(os.fspath(path)).is_dir():
    raise DataError(f"{path}: manual_dir not found")
  return Path(os.fspath(path))


def require_file(path: Path) -> Path:
  path = Path(path)
  if not path.is_file():
    raise DataError(f"{path}: {'not a regular file' if path.exists() else 'file not found'}")
  return path


CSV_FIELDS = ("source", "question", "answer", "rating")
CSV_LINE_MAX = 1 << 16  # characters of one CSV line: a record is a few thousand (a 30x30 maze row is ~1.9 KB)


def _capped_lines(f, path: Path):
  """The lines of `f`, never reading more than CSV_LINE_MAX + 1 characters of one (whatever the file's size)."""
  for number, line in enumerate(iter(lambda: f.readline(CSV_LINE_MAX + 1), ""), 1):
    if len(line) > CSV_LINE_MAX:
      raise DataError(f"{path}:{number}: line longer than {CSV_LINE_MAX} characters; a record is a few thousand")
    yield line


def iter_csv_rows(path: Path):
  """Yields (line number, question, answer) of a `source,question,answer,rating` CSV, one line read at a time.

  A missing file, a wrong header, a short or overlong row or malformed CSV is a one-line DataError naming the file.
  """
  path = require_file(path)
  try:
    with open(path, newline="") as f:
      reader = csv.reader(_capped_lines(f, path))
      header = next(reader, None)
      if header is None or [h.strip() for h in header[:3]] != list(CSV_FIELDS[:3]):
        raise DataError(f"{path}:1: header must start with {','.join(CSV_FIELDS)}, got {header!r}")
      for row in reader:
        if len(row) < 3:
          raise DataError(f"{path}:{reader.line_num}: expected {len(CSV_FIELDS)} fields, got {len(row)}")
        yield reader.line_num, row[1], row[2]
  except (csv.Error, UnicodeDecodeError) as e:
    raise DataError(f"{path}: malformed CSV ({e})") from None


@dataclasses.dataclass
class SplitPlan:
  """Index arrays of one split; `blocks()` yields (inputs, labels) uint8 (k, S) arrays that concatenate to the
  whole split in example order."""

  puzzle_indices: np.ndarray
  group_indices: np.ndarray
  puzzle_identifiers: np.ndarray
  blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


class TrmMetadata(tfds.core.Metadata):
  """Per-split DatasetMeta (JSON) plus index arrays (npz) in the dataset dir."""

  def save_metadata(self, data_dir):
    data_dir = Path(os.fspath(data_dir))
    with open(data_dir / META_FILE, "w") as f:
      json.dump(self.get("json", {}), f, indent=1)
    with open(data_dir / ARRAYS_FILE, "wb") as f:
      np.savez_compressed(f, **self.get("arrays", {}))

  def load_metadata(self, data_dir):
    self.update(read_metadata(data_dir))


def read_metadata(data_dir) -> dict:
  """A built dataset's metadata; damaged or missing files are one DataError line."""
  data_dir = Path(os.fspath(data_dir))
  try:
    with open(data_dir / META_FILE) as f:
      js = json.load(f)
    with np.load(data_dir / ARRAYS_FILE) as z:
      arrays = {k: z[k] for k in z.files}
    if not isinstance(js, dict) or not isinstance(js.get("splits"), dict):
      raise ValueError(f'{META_FILE} has no "splits" object')
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
      f"{data_dir}: damaged dataset ({errors.first_line(e, 200)}); rebuild it with trm-data build --overwrite"
    ) from None
  return {"json": js, "arrays": arrays}


class TrmBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: subclasses implement `make_plans(manual_dir)` -> (plans: {split: SplitPlan},
  num_puzzle_identifiers, extra_json, extra_arrays). Records are written in example-id order."""

  VERSION = tfds.core.Version("1.0.0")

  def _log_download_bytes(self):
    """TFDS prints where it builds: our private staging directory; `build` names the final one instead."""

  _log_download_done = _log_download_bytes

  def needs_files(self) -> bool:
    return self.builder_config.needs_files

  def _info(self):
    cfg = self.builder_config
    # Large, mostly-PAD grids are zlib-compressed per record (keeps the writer's in-memory sort buffer small).
    enc = tfds.features.Encoding.ZLIB if cfg.seq_len > 256 else tfds.features.Encoding.BYTES
    grids = {k: tfds.features.Tensor(shape=(cfg.seq_len,), dtype=np.uint8, encoding=enc) for k in ("inputs", "labels")}
    ids = dict.fromkeys(("example_id", "puzzle_index", "puzzle_id", "group_id"), np.int64)
    features = tfds.features.FeaturesDict({**grids, **ids})
    return tfds.core.DatasetInfo(
      builder=self, description=self.__doc__, features=features, metadata=TrmMetadata(), disable_shuffling=True
    )

  # -- planning (validation happens here, before anything is written) --
  SOURCE = None  # sources.Source of the raw files, for builders that need files

  def raw_files(self) -> tuple:
    """Names of the raw files this config reads (and downloads)."""
    return ("train.csv", "test.csv")

  def prepare(self, raw_dir=None):
    if getattr(self, "_plans", None) is None:
      if self.needs_files():
        if raw_dir is None:
          raise DataError(f"{self.name}/{self.builder_config.name}: needs --manual_dir with the raw files")
        raw_dir = require_manual_dir(raw_dir)
      plans, n_ids, extra_json, arrays = self.make_plans(raw_dir)
      cfg = self.builder_config
      js = {"dataset": f"{self.name}/{cfg.name}", "splits": {}, **extra_json}
      dtypes = {"puzzle_indices": np.int64, "group_indices": np.int64, "puzzle_identifiers": np.int32}
      for split, plan in plans.items():
        meta = splits_lib.split_meta(cfg.seq_len, cfg.vocab_size, n_ids, plan.puzzle_indices, plan.group_indices)
        js["splits"][split] = dataclasses.asdict(meta)
        arrays.update({f"{split}.{k}": np.asarray(getattr(plan, k), t) for k, t in dtypes.items()})
      self._plans = plans
      self.info.metadata.update(json=js, arrays=arrays)
    return self._plans

  def _raw_dir(self, dl_manager):
    """manual_dir when given (it wins), else the downloaded, verified files."""
    manual, cache, mirror = getattr(self, "_trm_raw", (_UNSET, dl_manager.download_dir, None))  # set by build()
    if manual is _UNSET:  # plain tfds.builder(...) use: TFDS's manual_dir
      tfds_manual = getattr(dl_manager, "_manual_dir", None)
      have = tfds_manual is not None and all((Path(os.fspath(tfds_manual)) / f).is_file() for f in self.raw_files())
      manual = tfds_manual if have else None
    if manual is not None or self.SOURCE is None:
      return manual
    from trm_jax.datasets import sources

    return sources.fetch(self.SOURCE, self.raw_files(), dl_manager, cache, mirror)

  def _split_generators(self, dl_manager):
    raw = self._raw_dir(dl_manager) if self.needs_files() else None
    plans = self.prepare(raw)
    return {split: self._generate_examples(split) for split in plans}

  def _generate_examples(self, split):
    plan = self._plans[split]
    pidx, gidx = plan.puzzle_indices, plan.group_indices
    ex_puzzle = np.repeat(np.arange(len(pidx) - 1), np.diff(pidx))
    puzzle_group = np.repeat(np.arange(len(gidx) - 1), np.diff(gidx))
    eid = 0
    for inputs, labels in plan.blocks():
      for x, y in zip(inputs, labels):
        p = int(ex_puzzle[eid])
        puzzle = {"puzzle_index": p, "puzzle_id": int(plan.puzzle_identifiers[p]), "group_id": int(puzzle_group[p])}
        yield eid, {"inputs": x, "labels": y, "example_id": eid, **puzzle}
        eid += 1
    if eid != int(pidx[-1]):
      raise RuntimeError(f"{split}: generated {eid} examples, expected {int(pidx[-1])}")


def get_builder(name: str, data_dir) -> TrmBuilder:
  import trm_jax.datasets  # noqa: F401  (registers builders)

  require_local(data_dir, "data_dir")
  try:
    return tfds.builder(name, data_dir=os.fspath(data_dir))
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"{name}: unknown dataset ({str(e).splitlines()[0]})") from None
  except ValueError as e:
    raise DataError(f"{name}: {str(e).splitlines()[0]}") from None
  except json_format.ParseError as e:  # tfds reads the built set's dataset_info.json here
    why = str(e).split("Failed to load JSON: ")[-1].rstrip(".")
    raise DataError(
      f"{name} in {data_dir}: damaged dataset_info.json ({why}); rebuild it with trm-data build {name} --overwrite"
    ) from None


STAGING_DIR = ".tmp-build"  # private build directories, inside data_dir


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True
  return True


def _remove_stale(staging_root: Path) -> None:
  """Removes build directories of dead processes on this host."""
  if not staging_root.is_dir():
    return
  host = socket.gethostname()
  for d in staging_root.iterdir():
    pid, _, rest = d.name.partition("@")
    if pid.isdigit() and rest.partition("@")[0] == host and not _alive(int(pid)):
      shutil.rmtree(d, ignore_errors=True)


def _prune_empty(path: Path, stop: Path) -> None:
  """rmdir path and its empty parents up to (not including) stop."""
  while path != stop and stop in path.parents:
    try:
      path.rmdir()
    except OSError:
      return
    path = path.parent


def _publish(built: Path, final: Path, staging: Path, overwrite: bool) -> None:
  """Atomically renames the built version directory into place (if another process published first, its set is kept)."""
  final.parent.mkdir(parents=True, exist_ok=True)
  if overwrite and final.exists():
    os.rename(final, staging / "replaced")
  try:
    os.rename(built, final)
  except OSError:
    if not (final / META_FILE).is_file():
      raise
    logging.info("%s: published by another process; using it", final)


def build(name: str, data_dir, manual_dir=None, overwrite=False, mirror=None, register_checksums=False) -> Path:
  """Builds NAME[/CONFIG] into data_dir; returns its directory.

  Raw files come from manual_dir when given, else they are downloaded and verified (sources.py; mirror or
  $TRM_DATA_MIRROR rewrites the URLs). The set is built in a private directory under data_dir/.tmp-build and published
  with one atomic rename: concurrent builds of one set both succeed (the loser uses the winner's set), and a failed or
  killed build publishes nothing; cleanup only removes what this call created. register_checksums: TFDS records
  (size, sha256) of every downloaded URL in checksums.tsv.
  """
  data_dir = Path(os.fspath(data_dir))
  final = published_dir(name, data_dir, overwrite)
  if final.exists() and not overwrite:
    return check_complete(name, final)
  if manual_dir is not None:
    require_manual_dir(manual_dir)
  created = not data_dir.exists()
  root = data_dir / STAGING_DIR
  prefix = f"{os.getpid()}@{socket.gethostname()}@{name.replace('/', '@')}@"
  for attempt in range(5):  # another build may rmdir an empty root meanwhile
    try:
      _remove_stale(root)
      root.mkdir(parents=True, exist_ok=True)
      staging = Path(tempfile.mkdtemp(dir=root, prefix=prefix))
      break
    except FileNotFoundError:
      if attempt == 4:
        raise
    except OSError as e:
      raise DataError(f"{data_dir}: cannot create a build directory ({e.strerror or e})") from None
  ok = False
  print(f"building {name} into {final}", flush=True)  # (trm-train's too; TFDS's own lines are off)
  tfds.disable_progress_bar()  # bars of each split and of its shuffling (cursor escapes off a terminal)
  try:
    sb = get_builder(name, staging)
    sb._trm_raw = (manual_dir, data_dir / "downloads", mirror)  # pylint: disable=protected-access
    sb.download_and_prepare(
      download_dir=os.fspath(staging / "downloads"),
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir else None, register_checksums=register_checksums
      ),
    )
    faults.point("data_build_before_publish")  # every record written, nothing published
    _publish(Path(sb.data_dir), final, staging, overwrite)
    ok = True
  finally:
    shutil.rmtree(staging, ignore_errors=True)
    _prune_empty(root, data_dir)
    if not ok and created:
      _prune_empty(data_dir, data_dir.parent)  # only if still empty
  return final


def published_dir(name: str, data_dir: Path, overwrite: bool) -> Path:
  """Where NAME[/CONFIG] is published in data_dir; with `overwrite`, also when the set there is damaged."""
  try:
    return Path(get_builder(name, data_dir).data_dir)
  except DataError:
    if not overwrite:
      raise
    with tempfile.TemporaryDirectory() as empty:  # the same layout, without reading the damaged set
      return data_dir / Path(get_builder(name, empty).data_dir).relative_to(empty)


def check_complete(name: str, final: Path) -> Path:
  """A published set has its META_FILE (written last); without it the set is damaged, not built."""
  if not (final / META_FILE).is_file():
    raise DataError(f"{final}: damaged dataset (no {META_FILE}); rebuild it with trm-data build {name} --overwrite")
  return final


def wait_for(name: str, data_dir, timeout_s: float, poll_s: float = 2.0) -> Path:
  """Waits until NAME[/CONFIG] is published in data_dir (by another process); one-line DataError after timeout_s."""
  final = Path(get_builder(name, data_dir).data_dir)
  deadline = time.monotonic() + timeout_s
  while not (final / META_FILE).is_file():
    if time.monotonic() > deadline:
      raise DataError(
        f"{name}: not built in {data_dir} after waiting {timeout_s:g}s for process 0 to build it; data_dir must be "
        f"shared by all processes (e.g. gs://...), or build it first with `trm-data build {name} --data_dir {data_dir}`"
      )
    time.sleep(poll_s)
  return final


def grouped_plan(inputs, labels, per: int = 1) -> SplitPlan:
  """A split held in memory: one example per puzzle, `per` consecutive puzzles per group."""
  n = len(inputs)
  return SplitPlan(
    np.arange(n + 1, dtype=np.int64),
    np.arange(0, n + 1, per, dtype=np.int64),
    np.zeros(n, np.int32),
    lambda: iter([(inputs, labels)]),
  )
