"""SwiGLU as one Pallas TPU kernel per direction: the gate/up activations never reach HBM.

XLA's SwiGLU writes x @ W_gate_up (rows x 2 * inter, six times the input at expansion 4) to HBM, reads it back for
silu(gate) * up and again in the backward, and writes its gradient: on the arc1 train step that is ~40% of the HBM
traffic the TPU compiler estimates (benchmarks/NOTES.md, issue 19). Here a tile of rows goes in and its output comes
out, optionally with the block's residual adds and RMSNorms around the MLP (`swiglu`'s `add` and `norm_eps`); the
backward recomputes what it needs from the inputs (gate and up: one more x @ W_gate_up) and accumulates the kernels'
float32 gradients across the tiles. The arithmetic is the XLA path's (`model.SwiGLU`): low-precision dots with float32
accumulation, each result rounded once to the activation dtype, silu(gate) and its product with up rounded as in
the reference (`models/layers.py`, SwiGLU: `F.silu(gate) * up`). Mosaic kernels are not partitioned by XLA, so on a
mesh each device runs them on its share of the batch (`shard_map`); the kernels' gradients are summed across devices
in float32, as `model._dot_master` does. `interpret=True` runs the same kernels through the Pallas interpreter.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from trm_jax.sharding import BATCHED, REPLICATED, batch_axes, per_device

TILE = 512  # rows per grid step (a longer sequence ends in a partial tile)
# VMEM per TensorCore as the TPU compiler reports it when a Pallas call asks for more ("would exceed memory
# (size=...)", libtpu 0.0.42.1, compile-only devices).
VMEM = {"TPU v4": 16 << 20, "TPU v5 lite": 128 << 20, "TPU v5": 64 << 20, "TPU v6 lite": 128 << 20}
NT = (((1,), (1,)), ((), ()))  # a @ b^T
TN = (((0,), (0,)), ((), ()))  # a^T @ b
F32 = jnp.float32


def _act(g, u, dtype):
  """silu(g) * u from the rounded gate and up: (silu(g) rounded, sigmoid(g), the product rounded)."""
  gf = g.astype(F32)
  sig = 1.0 / (1.0 + jnp.exp(-gf))
  a = (gf * sig).astype(dtype).astype(F32)
  return a, sig, (a * u.astype(F32)).astype(dtype)


def _gate_up(x, wgu_ref):
  inter = wgu_ref.shape[1] // 2
  dot = lambda w: jnp.dot(x, w, preferred_element_type=F32).astype(x.dtype)
  return dot(wgu_ref[:, :inter]), dot(wgu_ref[:, inter:])


def _norm(x, y, eps: float):
  """rms_norm(x + y) as `model.rms_norm` computes it (the sum rounded, then float32): (out, the sum, 1 / rms)."""
  s = (x.astype(F32) + y.astype(F32)).astype(x.dtype).astype(F32)
  r = lax.rsqrt(jnp.mean(s * s, axis=-1, keepdims=True) + eps)
  return (s * r).astype(x.dtype), s, r


def _norm_bwd(s, r, g):
  """The gradient of (s r) for r = (mean(s^2) + eps)^-1/2, as `model._rms_norm_bwd`: r g - s r^3 mean(g s)."""
  g = g.astype(F32)
  return r * g - s * (r * r * r) * jnp.mean(g * s, axis=-1, keepdims=True)


def _fwd_kernel(*refs, eps):
  *rows, wgu_ref, wd_ref, y_ref = refs
  x = rows[0][0]
  if len(rows) > 1:  # the input is rms_norm(x + add)
    x = _norm(x, rows[1][0], eps)[0]
  _, _, m = _act(*_gate_up(x, wgu_ref), x.dtype)
  y = jnp.dot(m, wd_ref[...], preferred_element_type=F32).astype(x.dtype)
  y_ref[0] = (y if eps is None else _norm(x, y, eps)[0]).astype(y_ref.dtype)


def _bwd_kernel(*refs, length: int, eps):
  *rows, wgu_ref, wd_ref, dx_ref, dwgu_ref, dwd_ref = refs

  @pl.when((pl.program_id(0) == 0) & (pl.program_id(1) == 0))
  def _():
    dwgu_ref[...] = jnp.zeros(dwgu_ref.shape, F32)
    dwd_ref[...] = jnp.zeros(dwd_ref.shape, F32)

  *xs, dy = (r[0] for r in rows)
  tile, inter = dy.shape[0], wd_ref.shape[0]
  if length % tile:  # rows past the sequence's end in its last tile are undefined: no gradient from them
    keep = pl.program_id(1) * tile + lax.broadcasted_iota(jnp.int32, (tile, 1), 0) < length
    xs, dy = [jnp.where(keep, a, jnp.zeros_like(a)) for a in xs], jnp.where(keep, dy, jnp.zeros_like(dy))
  x = xs[0]
  if len(xs) > 1:  # the input is rms_norm(x + add)
    x, s1, r1 = _norm(x, xs[1], eps)
  g, u = _gate_up(x, wgu_ref)
  a, sig, m = _act(g, u, x.dtype)
  if eps is not None:  # dy is the norm's output gradient: the norm's backward as `model._rms_norm_bwd`
    _, s, r = _norm(x, jnp.dot(m, wd_ref[...], preferred_element_type=F32).astype(x.dtype), eps)
    dy = _norm_bwd(s, r, dy).astype(x.dtype)
  dwd_ref[...] += lax.dot_general(m, dy, TN, preferred_element_type=F32)
  dm = lax.dot_general(dy, wd_ref[...], NT, preferred_element_type=F32).astype(x.dtype).astype(F32)
  du = (dm * a).astype(x.dtype)
  da = (dm * u.astype(F32)).astype(x.dtype).astype(F32)
  gf = g.astype(F32)
  dg = (da * (sig * (1.0 + gf * (1.0 - sig)))).astype(x.dtype)
  wg, wu = wgu_ref[:, :inter], wgu_ref[:, inter:]
  dx = lax.dot_general(dg, wg, NT, preferred_element_type=F32) + lax.dot_general(du, wu, NT, preferred_element_type=F32)
  if eps is not None:  # the residual's gradient, added in the activation dtype as autodiff adds it
    dx = dx.astype(x.dtype).astype(F32) + dy.astype(F32)
  if len(xs) > 1:  # through rms_norm(x + add): one gradient for both
    dx = _norm_bwd(s1, r1, dx.astype(x.dtype))
  dx_ref[0] = dx.astype(dx_ref.dtype)
  dwgu_ref[:, :inter] += lax.dot_general(x, dg, TN, preferred_element_type=F32)
  dwgu_ref[:, inter:] += lax.dot_general(x, du, TN, preferred_element_type=F32)


def vmem_limit(width: int, inter: int, itemsize: int) -> int:
  """The VMEM the kernels ask for: 1.25x an upper estimate of the backward's need, i.e. the kernels in the activation
  dtype and their float32 gradients (3 width x inter each) and ~18 bytes per (row, inter) of a tile's temporaries
  (the compiler allocated 27.1 MiB at width 512, inter 1536, bfloat16 and 512-row tiles, 16.2 MiB at 97 rows)."""
  need = 3 * width * inter * (itemsize + 4) + TILE * inter * 18
  return -(-need * 5 // 4 >> 20) << 20


def fits(width: int, inter: int, itemsize: int, chip: str) -> bool:
  """Whether the kernels fit a TensorCore of `chip` (a device_kind, e.g. "TPU v5 lite"); unknown chips: no."""
  return vmem_limit(width, inter, itemsize) <= VMEM.get(chip, 0)


def flops(rows: int, width: int, inter: int, norm: bool = False) -> tuple[int, int]:
  """FLOPs of the forward / backward kernels on `rows` rows (tile padding not counted).

  Forward: x @ W_gate_up and the down projection, 3 (rows x width x inter) matmuls; backward: gate and up again, the
  down projection's input and kernel gradients, gate/up's input and kernel gradients, 8 (9 with the norm: the
  down projection again, for the sum the norm's backward needs).
  """
  one = 2 * rows * width * inter
  return 3 * one, (8 + norm) * one


def _call(kernel, x, outs, in_specs, out_specs, backward: bool, interpret: bool, weights_bytes: int, norm: bool):
  """The pallas_call over (example, row tile), named for `plan.kernel_calls`, with its cost for XLA's cost analysis
  (each operand read once, each result written once). `in_specs`: the row inputs', then W_gate_up's and W_down's."""
  b, t, width = x.shape
  rows_in, inter = len(in_specs) - 2, in_specs[-1].block_shape[0]
  limit = vmem_limit(width, inter, x.dtype.itemsize)
  rows_bytes = b * t * width * x.dtype.itemsize
  out_bytes = sum(jax.ShapeDtypeStruct(o.shape, o.dtype).size * o.dtype.itemsize for o in jax.tree.leaves(outs))
  cost = pl.CostEstimate(
    flops=flops(b * t, width, inter, norm)[backward],
    transcendentals=b * t * inter,
    bytes_accessed=rows_in * rows_bytes + weights_bytes + out_bytes,
  )
  semantics = ("arbitrary", "arbitrary") if backward else ("parallel", "parallel")
  return pl.pallas_call(
    kernel,
    name="swiglu_bwd" if backward else "swiglu_fwd",
    out_shape=outs,
    grid=(b, pl.cdiv(t, min(t, TILE))),
    in_specs=in_specs,
    out_specs=out_specs,
    compiler_params=pltpu.CompilerParams(dimension_semantics=semantics, vmem_limit_bytes=limit),
    cost_estimate=cost,
    interpret=interpret,
  )


def _specs(x, wgu, wd):
  tile = min(x.shape[1], TILE)
  rows = pl.BlockSpec((1, tile, x.shape[2]), lambda i, j: (i, j, 0))
  whole = lambda a: pl.BlockSpec(a.shape, lambda i, j: (0, 0))
  return rows, whole(wgu), whole(wd)


def _forward_local(*args, eps, interpret):
  *xs, wgu, wd = args
  x = xs[0]
  rows, wgu_spec, wd_spec = _specs(x, wgu, wd)
  out = jax.ShapeDtypeStruct(x.shape, x.dtype)
  nbytes = wgu.size * wgu.dtype.itemsize + wd.size * wd.dtype.itemsize
  kernel = functools.partial(_fwd_kernel, eps=eps)
  specs = [rows] * len(xs) + [wgu_spec, wd_spec]
  return _call(kernel, x, out, specs, rows, False, interpret, nbytes, eps is not None)(*args)


def _backward_local(*args, eps, interpret):
  *xs, wgu, wd = args
  x = xs[0]
  rows, wgu_spec, wd_spec = _specs(x, wgu, wd)
  outs = (
    jax.ShapeDtypeStruct(x.shape, x.dtype),
    jax.ShapeDtypeStruct(wgu.shape, F32),
    jax.ShapeDtypeStruct(wd.shape, F32),
  )
  nbytes = wgu.size * wgu.dtype.itemsize + wd.size * wd.dtype.itemsize
  kernel = functools.partial(_bwd_kernel, length=x.shape[1], eps=eps)
  specs = [rows] * len(xs) + [wgu_spec, wd_spec], [rows, wgu_spec, wd_spec]
  dx, dwgu, dwd = _call(kernel, x, outs, *specs, True, interpret, nbytes, eps is not None)(*args)
  if batch_axes():  # the kernels' gradients from every device's rows, summed in float32
    dwgu, dwd = lax.psum((dwgu, dwd), batch_axes())
  return dx, dwgu, dwd


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def swiglu(x, add, w_gate_up, w_down, norm_eps: float | None = None, interpret: bool = False):
  """silu(x @ W_gate) * (x @ W_up) @ W_down for x (B, T, width) in a low-precision dtype and float32 master kernels
  W_gate_up (width, 2 * inter) (gate columns first) and W_down (inter, width); their gradients are float32. With
  `norm_eps`: rms_norm(x + that), the block's residual and post-norm in the same kernel; with `add` (not None, needs
  `norm_eps`) the input is rms_norm(x + add) (the attention's residual and post-norm) instead of x."""
  return _swiglu_fwd(x, add, w_gate_up, w_down, norm_eps, interpret)[0]


def _swiglu_fwd(x, add, w_gate_up, w_down, norm_eps, interpret):
  wgu, wd = w_gate_up.astype(x.dtype), w_down.astype(x.dtype)
  xs = (x,) if add is None else (x, add)
  fwd = functools.partial(_forward_local, eps=norm_eps, interpret=interpret)
  out = per_device(fwd, (BATCHED,) * len(xs) + (REPLICATED, REPLICATED), BATCHED, *xs, wgu, wd)
  return out, (xs, wgu, wd)


def _swiglu_bwd(norm_eps, interpret, res, dy):
  xs, wgu, wd = res
  bwd = functools.partial(_backward_local, eps=norm_eps, interpret=interpret)
  specs = (BATCHED,) * (len(xs) + 1) + (REPLICATED, REPLICATED), (BATCHED, REPLICATED, REPLICATED)
  dx, dwgu, dwd = per_device(bwd, *specs, *xs, dy, wgu, wd)
  return dx, None if len(xs) == 1 else dx, dwgu, dwd


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)
