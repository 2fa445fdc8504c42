r"""Side-by-side CPU timing: trm_jax's train step vs our eager-PyTorch re-implementation of the reference.

    python benchmarks/cpu_vs_reference.py [--batch=32] [--reps=3] [--steps=2] \
        [--variants=torch-bf16,jax-bf16,torch-f32,jax-f32]

Sudoku TRM-MLP (experiments/sudoku_mlp.py: hidden 512, 2 layers, H 3, L 6,
seq 81 + 16 prefix), one supervision step per call. Each variant runs in its
own process (`python -m trm_jax.bench` or `benchmarks/torch_reference.py`);
the variants are interleaved (A B C D, A B C D, ...) so that a machine
shared with other jobs loads them alike. Prints the CPU (lscpu model and the
ISA flags that matter for bf16 matmuls), the load average around the runs
and a markdown table: median over runs of each run's median step time, the
best run, and the ratio of the reference's bf16 time to each variant.
Needs `pip install torch` for the torch variants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISA = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info() -> dict:
  out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  flags = set(info.get("Flags", "").split())
  return {"model": info.get("Model name", "?").strip(), "cpus": os.cpu_count(), "isa": {f: f in flags for f in ISA}}


def command(variant: str, batch: int, steps: int, warmup: int) -> list[str]:
  impl, dtype = variant.split("-")
  dtype = {"bf16": "bfloat16", "f32": "float32"}[dtype]
  if impl == "torch":
    # Eager mode has nothing to compile: no warm-up call (bf16 steps can take minutes on CPUs without bf16 dots).
    return [
      sys.executable,
      str(ROOT / "benchmarks" / "torch_reference.py"),
      f"--batch={batch}",
      f"--dtype={dtype}",
      f"--steps={steps}",
      "--warmup=0",
    ]
  if impl == "jax":
    return [
      sys.executable,
      "-m",
      "trm_jax.bench",
      "--config=experiments/sudoku_mlp.py",
      f"--config.train.global_batch_size={batch}",
      f"--config.model.dtype={dtype}",
      f"--steps={steps}",
      f"--warmup={warmup}",
    ]
  raise ValueError(f"unknown variant {variant!r} (torch-bf16, torch-f32, jax-bf16, jax-f32)")


def run_once(variant: str, batch: int, steps: int, warmup: int, timeout: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  p = subprocess.run(
    command(variant, batch, steps, warmup), cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout
  )
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not lines:
    raise RuntimeError(f"{variant} failed: {p.stderr[-2000:]}")
  return json.loads(lines[-1])


def table(results: dict, cpu_s: dict | None = None, ref: str = "torch-bf16") -> str:
  """Markdown: wall ms (median of runs, best run), CPU s per step, ratios to the reference's bf16 step."""
  cpu_s = cpu_s or {}
  med_cpu = lambda v: statistics.median(cpu_s[v]) if cpu_s.get(v) and None not in cpu_s[v] else None
  rows = [
    "| variant | step ms, median of runs | best run ms | CPU s/step | runs | reference bf16 / this (wall, CPU s) |",
    "|---|---|---|---|---|---|",
  ]
  ref_ms = statistics.median(results[ref]) if results.get(ref) else None
  ref_cpu = med_cpu(ref)
  for v, ms in results.items():
    if not ms:
      continue
    med, c = statistics.median(ms), med_cpu(v)
    ratio = f"{ref_ms / med:.2f}x" if ref_ms else ""
    if ref_cpu and c:
      ratio += f", {ref_cpu / c:.2f}x"
    rows.append(f"| {v} | {med:.0f} | {min(ms):.0f} | {'' if c is None else f'{c:.1f}'} | {len(ms)} | {ratio} |")
  return "\n".join(rows)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--steps", type=int, default=2, help="timed steps per run (each run reports their median)")
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--variants", default="torch-bf16,jax-bf16,torch-f32,jax-f32")
  ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
  ap.add_argument("--jsonl", default="", help="append every run's JSON line here")
  ap.add_argument("--from_jsonl", default="", help="only print the table of the runs saved in this file")
  a = ap.parse_args(argv)
  if a.from_jsonl:
    results, cpu_s = {}, {}
    with open(a.from_jsonl) as f:
      for line in f:
        r = json.loads(line)
        results.setdefault(r["variant"], []).append(r["step_ms_median"])
        cpu_s.setdefault(r["variant"], []).append(r.get("cpu_s_per_step"))
    print(table(results, cpu_s))
    return 0
  variants = a.variants.split(",")
  for v in variants:
    command(v, 1, 1, 0)  # fail early on a bad name
  info = cpu_info()
  load0 = os.getloadavg()
  print(
    f"CPU: {info['model']}, {info['cpus']} CPUs; ISA: "
    + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["isa"].items()),
    flush=True,
  )
  results = {v: [] for v in variants}
  cpu_s = {v: [] for v in variants}
  for rep in range(a.reps):
    for v in variants:
      r = run_once(v, a.batch, a.steps, a.warmup, a.timeout)
      r.update(variant=v, rep=rep, loadavg_after=os.getloadavg()[0])
      results[v].append(r["step_ms_median"])
      cpu_s[v].append(r.get("cpu_s_per_step"))
      print(
        json.dumps(
          {
            k: r.get(k)
            for k in (
              "variant",
              "rep",
              "batch",
              "step_ms_median",
              "step_ms_min",
              "loadavg_after",
              "cpu_s_per_step",
              "cpu_capability",
              "compile_s",
            )
          }
        ),
        flush=True,
      )
      if a.jsonl:
        with open(a.jsonl, "a") as f:
          f.write(json.dumps(r) + "\n")
  load1 = os.getloadavg()
  print(
    f"\nSudoku TRM-MLP train step, batch {a.batch}, {a.reps} interleaved runs of {a.steps} timed steps; "
    f"load average (1 min) {load0[0]:.1f} before, {load1[0]:.1f} after "
    f"({os.cpu_count()} CPUs; above ~{os.cpu_count()} the machine was shared)\n"
  )
  print(table(results, cpu_s))
  return 0


if __name__ == "__main__":
  sys.exit(main())
