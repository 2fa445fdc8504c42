"""trm-plan: the real steps compiled for TPU pods from this CPU machine (libtpu, no TPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trm_jax import plan
from trm_jax.datasets import common

ROOT = Path(__file__).parents[1]
ARC = Path(__file__).parents[2] / "shared" / "data" / "arc"
libtpu = pytest.importorskip("libtpu", reason="libtpu (the tpu/test extra) compiles for TPUs without one")


def _smoke(**model):
  import importlib.util

  spec = importlib.util.spec_from_file_location("smoke", ROOT / "experiments" / "smoke.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.model.update(dtype="bfloat16", **model)
  return c


@pytest.mark.parametrize(
  "name,topology,chips",
  [
    ("v5e-64", "v5e:8x8", 64),
    ("v5litepod-16", "v5e:4x4", 16),
    ("v4-32", "v4:2x2x4", 16),
    ("v5p-128", "v5p:4x4x4", 64),
    ("v6e-256", "v6e:16x16", 256),
    ("v5e:2x2", "v5e:2x2", 4),
  ],
)
def test_topology_names(name, topology, chips):
  t = plan.parse_topology(name)
  assert (t.name, t.chips) == (topology, chips)


@pytest.mark.parametrize("name", ["v3-8", "v5e-3", "v4-31", "v5e:2x2x2", "tpu"])
def test_bad_topology_is_one_line(name):
  with pytest.raises(plan.PlanError) as e:
    plan.parse_topology(name)
  assert "\n" not in str(e.value) and name in str(e.value)


def _float_all_reduces(stats):
  return [
    c
    for c in stats["collectives"]
    if c["kind"] in ("all-reduce", "reduce-scatter") and any(t in c["dtypes"].split(",") for t in ("bf16", "f16"))
  ]


@pytest.mark.parametrize("topology,hosts", [("v5e:2x2", 1), ("v5e:4x4", 4)])
def test_train_and_eval_compile_for_a_pod(topology, hosts):
  """Attention and MLP-mixer steps in bfloat16: TPU choices, float32 gradient sums, one gather of table rows."""
  for model in (dict(), dict(mlp_t=True, pos_encodings="learned")):
    r = plan.plan(_smoke(**model), topology, "loop")
    assert (r["chips"], r["hosts"], r["generation"]) == (int(topology[4]) * int(topology[6]), hosts, "v5e")
    p = r["plans"][0]
    for kind in ("train", "eval"):
      s = p[kind]
      assert s["fits"] and 0 < s["total_gib"] < s["hbm_gib"]
      assert s["flops"] > 0 and s["hbm_bytes"] > 0 and s["est_step_ms"] > 0
      assert not _float_all_reduces(s), s["collectives"]
    reduces = [c for c in p["train"]["collectives"] if c["kind"] == "all-reduce" and "f32" in c["dtypes"]]
    assert reduces  # the gradients are summed across chips, in float32
    gathers = sum(c["count"] for c in p["train"]["collectives"] if c["kind"] == "all-gather")
    assert gathers <= 2, p["train"]["collectives"]
    # The fused SwiGLU: H_cycles 2 x (L_cycles 2 + 1) applications of 1 layer forward, the last cycle's 3 backward.
    calls = p["train"]["project_kernel_calls"]
    assert p["mlp_impl"] == "pallas" and (calls["swiglu_fwd"], calls["swiglu_bwd"]) == (6, 3)


def test_splash_kernel_costs_are_added():
  """Pallas calls are opaque to XLA's cost analysis: their FLOPs and re-reads are added per call."""
  r = plan.plan(_smoke(attention_impl="splash"), "v5e:2x2", "loop")
  train = r["plans"][0]["train"]
  # H_cycles 2 x (L_cycles 2 + 1) applications of 1 layer forward, the last cycle's 3 backward.
  assert train["splash_calls"] == {"fwd": 6, "bwd": 3} and train["splash_bytes_added"] > 0
  # q, k, v from one kernel per forward application (T = 17 in one partial 128-row tile); its backward is XLA's.
  assert r["plans"][0]["qkv_impl"] == "pallas" and train["project_kernel_calls"]["qkv_rope"] == 6
  xla = plan.plan(_smoke(attention_impl="xla"), "v5e:2x2", "loop")["plans"][0]["train"]
  assert xla["splash_calls"] == {"fwd": 0, "bwd": 0} and xla["splash_bytes_added"] == 0
  # The kernel's FLOPs are counted: at T = 17 its 128-padded tiles do more arithmetic than XLA's attention.
  assert train["flops"] > xla["flops"]


