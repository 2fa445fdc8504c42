r"""GFLOP/s of one (3104x512)@(512x3072) dot in bf16, bf16 with float32 result, and float32, under XLA_FLAGS.

    for f in "" --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot \
             --xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_experimental_xnn_fusion_type=dot; do
      XLA_FLAGS="$f" JAX_PLATFORMS=cpu python benchmarks/xla_cpu_dot_flags.py; done
"""

import os
import statistics
import time

import jax
import jax.numpy as jnp

M, K, N = 3104, 512, 3072
r = []
for name, (dt, acc) in {
  "bf16": (jnp.bfloat16, None),
  "bf16acc32": (jnp.bfloat16, jnp.float32),
  "f32": (jnp.float32, None),
}.items():
  x, w = jnp.ones((M, K), dt), jnp.ones((K, N), dt)
  f = jax.jit(lambda x, w, acc=acc: jnp.dot(x, w, preferred_element_type=acc))
  f(x, w).block_until_ready()
  ts = []
  for _ in range(5):
    t = time.perf_counter()
    f(x, w).block_until_ready()
    ts.append(time.perf_counter() - t)
  r.append((name, round(2 * M * K * N / statistics.median(ts) / 1e9, 1)))
print(os.environ.get("XLA_FLAGS", ""), r, "load", os.getloadavg()[0], flush=True)
