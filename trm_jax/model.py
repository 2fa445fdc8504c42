"""Flax linen modules of TRM and HRM: one network application, no loops.

The recursion lives in `recursion.py`; here a module only knows how to embed inputs, apply the weight-tied reasoning
network once, and read the heads. Parameters are float32; activations use `config.dtype` (bfloat16 by default). Linear
kernels are stored Flax-style as (in, out); the reference stores (out, in) and `convert.py` transposes.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from trm_jax import fused_mlp, fused_qkv, sharding

Dtype = Any

# Truncated normal on [-2, 2] sigma with the std corrected for truncation,
# sigma = 1/sqrt(fan_in): the reference's init for linear layers.
lecun_trunc = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def std_trunc_normal(std: float):
  """Truncated normal on [-2, 2] with the given std (fan-independent), as for embeddings.

  0.8796... is the std of a unit normal truncated to [-2, 2].
  """
  return nn.initializers.truncated_normal(stddev=std / 0.87962566103423978, lower=-2.0, upper=2.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def rms_norm(x: jax.Array, eps: float, axis: int = -1) -> jax.Array:
  """Scale-free RMSNorm over `axis` (the last by default), computed in float32.

  Its backward is written by hand so that only the input (activation dtype) and the per-row scale are kept for it,
  not the float32 copies autodiff would save (the same gradient up to float32 rounding).
  """
  return _rms_norm_fwd(x, eps, axis)[0]


def _rms_norm_fwd(x, eps, axis):
  xf = x.astype(jnp.float32)
  r = jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=axis, keepdims=True) + eps)
  return (xf * r).astype(x.dtype), (x, r)


def _rms_norm_bwd(eps, axis, res, g):
  # y = x r, r = (mean(x^2) + eps)^-1/2  =>  dx = r g - x r^3 mean(g x).
  x, r = res
  xf, gf = x.astype(jnp.float32), g.astype(jnp.float32)
  dx = r * gf - xf * (r * r * r) * jnp.mean(gf * xf, axis=axis, keepdims=True)
  return (dx.astype(x.dtype),)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


def puzzle_emb_len(cfg) -> int:
  """Length P of the puzzle-embedding prefix."""
  if cfg.puzzle_emb_ndim <= 0:
    return 0
  if cfg.arch == "trm" and cfg.puzzle_emb_len > 0:
    return cfg.puzzle_emb_len
  return -(cfg.puzzle_emb_ndim // -cfg.hidden_size)


def swiglu_inter(width: int, expansion: float) -> int:
  inter = round(expansion * width * 2 / 3)
  return -(inter // -256) * 256


LAST = "...i,io->...o"  # x (..., in) @ kernel (in, out): the usual linear layer


def _dot(x, w, spec: str, cpu: bool):
  """einsum(spec, x, w) in x's dtype.

  On CPU a last-axis low-precision dot is a float32-result dot rounded once to x's dtype: the same arithmetic (products
  accumulated in float32, one rounding), which XLA:CPU runs ~2x faster than its bfloat16-result dot.
  """
  if spec != LAST:
    return jnp.einsum(spec, x, w)
  if cpu and x.dtype != jnp.float32:
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
  return jnp.dot(x, w)


def _grad_dot(spec: str, a, b, cpu: bool):
  """A float32 einsum of low-precision operands (exact products, float32 sums).

  XLA:CPU has no bfloat16 x bfloat16 -> float32 dot with two contracted axes,
  so the CPU upcasts the operands first: the same arithmetic.
  """
  if cpu:
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dot_master(x, kernel, spec, cpu):
  """einsum(spec, x, kernel.astype(x.dtype)) for a float32 master kernel and low-precision x.

  The forward and the input gradient are the plain low-precision dot. The kernel gradient comes from a float32-result
  dot and stays float32: on a mesh its partial sums over the batch are added across devices in float32, as DDP adds the
  ranks' gradients (a bfloat16-result dot is all-reduced in bfloat16). The reference (`models/layers.py`, CastedLinear)
  rounds each GPU's weight gradient to bfloat16 first; rounding here would let XLA move the all-reduce after the
  rounding, and the unrounded sum is the more exact one, the same on any number of devices.
  """
  return _dot(x, kernel.astype(x.dtype), spec, cpu)


def _dot_master_fwd(x, kernel, spec, cpu):
  w = kernel.astype(x.dtype)
  return _dot(x, w, spec, cpu), (x, w)


def _dot_master_bwd(spec, cpu, res, g):
  x, w = res
  xs, rest = spec.split(",")
  ws, ys = rest.split("->")
  if spec == LAST:  # dx as a LAST dot, dw as one 2-d dot over all rows (XLA:CPU's fast forms)
    dx = _dot(g, w.T, LAST, cpu)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = jnp.dot(x2.T, g2, preferred_element_type=jnp.float32)
  else:
    dx = _dot(g, w, f"{ys},{ws}->{xs}", cpu)
    dw = _grad_dot(f"{xs},{ys}->{ws}", x, g, cpu)
  return dx.astype(x.dtype), dw


_dot_master.defvjp(_dot_master_fwd, _dot_master_bwd)


def matmul(x, kernel, platform: str, spec: str = LAST):
  """einsum(spec, x, kernel) in x's dtype (`kernel` float32); see `_dot_master` for the low-precision path."""
  if x.dtype == kernel.dtype:
    return _dot(x, kernel, spec, False)
  return _dot_master(x, kernel, spec, platform == "cpu")


