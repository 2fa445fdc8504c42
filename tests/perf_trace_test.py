"""benchmarks/kernel_profile.py: device kernels picked from a trace, and a real CPU trace parsed."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import kernel_profile as kp  # noqa: E402


def _meta(pid, tid, pname, tname):
  return [
    {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": pname}},
    {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": tname}},
  ]


def test_gpu_stream_kernels_are_picked_and_aggregated():
  ev = _meta(1, 1, "/host:CPU", "python") + _meta(2, 7, "/device:GPU:0 NVIDIA H200", "Stream #13(Compute)")
  ev += _meta(2, 8, "/device:GPU:0 NVIDIA H200", "Launch Stats")
  for _ in range(2):
    ev += [
      {"ph": "X", "pid": 2, "tid": 7, "name": "gemm_bf16", "ts": 0, "dur": 3000.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "loop_add_fusion_3", "ts": 0, "dur": 500.0},
      {"ph": "X", "pid": 2, "tid": 7, "name": "loop_add_fusion_4", "ts": 0, "dur": 500.0},
      {"ph": "X", "pid": 2, "tid": 8, "name": "not a kernel", "ts": 0, "dur": 9e6},
      {"ph": "X", "pid": 1, "tid": 1, "name": "host work", "ts": 0, "dur": 9e6},
    ]
  kernels, rule = kp.kernel_events(ev)
  assert rule == "gpu" and len(kernels) == 6
  t = kp.kernel_table(kernels, n_steps=2, step_ms=5.0, top=25)
  assert [r["name"] for r in t["rows"]][0] == "gemm_bf16"
  assert t["rows"][0]["ms"] == 3.0 and t["rows"][0]["count"] == 1 and t["rows"][0]["pct_of_step"] == 60.0
  assert t["kernel_ms_per_step"] == 4.0
  kinds = kp.by_kind(kernels, 2, 5.0)
  assert {"name": "loop_add_fusion", "count": 2.0, "ms": 1.0, "pct_of_step": 20.0} in kinds
  assert "| 1 | `gemm_bf16` | 1 | 3.000 | 60.0 |" in kp.markdown(t)


def test_cpu_trace_of_the_real_step(tmp_path):
  cmd = [
    sys.executable,
    "benchmarks/kernel_profile.py",
    "--config=experiments/smoke.py",
    "--batch=4",
    "--steps=2",
    "--warmup=1",
    "--top=5",
    f"--out={tmp_path}",
  ]
  p = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu")
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| # | kernel | count/step | ms/step | % of step |" in p.stdout
  (js,) = tmp_path.glob("kernels_*.json")
  t = json.loads(js.read_text())
  assert t["backend"] == "cpu" and t["rule"] == "cpu" and len(t["rows"]) == 5
  assert all(r["ms"] > 0 for r in t["rows"])
  assert 0 < t["kernel_ms_per_step"] and sum(r["pct_of_step"] for r in t["rows"]) <= 100
  assert list(tmp_path.glob("hlo_*.txt.gz"))
