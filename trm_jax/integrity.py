"""Fingerprints and finiteness of array trees: how a damaged checkpoint is told apart.

A leaf's fingerprint is the sum mod 2**32 of its elements' bits (as uint32) times an odd weight set by position.
Integer addition is associative, so it does not depend on sharding: every process computes the same fingerprint
of a global array, and a restore under another mesh still matches. Changing one element always changes it (odd
weights are invertible mod 2**32); larger damage is missed with probability about 2**-32 per leaf.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_MUL = np.uint32(0x9E3779B1)  # odd: a bijection on uint32, spreads nearby positions apart


def _as_uint32(x):
  """The element bits of `x` as uint32 (64-bit dtypes gain a trailing axis of 2)."""
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  if x.dtype.itemsize < 4:
    return jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16}[x.dtype.itemsize]).astype(jnp.uint32)
  return jax.lax.bitcast_convert_type(x, jnp.uint32)


def _leaf_summary(x):
  """-> (uint32 fingerprint, all elements finite) of one array."""
  u = _as_uint32(x)
  pos = jnp.zeros(u.shape, jnp.uint32)
  for d in range(u.ndim):  # row-major position, without a reshape (keeps the sharding)
    pos = pos * np.uint32(u.shape[d]) + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d)
  weight = (pos * _MUL) * np.uint32(2) + np.uint32(1)
  fp = jnp.sum(u * weight, dtype=jnp.uint32)
  finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)
  return fp, finite


@jax.jit
def _summaries(leaves):
  return [_leaf_summary(x) for x in leaves]


def summarize(tree) -> dict[str, tuple[int, bool]]:
  """{leaf path: (fingerprint, finite)} for every non-empty array leaf of `tree` (None leaves skipped)."""
  flat = [(jax.tree_util.keystr(p), x) for p, x in jax.tree.leaves_with_path(tree) if np.size(x)]
  if not flat:
    return {}
  out = _summaries([x for _, x in flat])
  # A scalar cannot be split, so every addressable shard holds the whole value (multi-host safe).
  scalar = lambda x: np.asarray(x.addressable_data(0))
  return {k: (int(scalar(fp)), bool(scalar(ok))) for (k, _), (fp, ok) in zip(flat, out)}


def first_and_more(name: str, keys: list) -> str:
  """`<name><first key>`, and how many more keys there are."""
  return f"{name}{keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")


def damage(tree, expected: dict | None, name: str = "") -> str | None:
  """None if `tree` matches the `expected` fingerprints (None: not recorded) and is finite, else why not."""
  got = summarize(tree)
  if expected is not None:
    missing = sorted(set(got) - set(expected))
    if missing:
      return f"no fingerprint for {name}{missing[0]}"
    wrong = [k for k, (fp, _) in got.items() if int(expected[k]) != fp]
    if wrong:
      return f"fingerprint mismatch in {first_and_more(name, wrong)}"
  bad = [k for k, (_, ok) in got.items() if not ok]
  return f"non-finite values in {first_and_more(name, bad)}" if bad else None
