"""Step-indexed group sampler, per-process shards and global batch assembly.

Training batches are a pure function of (seed, step): iteration `it` (made of `epochs_per_iter` epochs) concatenates
`epochs_per_iter` shuffles of the groups drawn from a generator keyed by (seed, it), draws one puzzle per group entry
and fills global batches with the puzzles' examples in that order (a puzzle that overflows a batch contributes a random
subset; the last partial batch of an iteration is dropped). This is the reference's rule: its loader runs one iteration
of `eval_interval` epochs between evaluations, so it drops one partial batch per evaluation interval, not one per epoch.
Each process reads only rows `[i*B/P, (i+1)*B/P)` of every global batch.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trm_jax import errors
from trm_jax.datasets import common, splits
from trm_jax.datasets.splits import BLANK_PUZZLE_ID, IGNORE_LABEL_ID, PAD_ID, DatasetMeta, SplitData


# ------------------------------------------------------------------ load --
class RecordReader:
  """Random access to the array_record files of one split: parses the stored tf.Example protos directly (several
  times faster than the generic TFDS decoder) and checks that record i holds example id i."""

  def __init__(self, files, zlib_encoded: bool):
    from array_record.python.array_record_data_source import ArrayRecordDataSource
    from tensorflow_datasets.proto import tf_example_pb2

    self._files = [os.fspath(f) for f in files]
    self._source = ArrayRecordDataSource(self._files)
    self._parse = tf_example_pb2.Example.FromString
    self._zlib = zlib_encoded

  def __len__(self):
    return len(self._source)

  def read(self, indices):
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not indices:
      raise ValueError("empty read")
    try:  # a damaged file: one line naming it, not a traceback
      feats = [self._parse(r).features.feature for r in self._source.__getitems__(indices)]
      ids = [f["example_id"].int64_list.value[0] for f in feats]
      if ids != indices:
        raise ValueError("records out of order: example ids do not match")
      decode = zlib.decompress if self._zlib else bytes
      out = []
      for key in ("inputs", "labels"):
        raw = b"".join(decode(f[key].bytes_list.value[0]) for f in feats)
        out.append(np.frombuffer(raw, np.uint8).reshape(len(indices), -1))
    except Exception as e:  # noqa: BLE001 - riegeli, protobuf, zlib and shape errors alike
      raise common.DataError(
        f"{self._files[0]}: damaged records ({errors.first_line(e, 200)}); "
        "rebuild the dataset with trm-data build --overwrite"
      ) from None
    return out[0], out[1]


def dataset_dir(name_or_path, data_dir=None) -> Path:
  """Resolves NAME[/CONFIG] (in data_dir) or a dataset directory path."""
  p = Path(os.fspath(name_or_path))
  if (p / common.META_FILE).is_file():
    return p
  if data_dir is None:
    raise common.DataError(f"{name_or_path}: give data_dir or a dataset path")
  d = Path(common.get_builder(str(name_or_path), data_dir).data_dir)
  if not d.exists():
    raise common.DataError(
      f"{name_or_path}: not built in {data_dir}; run `trm-data build {name_or_path} --data_dir {data_dir}`"
    )
  return common.check_complete(str(name_or_path), d)


def load_split(name_or_path, split: str = "train", data_dir=None) -> SplitData:
  """Opens one split of a built dataset; its records are read on demand."""
  d = dataset_dir(name_or_path, data_dir)
  try:  # damaged or hand-edited files: one line naming the dataset
    md = common.read_metadata(d)
    if split not in md["json"]["splits"]:
      raise common.DataError(f"{d}: no split {split!r} (have {sorted(md['json']['splits'])})")
    meta = DatasetMeta.from_json(md["json"]["splits"][split])
    arr = md["arrays"]
    index = [arr[f"{split}.{k}"] for k in ("puzzle_indices", "group_indices", "puzzle_identifiers")]
    splits.check_split(meta, *index, f"{d / common.META_FILE}: splits.{split}")
    with open(d / "features.json") as f:
      encoding = json.load(f)["featuresDict"]["features"]["inputs"]["tensor"].get("encoding")
    reader = RecordReader(sorted(d.glob(f"*-{split}.array_record-*")), encoding == "zlib")
    data = SplitData(meta, *index, reader, where=f"{d} split {split}")
  except common.DataError:
    raise
  except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, zipfile.BadZipFile) as e:
    raise common.DataError(
      f"{d}: damaged dataset ({errors.first_line(e, 200)}); rebuild it with trm-data build --overwrite"
    ) from None
  if len(reader) != data.num_examples:
    raise common.DataError(
      f"{d}: damaged dataset ({len(reader)} records, index says {data.num_examples}); "
      "rebuild it with trm-data build --overwrite"
    )
  data.info = md["json"]
  data.extra_arrays = {k: v for k, v in arr.items() if "." not in k}
  return data


# --------------------------------------------------------------- sampler --
def _rng(*key) -> np.random.Generator:
  return np.random.Generator(np.random.Philox(np.random.SeedSequence([int(k) for k in key])))


# An iteration holds (groups x epochs) puzzle indices (~100 MB for ARC's 10,000-epoch ones): only the last few are kept.
@functools.lru_cache(maxsize=2)
def _plan(puzzle_indices_b, group_indices_b, seed, it, batch, epochs_per_iter):
  pidx = np.frombuffer(puzzle_indices_b, np.int64)
  gidx = np.frombuffer(group_indices_b, np.int64)
  rng = _rng(seed, it, 0)
  order = np.concatenate([rng.permutation(len(gidx) - 1) for _ in range(epochs_per_iter)])
  n_in_group = gidx[order + 1] - gidx[order]
  puzzles = gidx[order] + np.floor(rng.random(len(order)) * n_in_group).astype(np.int64)
  sizes = pidx[puzzles + 1] - pidx[puzzles]
  cum = np.concatenate([[0], np.cumsum(sizes)])
  starts = [0]
  while (j := int(np.searchsorted(cum, cum[starts[-1]] + batch, "left"))) < len(cum):
    starts.append(j)  # (the last partial batch is dropped)
  return puzzles, np.asarray(starts, np.int64)


_SCHEDULES: dict = {}  # (index bytes, seed, batch, epochs_per_iter) -> cumulative batch counts per iteration


def _key_bytes(data: SplitData):
  # Computed once per SplitData: bytes cache their hash, so plan cache lookups stay cheap even for ~1M-puzzle splits.
  if not hasattr(data, "_index_bytes"):
    data._index_bytes = (data.puzzle_indices.tobytes(), data.group_indices.tobytes())
  return data._index_bytes


def _schedule(data, seed, batch, epochs_per_iter, more) -> list:
  """Cumulative batch counts of iterations 0, 1, ...; extended while `more(counts)`."""
  pb, gb = _key_bytes(data)
  cum = _SCHEDULES.setdefault((pb, gb, seed, batch, epochs_per_iter), [0])
  if len(cum) == 1:
    sizes = np.diff(data.puzzle_indices)
    group_max = np.maximum.reduceat(sizes, data.group_indices[:-1])
    if group_max.sum() * epochs_per_iter < batch:
      raise ValueError(
        f"global batch {batch} exceeds the examples of one iteration "
        f"({data.meta.total_groups} groups x {epochs_per_iter} epochs); "
        "raise epochs_per_iter or lower the batch"
      )
  while more(cum):
    _, starts = _plan(pb, gb, seed, len(cum) - 1, batch, epochs_per_iter)
    cum.append(cum[-1] + len(starts) - 1)
  return cum


def iteration_ends(
  data: SplitData, seed: int, global_batch_size: int, epochs_per_iter: int, n_iters: int, stop_at: int | None = None
) -> np.ndarray:
  """Training steps at which iterations 0, 1, ... end (cumulative batches): `n_iters` of them, or fewer, up to the
  first that ends at or after step `stop_at`."""
  more = lambda cum: len(cum) <= n_iters and (stop_at is None or cum[-1] < stop_at)
  cum = _schedule(data, seed, global_batch_size, epochs_per_iter, more)
  ends = np.asarray(cum[1 : n_iters + 1], np.int64)
  if stop_at is not None:
    ends = ends[: int(np.searchsorted(ends, stop_at, "left")) + 1]
  return ends


def train_batch_indices(data: SplitData, seed: int, step: int, global_batch_size: int, epochs_per_iter: int = 1):
  """Example indices (global_batch_size,) of training step `step`."""
  cum = _schedule(data, seed, global_batch_size, epochs_per_iter, lambda cum: cum[-1] <= step)
  it = int(np.searchsorted(cum, step, "right")) - 1
  b = step - cum[it]
  puzzles, starts = _plan(*_key_bytes(data), seed, it, global_batch_size, epochs_per_iter)
  chosen = puzzles[starts[b] : starts[b + 1]]
  pidx = data.puzzle_indices
  sizes = pidx[chosen + 1] - pidx[chosen]
  owner = np.repeat(np.arange(len(chosen)), sizes)
  first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  examples = pidx[chosen][owner] + np.arange(len(owner)) - first[owner]
  rng = _rng(seed, it, b + 1)
  perm = np.lexsort((rng.random(len(owner)), owner))
  return examples[perm][:global_batch_size]


def _local_rows(n, process_index, process_count):
  if n % process_count:
    raise ValueError(f"global batch {n} not divisible by {process_count} processes")
  per = n // process_count
  return slice(process_index * per, (process_index + 1) * per)


def train_batch(
  data: SplitData,
  seed: int,
  step: int,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  epochs_per_iter: int = 1,
) -> dict[str, np.ndarray]:
  """This process's rows of global training batch `step` (pure in seed, step)."""
  idx = train_batch_indices(data, seed, step, global_batch_size, epochs_per_iter)
  return data.examples(idx[_local_rows(global_batch_size, process_index, process_count)])


