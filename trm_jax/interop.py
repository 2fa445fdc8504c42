"""Reference (PyTorch) state-dict keys <-> trm_jax variables.

The reference stores linear weights as (out, in); we store kernels as (in, out). Key layout: see
../shared/parity/README.md. Compiled-model checkpoints carry an extra `_orig_mod.` prefix, which is accepted.
"""

from __future__ import annotations

import flax
import jax
import numpy as np

PREFIX = "model.inner."


def _ref_name(path: tuple) -> tuple[str, bool]:
  """Our variable path -> (reference key, transpose?)."""
  parts = [q for p in path for q in (p.split("_", 1) if p.startswith("layers_") else [p])]
  if parts[0] in ("embed_tokens", "embed_pos"):  # an nn.Embed table and a bare parameter
    return f"{PREFIX}{parts[0]}.embedding_weight", False
  if parts[-1] == "kernel":
    return PREFIX + ".".join(parts[:-1] + ["weight"]), True
  return PREFIX + ".".join(parts), False


def _flat(tree) -> dict:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def reference_keys(variables) -> dict[str, tuple]:
  """{reference key: (collection, path, transpose)} for every model variable."""
  out = {}
  for col in ("params", "consts"):
    for path in _flat(variables[col]):
      key, tr = _ref_name(path)
      out[key] = (col, path, tr)
  return out


class KeyMismatch(ValueError):
  pass


class BadValues(ValueError):
  """A weight that is not real floating point, or holds NaN/inf (one line, names the key)."""


def _weights(value, key: str, source: str) -> np.ndarray:
  """`value` as float32, refusing non-float dtypes (complex, int, bool, ...) and NaN/inf."""
  a = np.asarray(value)
  if a.dtype.kind != "f":
    raise BadValues(f"{source}: {key} has dtype {a.dtype}; weights must be real floating point")
  a = a.astype(np.float32)
  finite = np.isfinite(a)
  if not finite.all():
    raise BadValues(
      f"{source}: {key} holds {a.size - int(finite.sum())} NaN/inf value(s) "
      f"(first at index {np.unravel_index(int(np.argmin(finite)), a.shape)})"
    )
  return a


def from_reference(
  state_dict: dict,
  like_variables,
  num_puzzle_identifiers: int | None = None,
  puzzle_emb_ndim: int = 0,
  source: str = "state dict",
):
  """Reference state dict -> (variables, puzzle_table).

  `like_variables` gives the expected tree and shapes (e.g. from `jax.eval_shape(init)`); every shape is checked and
  missing or unexpected keys are reported by name.
  """
  sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
  keys = reference_keys(like_variables)
  table_key = PREFIX + "puzzle_emb.weights"
  expected = set(keys) | ({table_key} if puzzle_emb_ndim > 0 else set())
  missing = sorted(expected - set(sd))
  unexpected = sorted(set(sd) - expected - {PREFIX + "puzzle_emb.local_weights", PREFIX + "puzzle_emb.local_ids"})
  problems = [f"{what} keys: {', '.join(ks)}" for what, ks in (("missing", missing), ("unexpected", unexpected)) if ks]
  if problems:
    raise KeyMismatch(f"{source}: " + "; ".join(problems))
  flat = {"params": {}, "consts": {}}
  like_flat = {c: _flat(like_variables[c]) for c in flat}
  for key, (col, path, tr) in keys.items():
    a = _weights(sd[key], key, source)
    want = tuple(like_flat[col][path].shape)
    want = want[::-1] if tr else want  # the reference's (out, in)
    if a.shape != want:
      raise KeyMismatch(f"{source}: {key} has shape {a.shape}, the config expects {want}")
    flat[col][path] = a.T if tr else a
  variables = {c: flax.traverse_util.unflatten_dict(flat[c]) for c in flat}
  table = None
  if puzzle_emb_ndim > 0:
    table = _weights(sd[table_key], table_key, source)
    want = (num_puzzle_identifiers, puzzle_emb_ndim)
    if num_puzzle_identifiers is not None and table.shape != want:
      raise KeyMismatch(f"{source}: {table_key} has shape {table.shape}, the config expects {want}")
  return variables, table


def to_reference(variables, puzzle_table=None) -> dict[str, np.ndarray]:
  """trm_jax variables (+ table) -> reference-keyed float32 arrays."""
  out = {}
  flat = {c: _flat(variables[c]) for c in ("params", "consts")}
  for key, (col, path, tr) in reference_keys(variables).items():
    a = np.asarray(jax.device_get(flat[col][path]))
    out[key] = np.ascontiguousarray(a.T if tr else a).astype(np.float32)
  if puzzle_table is not None and np.size(puzzle_table):
    out[PREFIX + "puzzle_emb.weights"] = np.asarray(jax.device_get(puzzle_table), np.float32)
  return out
