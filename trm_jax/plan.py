"""trm-plan: compile a run's real train and eval steps for a Cloud TPU pod, from any machine, and size them.

    trm-plan --config=experiments/arc1.py --topology=v5e-64 [--config.a.b=v ...] [--recursion=both] [--json]

With `libtpu` installed (`pip install -e '.[tpu]'`), JAX gives compile-only devices of a whole pod; the steps are
compiled for them with the run's own mesh and shardings (`runs.Run`), exactly as `trm-train` would on the pod. From the
compiled programs it prints, per chip: arguments / temporaries against the chip's HBM, FLOPs and HBM bytes per step, the
collectives, and an **estimated** step time = max(FLOPs / peak, bytes / HBM bandwidth) from the public peak figures in
`CHIPS`, then the schedule's steps and time. These are compiler estimates, not TPU measurements. XLA costs a `while`
body once: the eval rollout (a scan over supervision steps) is scaled by its trip count, and a scan-recursion train step
takes its FLOPs and bytes from the loop program of the same function (the trip counts applied); `costs_from` says which.
Topologies: gcloud accelerator names (`v4-32`, `v5litepod-64` / `v5e-64`, `v5p-128`, `v6e-256`; v4 and v5p count
TensorCores, two per chip) or topology strings (`v5e:8x8`, `v4:2x2x4`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from trm_jax import cli, errors

# Per chip: HBM GiB, peak bf16 TFLOP/s, HBM GB/s (Cloud TPU system architecture pages, cloud.google.com/tpu/docs/<v>).
CHIPS = {
  "v4": (32, 275, 1228, "cloud.google.com/tpu/docs/v4"),
  "v5e": (16, 197, 819, "cloud.google.com/tpu/docs/v5e"),
  "v5p": (95, 459, 2765, "cloud.google.com/tpu/docs/v5p"),
  "v6e": (32, 918, 1640, "cloud.google.com/tpu/docs/v6e"),
}
MEGACORE = ("v4", "v5p")  # two TensorCores per chip, one JAX device (gcloud names count cores)
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8"}
_3D.update({1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"})
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# HLO element types and their bytes: pred is 1, the others carry their width in bits (bf16, f32, s8, u64, ...)
_TYPE = re.compile(r"\b(pred|bf16|[fsu]\d+)\[([0-9,]*)\]")


class PlanError(errors.UserError):
  """A bad topology, a missing libtpu or a config that does not fit: one line."""


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: str  # "v5e"
  name: str  # the topology string libtpu takes, e.g. "v5e:8x8"
  chips: int

  @property
  def hbm_gib(self) -> float:
    return CHIPS[self.generation][0]


def parse_topology(text: str) -> Topology:
  """`v5e-64`, `v5litepod-64`, `v4-32`, `v5p-128`, `v6e-256` or `v5e:8x8` -> Topology."""
  m = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)([-:])([0-9x]+)", text.strip().lower())
  if not m:
    raise PlanError(
      f"--topology={text}: expected a name like v5e-64, v5litepod-64, v4-32, v5p-128, v6e-256 "
      f"or a topology like v5e:8x8 ({', '.join(CHIPS)})"
    )
  gen, sep, size = "v5e" if m.group(1) == "v5litepod" else m.group(1), m.group(2), m.group(3)
  shapes = _3D if gen in MEGACORE else _2D
  if sep == ":":
    dims = [int(d) for d in size.split("x") if d.isdigit()]
    if len(dims) != len(next(iter(shapes.values())).split("x")) or min(dims, default=0) < 1:
      raise PlanError(
        f"--topology={text}: {gen} topologies have {len(next(iter(shapes.values())).split('x'))} "
        f"dimensions, e.g. {gen}:{shapes[16]}"
      )
    chips = 1
    for d in dims:
      chips *= d
    return Topology(gen, f"{gen}:{size}", chips)
  n = int(size) if size.isdigit() else 0
  chips = n // 2 if gen in MEGACORE else n
  if chips not in shapes or (gen in MEGACORE and n % 2):
    raise PlanError(
      f"--topology={text}: no {gen} slice of {n} {'cores' if gen in MEGACORE else 'chips'} "
      f"(have {', '.join(f'{gen}-{c * 2 if gen in MEGACORE else c}' for c in shapes)})"
    )
  return Topology(gen, f"{gen}:{shapes[chips]}", chips)


def tpu_devices(topology: Topology) -> list:
  """Compile-only devices of the whole pod (needs libtpu, not a TPU)."""
  # Compiling only: no exclusive TPU access, and no TPU VM metadata to look up (without these libtpu
  # prints a dozen warning lines about the missing metadata; the topology comes from the name).
  for var, value in (
    ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"),
    ("TPU_SKIP_MDS_QUERY", "1"),
    ("TPU_WORKER_HOSTNAMES", "localhost"),
    ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
  ):
    os.environ.setdefault(var, value)
  try:
    import libtpu  # noqa: F401, PLC0415
  except ImportError:
    raise PlanError("libtpu is not installed: pip install -e '.[tpu]' (compiles for a TPU without one)") from None
  from jax.experimental import topologies  # noqa: PLC0415

  kwargs = {"chip_config_name": "megacore"} if topology.generation in MEGACORE else {}
  try:
    devices = topologies.get_topology_desc(topology_name=topology.name, platform="tpu", **kwargs).devices
  except Exception as e:  # noqa: BLE001 - libtpu's refusal of a topology, as one line
    raise PlanError(f"--topology={topology.name}: libtpu refused it ({errors.first_line(e, 200)})") from None
  if len(devices) != topology.chips:
    raise PlanError(f"--topology={topology.name}: libtpu made {len(devices)} devices for {topology.chips} chips")
  return list(devices)


# ---------------------------------------------------------------------------
# The dataset's shapes, without the data.

# Train-split shapes of the sets the experiments use when the set is neither built in data_dir nor its raw
# files in manual_dir. ARC: the builder's plan of the reference's pinned files (`dataset_meta` with
# --config.data.manual_dir=DIR, 2026-12-06); Sudoku-Extreme aug1000 and Maze-Hard: 1,000 training puzzles
# of one example each, no puzzle ids (the reference's sets; benchmarks/schedules.py).
KNOWN = {
  "sudoku_extreme/aug1000": dict(
    seq_len=81, vocab_size=11, num_puzzle_identifiers=1, total_groups=1000, mean_puzzle_examples=1.0
  ),
  "maze_hard/csv": dict(
    seq_len=900, vocab_size=6, num_puzzle_identifiers=1, total_groups=1000, mean_puzzle_examples=1.0
  ),
  "arc_agi/arc1_aug1000": dict(
    seq_len=900, vocab_size=12, num_puzzle_identifiers=876694, total_groups=960, mean_puzzle_examples=4.145442019042013
  ),
  "arc_agi/arc2_aug1000": dict(
    seq_len=900,
    vocab_size=12,
    num_puzzle_identifiers=1192022,
    total_groups=1280,
    mean_puzzle_examples=4.332280219895455,
  ),
}


def dataset_meta(dcfg):
  """-> (train DatasetMeta, where it came from): built set, planned from manual_dir, generated, or KNOWN."""
  from trm_jax import data as data_lib  # noqa: PLC0415
  from trm_jax.datasets import common, splits  # noqa: PLC0415

  if dcfg.name.startswith("generated/"):
    return data_lib.load(dcfg).train.meta, "generated in memory"
  full = f"{dcfg.name}/{dcfg.config}" if dcfg.config else dcfg.name
  builder = common.get_builder(full, os.path.expanduser(dcfg.data_dir))
  if (Path(builder.data_dir) / common.META_FILE).is_file():
    js = common.read_metadata(builder.data_dir)["json"]
    return splits.DatasetMeta.from_json(js["splits"]["train"]), f"built set {builder.data_dir}"
  if dcfg.manual_dir or not builder.needs_files():
    builder.prepare(Path(os.path.expanduser(dcfg.manual_dir)) if dcfg.manual_dir else None)
    js = builder.info.metadata["json"]
    return splits.DatasetMeta.from_json(js["splits"]["train"]), "planned from the raw files (nothing written)"
  if full not in KNOWN:
    raise PlanError(
      f"config.data: {full} is not built in {dcfg.data_dir} and has no known shapes; "
      "build it (trm-data build) or pass --config.data.manual_dir"
    )
  return splits.DatasetMeta(**KNOWN[full]), "recorded shapes (trm_jax.plan.KNOWN)"


# ---------------------------------------------------------------------------
# Compiling and reading the programs.


def _itemsize(hlo_type: str) -> int:
  return 1 if hlo_type == "pred" else int(hlo_type.lstrip("bfsu")) // 8


def collectives(hlo_text: str) -> list[dict]:
  """Collective ops of a compiled program: kind, element types, count and bytes of their results."""
  pat = re.compile(r"=\s*(.*?)\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
  found: dict = {}
  for line in hlo_text.splitlines():
    m = pat.search(line)
    if not m:
      continue
    shapes = _TYPE.findall(m.group(1))
    size = sum(math.prod(int(d) for d in dims.split(",") if d) * _itemsize(t) for t, dims in shapes)
    key = (m.group(2), ",".join(sorted({t for t, _ in shapes})))
    entry = found.setdefault(key, {"kind": key[0], "dtypes": key[1], "count": 0, "bytes": 0})
    entry["count"] += 1
    entry["bytes"] += size
  return sorted(found.values(), key=lambda e: (e["kind"], e["dtypes"]))


def kernel_calls(hlo_text: str) -> dict:
  """Pallas splash kernel calls in a program: {"fwd": n, "bwd": n} (opaque to XLA's cost analysis)."""
  return {
    "fwd": len(re.findall(r"%splash_mha_fwd[\w.]* = ", hlo_text)),
    "bwd": len(re.findall(r"%splash_mha_(?:dkv|dq)[\w.]* = ", hlo_text)),
  }


def project_kernel_calls(hlo_text: str) -> dict:
  """Calls of this project's Pallas kernels (`fused_mlp`, `fused_qkv`; their cost estimates are in XLA's analysis)."""
  return {k: len(re.findall(rf"%{k}[\w.]* = ", hlo_text)) for k in ("swiglu_fwd", "swiglu_bwd", "qkv_rope")}


def program_stats(compiled, topology: Topology, trip_count: int = 1, costs=None, kernel=((0, 0), (0, 0))) -> dict:
  """Per-chip memory, costs (x trip_count), collectives and the estimated time of one compiled program.

  `kernel`: ((bytes, flops) of one forward, (bytes, flops) of one backward splash call) that XLA's cost analysis does
  not see (`model.splash_rereads`, `model.splash_flops`), added for every call in the program.
  """
  from trm_jax import runs  # noqa: PLC0415

  hbm, tflops, gbps, _ = CHIPS[topology.generation]
  mem = compiled.memory_analysis()
  costs = costs or compiled
  ca = costs.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) else ca
  text = costs.as_text()
  calls = kernel_calls(text)
  kernel_bytes = calls["fwd"] * kernel[0][0] + calls["bwd"] * kernel[1][0]
  flops = (float(ca.get("flops", 0)) + calls["fwd"] * kernel[0][1] + calls["bwd"] * kernel[1][1]) * trip_count
  nbytes = (float(ca.get("bytes accessed", 0)) + kernel_bytes) * trip_count
  gib, total = 1 << 30, runs.program_bytes(compiled)
  compute_ms, memory_ms = flops / (tflops * 1e12) * 1e3, nbytes / (gbps * 1e9) * 1e3
  return {
    "argument_gib": round(mem.argument_size_in_bytes / gib, 3),
    "temp_gib": round(mem.temp_size_in_bytes / gib, 3),
    "total_gib": round(total / gib, 3),
    "hbm_gib": hbm,
    "fits": total <= hbm * gib,
    "flops": flops,
    "hbm_bytes": nbytes,
    "collectives": collectives(compiled.as_text()),
    "splash_calls": calls,
    "project_kernel_calls": project_kernel_calls(text),
    "splash_bytes_added": kernel_bytes * trip_count,
    "compute_floor_ms": round(compute_ms, 3),
    "memory_ms": round(memory_ms, 3),
    "est_step_ms": round(max(compute_ms, memory_ms), 3),
    "xla_optimal_ms": _xla_optimal_ms(ca, trip_count),
  }


