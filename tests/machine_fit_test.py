"""Issue 22, section 1: a run within the config's bounds that does not fit this machine is one error line naming
the field and about the largest value that fits, from the compiled steps' memory, before anything is allocated
or created (no workdir, no checkpoints/, no run.lock)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trm_jax import errors, input_pipeline
from trm_jax.datasets import common

ROOT = Path(__file__).resolve().parents[1]


def train(workdir, *flags, env):
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.main", "--config=experiments/smoke.py", f"--workdir={workdir}", *flags],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )


def refused(p, *needles) -> str:
  """The one error line of a run refused for its memory (no traceback)."""
  assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
  err = [line for line in p.stderr.splitlines() if line.startswith("error:")]
  assert len(err) == 1 and "does not fit this machine: the run needs about" in err[0], p.stderr[-3000:]
  for n in needles:
    assert n in err[0], err[0]
  return err[0]


@pytest.mark.parametrize(
  "field",
  [
    "config.train.global_batch_size",  # was a RESOURCE_EXHAUSTED traceback and an empty checkpoints/
    "config.eval.batch_size",  # trained 6 steps, then asked for 1.69 TB at the first evaluation
  ],
)
def test_a_batch_that_does_not_fit_is_refused_before_anything_is_created(tmp_path, env, field):
  p = train(tmp_path / "run", f"--{field}=16777216", env=env)
  line = refused(p, f"{field}=16777216", "available host RAM")
  fits = int(re.search(r"about (\d+) fits$", line)[1])
  assert 0 < fits < 16777216, line
  assert not (tmp_path / "run").exists()


def test_a_puzzle_table_that_does_not_fit_is_refused_before_anything_is_created(tmp_path, env):
  """Metadata claiming 2**27 puzzle ids (the bound; the data uses id 0) used to sit silent until killed."""
  common.build("sudoku_small/4x4", tmp_path / "data")
  d = input_pipeline.dataset_dir("sudoku_small/4x4", tmp_path / "data")
  meta = json.loads((d / common.META_FILE).read_text())
  meta["splits"]["train"]["num_puzzle_identifiers"] = 1 << 27
  (d / common.META_FILE).write_text(json.dumps(meta))
  data = ["--config.data.name=sudoku_small", "--config.data.config=4x4", f"--config.data.data_dir={tmp_path / 'data'}"]
  # 512-wide rows: a 275 GB table, more than any test machine has
  model = ["--config.model.puzzle_emb_ndim=512", "--config.model.puzzle_emb_len=0"]
  p = train(tmp_path / "run", *data, *model, env=env)
  line = refused(p, f"{d} split train: num_puzzle_identifiers=134217728")
  assert 0 < int(re.search(r"about (\d+) fits$", line)[1]) < 1 << 27, line
  assert not (tmp_path / "run").exists()


def _tpu_run(batch: int = 8, eval_batch: int = 8):
  """The smoke run's `Run` on the compile-only devices of a v5e:2x2 (libtpu; no TPU needed)."""
  pytest.importorskip("libtpu", reason="libtpu (the tpu/test extra) compiles for TPUs without one")
  from trm_jax import plan, runs, sharding

  spec = importlib.util.spec_from_file_location("smoke", ROOT / "experiments" / "smoke.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.model.dtype = "bfloat16"
  config.train.global_batch_size, config.eval.batch_size = batch, eval_batch
  config = plan.resolved_config(config, plan.dataset_meta(config.data)[0], "loop")
  return runs, runs.Run(config, sharding.make_mesh(1, plan.tpu_devices(plan.parse_topology("v5e:2x2"))))


def test_a_tpu_compilers_refusal_for_memory_is_one_line_naming_the_field():
  """A TPU compiler refuses a program that cannot fit its HBM: the run stops there, before anything is created."""
  runs, run = _tpu_run(eval_batch=4194304)
  with pytest.raises(errors.UserError) as e:
    runs.compile_eval(run)
  assert re.fullmatch(
    r"config\.eval\.batch_size=4194304 does not fit a TPU v5 lite: Ran out of memory on HBM, .* exceeds available HBM "
    r"\([0-9.]+G\); try a smaller config\.eval\.batch_size",
    str(e.value),
  ), e.value


def test_on_an_accelerator_each_devices_memory_is_checked():
  """The accelerator branch of the fit check, on programs compiled for a TPU: each device's memory bounds the
  state, the train (or eval) step's temporaries and the carry; the field named is the largest part."""
  runs, run = _tpu_run(batch=2048)
  train_c, eval_c = runs.compile_train(run)[0], runs.compile_eval(run)[0]
  assert runs.memory_limit(run.mesh.local_devices) is None  # compile-only devices have no memory stats
  need = runs.program_bytes(train_c)
  runs.check_fits(run, train_c, eval_c, "table", device_limit=16 << 30)  # a v5e chip's HBM: fits
  with pytest.raises(errors.UserError) as e:
    runs.check_fits(run, train_c, eval_c, "table", device_limit=need // 2)
  line = str(e.value)
  assert (
    line.startswith("config.train.global_batch_size=2048 does not fit this machine")
    and "memory of a TPU v5 lite" in line
  )
  assert 0 < int(re.search(r"about (\d+) fits$", line)[1]) < 2048, line
