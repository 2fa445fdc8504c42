"""Explicit points where a test stops a process midway, instead of sleeping.

A process started with `TRM_JAX_FAULT_POINT=<name>` prints `fault point: <name>`
on stdout when it reaches `point(<name>)`, then waits until its stdin closes
(or it is killed). Unset (always, outside tests) a point does nothing.
"""
from __future__ import annotations

import os
import sys

ENV = "TRM_JAX_FAULT_POINT"


def point(name: str) -> None:
  if os.environ.get(ENV) != name:
    return
  print(f"fault point: {name}", flush=True)
  sys.stdin.read()
