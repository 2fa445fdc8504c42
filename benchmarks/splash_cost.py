r"""Compiler estimate of what the splash attention kernel buys on TPU (no TPU needed).

    ALLOW_MULTIPLE_LIBTPU_LOAD=1 python benchmarks/splash_cost.py [--topology=v5e:2x2] [--batch_per_chip=12]

Compiles forward + backward at the ARC shape (T = 916, hidden 512, 8 heads
of 64, bfloat16) for a TPU topology from this host, with impl "xla" and
"splash", of (a) "op": `attention(q, k, v)` alone (out and dq, dk, dv from
q, k, v, dout; the compiler picks the parameters' layouts, so some copies
are the harness's) and (b) "layer": one `model.Attention` (qkv projection,
RoPE, attention, output projection; d/dx and d/dparams), and prints per-chip
`cost_analysis()` bytes accessed and `memory_analysis()` sizes, one JSON
line each. Nothing runs: these are compiler estimates.

XLA's cost model counts a Mosaic custom call like any op: each operand read
once and each result written once, at its padded HBM size. What the kernel
reads more than once is not seen; `kernel_rereads` adds it (see there).
"""

import argparse
import json

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from trm_jax import sharding
from trm_jax.model import Attention, attention, rope_cos_sin, splash_rereads


def kernel_rereads(b, t, n):
  """The splash kernels' re-reads beyond one read per operand (see `model.splash_rereads`)."""
  fwd, bwd = splash_rereads(b, t, n, 64)
  return {"fwd": fwd, "bwd": bwd}


def compile_op(impl, mesh, b, t, d=512, heads=8):
  """The compiled forward + backward of attention(q, k, v) on (b, t, heads, d / heads) arrays."""
  spec = jax.ShapeDtypeStruct((b, t, heads, d // heads), jnp.bfloat16, sharding=NamedSharding(mesh, P(sharding.BATCH)))

  def fwd_bwd(q, k, v, do):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, impl, interpret=False), q, k, v)
    return out, vjp(do)

  with jax.set_mesh(mesh):
    return jax.jit(fwd_bwd).lower(spec, spec, spec, spec).compile()


def compile_layer(impl, mesh, b, t, d=512, heads=8):
  """The compiled forward + backward of one Attention layer on a (b, t, d) batch."""
  layer = Attention(heads, jnp.bfloat16, impl, platform="tpu")
  cos_sin = rope_cos_sin(t, d // heads, 10000.0)
  x = jax.ShapeDtypeStruct((b, t, d), jnp.bfloat16, sharding=NamedSharding(mesh, P(sharding.BATCH)))
  params = jax.eval_shape(lambda: layer.init(jax.random.key(0), jnp.zeros((1, t, d), jnp.bfloat16), cos_sin))
  params = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, P())), params)

  def fwd_bwd(params, x, dy):
    y, vjp = jax.vjp(lambda p, x: layer.apply(p, x, cos_sin), params, x)
    return y, vjp(dy)

  with jax.set_mesh(mesh):
    return jax.jit(fwd_bwd).lower(params, x, x).compile()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--topology", default="v5e:2x2")
  ap.add_argument("--batch_per_chip", type=int, default=12)
  ap.add_argument("--seq", type=int, default=916)
  args = ap.parse_args()
  devices = topologies.get_topology_desc(topology_name=args.topology, platform="tpu").devices
  mesh = sharding.make_mesh(1, devices)
  b, t = args.batch_per_chip, args.seq
  for what, compile_fn in (("op", compile_op), ("layer", compile_layer)):
    for impl in ("xla", "splash"):
      print(json.dumps(_row(compile_fn(impl, mesh, b * len(devices), t), what, impl, args)), flush=True)


def _row(c, what, impl, args):
  """Per-chip compiler figures of one compiled program (and the kernels' re-reads for splash)."""
  b, t = args.batch_per_chip, args.seq
  cost, mem = c.cost_analysis(), c.memory_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  row = {
    "what": what,
    "impl": impl,
    "topology": args.topology,
    "per_chip_batch": b,
    "T": t,
    "xla_bytes_accessed": cost.get("bytes accessed"),
    "xla_flops": cost.get("flops"),
    "temp_bytes": mem.temp_size_in_bytes,
    "argument_bytes": mem.argument_size_in_bytes,
    "output_bytes": mem.output_size_in_bytes,
    "custom_calls": c.as_text().count("tpu_custom_call"),
  }
  if impl == "splash":
    row["kernel_rereads"] = kernel_rereads(b, t, 8)
    row["bytes_accessed_with_rereads"] = row["xla_bytes_accessed"] + sum(row["kernel_rereads"].values())
  return row


if __name__ == "__main__":
  main()
