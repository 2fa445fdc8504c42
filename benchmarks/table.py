"""JSON lines from `python -m trm_jax.bench` -> a markdown table (used by gpu.sh and cpu.sh).

    python benchmarks/table.py results.jsonl [--reference gpu|cpu]

Rows are matched to the issue's reference numbers (PyTorch, torch.compile,
bf16 on one H200; eager bf16 on the 2-core CPU) by config, mode and batch.
Each scan row also shows its ratio to the loop row of the same setting.
"""

import argparse
import json
import os

# (config file, mode, batch) -> (what, reference ms, target ms)
# Issue 15: the reference (torch 2.11, torch.compile, bf16, fused AdamW) on one H200; target = reference / 1.5.
GPU_REF = {
  ("sudoku_mlp.py", "train", 768): ("Sudoku TRM-MLP train, batch 768", 132.7, 88.0),
  ("sudoku_att.py", "train", 768): ("Sudoku TRM-att train, batch 768", 98.0, 65.0),
  ("arc1.py", "train", 192): ("ARC TRM-att train, batch 192", 211.0, 140.0),
  ("sudoku_mlp.py", "eval", 768): ("Sudoku TRM-MLP eval (16 steps), batch 768", 1325.0, 880.0),
}
# The CPU reference is measured side by side (benchmarks/cpu_vs_reference.py), not a constant.
CPU_REF = {}


def key(r):
  return os.path.basename(r["config"]), r["mode"], r["batch"]


def render(rows, ref):
  loops = {}
  for r in rows:  # the first loop row of each (config, mode, batch), whatever its label
    if r["recursion"] == "loop":
      loops.setdefault(key(r), r)
  out = [
    "| row | recursion | compile s | step ms (median / min) | ex/s | TFLOP/s | peak GB | "
    "reference ms | x reference | target ms | meets target | scan/loop time, mem |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    name, ref_ms, target = ref.get(key(r), (f"{key(r)[0]} {r['mode']}, batch {r['batch']}", None, None))
    if r.get("label"):
      name += f" [{r['label']}]"
    ok = "" if target is None else ("yes" if r["step_ms_median"] <= target else "no")
    ratio = ""
    lp = loops.get(key(r))
    if r["recursion"] == "scan" and lp:
      ratio = f"{r['step_ms_median'] / lp['step_ms_median']:.2f}, {r['peak_mem_gb'] / max(lp['peak_mem_gb'], 1e-9):.2f}"
    fmt = lambda v: "" if v is None else f"{v:g}"
    speedup = "" if ref_ms is None else f"{ref_ms / r['step_ms_median']:.2f}x"
    out.append(
      f"| {name} | {r['recursion']}{'' if r.get('remat', 'none') == 'none' else ' (remat ' + r['remat'] + ')'} "
      f"| {r['compile_s']:.1f} | {r['step_ms_median']:.1f} / {r['step_ms_min']:.1f} "
      f"| {r['examples_per_s']:.1f} | {r['tflops']:.3f} | {r['peak_mem_gb']:.3f} "
      f"| {fmt(ref_ms)} | {speedup} | {fmt(target)} | {ok} | {ratio} |"
    )
  dev = rows[0]["device"] if rows else "?"
  return f"Device: {dev}\n\n" + "\n".join(out)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("results")
  ap.add_argument("--reference", default="gpu", choices=("gpu", "cpu"))
  a = ap.parse_args()
  rows = []
  with open(a.results) as f:
    for line in f:
      line = line.strip()
      if line.startswith("{"):
        rows.append(json.loads(line))
  print(render(rows, GPU_REF if a.reference == "gpu" else CPU_REF))


if __name__ == "__main__":
  main()
