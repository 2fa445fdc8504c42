"""Shared fixtures."""

import os

import pytest


@pytest.fixture(scope="session")
def env(tmp_path_factory):
  """Environment for CLI subprocesses: CPU, one compilation cache for the session."""
  e = dict(os.environ)
  e.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
  # Cache every program, not only those over 1 s to compile: the same small run starts many times.
  e.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  e["JAX_PLATFORMS"] = "cpu"
  e.pop("TRM_TRACEBACK", None)
  return e