def _xla_optimal_ms(ca: dict, trip_count: int) -> float | None:
  """The TPU compiler's own roofline of the program (Pallas calls not included); None when it gives
  none: large programs report a negative 'optimal_seconds' (seen on arc1 with libtpu 0.0.42.1)."""
  seconds = float(ca.get("optimal_seconds", -1))
  return round(seconds * trip_count * 1e3, 3) if seconds >= 0 else None


# ---------------------------------------------------------------------------
# One plan.


def resolved_config(config, meta, recursion: str | None = None):
  from trm_jax import config_lib, train  # noqa: PLC0415

  config = train.resolve_config(config, meta)
  if recursion:
    config.model.recursion = recursion
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise PlanError(str(e)) from None
  return config


def plan_one(config, meta, topology: Topology, devices, recursion: str | None = None) -> dict:
  """Compiles the train and eval steps of `config` for `devices` -> the plan's fields for one recursion mode."""
  from trm_jax import runs, sharding  # noqa: PLC0415

  config = resolved_config(config, meta, recursion)
  mesh = sharding.make_mesh(config.mesh.table_parallel, devices)
  for field in ("train.global_batch_size", "eval.batch_size"):
    section, name = field.split(".")
    try:
      sharding.check_batch(int(config[section][name]), mesh, field)
    except ValueError as e:
      raise PlanError(str(e)) from None
  run = runs.Run(config, mesh)
  (train_c, train_s), (eval_c, eval_s) = runs.compile_train(run), runs.compile_eval(run)
  costs, costs_from = (None, None), "this program"
  if run.mcfg.recursion == "scan":  # XLA costs a while body once: take the costs of the unrolled loops
    loop = config.copy_and_resolve_references()
    loop.model.recursion = "loop"
    loop_run = runs.Run(loop, mesh)
    costs = (runs.compile_train(loop_run)[0], runs.compile_eval(loop_run)[0])
    costs_from = "the loop program of the same step"
  train = dict(
    program_stats(train_c, topology, costs=costs[0], kernel=_kernel_costs(run, "train", topology)),
    compile_s=round(train_s, 1),
    costs_from=costs_from,
  )
  evaluation = dict(
    program_stats(eval_c, topology, run.eval_supervision_steps, costs[1], _kernel_costs(run, "eval", topology)),
    compile_s=round(eval_s, 1),
    costs_from=f"{costs_from} x {run.eval_supervision_steps} supervision steps (the rollout's scan)",
  )
  steps = int(config.train.steps)
  return {
    "recursion": run.mcfg.recursion,
    "remat": run.mcfg.remat,
    "attention_impl": run.mcfg.attention_impl,
    "mlp_impl": run.mcfg.mlp_impl,
    "qkv_impl": run.mcfg.qkv_impl,
    "global_batch_size": int(config.train.global_batch_size),
    "eval_batch_size": int(config.eval.batch_size),
    "table_rows": int(config.model.num_puzzle_identifiers),
    "table_parallel": int(config.mesh.table_parallel),
    "train": train,
    "eval": evaluation,
    "schedule_steps": steps,
    "est_train_hours": round(steps * train["est_step_ms"] / 3.6e6, 2),
  }


