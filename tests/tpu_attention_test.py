"""The TPU attention path ("splash", a Pallas kernel) equals the XLA path.

On this CPU machine the kernel runs in Pallas interpret mode (the same kernel
code, interpreted); a last test compiles it for a TPU topology without a TPU
and checks that the scores never become an HLO buffer. Multi-device and TPU
cases run in subprocesses (the device-count flag, and libtpu, must be set up
before JAX starts).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
import tiny

from trm_jax import model
from trm_jax.model import attention


def _out_and_grads(impl, q, k, v, g):
  """attention(q, k, v) and the gradients of <attention, g> w.r.t. q, k, v."""
  f = lambda q, k, v: attention(q, k, v, impl, interpret=True)
  out, vjp = jax.vjp(f, q, k, v)
  return out, vjp(g)


@pytest.mark.parametrize("t", [97, 128])
def test_splash_equals_xla_float32(t):
  """Output and dq, dk, dv; T=97 is padded to 128 with masked keys, T=128 is not padded."""
  q, k, v, g = (jax.random.normal(key, (2, t, 2, 16)) for key in jax.random.split(jax.random.key(t), 4))
  xla = jax.jit(lambda *a: _out_and_grads("xla", *a))(q, k, v, g)
  splash = jax.jit(lambda *a: _out_and_grads("splash", *a))(q, k, v, g)
  tiny.assert_trees_close(xla, splash, 1e-5)


def test_splash_bfloat16_close_to_xla():
  """bfloat16: rounding differences only (XLA rounds the probabilities to bfloat16 before p @ v)."""
  q, k, v, g = (jax.random.normal(key, (2, 97, 2, 64), jnp.bfloat16) for key in jax.random.split(jax.random.key(0), 4))
  xla = jax.jit(lambda *a: _out_and_grads("xla", *a))(q, k, v, g)
  splash = jax.jit(lambda *a: _out_and_grads("splash", *a))(q, k, v, g)
  tiny.assert_trees_close(xla, splash, 1e-2)  # measured: 4e-3 of the largest value


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("t", [97, 128])
def test_fused_qkv_equals_xla(t, rope):
  """q, k, v for splash from one Pallas kernel (`fused_qkv`) and their gradients equal XLA's dots, RoPE and scale;
  T=97 ends in a partial tile whose rows past T must come out as zeros."""
  keys = jax.random.split(jax.random.key(t), 5)
  x = jax.random.normal(keys[0], (2, t, 32))
  kernel = jax.random.normal(keys[1], (32, 3, 2, 16)) / 6
  cos, sin = (jnp.pad(a, ((0, 128 - t), (0, 0))) for a in model.rope_cos_sin(t, 16, 10000.0))
  tables = (cos, model.signed_sin(sin)) if rope else None
  cts = tuple(jax.random.normal(k, (2, 2, 128, 16)) for k in keys[2:])
  xla = jax.vjp(lambda x, w: model.qkv_xla(x, w, tables, "cpu"), x, kernel)
  fused = jax.vjp(lambda x, w: model.qkv_for_splash(x, w, tables, "cpu", True), x, kernel)
  tiny.assert_trees_close((xla[0], xla[1](cts)), (fused[0], fused[1](cts)), 1e-5)
  assert all(float(jnp.abs(a[:, :, t:]).sum()) == 0 for a in fused[0])


@pytest.mark.parametrize("recursion,qkv", [("loop", "xla"), ("scan", "xla"), ("loop", "pallas")])
def test_model_splash_equals_xla(recursion, qkv):
  """Loss, logits and every gradient of one train step, splash (q, k, v from XLA's dots or from one kernel) vs XLA
  attention (scan: under remat too)."""
  b = tiny.batch()
  res = {}
  for impl in ("xla", "splash"):
    cfg = tiny.mcfg(attention_impl=impl, recursion=recursion, qkv_impl=qkv)
    v, table = tiny.variables(cfg)
    res[impl] = jax.jit(lambda v, t, cfg=cfg: tiny.grads(cfg, v, t, b))(v, table)
  tiny.assert_trees_close(res["xla"], res["splash"], 1e-5)
  assert float(jnp.abs(res["splash"][1]["L_level"]["layers_0"]["self_attn"]["qkv_proj"]["kernel"]).max()) > 0


MESH_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, jax.numpy as jnp, numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P
  from trm_jax import sharding
  from trm_jax.model import attention
  sys.path.insert(0, sys.argv[1])
  import tiny

  assert jax.device_count() == 4, jax.devices()
  mesh = sharding.make_mesh(2)  # data 2 x table 2; the batch is split over both
  q, k, v, g = (jax.random.normal(key, (8, 97, 2, 16)) for key in jax.random.split(jax.random.key(0), 4))

  def out_and_grads(q, k, v, g):
    out, vjp = jax.vjp(lambda q, k, v: attention(q, k, v, "splash", interpret=True), q, k, v)
    return out, vjp(g)

  def diff(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(jax.tree.leaves(a),
                                                                               jax.tree.leaves(b)))

  one = jax.jit(out_and_grads)(q, k, v, g)
  put = lambda a: jax.device_put(a, NamedSharding(mesh, P(sharding.BATCH)))
  with jax.set_mesh(mesh):
    jitted = jax.jit(out_and_grads)
    jaxpr = str(jax.make_jaxpr(out_and_grads)(q, k, v, g))
    four = jitted(*map(put, (q, k, v, g)))
  # The whole model: one train step on a sharded batch (q, k, v from the fused kernel).
  cfg = tiny.mcfg(attention_impl="splash", qkv_impl="pallas")
  variables, table = tiny.variables(cfg)
  batch = tiny.batch()
  step = lambda b: jax.jit(lambda v, t: tiny.grads(cfg, v, t, b))(variables, table)
  model_one = step(batch)
  with jax.set_mesh(mesh):
    model_four = step(jax.tree.map(put, batch))
  print(json.dumps({"attention": diff(one, four), "model": diff(model_one, model_four),
                    "shard_map": "shard_map" in jaxpr, "out_sharding": str(four[0].sharding.spec)}))
""")


