"""Test helpers for groups of subprocesses (multi-process runs): a free port, waiting without leftovers."""

import socket
import time


def free_port(host: str = "localhost") -> int:
  with socket.socket() as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def finish(procs, timeout: float, check: bool = True):
  """Waits for every process (killing all on a timeout or failure); -> list of (rc, stdout, stderr)."""
  out, deadline = [], time.time() + timeout
  try:
    for p in procs:
      o, r = p.communicate(timeout=max(1.0, deadline - time.time()))
      out.append((p.returncode, o, r))
  finally:
    for p in procs:  # a failed peer leaves the others waiting on collectives
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (rc, _, r) in enumerate(out):
    assert not check or rc == 0, f"process {i} exited with {rc}:\n{r[-3000:]}"
  return out


def read_to_point(p, name: str, stderr_path=None) -> str:
  """Reads `p`'s stdout up to the line `fault point: <name>` (trm_jax.faults); -> the text read.

  `p` was started with TRM_JAX_FAULT_POINT=<name>, stdin and stdout pipes, and stderr
  to a file (`stderr_path`, shown if the process ends before the point).
  """
  seen = []
  for line in iter(p.stdout.readline, ""):
    seen.append(line)
    if line == f"fault point: {name}\n":
      return "".join(seen)
  err = open(stderr_path).read()[-3000:] if stderr_path else ""
  raise AssertionError(f"the process ended before fault point {name}:\n{''.join(seen)[-2000:]}{err}")
