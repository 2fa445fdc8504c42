"""python -m trm_jax.bench prints the documented JSON line; the analytic FLOP count is right."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from trm_jax import profiling
from trm_jax.model import RecursiveModel
from trm_jax.train_state import init_variables

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke.py"
TINY = {
  "model.hidden_size": 64,
  "train.global_batch_size": 4,
  "eval.batch_size": 4,
  "model.H_cycles": 2,
  "model.L_cycles": 2,
  "model.halt_max_steps": 2,
  "model.puzzle_emb_ndim": 64,
}
SCHEMA = {
  "config": str,
  "device": str,
  "batch": int,
  "recursion": str,
  "compile_s": float,
  "step_ms_median": float,
  "step_ms_min": float,
  "examples_per_s": float,
  "tflops": float,
  "peak_mem_gb": float,
  "mode": str,
  "gflop_per_step": float,
  "peak_mem_source": str,
}


def _config_args():
  """The smoke config when it exists, else a tiny Sudoku-MLP through overrides."""
  if SMOKE.exists():
    return ["--config=experiments/smoke.py"]
  return ["--config=experiments/sudoku_mlp.py"] + [f"--config.{k}={v}" for k, v in TINY.items()]


def _bench(*extra):
  cmd = [sys.executable, "-m", "trm_jax.bench", *_config_args(), "--steps=2", "--warmup=1", *extra]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  lines = [l for l in p.stdout.splitlines() if l.strip()]
  assert len(lines) == 1, p.stdout
  return json.loads(lines[0])


def _check_schema(r):
  for key, typ in SCHEMA.items():
    assert key in r, f"missing {key}: {r}"
    assert isinstance(r[key], typ) or (typ is float and isinstance(r[key], int)), (key, r[key])
  assert r["device"] and r["config"].endswith(".py")
  assert r["compile_s"] > 0 and r["step_ms_min"] > 0 and r["step_ms_median"] >= r["step_ms_min"]
  assert r["examples_per_s"] > 0 and r["tflops"] > 0 and r["gflop_per_step"] > 0
  assert r["peak_mem_gb"] > 0
  assert r["cpu_s_per_step"] > 0


def test_bench_train_json_scan():
  r = _bench("--config.model.recursion=scan", "--config.model.remat=dots")
  _check_schema(r)
  assert r["mode"] == "train" and r["recursion"] == "scan" and r["remat"] == "dots"
  # On CPU the portable MLP-mixer path is the one in force; scan_unroll is reported.
  assert r["mixer_impl"] in ("", "transpose") and r["scan_unroll"] == 1


def test_bench_eval_json_loop_and_batch_flag():
  r = _bench("--eval", "--batch=2", "--config.model.recursion=loop")
  _check_schema(r)
  assert r["mode"] == "eval" and r["batch"] == 2 and r["recursion"] == "loop"


def _tiny(path="experiments/sudoku_att.py", **more):
  return profiling.load_config(str(ROOT / path), **dict(TINY, **more))


@pytest.mark.parametrize(
  "path,extra",
  [
    ("experiments/sudoku_att.py", {}),
    ("experiments/sudoku_mlp.py", {}),
    ("experiments/sudoku_att.py", {"model.pos_encodings": "none"}),
  ],
)
def test_application_flops_match_xla(path, extra):
  """The analytic count of one network application vs XLA's count of the compiled forward."""
  config = _tiny(path, **extra)
  mcfg = profiling.model_config(config, dtype="float32", attention_impl="xla")
  model = RecursiveModel(mcfg)
  variables = init_variables(model, mcfg, jax.random.key(0))
  b, t = 3, mcfg.seq_len + profiling.puzzle_emb_len(mcfg)
  z = jnp.ones((b, t, mcfg.hidden_size))
  f = jax.jit(lambda v, z: model.apply(v, z, z, method=RecursiveModel.L))
  cost = f.lower(variables, z).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  ours = profiling.application_flops(mcfg, b)
  analytic = ours["matmul"] + ours["attention"]
  # XLA also counts the element-wise work (norms, SiLU, softmax, RoPE): a few per cent on top.
  assert analytic <= cost["flops"] <= 1.15 * analytic, (analytic, cost["flops"])


def test_model_flops_train_and_eval_counts():
  config = _tiny("experiments/sudoku_mlp.py", **{"model.H_cycles": 3, "model.L_cycles": 4, "model.halt_max_steps": 5})
  mcfg = profiling.model_config(config)
  app = profiling.application_flops(mcfg, 8)
  a = app["matmul"] + app["attention"]
  heads = profiling.model_flops(mcfg, 8)["heads"]
  # TRM: 2 cycles of 5 applications without gradient, then 5 with gradient (x3), heads x3.
  assert profiling.model_flops(mcfg, 8)["total"] == 10 * a + 3 * (5 * a + heads)
  assert profiling.model_flops(mcfg, 8, "eval")["total"] == 5 * (15 * a + heads)
  # HRM: 1-step gradient over two networks, plus the target-Q forward.
  hcfg = profiling.model_config(
    _tiny("experiments/sudoku_att.py"),
    arch="hrm",
    H_layers=3,
    L_layers=2,
    H_cycles=2,
    L_cycles=2,
    no_ACT_continue=False,
  )
  aL = sum(profiling.application_flops(hcfg, 8, "L").values())
  aH = sum(profiling.application_flops(hcfg, 8, "H").values())
  assert aH == 1.5 * aL
  hh = profiling.model_flops(hcfg, 8)["heads"]
  fwd = 4 * aL + 2 * aH + hh
  assert profiling.model_flops(hcfg, 8)["total"] == (3 * aL + aH) + 3 * (aL + aH + hh) + fwd


def test_scan_equals_loop_outputs_and_gradients():
  errs = profiling.mode_difference(_tiny("experiments/sudoku_att.py"), batch_size=2)
  assert any("grad" in k for k in errs) and any("logits" in k for k in errs)
  assert max(errs.values()) < 1e-4, errs


def test_memory_analysis_and_program_size():
  s = profiling.make_setup(_tiny("experiments/sudoku_att.py"))
  c = profiling.compile_train(s)
  mem = c.memory()
  assert mem["total"] > 0 and mem["argument"] > 0
  size = c.program_size()
  assert size["hlo_instructions"] > 100 and size["hlo_chars"] > 0
  times = profiling.time_calls(c, 2, warmup=0)
  assert len(times) == 2 and min(times) > 0
  assert int(c.args[0].step) == 2  # the donated state was fed back: two real steps ran
