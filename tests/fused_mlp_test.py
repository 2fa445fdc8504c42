"""The fused SwiGLU (one Pallas kernel per direction, `fused_mlp`) equals the XLA path.

On this CPU machine the kernels run in Pallas interpret mode (the same kernel code, interpreted). The mesh case runs in
a subprocess (the device-count flag must be set before JAX starts); programs compiled for TPUs are in plan_test.py.
"""

import textwrap

import jax
import jax.numpy as jnp
import pytest
import tiny

from trm_jax import config_lib, fused_mlp
from trm_jax.model import SwiGLU


def _out_and_grads(impl, x, g, dtype, norm_eps=None, add=None):
  """SwiGLU(x) (width 32, expansion 4: inter 256; with norm_eps rms_norm(x + SwiGLU(x)); with `add` too, of
  rms_norm(x + add)) and the gradients of <that, g> w.r.t. x, add and both kernels."""
  mlp = SwiGLU(4.0, dtype, platform="cpu", impl=impl, residual_norm_eps=norm_eps)
  params = mlp.init(jax.random.key(1), x)["params"]
  out, vjp = jax.vjp(lambda x, a, p: mlp.apply({"params": p}, x, a), x, add, params)
  return out, vjp(g.astype(out.dtype))


def _inputs(t, dtype, seed=0):
  kx, kg = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (2, t, 32)).astype(dtype), jax.random.normal(kg, (2, t, 32))


@pytest.mark.parametrize("norm_eps,add", [(None, False), (1e-5, False), (1e-5, True)])
@pytest.mark.parametrize("t", [16, 40])
def test_fused_equals_xla_float32(t, norm_eps, add, monkeypatch):
  """Tiles of 16 rows: T=16 is one whole tile, T=40 ends in a partial one (its undefined rows must not reach the
  kernels' gradients); the MLP alone, with the residual and post-norm, and with the attention's before it."""
  monkeypatch.setattr(fused_mlp, "TILE", 16)
  x, g = _inputs(t, jnp.float32)
  a = _inputs(t, jnp.float32, seed=1)[0] if add else None
  xla, fused = (_out_and_grads(impl, x, g, jnp.float32, norm_eps, a) for impl in ("xla", "pallas"))
  assert jax.tree.structure(xla) == jax.tree.structure(fused)  # the same parameters
  tiny.assert_trees_close(xla, fused, 1e-5)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(fused[1][1]))  # float32 kernel gradients


@pytest.mark.parametrize("norm_eps,add", [(None, False), (1e-5, True)])
def test_fused_bfloat16_as_close_to_float32_as_xla(norm_eps, add):
  """bfloat16: the kernel's rounding error, against the float32 result, is no larger than the XLA path's."""
  x, g = _inputs(40, jnp.bfloat16)
  a = _inputs(40, jnp.bfloat16, seed=1)[0] if add else None
  f32 = lambda v: None if v is None else v.astype(jnp.float32)
  exact = _out_and_grads("xla", f32(x), g, jnp.float32, norm_eps, f32(a))

  def err(impl):
    got = _out_and_grads(impl, x, g, jnp.bfloat16, norm_eps, a)
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(exact))
    return max(float(jnp.abs(a.astype(jnp.float32) - b).max() / jnp.abs(b).max()) for a, b in pairs)

  xla, fused = err("xla"), err("pallas")
  assert fused < 1e-2 and fused <= 1.5 * xla, (fused, xla)


@pytest.mark.parametrize("recursion", ["loop", "scan"])
def test_model_fused_equals_xla(recursion):
  """Loss, logits and every gradient of one train step with the fused SwiGLU vs XLA's (scan: under remat too)."""
  b = tiny.batch()
  res = {}
  for impl in ("xla", "pallas"):
    cfg = tiny.mcfg(mlp_impl=impl, recursion=recursion, remat="dots" if recursion == "scan" else "none")
    v, table = tiny.variables(cfg)
    res[impl] = jax.jit(lambda v, t, cfg=cfg: tiny.grads(cfg, v, t, b))(v, table)
  tiny.assert_trees_close(res["xla"], res["pallas"], 1e-5)
  assert float(jnp.abs(res["pallas"][1]["L_level"]["layers_0"]["mlp"]["gate_up_proj"]["kernel"]).max()) > 0


def test_auto_is_the_kernel_where_its_vmem_fits():
  c = config_lib.model_config(hidden_size=512, expansion=4.0)
  chosen = lambda platform, chip: config_lib.frozen_model(c, platform, chip).mlp_impl
  assert chosen("tpu", "TPU v5 lite") == chosen("tpu", "TPU v6 lite") == chosen("tpu", "TPU v5") == "pallas"
  # A v4 TensorCore has 16 MiB of VMEM; the backward's float32 kernel gradients alone take 9 MiB.
  assert chosen("tpu", "TPU v4") == chosen("cpu", "") == chosen("gpu", "NVIDIA H200") == "xla"
  c.mlp_impl = "pallas"
  with pytest.raises(ValueError, match="model.mlp_impl: 'pallas' does not fit the VMEM of a TPU v4") as e:
    config_lib.frozen_model(c, "tpu", "TPU v4")
  assert "\n" not in str(e.value)
  c.mlp_impl = "fused"
  with pytest.raises(ValueError, match="model.mlp_impl"):
    config_lib.frozen_model(c, "cpu")


MESH_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from trm_jax import sharding
  sys.path.insert(0, sys.argv[1])
  import tiny

  assert jax.device_count() == 4, jax.devices()
  mesh = sharding.make_mesh(2)  # data 2 x table 2; the batch is split over both
  cfg = tiny.mcfg(mlp_impl="pallas")
  variables, table = tiny.variables(cfg)
  batch = tiny.batch()
  step = lambda b: jax.jit(lambda v, t: tiny.grads(cfg, v, t, b))(variables, table)
  one = step(batch)
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P(sharding.BATCH)))
  with jax.set_mesh(mesh):
    four = step(jax.tree.map(put, batch))
    jaxpr = str(jax.make_jaxpr(lambda v, t: tiny.grads(cfg, v, t, batch))(variables, table))
  diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(jax.tree.leaves(one),
                                                                            jax.tree.leaves(four)))
  print(json.dumps({"diff": diff, "shard_map": "shard_map" in jaxpr, "psum": "psum" in jaxpr}))
""")


def test_fused_under_mesh_equals_unsharded(tmp_path):
  """4 fake CPU devices, batch over ("data", "table"): each device runs the kernels on its rows and the kernels'
  gradients are summed across devices; one train step equals the unsharded one."""
  res = tiny.run_on_cpu_devices(tmp_path, MESH_SCRIPT)
  assert res["shard_map"] and res["psum"] and res["diff"] < 1e-5, res


def test_cost_estimate_counts_rows_not_padding():
  fwd, bwd = fused_mlp.flops(rows=10, width=4, inter=6)
  assert (fwd, bwd) == (3 * 2 * 10 * 4 * 6, 8 * 2 * 10 * 4 * 6)
  # The compiler allocated 27.1 MiB for the backward at the experiments' width 512 (inter 1536, bfloat16); a v5p
  # TensorCore has 64 MiB.
  assert 27.2 < fused_mlp.vmem_limit(512, 1536, 2) / 2**20 <= 64
