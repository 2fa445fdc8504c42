r"""Per-kernel time of the jitted train step from a jax.profiler trace (GPU; CPU and TPU work too).

    python benchmarks/kernel_profile.py --config=experiments/sudoku_mlp.py --recursion=loop \
        [--batch=768] [--steps=3] [--top=25] [--out=DIR] [--set model.mixer_impl=transpose ...]

Builds the bench setup (`trm_jax.profiling`: the real train step, jitted with
shardings and donation, on a synthetic batch), compiles, warms up, times
`--steps` calls, then traces `--steps` more with `jax.profiler` (Perfetto
JSON) and prints a markdown table of the top kernels by total device time:
name, launches per step, ms per step, % of the measured step time. Also
writes the optimised HLO (gzipped) and the table as JSON under --out, so
that fusion names in the table can be read back.

Kernel events: on GPU the device's "Stream" threads (CUPTI kernels and
copies), on TPU its "XLA Ops" line, on CPU the XLA thunk events of the host's
XLA threads (names of HLO instructions).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys

_HLO_NAME = re.compile(r"^[A-Za-z_][\w\-]*(\.\d+)*$")
_CPU_SKIP = ("ThreadpoolListener", "ThunkExecutor", "Wait for", "end: ")


def load_events(trace_dir: str) -> list:
  files = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1], "rt") as f:
    ev = json.load(f)
  return ev["traceEvents"] if isinstance(ev, dict) else ev


def kernel_events(events: list) -> tuple[list, str]:
  """(complete events that are device kernels, which rule picked them)."""
  pname, tname = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      pname[e["pid"]] = e.get("args", {}).get("name", "")
    if e.get("ph") == "M" and e.get("name") == "thread_name":
      tname[(e["pid"], e.get("tid"))] = e.get("args", {}).get("name", "")
  xs = [e for e in events if e.get("ph") == "X" and "dur" in e]
  th = lambda e: tname.get((e["pid"], e.get("tid")), "")
  for kind, thread_rule in (
    ("gpu", lambda t: t.lower().startswith("stream")),
    ("tpu", lambda t: t.startswith("XLA Ops")),
  ):
    pids = {p for p, n in pname.items() if "/device:" in n.lower() and kind in n.lower()}
    out = [e for e in xs if e["pid"] in pids and thread_rule(th(e))]
    if out:
      return out, kind
  out = [
    e
    for e in xs
    if th(e).startswith("tf_XLA") and _HLO_NAME.match(e.get("name", "")) and not e["name"].startswith(_CPU_SKIP)
  ]
  return out, "cpu"


def kernel_table(kernels: list, n_steps: int, step_ms: float, top: int = 25) -> dict:
  """Aggregate kernel events over `n_steps` traced steps."""
  total, count = collections.Counter(), collections.Counter()
  for e in kernels:
    total[e["name"]] += float(e["dur"])  # microseconds
    count[e["name"]] += 1
  busy_ms = sum(total.values()) / n_steps / 1e3
  rows = [
    {
      "name": n,
      "count": count[n] / n_steps,
      "ms": d / n_steps / 1e3,
      "pct_of_step": 100.0 * d / n_steps / 1e3 / step_ms,
    }
    for n, d in total.most_common(top)
  ]
  return {
    "step_ms": step_ms,
    "kernel_ms_per_step": busy_ms,
    "kernels_per_step": sum(count.values()) / n_steps,
    "distinct_kernels": len(total),
    "rows": rows,
  }


def kind_of(name: str) -> str:
  """A kernel's kind: its name without instance numbers (fusion.12 / loop_add_fusion_3 -> fusion / loop_add_fusion)."""
  return re.sub(r"([._]\d+)+$", "", name)


def by_kind(table_rows_source: list, n_steps: int, step_ms: float, top: int = 12) -> list:
  total, count = collections.Counter(), collections.Counter()
  for e in table_rows_source:
    total[kind_of(e["name"])] += float(e["dur"])
    count[kind_of(e["name"])] += 1
  return [
    {
      "name": n,
      "count": count[n] / n_steps,
      "ms": d / n_steps / 1e3,
      "pct_of_step": 100.0 * d / n_steps / 1e3 / step_ms,
    }
    for n, d in total.most_common(top)
  ]


def markdown(table: dict, title: str = "") -> str:
  lines = [
    f"{title}: step {table['step_ms']:.1f} ms, kernels {table['kernel_ms_per_step']:.1f} ms/step "
    f"({100 * table['kernel_ms_per_step'] / table['step_ms']:.0f}% of the step), "
    f"{table['kernels_per_step']:.0f} launches/step, {table['distinct_kernels']} distinct",
    "",
    "| # | kernel | count/step | ms/step | % of step |",
    "|---|---|---|---|---|",
  ]
  for i, r in enumerate(table["rows"], 1):
    name = r["name"] if len(r["name"]) <= 80 else r["name"][:77] + "..."
    lines.append(f"| {i} | `{name}` | {r['count']:g} | {r['ms']:.3f} | {r['pct_of_step']:.1f} |")
  if table.get("kinds"):
    lines += [
      "",
      "By kind (instance numbers stripped):",
      "",
      "| kind | count/step | ms/step | % of step |",
      "|---|---|---|---|",
    ]
    lines += [
      f"| `{r['name'][:80]}` | {r['count']:g} | {r['ms']:.3f} | {r['pct_of_step']:.1f} |" for r in table["kinds"]
    ]
  return "\n".join(lines)


def _value(v: str):
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return {"True": True, "False": False}.get(v, v)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--recursion", default="loop", choices=("loop", "scan"))
  ap.add_argument("--batch", type=int, default=0, help="0: the config's train batch")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--out", default="benchmarks/results/profile")
  ap.add_argument("--set", action="append", default=[], help="dotted.field=value override")
  a = ap.parse_args(argv)

  import jax

  from trm_jax import profiling

  overrides = {"model.recursion": a.recursion}
  overrides.update({k: _value(v) for k, v in (kv.split("=", 1) for kv in a.set)})
  if a.batch:
    overrides["train.global_batch_size"] = a.batch
  config = profiling.load_config(a.config, **overrides)
  s = profiling.make_setup(config, a.batch or None)
  c = profiling.compile_train(s)
  tag = f"{os.path.basename(a.config).split('.')[0]}_{a.recursion}_b{s.batch_size}"
  os.makedirs(a.out, exist_ok=True)
  with gzip.open(os.path.join(a.out, f"hlo_{tag}.txt.gz"), "wt") as f:
    f.write(c.compiled.as_text())
  times = profiling.time_calls(c, a.steps, a.warmup)
  step_ms = 1e3 * statistics.median(times)
  trace_dir = os.path.join(a.out, f"trace_{tag}")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    profiling.time_calls(c, a.steps, warmup=0)
  kernels, kind = kernel_events(load_events(trace_dir))
  table = kernel_table(kernels, a.steps, step_ms, a.top)
  table["kinds"] = by_kind(kernels, a.steps, step_ms)
  table.update(
    tag=tag,
    backend=jax.default_backend(),
    device=str(jax.devices()[0].device_kind),
    rule=kind,
    compile_s=round(c.compile_s, 2),
    overrides=a.set,
  )
  with open(os.path.join(a.out, f"kernels_{tag}.json"), "w") as f:
    json.dump(table, f, indent=1)
  print(markdown(table, f"{tag} on {table['device']} ({kind} events)"), flush=True)
  if not kernels:
    print(f"warning: no kernel events found in {trace_dir}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
