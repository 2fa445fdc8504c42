r"""The pods table of docs/pods.md: `trm-plan --json` for every experiment on a few pod slices.

    python benchmarks/plan_table.py [--out benchmarks/results/plan_table.jsonl] [--topologies v4-32,v5e-16,...]
        [--experiments sudoku_mlp,sudoku_att,maze,arc1,arc2]

Runs `trm-plan` once per (experiment, topology) in a fresh process, appends each
JSON line (or the error line) to --out, then prints the markdown table from
everything in --out. Compiler estimates, not TPU measurements.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(experiment: str, topology: str) -> dict:
  cmd = [
    sys.executable,
    "-m",
    "trm_jax.plan",
    f"--config=experiments/{experiment}.py",
    f"--topology={topology}",
    "--json",
  ]
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if p.returncode == 0:
    return json.loads(p.stdout.strip().splitlines()[-1])
  err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  return {"experiment": f"{experiment}.py", "topology": topology, "error": (err or [p.stderr[-300:]])[-1]}


def table(rows: list[dict]) -> str:
  out = [
    "| experiment | slice | chips | fits? | train per chip (args + temp) | est. train step | compute floor "
    "| est. eval batch | steps | est. training |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    if "error" in r:
      out.append(f"| {r['experiment']} | {r['topology']} | | no: {r['error'].replace('|', '/')} | | | | | | |")
      continue
    p = r["plans"][0]
    t, e = p["train"], p["eval"]
    out.append(
      f"| {r['experiment']} | {r['slice']} ({r['topology']}) | {r['chips']} | yes | "
      f"{t['argument_gib']:.2f} + {t['temp_gib']:.2f} GiB of {t['hbm_gib']} | {t['est_step_ms']:.0f} ms | "
      f"{t['compute_floor_ms']:.0f} ms | {e['est_step_ms']:.0f} ms | {p['schedule_steps']:,} | "
      f"{p['est_train_hours']:.1f} h |"
    )
  return "\n".join(out)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "plan_table.jsonl"))
  ap.add_argument("--topologies", default="v4-32,v5e-16,v5e-64,v5p-32,v6e-16")
  ap.add_argument("--experiments", default="sudoku_mlp,sudoku_att,maze,arc1,arc2")
  ap.add_argument("--print_only", action="store_true")
  a = ap.parse_args()
  if not a.print_only:
    for experiment in a.experiments.split(","):
      for topology in a.topologies.split(","):
        row = dict(run_one(experiment, topology), slice=topology)
        with open(a.out, "a") as f:
          f.write(json.dumps(row) + "\n")
        print(experiment, topology, row.get("error", "ok"), flush=True)
  with open(a.out) as f:
    print(table([json.loads(line) for line in f if line.strip()]))


if __name__ == "__main__":
  main()
