"""The errors a user can cause, and how one becomes one line.

Project errors derive from `UserError` (a ValueError) or `RunStopped`; the console scripts (`cli.user_errors`)
print them as one `error: ...` line. Library modules import this module, never a CLI module.
"""

from __future__ import annotations

import contextlib
import errno
import os


class UserError(ValueError):
  """A mistake in the command line or config (reported as one line)."""


def first_line(e: BaseException, limit: int | None = None) -> str:
  """The exception's first line (its type when empty), at most `limit` characters."""
  text = str(e).strip().splitlines()
  msg = text[0].strip() if text else type(e).__name__
  msg = msg.strip("'\"") if isinstance(e, KeyError) else msg
  return msg.split(". See full TensorStore details")[0][:limit]


class RunStopped(RuntimeError):
  """A run that stopped for a reason the user must act on (e.g. a non-finite loss), as one line."""


# What a user can cause: every project error above (and CheckpointError, DataError, InputError, ...)
# derives from ValueError or RunStopped. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, RunStopped)


# File-system conditions a user causes (read-only or full disks, missing permissions, a file where a
# directory belongs): one line naming the path. Other OSErrors keep their traceback.
USER_ERRNOS = frozenset(
  getattr(errno, name)
  for name in "EACCES EPERM EROFS ENOSPC EDQUOT ENOTDIR EISDIR EEXIST ENAMETOOLONG ELOOP ENOENT".split()
)


def os_error_line(e: OSError) -> str:
  where = e.filename if e.filename is not None else ""
  return f"{where}: {e.strerror or first_line(e)}" if where else (e.strerror or first_line(e))


def disk_full(e) -> int | None:
  """ENOSPC or EDQUOT when `e` (an exception or a log message) is a full disk or quota, else None.
  Orbax and TensorStore report them as a ValueError whose text holds the OS's message."""
  for code in (errno.ENOSPC, errno.EDQUOT):
    if getattr(e, "errno", None) == code or os.strerror(code) in str(e):
      return code
  return None


@contextlib.contextmanager
def disk_full_names(path):
  """A full disk or quota inside the block becomes one OSError naming the file it names, else `path`."""
  try:
    yield
  except Exception as e:
    code = disk_full(e)
    if code is None:
      raise
    raise OSError(code, os.strerror(code), getattr(e, "filename", None) or os.fspath(path)) from None
