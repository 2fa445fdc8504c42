"""The files of a run, local or on gs://, written safely: every path a run reads or writes goes through here.

`scheme://` paths go through `etils.epath`'s fsspec backend (gcsfs: `pip install 'trm_jax[gcs]'`). Local writes
never follow a symbolic link: whole files go to a temporary file created exclusively next to the target, then
`os.replace` (which replaces a link, not writes through it); appends open with `O_NOFOLLOW`; the workdir and its
run directories must be the user's. GCS has no append and no rename: an object is written whole, atomically.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import posixpath
import stat
import uuid

from trm_jax import errors


class FileIOError(ValueError):
  """A path the run cannot use (one line, names the path)."""


def is_remote(path) -> bool:
  return "://" in str(path)


def resolve(path) -> str:
  """Local: absolute, `~` expanded; remote: as given, without a trailing '/'."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, _, rest = path.partition("://")
    return f"{scheme}://{rest.rstrip('/')}"
  return os.path.abspath(os.path.expanduser(path))


def join(path, *names) -> str:
  path = os.fspath(path)
  return posixpath.join(path, *names) if is_remote(path) else os.path.join(path, *names)


def epath(path):
  """An `etils.epath.Path` (gs:// needs gcsfs)."""
  from etils import epath as epath_lib  # noqa: PLC0415

  return epath_lib.Path(os.fspath(path))


def _remote(path, fn):
  """`fn(epath(path))`, a missing gcsfs (or a failed request) as one line naming the path."""
  try:
    return fn(epath(path))
  except ImportError as e:
    raise FileIOError(
      f"{path}: remote paths need gcsfs and google-cloud-storage "
      f"(pip install 'trm_jax[gcs]'; {errors.first_line(e, 300)})"
    ) from None
  except (FileNotFoundError, FileIOError):
    raise
  except OSError as e:
    raise FileIOError(f"{path}: {errors.first_line(e, 300)}") from None


def exists(path) -> bool:
  return _remote(path, lambda p: p.exists()) if is_remote(path) else os.path.lexists(path)


def isdir(path) -> bool:
  return _remote(path, lambda p: p.is_dir()) if is_remote(path) else os.path.isdir(path)


def listdir(path) -> list[str]:
  return _remote(path, lambda p: [c.name for c in p.iterdir()]) if is_remote(path) else os.listdir(path)


def makedirs(path) -> None:
  if is_remote(path):
    _remote(path, lambda p: p.mkdir(parents=True, exist_ok=True))  # no-op on GCS: objects need no folders
    return
  try:
    os.makedirs(path, exist_ok=True)
  except FileExistsError:
    raise FileIOError(f"{path}: exists and is not a directory") from None
  except OSError as e:
    raise FileIOError(f"{path}: cannot create directory ({e.strerror})") from None


def move(src, dst) -> None:
  """Renames the file or directory `src` to the new `dst` in an existing folder (gs://: copies, then deletes)."""
  if is_remote(src):
    _remote(src, lambda p: p.rename(epath(dst)))
    return
  if os.path.lexists(dst):
    raise FileIOError(f"{dst}: exists; not moving {src} onto it")
  try:
    os.rename(src, dst)
  except OSError as e:
    raise FileIOError(f"{src}: cannot move to {dst} ({e.strerror})") from None


def read_bytes(path) -> bytes:
  return _remote(path, lambda p: p.read_bytes()) if is_remote(path) else pathlib.Path(path).read_bytes()


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode())


def write_bytes(path, data: bytes) -> None:
  """Replaces `path` with `data` in one step (readers see the old or the new file); locally never through a link."""
  if is_remote(path):
    _remote(path, lambda p: p.write_bytes(data))  # one object write is atomic on GCS
    return
  parent, base = os.path.split(os.path.abspath(path))
  tmp = os.path.join(parent, f".{base}.{uuid.uuid4().hex}.tmp")
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # never a link
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)  # a link at `path` is replaced, not followed
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


class Appender:
  """Appends text to a file: local with O_APPEND|O_NOFOLLOW; remote by rewriting the whole object at every
  `write` (GCS has no append; meant for small files such as metrics.jsonl)."""

  def __init__(self, path):
    self.path = os.fspath(path)
    self._remote = is_remote(self.path)
    if self._remote:
      self._text = read_bytes(self.path).decode() if exists(self.path) else ""
      self._file = None
    else:
      flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
      try:
        fd = os.open(self.path, flags, 0o666)
      except OSError as e:
        refuse_link(self.path)  # O_NOFOLLOW refused a link: say so
        raise FileIOError(f"{self.path}: cannot open for writing ({e.strerror})") from None
      self._file = os.fdopen(fd, "a")

  def write(self, text: str) -> None:
    if self._remote:
      self._text += text
      write_text(self.path, self._text)
    else:
      self._file.write(text)
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None


def refuse_link(path, what: str = "") -> None:
  """A local file the run writes must not be a symbolic link."""
  if not is_remote(path) and os.path.islink(path):
    raise FileIOError(f"{what or path}: is a symbolic link; refusing to write through it")


def check_owned_dir(path, what: str) -> None:
  """A local directory the run writes into: if it exists, a directory owned by the user.
  A symbolic link to a directory is accepted only when the link and the directory are both the user's."""
  if is_remote(path):
    return
  try:
    st = os.lstat(path)
  except FileNotFoundError:
    return
  uid = os.geteuid()
  if stat.S_ISLNK(st.st_mode):
    if st.st_uid != uid:
      raise FileIOError(
        f"{what}: is a symbolic link owned by uid {st.st_uid} (you are uid {uid}); refusing to follow it"
      )
    try:
      st = os.stat(path)
    except FileNotFoundError:
      raise FileIOError(f"{what}: is a dangling symbolic link") from None
  if not stat.S_ISDIR(st.st_mode):
    raise FileIOError(f"{what}: exists and is not a directory")
  if st.st_uid != uid:
    raise FileIOError(
      f"{what}: owned by uid {st.st_uid}, not you (uid {uid}); refusing to write into it (use a directory you own)"
    )


def prepare_workdir(workdir, run_dirs=()) -> str:
  """Resolved workdir; creates its parents; refuses it, or one of `run_dirs`, if not a directory or not the user's."""
  workdir = resolve(workdir)
  what = f"--workdir={workdir}"
  if is_remote(workdir):
    if _remote(workdir, lambda p: p.exists() and not p.is_dir()):
      raise FileIOError(f"{what}: exists and is not a directory")
    return workdir
  parent = os.path.dirname(workdir)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise FileIOError(f"{what}: cannot create parent directory {parent} ({e.strerror})") from None
  check_owned_dir(workdir, what)
  for path in run_dirs:
    check_owned_dir(path, f"{what}: {os.path.basename(path)}")
  return workdir
