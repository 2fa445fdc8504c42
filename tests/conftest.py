"""Shared fixtures."""
import os

import pytest


@pytest.fixture(scope="session")
def env(tmp_path_factory):
  """Environment for CLI subprocesses: CPU, one compilation cache for the session."""
  e = dict(os.environ)
  e.setdefault("JAX_COMPILATION_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
  e["JAX_PLATFORMS"] = "cpu"
  e.pop("TRM_TRACEBACK", None)
  return e