@jax.custom_vjp
def add_master(y, p):
  """y + p.astype(y.dtype), p (float32) broadcast over y's leading axes.

  p's gradient is summed over the broadcast axes in float32 (across devices too), as `_dot_master` does for kernels.
  """
  return y + p.astype(y.dtype)


def _add_master_fwd(y, p):
  return add_master(y, p), p  # p (small) only for its shape


def _add_master_bwd(p, g):
  dp = g.astype(jnp.float32).sum(axis=tuple(range(g.ndim - p.ndim)))
  return g, dp


add_master.defvjp(_add_master_fwd, _add_master_bwd)


class Linear(nn.Module):
  """x @ W (+ b) with a float32 kernel cast to the activation dtype at use.

  The kernel is stored (in, features), as the reference's weight transposed. `spec` and `view` contract x with the
  kernel viewed as `view` in another layout, e.g. "btd,tk->bkd" (the MLP-mixer's token mixing over the sequence axis) or
  "btd,dnh->bnth" (heads in the splash kernel's layout): the layout change is then the dot's own, not a transpose in
  memory.
  """

  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.bfloat16
  kernel_init: Any = lecun_trunc
  bias_init: Any = nn.initializers.zeros
  spec: str = LAST
  view: tuple = ()  # the kernel's shape in `spec`; () for (in, features)
  platform: str = "cpu"  # the devices the program is compiled for (`config_lib.resolve`)
  extend: Any = None  # kernel (as `view`) -> the float32 kernel used in `spec` (e.g. with rotated copies)

  @nn.compact
  def __call__(self, x):
    fan_in = math.prod(self.view) // self.features if self.view else x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), jnp.float32)
    kernel = kernel.reshape(self.view or kernel.shape)
    kernel, x = self.extend(kernel) if self.extend else kernel, x.astype(self.dtype)
    y = jax.tree.map(lambda w: matmul(x, w, self.platform, self.spec), kernel)
    if self.use_bias:
      y = add_master(y, self.param("bias", self.bias_init, (self.features,), jnp.float32))
    return y


class Kernel(nn.Module):
  """A float32 kernel stored as `Linear` stores it, for a layer that uses it in its own kernel."""

  shape: tuple

  @nn.compact
  def __call__(self):
    return self.param("kernel", lecun_trunc, self.shape, jnp.float32)


