"""What the console scripts share: user errors as one `error: ...` line, one-line flag errors.

User errors print one line and exit with status 1; set TRM_TRACEBACK=1 to see
the traceback instead. Bugs (anything not in `USER_ERRORS`) keep their
traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys


class UserError(ValueError):
  """A mistake in the command line or config (reported as one line)."""


def first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  msg = text[0].strip() if text else type(e).__name__
  return msg.strip("'\"") if isinstance(e, KeyError) else msg


class RunStopped(RuntimeError):
  """A run that stopped for a reason the user must act on (e.g. a non-finite loss), as one line."""


# What a user can cause: every project error above (and CheckpointError, DataError, InputError, ...)
# derives from ValueError or RunStopped. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, KeyError, AttributeError, FileNotFoundError, RunStopped)


# File-system conditions a user causes (read-only or full disks, missing permissions, a file where a
# directory belongs): one line naming the path. Other OSErrors keep their traceback.
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                         errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOENT})


def os_error_line(e: OSError) -> str:
  where = e.filename if e.filename is not None else ""
  return f"{where}: {e.strerror or first_line(e)}" if where else (e.strerror or first_line(e))


@contextlib.contextmanager
def user_errors():
  """Turns user errors into one `error: ...` line and exit status 1."""
  if os.environ.get("TRM_TRACEBACK"):
    yield
    return
  try:
    yield
  except USER_ERRORS as e:
    print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
    sys.exit(1)
  except OSError as e:
    if e.errno not in USER_ERRNOS:
      raise
    print(f"error: {os_error_line(e)}", file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv):
  """absl flag parsing with bad flags / config overrides reported as one line (absl `flags_parser`)."""
  from absl import flags  # noqa: PLC0415
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {first_line(e)}", file=sys.stderr, flush=True)
    sys.exit(1)
  except Exception as e:  # noqa: BLE001 - errors raised while loading the config file
    if os.environ.get("TRM_TRACEBACK"):
      raise
    print(f"error: --config: {first_line(e)}", file=sys.stderr, flush=True)
    sys.exit(1)
