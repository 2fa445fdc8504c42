"""The errors a user can cause, and how one becomes one line.

Project errors derive from `UserError` (a ValueError) or `RunStopped`; the
console scripts (`cli.user_errors`) print them as one `error: ...` line.
Library modules import this module, never a CLI module.
"""

from __future__ import annotations

import errno


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
  {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.ENOENT,
  }
)


def os_error_line(e: OSError) -> str:
  where = e.filename if e.filename is not None else ""
  return f"{where}: {e.strerror or first_line(e)}" if where else (e.strerror or first_line(e))
