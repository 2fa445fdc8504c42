"""checkpoint.Preemption on one process: the first SIGTERM asks for a save, a second SIGTERM or a
SIGINT while that save is pending ends the process at once (a blocked wait does not hold it)."""

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import signal, sys, threading
from trm_jax import checkpoint
with checkpoint.Preemption() as p:
  assert not p.reached(None, 1)
  signal.raise_signal(signal.SIGTERM)  # its handler has run when raise_signal returns
  print("first", p.reached(None, 2), flush=True)
  # Stands for a pending save (mngr.wait_until_finished): a blocked wait that ends only when the
  # test closes stdin. The test sends the second signal, if any, once "saving" is printed.
  saved = threading.Event()
  threading.Thread(target=lambda: (sys.stdin.read(), saved.set()), daemon=True).start()
  print("saving", flush=True)
  saved.wait()
  print("survived", flush=True)
print("restored", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def _start(tmp_path):
  """-> (the script's process, blocked in its pending save, the path of its stderr)."""
  err = tmp_path / "stderr"
  with open(err, "w") as f:
    p = subprocess.Popen(
      [sys.executable, "-c", SCRIPT],
      cwd=ROOT,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=f,
      text=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
  lines = [p.stdout.readline() for _ in range(2)]
  if lines != ["first True\n", "saving\n"]:
    p.kill()
    p.communicate()
    raise AssertionError("".join(lines) + err.read_text()[-2000:])
  return p, err


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_second_signal_while_saving_ends_the_process(tmp_path, second):
  p, err = _start(tmp_path)
  try:
    p.send_signal(getattr(signal, second))
    rc = p.wait(timeout=60)  # stdin stays open: the pending save never ends by itself
  finally:
    if p.poll() is None:
      p.kill()
    out = p.communicate()[0]
  assert out == "", out + err.read_text()[-2000:]
  assert rc == -getattr(signal, second)


def test_one_sigterm_is_a_request_only(tmp_path):
  p, err = _start(tmp_path)
  out = p.communicate(timeout=60)[0]  # closes stdin: the save ends
  assert p.returncode == 0, err.read_text()[-2000:]
  assert out.splitlines() == ["survived", "restored True"]