def eval_batches(
  data: SplitData, global_batch_size: int, process_index: int = 0, process_count: int = 1, with_index: bool = False
) -> Iterator[dict[str, np.ndarray]]:
  """The split in order, the last batch padded (PAD, -100, puzzle id 0); with_index adds example_index (-1 there)."""
  n = data.num_examples
  rows = _local_rows(global_batch_size, process_index, process_count)
  seq = data.meta.seq_len
  for start in range(0, n, global_batch_size):
    idx = np.arange(start, start + global_batch_size)[rows]
    valid = idx < n
    local = len(idx)
    out = {
      "inputs": np.full((local, seq), PAD_ID, np.int32),
      "labels": np.full((local, seq), IGNORE_LABEL_ID, np.int32),
      "puzzle_identifiers": np.full((local,), BLANK_PUZZLE_ID, np.int32),
    }
    if valid.any():
      for k, v in data.examples(idx[valid]).items():
        out[k][valid] = v
    if with_index:
      out["example_index"] = np.where(valid, idx, -1).astype(np.int32)
    yield out


def prefetch_train_batches(
  data: SplitData,
  seed: int,
  start_step: int,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  epochs_per_iter: int = 1,
  buffer: int = 2,
):
  """Yields (step, local batch) from start_step on; reads in a thread."""
  q: queue.Queue = queue.Queue(maxsize=buffer)
  stop = threading.Event()

  def work():
    step = start_step
    try:
      while not stop.is_set():
        q.put((step, train_batch(data, seed, step, global_batch_size, process_index, process_count, epochs_per_iter)))
        step += 1
    except BaseException as e:  # surfaced in the consumer
      q.put((None, e))

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      step, item = q.get()
      if step is None:
        raise item
      yield step, item
  finally:
    stop.set()
    while thread.is_alive():
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(0.01)