def test_scan_plan_costs_from_the_loop_program():
  r = plan.plan(_smoke(), "v5e:2x2", "both")
  loop, scan = r["plans"]
  assert (loop["recursion"], scan["recursion"], scan["remat"]) == ("loop", "scan", "dots")
  assert scan["train"]["flops"] == loop["train"]["flops"]  # the same function, trip counts applied
  assert "loop program" in scan["train"]["costs_from"]


def test_resolved_for_the_pod_not_the_host():
  """The host is a CPU; the program is for a TPU, so it gets the TPU's choices."""
  import jax

  from trm_jax import runs, sharding

  assert jax.default_backend() == "cpu"
  devices = plan.tpu_devices(plan.parse_topology("v5e:2x2"))
  c = plan.resolved_config(_smoke(), plan.dataset_meta(_smoke().data)[0], "scan")
  run = runs.Run(c, sharding.make_mesh(1, devices))
  assert (run.mcfg.platform, run.mcfg.remat, run.mcfg.mlp_impl) == ("tpu", "dots", "pallas")
  cpu = runs.Run(c, sharding.make_mesh(1)).mcfg
  assert (cpu.platform, cpu.mlp_impl) == ("cpu", "xla")


def test_planned_shapes_equal_a_real_build(tmp_path):
  """Shapes planned from the raw files (nothing written) are those of the built set."""
  if not ARC.is_dir():
    pytest.skip("needs ../shared/data/arc")
  from trm_jax import config_lib

  dcfg = config_lib.data_config(name="arc_agi", config="arc1_small", data_dir=str(tmp_path / "d"), manual_dir=str(ARC))
  planned, source = plan.dataset_meta(dcfg)
  assert "planned" in source and not (tmp_path / "d").exists()
  common.build("arc_agi/arc1_small", tmp_path / "d", manual_dir=ARC)
  built, source = plan.dataset_meta(dcfg)
  assert "built" in source and built == planned


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.plan", "--config=experiments/smoke.py", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_cli_json_and_one_line_errors():
  p = _cli("--topology=v5e-4", "--json")
  assert p.returncode == 0, p.stderr
  r = json.loads(p.stdout.strip().splitlines()[-1])
  assert r["experiment"] == "smoke.py" and r["topology"] == "v5e:2x2" and r["chips"] == 4
  assert {"train", "eval", "schedule_steps", "est_train_hours"} <= set(r["plans"][0])
  for args, words in [
    (["--topology=v9-8"], "--topology=v9-8"),
    (["--config=experiments/nope.py", "--topology=v5e-4"], "--config: Failed loading"),
    (["--topology=v5e-4", "--config.eval.batch_size=4194304"], "does not fit"),
    (["--topology=v4-8", "--config.model.hidden_size=2048", "--config.model.mlp_impl=pallas"], "VMEM of a TPU v4"),
  ]:
    p = _cli(*args)
    err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 1 and len(err) == 1 and words in err[0], p.stderr
    assert "Traceback" not in p.stderr


def test_missing_libtpu_is_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "libtpu", None)
  with pytest.raises(plan.PlanError, match="libtpu is not installed"):
    plan.tpu_devices(plan.parse_topology("v5e-4"))
