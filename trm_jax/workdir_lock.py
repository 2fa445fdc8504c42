"""One training run per workdir: an exclusive lock naming its holder (pid, host).

Local: `fcntl.flock` on `<workdir>/run.lock` (opened without following links), which records the holder. The
kernel drops the lock when its process dies, so a killed run's lock is simply taken over. The holder removes the
file at exit (a run that finds the file replaced after locking it tries again) and a workdir `hold` created if
still empty: a run that fails early leaves nothing behind.

gs://: the object `<workdir>/run.lock` is created with `if_generation_match=0` (only one run can), rewritten
every `HEARTBEAT_S` seconds (conditional on its last generation) and deleted at exit. A lock is stale, and taken
over with a generation precondition, when its holder ran on this host and is gone, or when it has not been
refreshed for `STALE_S` seconds (a run killed on another machine).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time

from trm_jax import errors, fileio, rundir

HEARTBEAT_S = 60.0
STALE_S = 600.0


class LockBusy(ValueError):
  """The workdir is in use by another run (one line, names the holder)."""


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "time": round(time.time(), 3)}


def _describe(info: dict) -> str:
  return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"


@contextlib.contextmanager
def hold(workdir, enabled: bool = True):
  """Holds the workdir's lock for the `with` block (a no-op when not `enabled`, e.g. process > 0)."""
  if not enabled:
    yield
    return
  run_dir = rundir.RunDir(workdir)
  workdir = run_dir.root
  created = not fileio.is_remote(workdir) and not os.path.isdir(workdir)
  fileio.makedirs(workdir)
  try:
    lock = _GcsLock(run_dir.lock) if fileio.is_remote(workdir) else _LocalLock(run_dir.lock)
    lock.acquire()
    try:
      yield
    finally:
      lock.release()
  finally:
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)  # only if empty


class _LocalLock:
  def __init__(self, path: str):
    self.path = path
    self.fd = None

  def acquire(self) -> None:
    for _ in range(10):
      fd = self._open()
      try:  # the file locked is still the one at `path`
        same = os.path.samestat(os.lstat(self.path), os.fstat(fd))
      except FileNotFoundError:
        same = False
      if same:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self.fd = fd
        return
      os.close(fd)  # the holder removed the file after we opened it: open the new one
    raise LockBusy(f"{self.path}: could not take the lock (the file keeps being replaced)")

  def _open(self) -> int:
    import fcntl  # noqa: PLC0415 - POSIX only

    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
      fd = os.open(self.path, flags, 0o644)
    except OSError as e:
      fileio.refuse_link(self.path)
      raise fileio.FileIOError(f"{self.path}: cannot open lock file ({e.strerror})") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      info = _parse(os.pread(fd, 4096, 0).decode(errors="replace"))
      os.close(fd)
      raise LockBusy(
        f"{os.path.dirname(self.path)}: in use by another run ({_describe(info)}; lock file {self.path})"
      ) from None
    return fd

  def release(self) -> None:
    if self.fd is not None:
      with contextlib.suppress(OSError):
        os.remove(self.path)  # while still locked; a run that opened the old file sees it replaced
      os.close(self.fd)
      self.fd = None


class _GcsLock:
  def __init__(self, uri: str):
    self.uri = uri
    bucket, _, self.name = self.uri.partition("://")[2].partition("/")
    try:
      from google.api_core import exceptions  # noqa: PLC0415
      from google.cloud import storage  # noqa: PLC0415
    except ImportError as e:
      raise fileio.FileIOError(
        f"{self.uri}: gs:// workdirs need google-cloud-storage (pip install 'trm_jax[gcs]'; {e})"
      ) from None
    self._exc = exceptions
    self.bucket = storage.Client().bucket(bucket)
    self.generation = None
    self._stop = threading.Event()
    self._thread = None

  def acquire(self) -> None:
    info = json.dumps(_holder())
    blob = self.bucket.blob(self.name)
    try:
      for _ in range(3):
        try:
          blob.upload_from_string(info, if_generation_match=0)
          break
        except self._exc.PreconditionFailed:
          current = self.bucket.get_blob(self.name)
          if current is None:
            continue  # released meanwhile: try again
          held = _parse(current.download_as_text())
          if not _stale(held, current.updated):
            raise LockBusy(
              f"{self.uri.rpartition('/')[0]}: in use by another run ({_describe(held)}, lock refreshed "
              f"{current.updated:%Y-%m-%d %H:%M:%S} UTC; lock object {self.uri})"
            ) from None
          try:
            blob.upload_from_string(info, if_generation_match=current.generation)  # take over
            break
          except self._exc.PreconditionFailed:
            continue
      else:
        raise LockBusy(f"{self.uri}: could not take the lock (another run keeps taking it)")
    except self._exc.GoogleAPIError as e:
      raise fileio.FileIOError(f"{self.uri}: cannot write lock object ({errors.first_line(e, 300)})") from None
    self.generation = blob.generation
    self._thread = threading.Thread(target=self._beat, name="workdir-lock", daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      blob = self.bucket.blob(self.name)
      try:
        blob.upload_from_string(json.dumps(_holder()), if_generation_match=self.generation)
        self.generation = blob.generation
      except Exception:  # noqa: BLE001 - a lost lock or a network error: keep training, retry later
        pass

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=10)
    with contextlib.suppress(Exception):
      self.bucket.blob(self.name).delete(if_generation_match=self.generation)


def _parse(text: str) -> dict:
  try:
    info = json.loads(text)
  except ValueError:
    return {}
  return info if isinstance(info, dict) else {}


def _stale(info: dict, updated) -> bool:
  """Whether a held lock's run is gone: a dead process on this host, or no refresh for STALE_S."""
  if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
    try:
      os.kill(info["pid"], 0)
    except ProcessLookupError:
      return True
    except PermissionError:
      pass  # alive, another user's
  return updated is not None and (datetime.datetime.now(datetime.timezone.utc) - updated).total_seconds() > STALE_S
