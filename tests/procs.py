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
  for i, (rc, o, r) in enumerate(out):
    assert not check or rc == 0, f"process {i} exited with {rc}:\n{r[-3000:]}"
  return out
