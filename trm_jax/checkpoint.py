"""Orbax checkpoints of a run: state (params, opt state, EMA, puzzle table, step), the ACT carry with its current
examples, and a JSON record of the run.

Saves are asynchronous and keep the newest `keep` steps; SIGTERM makes the loop save and exit (`Preemption`).
Restores always use an abstract target so optax states keep their types.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from trm_jax import errors, faults, fileio, integrity, rundir


class CheckpointError(ValueError):
  """An unreadable checkpoint directory (one line, names the path)."""


def manager(workdir, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
  """The run directory's `checkpoints/` (local or gs://, through epath; tensorstore writes the arrays)."""
  directory = rundir.RunDir(workdir).checkpoints()
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=not read_only,
    read_only=read_only,
    enable_async_checkpointing=not read_only,
    cleanup_tmp_directories=not read_only,
  )
  try:
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "carry", "meta"))
  except Exception as e:  # noqa: BLE001 - orbax raises many kinds
    raise CheckpointError(f"{directory}: not a readable checkpoint directory ({errors.first_line(e, 200)})") from None


def _drop_empty(tree):
  """Zero-size arrays (e.g. the table without puzzle embeddings) cannot be saved: store None."""
  return jax.tree.map(lambda x: None if x.size == 0 else x, tree)


def _refill(tree, abstract_tree):
  """Puts zero-size arrays back where `_drop_empty` left None."""
  fill = lambda a, x: jax.device_put(jnp.zeros(a.shape, a.dtype), a.sharding) if a is not None and a.size == 0 else x
  return jax.tree.map(fill, abstract_tree, tree, is_leaf=lambda x: x is None)


class NonFiniteState(ValueError):
  """A state holding NaN/inf, refused by `save` (one line, names the leaf)."""


def save(mngr: ocp.CheckpointManager, step: int, state, carry, meta: dict, force: bool = False) -> bool:
  """Saves asynchronously; the meta item records a fingerprint of every array (checked by `restore`).
  With the `checkpoint_saved` fault point armed (tests), waits for the commit and stops there."""
  state, carry = _drop_empty(state), _drop_empty(carry)
  prints = {}
  for name, tree in (("state", state), ("carry", carry)):
    summary = integrity.summarize(tree)
    bad = [k for k, (_, ok) in summary.items() if not ok]
    if bad:
      raise NonFiniteState(
        f"non-finite values in the step-{step} {name} ({integrity.first_and_more(name, bad)}); not saved"
      )
    prints[name] = {k: fp for k, (fp, _) in summary.items()}
  meta = dict(meta, fingerprints=prints)
  with errors.disk_full_names(mngr.directory):  # here or in the previous, asynchronous, save
    faults.disk_full("checkpoint_write", f"{mngr.directory}/{step}")
    items = dict(state=ocp.args.StandardSave(state), carry=ocp.args.StandardSave(carry), meta=ocp.args.JsonSave(meta))
    saved = mngr.save(step, args=ocp.args.Composite(**items), force=force)
  if saved and faults.armed("checkpoint_saved"):
    mngr.wait_until_finished()  # committed: what a test that stops (or kills) the run here finds
    faults.point("checkpoint_saved")
  return saved


def latest_step(mngr: ocp.CheckpointManager):
  try:
    return mngr.latest_step()
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{mngr.directory}: cannot list checkpoints ({errors.first_line(e, 200)})") from None


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, abstract_carry=None):
  """-> (state, carry or None, meta) of `step`; a damaged checkpoint (unreadable, a fingerprint other than the one
  recorded at save time, or NaN/inf anywhere) is a CheckpointError naming the step."""
  where = os.path.join(str(mngr.directory), str(step))
  items = dict(state=ocp.args.StandardRestore(_drop_empty(abstract_state)), meta=ocp.args.JsonRestore())
  if abstract_carry is not None:
    items["carry"] = ocp.args.StandardRestore(_drop_empty(abstract_carry))
  try:
    got = mngr.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"{where}: cannot restore checkpoint ({errors.first_line(e, 200)})") from None
  meta = got["meta"]
  recorded = meta.get("fingerprints") if isinstance(meta, dict) else None
  for name in ("state", "carry"):
    if name in got and got[name] is not None:
      if why := integrity.damage(got[name], None if recorded is None else recorded.get(name, {}), name):
        raise CheckpointError(f"{where}: damaged checkpoint ({why})")
  state = _refill(got["state"], abstract_state)
  carry = _refill(got["carry"], abstract_carry) if abstract_carry is not None else None
  return state, carry, meta


