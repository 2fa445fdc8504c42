"""The splash kernel's q, k, v in one Pallas TPU kernel: x is read once, RoPE and the q scale are applied in VMEM.

XLA's splash path (`model.Attention`) runs one dot per operand (q, k, their copies with each head's halves swapped
for RoPE, v: `model.rotated_qk`), each reading x (B, T, D) and writing a (B, N, T, H) array, then one pass that reads
four of them back to apply RoPE and the q scale: five reads of x and nine array writes or reads beyond the three
arrays the attention kernel needs. Here a tile of x's rows goes in and q, k, v come out ready, with the same
arithmetic (each projection rounded to the activation dtype, RoPE in float32 and rounded, then the scale). Forward
only: the backward is XLA's (`model.qkv_for_splash`), which needs none of these arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from trm_jax import fused_mlp

F32 = jnp.float32


def _tile(tp: int) -> int:
  return max(b for b in (128, 256, 512) if tp % b == 0)


def _kernel(x_ref, w_ref, *refs, scale: float, length: int):
  """w_ref (K, N, D, H): q, k[, q swapped, k swapped], v kernels per head; refs: [cos, sin,] q, k, v outputs. Rows
  at or past `length` (the last tile's, read past the array's end) are zeros, as padding x with zeros gives."""
  *rope, q_ref, k_ref, v_ref = refs
  x = x_ref[0]
  if length % x.shape[0]:
    row = pl.program_id(1) * x.shape[0] + lax.broadcasted_iota(jnp.int32, (x.shape[0], 1), 0)
    x = jnp.where(row < length, x, jnp.zeros_like(x))
  dot = lambda i, n: jnp.dot(x, w_ref[i, n], preferred_element_type=F32).astype(x.dtype)
  c, s = (rope[0][...], rope[1][...]) if rope else (None, None)
  for n in range(w_ref.shape[1]):
    q, k, v = dot(0, n), dot(1, n), dot(w_ref.shape[0] - 1, n)
    if rope:  # x c + (x2, x1) (-s, s): sin comes signed
      q = (q.astype(F32) * c + dot(2, n).astype(F32) * s).astype(x.dtype)
      k = (k.astype(F32) * c + dot(3, n).astype(F32) * s).astype(x.dtype)
    q_ref[0, n] = (q.astype(F32) * scale).astype(x.dtype)
    k_ref[0, n] = k
    v_ref[0, n] = v


def fits(width: int, heads: int, chip: str) -> bool:
  """Whether the kernel fits a TensorCore of `chip`: its five (width, head_dim) kernels per head (lane-padded to 128,
  bfloat16) are double-buffered, with the row tiles, in half the VMEM."""
  return 4 * 5 * heads * width * 128 + (8 << 20) <= fused_mlp.VMEM.get(chip, 0) // 2


def project_local(x, w, cos, sin, scale: float, interpret: bool):
  """q, k, v (B, N, Tp, H) from x (B, T, D) and w (K, N, D, H) in x's dtype, T padded with zero rows to Tp, a multiple
  of 128: K = 5 (q, k, q and k with each head's halves swapped, v; cos and sin (Tp, H), sin signed) or 3 (q, k, v;
  cos = sin = None)."""
  b, t, d = x.shape
  tp = -(-t // 128) * 128
  kinds, n, _, h = w.shape
  tile = _tile(tp)
  rows = pl.BlockSpec((1, tile, d), lambda i, j: (i, j, 0))
  heads = pl.BlockSpec((1, n, tile, h), lambda i, j: (i, 0, j, 0))
  table = pl.BlockSpec((tile, h), lambda i, j: (j, 0))
  rope = [] if cos is None else [cos, sin]
  out = jax.ShapeDtypeStruct((b, n, tp, h), x.dtype)
  item = x.dtype.itemsize
  cost = pl.CostEstimate(
    flops=2 * b * tp * d * kinds * n * h,
    transcendentals=0,
    bytes_accessed=x.size * item + w.size * item + b * sum(a.size * 4 for a in rope) + 3 * b * n * tp * h * item,
  )
  return pl.pallas_call(
    functools.partial(_kernel, scale=scale, length=t),
    name="qkv_rope",
    out_shape=(out, out, out),
    grid=(b, tp // tile),
    in_specs=[rows, pl.BlockSpec(w.shape, lambda i, j: (0, 0, 0, 0))] + [table] * len(rope),
    out_specs=(heads, heads, heads),
    compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"), vmem_limit_bytes=48 << 20),
    cost_estimate=cost,
    interpret=interpret,
  )(x, w, *rope)
