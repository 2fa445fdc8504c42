"""Device mesh and shardings from config; knows nothing about the model.

Axes: `data` (batch; data parallel) and `table` (rows of the puzzle-embedding table, the one tensor worth sharding: ~1M
x 512 on ARC). The batch and the ACT carry are split over both axes, so every device holds distinct rows; parameters,
optimiser state and EMA are replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH = ("data", "table")
BATCHED, REPLICATED = P(BATCH), P()  # specs of per-example arrays and of replicated ones


def batch_axes() -> tuple:
  """The context mesh's axes that split the batch (none off a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  return () if mesh.empty else tuple(a for a in BATCH if a in mesh.axis_names)


def per_device(fn, in_specs, out_specs, *args):
  """fn(*args) on each device's share of the batch (BATCHED args and outputs; the rest REPLICATED): Mosaic kernels
  are not partitioned by XLA. Off a mesh (or inside a shard_map) fn runs as is."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.are_all_axes_manual:
    return fn(*args)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)(*args)


def make_mesh(table_parallel: int = 1, devices=None) -> Mesh:
  """A (data, table) mesh over all devices; `table_parallel` devices share the table."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if table_parallel < 1 or n % table_parallel:
    raise ValueError(f"config.mesh.table_parallel={table_parallel} must divide the device count {n}")
  grid = np.asarray(devices).reshape(n // table_parallel, table_parallel)
  return Mesh(grid, ("data", "table"), axis_types=(AxisType.Auto, AxisType.Auto))


def platform(mesh: Mesh) -> str:
  """The platform of the mesh's devices ("cpu", "gpu", "tpu"): what a program for it is compiled for."""
  return mesh.devices.flat[0].platform


def under_mesh(fn, mesh: Mesh):
  """`fn` traced with `mesh` as the context mesh (kernels that need `jax.shard_map` read it)."""

  def wrapped(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)

  return wrapped


def check_batch(global_batch_size: int, mesh: Mesh, field: str = "train.global_batch_size") -> None:
  n = mesh.size
  if global_batch_size % n:
    raise ValueError(
      f"config.{field}={global_batch_size} must be divisible by the {n} devices "
      f"(try {max(n, global_batch_size // n * n)})"
    )


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH))


def table_rows(num_ids: int, table_parallel: int) -> int:
  """Table rows rounded up so that they split evenly over `table_parallel` devices.

  Depends on the config only (not on the devices at hand), so a checkpoint written on a pod restores on one device.
  """
  return -(-num_ids // table_parallel) * table_parallel


def state_shardings(mesh: Mesh, abstract_state):
  """Everything replicated except the puzzle table, split by rows along `table`."""
  shardings = jax.tree.map(lambda _: replicated(mesh), abstract_state)
  if getattr(abstract_state, "puzzle_table", None) is not None:
    shardings = shardings.replace(puzzle_table=NamedSharding(mesh, P("table", None)))
  return shardings


def carry_shardings(mesh: Mesh, abstract_carry):
  """The ACT carry follows the batch: latents (.., B, T, D) on B, the rest on axis 0."""

  def spec(path, x):
    in_z = any(getattr(k, "key", None) == "z" for k in path)
    batch_axis = x.ndim - 3 if in_z else 0
    return NamedSharding(mesh, P(*([None] * batch_axis + [BATCH])))

  return jax.tree_util.tree_map_with_path(spec, abstract_carry)


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy rows -> global arrays sharded on the batch axis."""
  s = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(s, np.asarray(v)) for k, v in local.items()}


def jit_train_step(train_step, mesh: Mesh, state_sh, carry_sh):
  """jax.jit of `train_step(state, carry, batch, rng)` with the state's and carry's shardings.

  State and carry are donated; metric sums come back replicated.
  """
  repl = replicated(mesh)
  return jax.jit(
    under_mesh(train_step, mesh),
    in_shardings=(state_sh, carry_sh, batch_sharding(mesh), repl),
    out_shardings=(state_sh, carry_sh, repl),
    donate_argnums=(0, 1),
  )
