r"""Op counts of the compiled train step's optimised HLO (what a change does to the program).

    JAX_PLATFORMS=cpu python benchmarks/hlo_stats.py experiments/sudoku_mlp.py [--batch=8] \
        [--set model.recursion=scan ...]

Prints one JSON line: fusions, transposes and copies (materialised
layout changes, with their total bytes), converts of parameter-shaped
arrays (weight casts), dots, while loops, the memory analysis, and the
compile time. Analysis only: nothing runs. On a GPU machine it analyses the
GPU program; without one, the CPU program (whose fusion decisions differ).
"""

import argparse
import collections
import json
import re
import sys

import jax
import numpy as np

from trm_jax import profiling

_DTYPE_BYTES = {"bf16": 2, "f16": 2, "f32": 4, "f64": 8, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "s64": 8}
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+ = (\w+)\[([\d,]*)\][^ ]* (\w[\w\-]*)\(")


def _bytes(dtype, dims):
  n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
  return n * _DTYPE_BYTES.get(dtype, 4)


def hlo_stats(text: str, param_shapes=()) -> dict:
  """Counts from optimised HLO text; `param_shapes`: shapes of the float32 parameters."""
  entry_ops, all_ops = collections.Counter(), collections.Counter()
  moved = collections.Counter()
  weight_casts = 0
  pshapes = {",".join(map(str, s)) for s in param_shapes}
  in_fused = False
  for line in text.splitlines():
    if line.startswith(("%fused", "fused_", "%wrapped", "wrapped_")) or re.match(r"^%?[\w.\-]*fus", line):
      in_fused = True
    elif line and not line.startswith(" ") and "{" in line:
      in_fused = False
    m = _OP.match(line)
    if not m:
      continue
    dtype, dims, op = m.groups()
    all_ops[op] += 1
    if in_fused:
      continue
    entry_ops[op] += 1
    if op in ("transpose", "copy"):
      moved[op] += _bytes(dtype, dims)
    if op == "convert" and dtype == "bf16" and dims in pshapes:
      weight_casts += 1
  return {
    "fusions": entry_ops["fusion"],
    "unfused_transposes": entry_ops["transpose"],
    "unfused_transpose_mb": round(moved["transpose"] / 2**20, 2),
    "unfused_copies": entry_ops["copy"],
    "unfused_copy_mb": round(moved["copy"] / 2**20, 2),
    "transposes_anywhere": all_ops["transpose"],
    "unfused_weight_casts": weight_casts,
    "dots": all_ops["dot"],
    "custom_calls": all_ops["custom-call"],
    "whiles": all_ops["while"],
  }


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("config")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--set", action="append", default=[], help="dotted.field=value (int, float or string)")
  ap.add_argument("--dump", default="", help="write the optimised HLO text here")
  a = ap.parse_args()
  overrides = {}
  for kv in a.set:
    k, v = kv.split("=", 1)
    for cast in (int, float):
      try:
        v = cast(v)
        break
      except ValueError:
        pass
    overrides[k] = {"True": True, "False": False}.get(v, v) if isinstance(v, str) else v
  config = profiling.load_config(a.config, **overrides)
  s = profiling.make_setup(config, a.batch, abstract=True)
  c = profiling.compile_train(s)
  text = c.compiled.as_text()
  if a.dump:
    with open(a.dump, "w") as f:
      f.write(text)
  shapes = [p.shape for p in jax.tree.leaves(s.state.params)]
  out = {
    "config": a.config,
    "set": a.set,
    "batch": a.batch,
    "backend": jax.default_backend(),
    "compile_s": round(c.compile_s, 2),
    **hlo_stats(text, shapes),
    "temp_mb": round(c.memory().get("temp", 0) / 2**20, 1),
  }
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