def _kernel_costs(run, kind: str, topology: Topology):
  """((bytes, flops) of a forward, (bytes, flops) of a backward splash call per chip) the compiler does not see."""
  from trm_jax.model import puzzle_emb_len, splash_flops, splash_rereads  # noqa: PLC0415

  c = run.mcfg
  if c.attention_impl != "splash" or c.mlp_t:
    return (0, 0), (0, 0)
  batch = run.config.train.global_batch_size if kind == "train" else run.config.eval.batch_size
  shape = (int(batch) // topology.chips, c.seq_len + puzzle_emb_len(c), c.num_heads, c.hidden_size // c.num_heads)
  return tuple(zip(splash_rereads(*shape), splash_flops(*shape)))


def _fit_hint(kind: str, table_rows: int) -> str:
  field = "train.global_batch_size" if kind == "train" else "eval.batch_size"
  table = "--config.mesh.table_parallel=K (splits the puzzle table over K chips) or " if table_rows > 1 else ""
  return f"try {table}a smaller --config.{field}"


def plan(config, topology_name: str, recursion: str | None = None) -> dict:
  """The whole plan (one or both recursion modes); raises PlanError for what a user must change."""
  topology = parse_topology(topology_name)
  devices = tpu_devices(topology)
  meta, source = dataset_meta(config.data)
  modes = ("loop", "scan") if recursion == "both" else (recursion,)
  hbm, tflops, gbps, src = CHIPS[topology.generation]
  out = {
    "experiment": "",
    "topology": topology.name,
    "generation": topology.generation,
    "chips": topology.chips,
    "hosts": len({d.process_index for d in devices}),
    "hbm_gib_per_chip": hbm,
    "peak_bf16_tflops": tflops,
    "hbm_gbps": gbps,
    "peak_source": src,
    "shapes_from": source,
    "estimate": "compiler estimate, not measured",
    "plans": [plan_one(config, meta, topology, devices, m) for m in modes],
  }
  return out


def check_fit(result: dict) -> None:
  """A program whose arguments + temporaries exceed the chip's HBM is one PlanError line."""
  for p in result["plans"]:
    for kind in ("train", "eval"):
      s = p[kind]
      if not s["fits"]:
        raise PlanError(
          f"{kind} step does not fit on {result['topology']}: {s['total_gib']:.1f} GiB per chip "
          f"of {s['hbm_gib']} GiB (recursion={p['recursion']}); " + _fit_hint(kind, p["table_rows"])
        )


# ---------------------------------------------------------------------------
# Printing.


def _ms(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.1f} ms"


def _fmt_collectives(c: list[dict]) -> str:
  return ", ".join(f"{e['count']} {e['kind']} {e['dtypes']} ({e['bytes'] / 1e6:.1f} MB)" for e in c) or "none"


def report(result: dict) -> str:
  r = result
  lines = [
    f"{r['experiment']} on {r['topology']}: {r['chips']} chips, {r['hosts']} hosts; shapes: {r['shapes_from']}",
    f"peaks used (per chip): {r['hbm_gib_per_chip']} GiB HBM, {r['peak_bf16_tflops']} bf16 TFLOP/s, "
    f"{r['hbm_gbps']} GB/s ({r['peak_source']}); times below are COMPILER ESTIMATES, not TPU measurements",
  ]
  for p in r["plans"]:
    lines.append(
      f"recursion={p['recursion']} (remat {p['remat']}, attention {p['attention_impl']}, "
      f"q/k/v {p['qkv_impl']}, MLP {p['mlp_impl']}), "
      f"batch {p['global_batch_size']} ({p['global_batch_size'] // r['chips']} rows per chip), "
      f"table {p['table_rows']:,} rows over {p['table_parallel']} chip(s)"
    )
    for kind in ("train", "eval"):
      s = p[kind]
      lines.append(
        f"  {kind}: {s['argument_gib']:.2f} GiB arguments + {s['temp_gib']:.2f} GiB temporaries "
        f"= {s['total_gib']:.2f} of {s['hbm_gib']} GiB; {s['flops']:.3g} FLOPs, {s['hbm_bytes']:.3g} "
        f"HBM bytes per chip; est. {s['est_step_ms']:.1f} ms (compute floor {s['compute_floor_ms']:.1f}, "
        f"memory {s['memory_ms']:.1f}; XLA's own roofline {_ms(s['xla_optimal_ms'])}); "
        f"compiled in {s['compile_s']:.0f}s"
      )
      lines.append(f"    collectives: {_fmt_collectives(s['collectives'])}; costs from {s['costs_from']}")
    lines.append(f"  schedule: {p['schedule_steps']:,} train steps, est. {p['est_train_hours']:.1f} h of training")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags():
  if "topology" in FLAGS:
    return
  config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/arc1.py[:arch=hrm].", lock_config=True
  )
  flags.DEFINE_string("topology", None, "Pod: v5e-64, v5litepod-64, v4-32, v5p-128, v6e-256, or v5e:8x8.")
  flags.DEFINE_enum("recursion", None, ["loop", "scan", "both"], "Recursion mode(s); default: the config's.")
  flags.DEFINE_bool("json", False, "Print one JSON line instead of the report.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)
  with cli.user_errors():
    config = cli.loaded_config(FLAGS)
    if config is None or not FLAGS.topology:
      raise PlanError("--config and --topology are required, e.g. --config=experiments/arc1.py --topology=v5e-64")
    result = plan(config, FLAGS.topology, FLAGS.recursion)
    result["experiment"] = os.path.basename(config_flags.get_config_filename(FLAGS["config"]))
    check_fit(result)
    print(json.dumps(result) if FLAGS.json else report(result), flush=True)


def run():
  _define_flags()
  cli.own_help(__name__)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
