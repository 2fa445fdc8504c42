"""Process-0 metric writer: metrics.jsonl, TensorBoard events (with `tensorboardX` when installed), progress.

Progress is a tqdm bar when stderr is a terminal; otherwise (pod logs, Slurm, a pipe) one plain line per
`progress` call, i.e. every `train.log_every` steps. On gs:// metrics.jsonl is rewritten whole at each write
(GCS has no append) and TensorBoard events need google-cloud-storage.
"""

from __future__ import annotations

import json
import math
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from trm_jax import errors, faults, fileio, rundir


class MetricsError(ValueError):
  """An unreadable metrics.jsonl (one line, names file and line)."""


def _tensorboardx():
  """tensorboardX, or None when it is not installed (torch, unless imported already, is hidden from it: it would
  import torch only to recognise torch tensors, 2-3 s at every start)."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    import tensorboardX

    return tensorboardX
  except ImportError:
    return None
  finally:
    if hide:
      del sys.modules["torch"]


class Writer:
  """Writes on process 0 only; every other process gets a silent writer."""

  def __init__(
    self, workdir, total_steps: int, start_step: int = 0, enabled: bool | None = None, progress: bool = True
  ):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    run_dir = rundir.RunDir(workdir)
    self.path = run_dir.metrics
    self._file = self._tb = self._bar = None
    self._total, self._last = int(total_steps), (int(start_step), None)
    self._lines = bool(self.enabled and progress and not _is_terminal(sys.stderr))
    if not self.enabled:
      return
    _drop_after(self.path, start_step)
    self._file = fileio.Appender(self.path)
    tbx = _tensorboardx()
    self._tb = tbx.SummaryWriter(run_dir.tensorboard) if tbx else None
    if progress and not self._lines:
      self._bar = tqdm(
        total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, smoothing=0.1, mininterval=1.0
      )

  @property
  def tensorboard(self) -> bool:
    return self._tb is not None

  def write(self, step: int, values: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": round(time.time(), 3), **{k: _num(v) for k, v in values.items()}}
    with errors.disk_full_names(self.path):
      faults.disk_full("metrics_write", self.path)
      self._file.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()

  def progress(self, step: int, postfix: dict | None = None) -> None:
    if self._lines:
      print(progress_line(step, self._total, self._last, postfix), flush=True)
      self._last = (int(step), time.time())
    elif self._bar is not None:
      self._bar.n = int(step)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
      self._bar.refresh()
    else:
      return
    faults.point("progress_logged")  # process 0 has shown the progress of `step`

  def log(self, text: str) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def close(self) -> None:
    for name in ("_bar", "_tb", "_file"):  # the progress bar first, the metrics file last
      if (out := getattr(self, name)) is not None:
        out.close()
        setattr(self, name, None)


def _is_terminal(stream) -> bool:
  try:
    return stream.isatty()
  except (AttributeError, ValueError):
    return False


def progress_line(step: int, total: int, last: tuple, postfix: dict | None = None) -> str:
  """`step 6/12 (50%) loss=1.677 exact=0 | 3.1 steps/s, ETA 0:00:02`.
  `last` is (step, time) of the previous line (time None on the first line)."""
  line = f"step {step}/{total} ({100 * step / max(total, 1):.0f}%)"
  if postfix:
    line += " " + " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
  done, dt = step - last[0], (time.time() - last[1]) if last[1] is not None else 0.0
  if done > 0 and dt > 0:  # no rate on the first line: its window includes compilation
    rate = done / dt
    eta = int(max(total - step, 0) / rate)
    line += f" | {rate:.3g} steps/s, ETA {eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
  return line


def _drop_after(path: str, step: int) -> None:
  """On resume, forget events past the checkpoint (the run repeats those steps) and a torn last line."""
  fileio.refuse_link(path)
  if not fileio.exists(path):
    return
  data = fileio.read_bytes(path)
  lines, torn = _parse(data, path)
  keep = [line for line, record in lines if record.get("step", 0) <= step]
  if torn:
    print(f"warning: {path}: dropped a torn last line (a crash mid-write)", file=sys.stderr, flush=True)
  if torn or len(keep) != len(lines) or (data and not data.endswith(b"\n")):
    fileio.write_text(path, "".join(line + "\n" for line in keep))


def _parse(data: bytes, path: str) -> tuple[list[tuple[str, dict]], bool]:
  """-> ([(line, record)], whether a torn last line was left out); a bad line elsewhere (not UTF-8 included) is a
  MetricsError naming it."""
  lines = data.split(b"\n")
  last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
  out = []
  for i, raw in enumerate(lines):
    if not raw.strip():
      continue
    try:
      line = raw.decode("utf-8")
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      if i == last:  # a crash mid-write
        return out, True
      raise MetricsError(f"{path}:{i + 1}: not a JSON record ({errors.first_line(e, 300)})") from None
    out.append((line, record))
  return out, False


def _num(v):
  """A metric value as JSON: numbers as int or float (NaN/inf as strings); str, bool and None as they are."""
  if isinstance(v, (str, bool)) or v is None:
    return v
  if isinstance(v, (int, np.integer)):
    return int(v)
  v = float(v)
  return str(v) if math.isnan(v) or math.isinf(v) else v


def read(workdir) -> list[dict]:
  """All events of a run's metrics.jsonl (local or gs://); a torn last line is left out."""
  path = rundir.RunDir(workdir).metrics
  return [record for _, record in _parse(fileio.read_bytes(path), path)[0]]