class Restored(NamedTuple):
  step: int
  state: Any
  carry: Any  # None when no abstract carry was asked for
  meta: dict
  damaged: list  # [(step, reason)] of the newer checkpoints skipped on the way


def restore_intact(mngr: ocp.CheckpointManager, abstract_state, abstract_carry=None) -> Restored:
  """The newest checkpoint that restores intact; a CheckpointError when none does."""
  damaged = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return Restored(step, *restore(mngr, step, abstract_state, abstract_carry), damaged)
    except CheckpointError as e:
      damaged.append((step, str(e)))
  reason = damaged[0][1] if damaged else f"{mngr.directory}: no checkpoint"
  raise CheckpointError(f"no intact checkpoint ({len(damaged)} damaged); newest: {reason}")


def set_aside(mngr: ocp.CheckpointManager, steps, run_dir: rundir.RunDir) -> list[str]:
  """Moves the checkpoints of `steps` (that failed to restore) next to the checkpoints directory; -> where to.
  Not deleted: a passing storage error can look like damage. Process 0 moves; every process re-reads the folder."""
  stamp = time.strftime("%Y%m%d-%H%M%S")
  dests = [run_dir.damaged_checkpoint(s, stamp) for s in steps]
  if jax.process_index() == 0:
    for s, d in zip(steps, dests):
      fileio.move(run_dir.checkpoints(s), d)
  barrier("trm_set_aside_damaged")
  mngr.reload()
  return dests


def restore_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(
      f"{os.path.join(str(mngr.directory), str(step))}: cannot read checkpoint metadata ({errors.first_line(e, 200)})"
    ) from None


def barrier(key: str, timeout_s: int = 3600) -> None:
  """All processes meet here (a no-op on one process); e.g. after compiling, so that a peer that compiles slower
  does not leave another waiting inside a collective, where CPU (gloo) gives up after 30 s."""
  ocp.multihost.get_barrier_sync_fn()(key=key, timeout_ms=timeout_s * 1000)


class Preemption:
  """SIGTERM -> the loop saves at an agreed step and exits cleanly.

  One process: a Python SIGTERM handler sets the flag `reached` returns. Several: XLA's SIGTERM handler (JAX's
  preemption sync manager) agrees on a step that `reached` asks Orbax for; a Python handler would replace it. Once
  a preemption save is pending, another SIGTERM or a SIGINT ends the process at once instead of waiting.
  """

  def __init__(self):
    self.requested = False
    self._old = {}

  def __enter__(self):
    self._multi = jax.process_count() > 1
    if not self._multi:
      self._install(signal.SIGTERM, self._handle)
    return self

  def _install(self, signum, handler):
    with contextlib.suppress(ValueError):  # not the main thread
      self._old.setdefault(signum, signal.signal(signum, handler))

  def _handle(self, signum, frame):
    if self.requested:
      self._die(signum)
    self.requested = True
    self._install(signal.SIGINT, self._die)

  def _die(self, signum, frame=None):
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)

  def __exit__(self, *exc):
    for signum, old in self._old.items():
      if old is not None:
        signal.signal(signum, old)
    self._old = {}

  def reached(self, mngr: ocp.CheckpointManager, step: int) -> bool:
    if not self._multi:
      return self.requested
    if mngr.reached_preemption(step):  # the same step on every process
      self.requested = True
      self._install(signal.SIGTERM, self._die)
      self._install(signal.SIGINT, self._die)
      return True
    return False
