"""checkpoint.Preemption on one process: the first SIGTERM asks for a save, a second SIGTERM or a
SIGINT while that save is pending ends the process at once (a blocked wait does not hold it)."""
import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import os, signal, sys, threading, time
from trm_jax import checkpoint
with checkpoint.Preemption() as p:
  assert not p.reached(None, 1)
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(0.2)
  print("first", p.reached(None, 2), flush=True)
  if sys.argv[1] != "none":
    threading.Timer(0.5, lambda: os.kill(os.getpid(), getattr(signal, sys.argv[1]))).start()
  threading.Event().wait(3)   # stands for a pending save (mngr.wait_until_finished)
  print("survived", flush=True)
print("restored", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def _run(second):
  return subprocess.run([sys.executable, "-c", SCRIPT, second], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("second", ["SIGTERM", "SIGINT"])
def test_second_signal_while_saving_ends_the_process(second):
  p = _run(second)
  assert p.stdout.splitlines() == ["first True"], p.stdout + p.stderr[-2000:]
  assert p.returncode == -getattr(signal, second)


def test_one_sigterm_is_a_request_only():
  p = _run("none")
  assert p.returncode == 0, p.stderr[-2000:]
  assert p.stdout.splitlines() == ["first True", "survived", "restored True"]
