"""Explicit points where a test stops a process midway, instead of sleeping.

A process started with `TRM_JAX_FAULT_POINT=<name>` prints `fault point: <name>` on stdout when it reaches
`point(<name>)`, then waits until its stdin closes (or it is killed); reached again after that, it prints and
goes on. Unset (always, outside tests) a point does nothing. The points, named for what is true there:

- `data_build_before_publish` (datasets/common.py `build`): every record is in the build's private staging
  directory; nothing is published.
- `checkpoint_saved` (checkpoint.py `save`): the step just saved is committed.
- `progress_logged` (metrics.py `Writer.progress`): process 0 has printed the progress of a step.

`disk_full(<name>, path)` instead raises OSError(ENOSPC) for `path`, as a full disk would: `checkpoint_write`
(checkpoint.py `save`, before the write) and `metrics_write` (`Writer.write`).
"""

from __future__ import annotations

import errno
import os
import sys

ENV = "TRM_JAX_FAULT_POINT"


def armed(name: str) -> bool:
  """Whether this process stops at `point(name)` (for work only a stop there needs)."""
  return os.environ.get(ENV) == name


def point(name: str) -> None:
  if not armed(name):
    return
  print(f"fault point: {name}", flush=True)
  sys.stdin.read()


def disk_full(name: str, path) -> None:
  if armed(name):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