class SwiGLU(nn.Module):
  """SwiGLU over the last axis, or (axis=1) over the sequence axis of (B, T, D).

  `residual_norm_eps` (not None): rms_norm(x + SwiGLU(x)), the block's residual and post-norm; then `add` (not None)
  makes the input rms_norm(x + add) (the attention's residual and post-norm). impl "pallas" (last axis only): one
  Pallas kernel per direction, the norms included (`fused_mlp`; `platform` other than TPU runs it interpreted), the
  same parameters.
  """

  expansion: float
  dtype: Dtype
  axis: int = -1
  platform: str = "cpu"
  impl: str = "xla"
  residual_norm_eps: float | None = None

  @nn.compact
  def __call__(self, x, add=None):
    width = x.shape[self.axis]
    inter = swiglu_inter(width, self.expansion)
    if self.impl == "pallas" and self.axis == -1:
      w_gate_up, w_down = Kernel((width, 2 * inter), name="gate_up_proj")(), Kernel((inter, width), name="down_proj")()
      x, add = (None if a is None else a.astype(self.dtype) for a in (x, add))
      return fused_mlp.swiglu(x, add, w_gate_up, w_down, self.residual_norm_eps, self.platform != "tpu")
    if add is not None:
      x = rms_norm(x + add, self.residual_norm_eps, self.axis)
    spec, views = (LAST, ((), ())) if self.axis == -1 else ("btd,tk->bkd", ((width, 2 * inter), (inter, width)))
    h = Linear(2 * inter, dtype=self.dtype, name="gate_up_proj", spec=spec, view=views[0], platform=self.platform)(x)
    gate, up = jnp.split(h, 2, axis=self.axis)
    down = Linear(width, dtype=self.dtype, name="down_proj", spec=spec, view=views[1], platform=self.platform)
    y = down(nn.silu(gate) * up)
    return y if self.residual_norm_eps is None else rms_norm(x + y, self.residual_norm_eps, self.axis)