def test_splash_under_mesh_equals_unsharded(tmp_path):
  """4 fake CPU devices, batch over ("data", "table"): the shard_map path gives the unsharded result."""
  res = tiny.run_on_cpu_devices(tmp_path, MESH_SCRIPT)
  assert res["shard_map"] and "data" in res["out_sharding"] and "table" in res["out_sharding"], res
  assert res["attention"] < 1e-5 and res["model"] < 1e-5, res


TPU_SCRIPT = textwrap.dedent("""
  import json
  import jax, jax.numpy as jnp
  from jax.experimental import topologies
  from jax.sharding import NamedSharding, PartitionSpec as P
  from trm_jax import sharding
  from trm_jax.model import attention

  devices = topologies.get_topology_desc(topology_name="v5e:2x2", platform="tpu").devices
  mesh = sharding.make_mesh(1, devices)
  # The ARC shape: T = 916 (900 + 16), padded to 1024 in the kernel; 2 examples per chip.
  spec = jax.ShapeDtypeStruct((8, 916, 8, 64), jnp.bfloat16, sharding=NamedSharding(mesh, P(sharding.BATCH)))

  def texts(impl):
    def loss(q, k, v):
      return jnp.sum(attention(q, k, v, impl, interpret=False).astype(jnp.float32) ** 2)
    with jax.set_mesh(mesh):
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile().as_text()

  print(json.dumps({impl: texts(impl) for impl in ("splash", "xla")}))
""")


def test_splash_compiles_for_tpu_without_scores_in_hbm(tmp_path):
  """Compile-only for a v5e 2x2 topology from this CPU host: a Mosaic call, no (T, T) buffer."""
  if importlib.util.find_spec("libtpu") is None:
    pytest.skip("libtpu is not installed: no TPU compiler to compile with")
  script = tmp_path / "run.py"
  script.write_text(TPU_SCRIPT)
  # Compile-only: nothing claims a chip, so another libtpu process holding the lock file is harmless.
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", TPU_WORKER_HOSTNAMES="localhost")
  env.pop("JAX_PLATFORMS", None)
  r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  hlo = json.loads(r.stdout.strip().splitlines()[-1])
  assert "tpu_custom_call" in hlo["splash"] and "tpu_custom_call" not in hlo["xla"]
  assert not _score_shapes(hlo["splash"]), _score_shapes(hlo["splash"])
  assert _score_shapes(hlo["xla"])  # the check does see the XLA path's scores


def _score_shapes(hlo, t=916, tp=1024):
  """HLO array shapes with two sequence-length dims (queries x keys, padded or not)."""
  shapes = set(re.findall(r"\b[a-z]+\d*\[([\d,]+)\]", hlo))
  return sorted(s for s in shapes if sum(d in (str(t), str(tp)) for d in s.split(",")) >= 2)