def rope_cos_sin(seq: int, head_dim: int, theta: float):
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = jnp.outer(jnp.arange(seq, dtype=jnp.float32), inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  """Rotary embedding of x (B, T, N, H), in float32.

  The reference computes x cos + rotate_half(x) sin, rotate_half(x) = (-x2, x1); as cos and sin repeat over the two
  halves this is (x1 c - x2 s, x2 c + x1 s), the same float32 operations without the negated copy.
  """
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  half = x.shape[-1] // 2
  c, s = cos[:, :half][:, None, :], sin[:, :half][:, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


def _splash_block_sizes(tp: int) -> splash.BlockSizes:
  """Splash tiles for a padded length tp (a multiple of 128).

  Kernel limits: kv tiles are multiples of 128 lanes, and with segment ids the backward's q tiles too; every tile
  divides tp. Sudoku (T=97 -> 128): one 128 tile each way, the smallest legal. ARC (T=916 -> 1024): q tiles of 512
  (MaxText's splash default), and one kv tile of all 1024 keys, computed 512 at a time (a 512 x 512 float32 score tile,
  1 MiB of VMEM). With a single kv tile the k/v block index does not change across a head's q tiles, so Pallas copies k
  and v into VMEM once per (example, head) (with 128-tiles: 8 times, over 64 grid steps instead of 2, ~0.35 us each).
  The fused backward then also has one kv tile: its dq comes out whole (no per-kv-tile partial sums) and the scores are
  recomputed once, not twice (separate dq and dk/dv kernels).
  """

  def fit(cap):
    return max(b for b in (128, 256, 512, 1024) if b <= cap and tp % b == 0)

  bq, bkv, bc = fit(512), fit(1024), fit(512)
  return splash.BlockSizes(
    block_q=bq,
    block_kv=bkv,
    block_kv_compute=bc,
    block_q_dkv=bq,
    block_kv_dkv=bkv,
    block_kv_dkv_compute=bc,
    use_fused_bwd_kernel=True,
  )


def splash_rereads(b: int, t: int, n: int, head_dim: int) -> tuple[int, int]:
  """HBM bytes one forward / one backward splash call reads beyond one read per operand (b examples).

  XLA's cost analysis counts a Mosaic call like any op (each operand read once, each result written once, at its
  logical, unpadded size); `trm-plan` adds these. Pallas copies a block only when its block index changes between grid
  steps. Forward grid (example, head, q tile, kv tile): with one kv tile k, v keep their block across a head's q tiles
  (else they are re-read per q tile); the (tp, 128) int32 q segment ids are re-read per (example, head). Fused backward
  grid (example, kv tile, head, q tile): q and dout are re-read per extra kv tile; the (8, tp) int32 q segment ids per
  (example, head).
  """
  tp = -(-t // 128) * 128
  bs = _splash_block_sizes(tp)
  kv_tiles = tp // bs.block_kv
  arr = b * n * tp * (-(-head_dim // 128) * 128) * 2  # one (N, tp, H) bf16 array, H padded to 128 lanes
  fwd = 2 * arr * (tp // bs.block_q - 1) if kv_tiles > 1 else 0
  bwd = 2 * arr * (kv_tiles - 1)
  if tp > t:
    fwd += (b * n - 1) * tp * 128 * 4
    bwd += (b * n - 1) * 8 * tp * 4
  return fwd, bwd


def splash_flops(b: int, t: int, n: int, head_dim: int) -> tuple[int, int]:
  """FLOPs of one forward / one fused backward splash call on b examples (padded tiles computed).

  Forward: scores q k^T and p v, 2 matmuls; backward: the scores again, dv,
  dp, dq and dk, 5 matmuls; each 2 * tp * tp * head_dim per (example, head).
  """
  tp = -(-t // 128) * 128
  one = 2 * b * n * tp * tp * head_dim
  return 2 * one, 5 * one


def rotated_qk(kernel):
  """A (d, 3, N, H) q/k/v kernel -> q, k, q and k with each head's halves swapped, v: (d, 1, N, H) each, one dot each.

  x @ the swapped columns is (x2, x1) for (x1, x2) = x @ W (the same products and sums), so RoPE is
  elementwise (`_splash_local`), at 2/3 more FLOPs in this projection (benchmarks/NOTES.md, issue 19).
  """
  qk = kernel[:, :2]
  return (*jnp.split(jnp.concatenate([qk, jnp.roll(qk, qk.shape[-1] // 2, axis=-1)], axis=1), 4, axis=1), kernel[:, 2:])


def _splash_local(q, k, v, rope, interpret: bool, length=None, scaled: bool = False):
  """Splash attention on (B, N, T, H) arrays (the kernel's layout) on one device, vmapped over B.

  The kernel does not scale the scores. Each operand is made ready in one pass: RoPE on q and k (`rope` = (q and k with
  their halves swapped, cos, sin): `apply_rope`'s float32 operations), q scaled by 1/sqrt(H) (in float32 and rounded
  once: exact, so equal to the XLA path's scaling of float32 scores when H is a power of 4 such as 64 or 16), T padded
  to a multiple of 128 (`length`: the real T of arrays that come padded). Padded keys get segment id 0 and real tokens
  1, so no real query sees a padded key; the padded query rows (which see only padded keys) are sliced off. `scaled`: q
  comes scaled (`qkv_for_splash`).
  """
  _, n, t0, h = q.shape
  t, tp = length or t0, -(-t0 // 128) * 128

  def ready(a, swapped, scale: float):
    if swapped is not None:
      a = _rope_swapped(a, swapped, rope[2], signed_sin(rope[3]))
    if scale != 1.0:
      a = (a.astype(jnp.float32) * scale).astype(q.dtype)
    return jnp.pad(a, ((0, 0), (0, 0), (0, tp - t0), (0, 0)))

  mask = splash_mask.MultiHeadMask([splash_mask.FullMask((tp, tp))] * n)
  kernel = splash.make_splash_mha(
    mask, block_sizes=_splash_block_sizes(tp), head_shards=1, q_seq_shards=1, interpret=interpret
  )
  ids = (jnp.arange(tp) < t).astype(jnp.int32)
  segments = splash.SegmentIds(q=ids, kv=ids) if tp > t else None
  scale = 1.0 if scaled else 1.0 / math.sqrt(h)
  operands = ready(q, rope and rope[0], scale), ready(k, rope and rope[1], 1.0), ready(v, None, 1.0)
  return jax.vmap(kernel, in_axes=(0, 0, 0, None))(*operands, segments)[:, :, :t]


def signed_sin(sin):
  """sin (T, H) with its first half negated: RoPE's x c + (x2, x1) (-s, s) = (x1 c - x2 s, x2 c + x1 s)."""
  return sin * jnp.where(jnp.arange(sin.shape[-1]) < sin.shape[-1] // 2, -1.0, 1.0)


def _rope_swapped(a, swapped, cos, sin):
  """RoPE of `a` from its copy with each head's halves swapped (`rotated_qk`), `sin` signed: `apply_rope`'s float32
  operations, rounded once."""
  return (a.astype(jnp.float32) * cos + swapped.astype(jnp.float32) * sin).astype(a.dtype)


def qkv_xla(x, kernel, rope, platform: str):
  """q, k, v (B, N, Tp, H) ready for the splash kernel from x (B, T, D), T padded with zeros to Tp (a multiple of 128,
  on x: one lane-dense pass), and the (D, 3, N, H) kernel: one dot per operand (with RoPE, `rope` = (cos, signed sin)
  (Tp, H), also q and k from `rotated_qk`'s swapped kernels), RoPE, and q scaled by 1/sqrt(H) (float32, rounded once).
  What `qkv_for_splash` computes, and its backward."""
  ws = rotated_qk(kernel) if rope is not None else jnp.split(kernel, 3, axis=1)
  x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % 128), (0, 0)))
  q, k, *swapped, v = (matmul(x, w, platform, "btd,dsnh->sbnth")[0] for w in ws)
  if rope is not None:
    q, k = (_rope_swapped(a, r, *rope) for a, r in zip((q, k), swapped))
  return (q.astype(jnp.float32) * (1.0 / math.sqrt(kernel.shape[-1]))).astype(x.dtype), k, v


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def qkv_for_splash(x, kernel, rope, platform: str, interpret: bool):
  """`qkv_xla`'s q, k, v from one Pallas kernel per device (`fused_qkv`): x read once, nothing else written. The
  backward is `qkv_xla`'s (it needs none of the forward's arrays: XLA drops that forward)."""
  return _qkv_fwd(x, kernel, rope, platform, interpret)[0]


def _qkv_fwd(x, kernel, rope, platform, interpret):
  ws = rotated_qk(kernel) if rope is not None else jnp.split(kernel, 3, axis=1)
  w = jnp.concatenate(ws, axis=1).transpose(1, 2, 0, 3).astype(x.dtype)  # (K, N, D, H)
  scale = 1.0 / math.sqrt(kernel.shape[-1])
  tables = () if rope is None else rope
  project = lambda x, w, *r: fused_qkv.project_local(x, w, *(r or (None, None)), scale, interpret)
  b, r = sharding.BATCHED, sharding.REPLICATED
  out = sharding.per_device(project, (b, r) + (r,) * len(tables), (b, b, b), x, w, *tables)
  return out, (x, kernel, rope)


def _qkv_bwd(platform, interpret, res, cotangents):
  x, kernel, rope = res
  return jax.vjp(lambda *a: qkv_xla(*a, platform), x, kernel, rope)[1](cotangents)


qkv_for_splash.defvjp(_qkv_fwd, _qkv_bwd)


def splash_heads(q, k, v, interpret: bool = False, rope=None, length=None, scaled: bool = False):
  """Pallas splash (flash) attention on (B, N, T, H) arrays: no (T, T) scores in HBM.

  `rope` (optional, see `_splash_local`) applies RoPE to q and k inside. Mosaic kernels are not
  partitioned by XLA, so under a context mesh (`jax.set_mesh`) the kernel runs per device (`sharding.per_device`) over
  the batch axis, which is split over every mesh axis (`sharding.BATCH`). interpret=True runs the
  same kernel through the Pallas interpreter (any backend: CPU tests).
  """
  fn = functools.partial(_splash_local, interpret=interpret, length=length, scaled=scaled)
  b, r = sharding.BATCHED, sharding.REPLICATED
  return sharding.per_device(fn, (b, b, b, None if rope is None else (b, b, r, r)), b, q, k, v, rope)


def splash_attention(q, k, v, interpret: bool = False):
  """`splash_heads` on (B, T, N, H) arrays."""
  heads = lambda a: jnp.swapaxes(a, 1, 2)
  return heads(splash_heads(heads(q), heads(k), heads(v), interpret))


def attention(q, k, v, impl: str, interpret: bool = False):
  """Non-causal scaled dot-product attention on (B, T, N, H) arrays.

  impl: "xla" (portable), "cudnn" (flash attention; the sequence is padded to a multiple of 64 with a key mask when
  needed) or "splash" (TPU Pallas kernel, see `splash_attention`; `interpret` runs it off TPU);
  `config_lib.resolve_auto` turns "auto" into one of them.
  """
  if impl == "splash":
    return splash_attention(q, k, v, interpret)
  if impl == "cudnn":
    t = q.shape[1]
    pad = (-t) % 64
    if pad:
      widths = ((0, 0), (0, pad), (0, 0), (0, 0))
      q, k, v = (jnp.pad(a, widths) for a in (q, k, v))
      lengths = jnp.full((q.shape[0],), t, jnp.int32)
      out = jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
      )
      return out[:, :t]
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
  return jax.nn.dot_product_attention(q, k, v, implementation=None if impl == "xla" else impl)


class Attention(nn.Module):
  num_heads: int
  dtype: Dtype
  impl: str = "xla"
  platform: str = "cpu"  # the platform compiled for, not the host's: off TPU "splash" runs interpreted
  qkv_impl: str = "xla"  # with impl "splash": "pallas" makes q, k, v in one kernel (`qkv_for_splash`)

  @nn.compact
  def __call__(self, x, cos_sin):
    b, t, d = x.shape
    hd = d // self.num_heads
    n = self.num_heads
    linear = functools.partial(Linear, dtype=self.dtype, platform=self.platform)
    if self.impl == "splash":  # projections to and from the kernel's (B, N, T, H) layout; T padded before (lane-dense)
      pad = ((0, 0), (0, -t % 128), (0, 0))
      if self.qkv_impl == "pallas":
        kernel = Kernel((d, 3 * d), name="qkv_proj")().reshape(d, 3, n, hd)
        rope = cos_sin and (jnp.pad(cos_sin[0], pad[1:]), jnp.pad(signed_sin(cos_sin[1]), pad[1:]))
        q, k, v = qkv_for_splash(x.astype(self.dtype), kernel, rope or None, self.platform, self.platform != "tpu")
        out = splash_heads(q, k, v, self.platform != "tpu", None, t, scaled=True)
        return linear(d, name="o_proj", spec="bnth,nhd->btd", view=(n, hd, d))(out)
      spec, view = "btd,dsnh->sbnth", (d, 3, n, hd)
      qkv = linear(3 * d, name="qkv_proj", spec=spec, view=view, extend=cos_sin and rotated_qk)(jnp.pad(x, pad))
      q, k, *swapped, v = (a[0] for a in qkv) if cos_sin else qkv
      rope = cos_sin and (*swapped, *(jnp.pad(a, pad[1:]) for a in cos_sin))
      out = splash_heads(q, k, v, self.platform != "tpu", rope, t)
      return linear(d, name="o_proj", spec="bnth,nhd->btd", view=(n, hd, d))(out)
    qkv = linear(3 * d, name="qkv_proj")(x).reshape(b, t, 3 * n, hd)
    q, k, v = jnp.split(qkv, 3, axis=2)
    if cos_sin is not None:
      q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
    out = attention(q, k, v, self.impl, self.platform != "tpu").reshape(b, t, d)
    return linear(d, name="o_proj")(out)


class Block(nn.Module):
  """Post-norm block: attention (or sequence-MLP) then SwiGLU, each + RMSNorm."""

  cfg: Any

  @nn.compact
  def __call__(self, h, cos_sin):
    c, add = self.cfg, None
    if c.mlp_t and c.mixer_impl == "einsum":
      # Token mixing and its norm over the sequence axis, in the (B, T, D) layout.
      mix = SwiGLU(c.expansion, c.dtype, axis=1, name="mlp_t", platform=c.platform)
      h = rms_norm(h + mix(h), c.rms_norm_eps, axis=1)
    elif c.mlp_t:
      t = jnp.swapaxes(h, 1, 2)
      t = rms_norm(t + SwiGLU(c.expansion, c.dtype, name="mlp_t", platform=c.platform)(t), c.rms_norm_eps)
      h = jnp.swapaxes(t, 1, 2)
    else:
      qkv = c.get("qkv_impl", "xla")
      attn = Attention(c.num_heads, c.dtype, c.attention_impl, name="self_attn", platform=c.platform, qkv_impl=qkv)
      add = attn(h, cos_sin)  # its residual and post-norm happen in `mlp` (in its kernel on TPU)
    impl = c.get("mlp_impl", "xla")
    mlp = SwiGLU(c.expansion, c.dtype, platform=c.platform, impl=impl, residual_norm_eps=c.rms_norm_eps, name="mlp")
    return mlp(h, add)


class ReasoningNet(nn.Module):
  """f(z, injection) = blocks(z + injection): the weight-tied network."""

  cfg: Any
  num_layers: int

  @nn.compact
  def __call__(self, z, injection, cos_sin):
    h = z + injection
    for i in range(self.num_layers):
      h = Block(self.cfg, name=f"layers_{i}")(h, cos_sin)
    return h


class RecursiveModel(nn.Module):
  """TRM / HRM: embeddings, the reasoning network(s), and the heads.

  Methods are applied one at a time from `recursion.py` with `model.apply(variables, ..., method=...)`. Variables:
  `params` (trained) and `consts` (fixed H_init / L_init buffers).
  """

  cfg: Any

  def setup(self):
    c = self.cfg
    d = c.hidden_size
    self.P = puzzle_emb_len(c)
    self.embed_tokens = nn.Embed(
      c.vocab_size, d, embedding_init=std_trunc_normal(1 / math.sqrt(d)), name="embed_tokens"
    )
    if c.pos_encodings == "learned":
      self.embed_pos = self.param("embed_pos", std_trunc_normal(1 / math.sqrt(d)), (c.seq_len + self.P, d))
    self.L_level = ReasoningNet(c, c.L_layers)
    if c.arch == "hrm" or c.variant == "separate_nets":
      self.H_level = ReasoningNet(c, c.H_layers if c.arch == "hrm" else c.L_layers)
    self.lm_head = Linear(c.vocab_size, dtype=c.dtype, platform=c.platform)
    self.q_head = Linear(
      2,
      use_bias=True,
      dtype=c.dtype,
      platform=c.platform,
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.constant(-5.0),
    )
    l_shape = (c.L_cycles, d) if c.variant == "multiscale_latent" else (d,)
    self.H_init = self.variable("consts", "H_init", lambda: std_trunc_normal(1.0)(self.make_rng("params"), (d,)))
    self.L_init = self.variable("consts", "L_init", lambda: std_trunc_normal(1.0)(self.make_rng("params"), l_shape))

  def embed(self, inputs, puzzle_rows):
    """inputs (B, S) int, puzzle_rows (B, ndim) or None -> x (B, P+S, D)."""
    c = self.cfg
    x = self.embed_tokens.embedding[inputs].astype(c.dtype)
    if self.P:
      b = inputs.shape[0]
      rows = puzzle_rows.astype(c.dtype)
      rows = jnp.pad(rows, ((0, 0), (0, self.P * c.hidden_size - rows.shape[-1])))
      x = jnp.concatenate([rows.reshape(b, self.P, c.hidden_size), x], axis=1)
    if c.pos_encodings == "learned":
      x = 0.707106781 * add_master(x, self.embed_pos)
    return (math.sqrt(c.hidden_size) * x).astype(c.dtype)

  def cos_sin(self):
    c = self.cfg
    if c.pos_encodings != "rope":
      return None
    return rope_cos_sin(c.seq_len + self.P, c.hidden_size // c.num_heads, c.rope_theta)

  def L(self, z, injection):
    return self.L_level(z, injection, self.cos_sin())

  def H(self, z, injection):
    net = self.H_level if (self.cfg.arch == "hrm" or self.cfg.variant == "separate_nets") else self.L_level
    return net(z, injection, self.cos_sin())

  def heads(self, z_H):
    """-> logits (B, S, V) in the activation dtype, q (B, 2) float32."""
    logits = self.lm_head(z_H)[:, self.P :]
    q = self.q_head(z_H[:, 0]).astype(jnp.float32)
    return logits, q

  def inits(self):
    return self.H_init.value, self.L_init.value

  def __call__(self, inputs, puzzle_rows):
    """Used only by `init`: touches every parameter once."""
    x = self.embed(inputs, puzzle_rows)
    z = self.L(x, x)
    if self.cfg.arch == "hrm" or self.cfg.variant == "separate_nets":
      z = self.H(z, x)
    self.inits()
    return self.heads(z)
