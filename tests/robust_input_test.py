"""Issue 14, inputs: config fields and dataset metadata within sane bounds, damaged or unwritable files
as one error line, and values that used to be accepted but wrong (NaN weights, broken maze labels,
duplicate/overlapping puzzles)."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trm_jax import config_lib, data_cli, input_pipeline, interop, train
from trm_jax import data as data_lib
from trm_jax.datasets import common, maze

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / "shared" / "parity"
SET = "sudoku_small/4x4"


def run(module, *args, env, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
  )


def one_error_line(p, *needles, prefix="error:"):
  err = [l for l in p.stderr.splitlines() if prefix in l]
  assert p.returncode == 1 and len(err) == 1, p.stderr[-3000:]
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  for n in needles:
    assert n in err[0], err[0]
  return err[0]


def experiment(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def smoke():
  return experiment("smoke").get_config()


# ---------------------------------------------------------------------------
# Config fields.


@pytest.mark.parametrize("section, table", [("train", config_lib.TRAIN_INTS), ("model", config_lib.MODEL_INTS)])
def test_every_integer_field_has_bounds(section, table):
  for field, lo, hi in table:
    for value in (lo - 1, hi + 1):
      c = smoke()
      c[section][field] = value
      with pytest.raises(ValueError, match=rf"config\.{section}\.{field}: "):
        config_lib.validate(c)


@pytest.mark.parametrize(
  "section, field, value",
  [
    ("train", "lr", float("nan")),
    ("train", "lr_min_ratio", 1.5),
    ("train", "beta2", 1.0),
    ("train", "ema_rate", -0.1),
    ("train", "weight_decay", float("inf")),
    ("model", "expansion", 0.0),
    ("model", "rms_norm_eps", 0.0),
    ("model", "halt_exploration_prob", 2.0),
    ("model", "dtype", "int8"),
    ("eval", "batch_size", 0),
    ("mesh", "table_parallel", 0),
    ("train", "optimizer", "sgd"),
  ],
)
def test_other_fields_have_bounds(section, field, value):
  c = smoke()
  c[section][field] = value
  with pytest.raises(ValueError, match=rf"config\.{section}\.{field}: "):
    config_lib.validate(c)


@pytest.mark.parametrize("seed", [-1, 1 << 32])
def test_seed_is_checked_before_anything_is_created(seed, tmp_path):
  c = smoke()
  c.seed = seed
  with pytest.raises(ValueError, match=r"config\.seed: must be an integer in \[0, 2\*\*32\)"):
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_every_experiment_validates():
  for name in ("smoke", "demo", "sudoku_mlp", "sudoku_att", "maze", "arc1", "arc2"):
    config_lib.validate(experiment(name).get_config())


@pytest.mark.parametrize(
  "flag, field",
  [
    ("--config.train.global_batch_size=0", "config.train.global_batch_size"),  # used to loop forever
    ("--config.train.keep_checkpoints=0", "config.train.keep_checkpoints"),  # used to delete every step
    ("--config.model.hidden_size=0", "config.model.hidden_size"),
  ],
)
def test_bad_fields_fail_fast_in_one_line(tmp_path, env, flag, field):
  p = run("trm_jax.main", "--config=experiments/smoke.py", f"--workdir={tmp_path / 'w'}", flag, env=env, timeout=120)
  one_error_line(p, field)
  assert not (tmp_path / "w").exists()


def test_bench_refuses_zero_batch(env):
  p = run("trm_jax.bench", "--config=experiments/smoke.py", "--config.train.global_batch_size=0", env=env, timeout=120)
  one_error_line(p, "config.train.global_batch_size")


# ---------------------------------------------------------------------------
# Datasets: metadata bounds, damaged files, counts, duplicates.


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  d = tmp_path_factory.mktemp("robust_data")
  common.build(SET, d)
  return Path(input_pipeline.dataset_dir(SET, d))


def copy_of(built, tmp_path) -> Path:
  out = tmp_path / "set"
  shutil.copytree(built, out)
  return out


def data_cli_run(*args, env):
  return run("trm_jax.data_cli", *args, env=env, timeout=120)


@pytest.mark.parametrize("field, value", [("seq_len", 10**7), ("num_puzzle_identifiers", 10**11), ("total_groups", -1)])
def test_implausible_metadata_is_refused(built, tmp_path, field, value):
  d = copy_of(built, tmp_path)
  meta = json.loads((d / common.META_FILE).read_text())
  meta["splits"]["train"][field] = value
  (d / common.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(common.DataError, match=rf"trm_meta.json: splits\.train\.{field}: "):
    input_pipeline.load_split(str(d), "train")
  assert data_cli.main(["stats", str(d)]) == 1


def test_inconsistent_index_arrays_are_refused(built, tmp_path):
  d = copy_of(built, tmp_path)
  with np.load(d / common.ARRAYS_FILE) as z:
    arrays = dict(z)
  arrays["train.puzzle_identifiers"] = arrays["train.puzzle_identifiers"] + 5  # past num_puzzle_identifiers
  np.savez(d / common.ARRAYS_FILE, **arrays)
  with pytest.raises(common.DataError, match=r"splits\.train\.puzzle_identifiers: values must lie in"):
    input_pipeline.load_split(str(d), "train")


def test_training_refuses_implausible_metadata(built, tmp_path):
  data_dir = tmp_path / "dd"
  shutil.copytree(built.parents[2], data_dir)
  meta_file = Path(input_pipeline.dataset_dir(SET, data_dir)) / common.META_FILE
  meta = json.loads(meta_file.read_text())
  meta["splits"]["train"]["seq_len"] = 10**7
  meta_file.write_text(json.dumps(meta))
  c = smoke()
  c.data.update(name="sudoku_small", config="4x4", data_dir=str(data_dir))
  with pytest.raises(data_lib.DataConfigError, match=r"splits\.train\.seq_len: 10000000 is outside"):
    data_lib.load(c.data)


def _truncate(path: Path, n: int = 100):
  path.write_bytes(path.read_bytes()[:n])


def _flip(path: Path):
  b = bytearray(path.read_bytes())
  for k in range(5):
    b[len(b) // 2 + 7 * k] ^= 0x5A
  path.write_bytes(bytes(b))


@pytest.mark.parametrize(
  "damage, needle",
  [
    (lambda d: _truncate(d / common.ARRAYS_FILE), "damaged dataset"),
    (lambda d: _truncate(d / common.META_FILE, 10), "damaged dataset"),
    (lambda d: _flip(next(d.glob("*-train.array_record-*"))), "damaged records"),
    (lambda d: _truncate(next(d.glob("*-train.array_record-*")), 70000), "damaged dataset"),
  ],
)
def test_damaged_dataset_files_give_one_line(built, tmp_path, env, damage, needle):
  d = copy_of(built, tmp_path)
  damage(d)
  p = data_cli_run("stats", str(d), env=env)
  one_error_line(p, needle, str(d))
  # Training reads the same way: a DataError (one line at the CLI), never a traceback.
  with pytest.raises(common.DataError, match=needle):
    split = input_pipeline.load_split(str(d), "train")
    split.reader.read(np.arange(split.num_examples))


def test_zero_counts_give_one_line(built, env):
  one_error_line(data_cli_run("stats", str(built), "--sample", "0", env=env), "--sample=0")
  one_error_line(data_cli_run("bench", str(built), "--batch", "0", env=env), "--batch=0")  # used to hang


def test_stats_warns_about_duplicates_and_overlap(built, capsys):
  assert data_cli.main(["stats", str(built)]) == 0
  err = capsys.readouterr().err
  rows = lambda s: [r.tobytes() for r in input_pipeline.load_split(str(built), s).all_arrays()["inputs"]]
  train, test = rows("train"), rows("test")
  repeats = len(train) - len(set(train))
  shared = sum(r in set(test) for r in train)
  assert repeats > 0 and shared > 0  # the generated 4x4 set has both
  assert f"train: {repeats} of {len(train)} examples repeat the input of an earlier one" in err
  assert f"train: {shared} of {len(train)} examples have an input that also occurs in split 'test'" in err


# ---------------------------------------------------------------------------
# Unwritable places: one line naming the path.


def _unwritable_dir() -> str:
  probe = "/sys/trm_robust_probe"
  try:
    os.mkdir(probe)
  except OSError:
    return "/sys"
  os.rmdir(probe)
  pytest.skip("no unwritable directory on this machine")


def test_unwritable_workdir_and_data_dir(env):
  ro = _unwritable_dir()
  p = run("trm_jax.main", "--config=experiments/smoke.py", f"--workdir={ro}/trm_run", env=env, timeout=120)
  one_error_line(p, f"{ro}/trm_run")
  p = data_cli_run("build", SET, "--data_dir", f"{ro}/trm_data", env=env)
  one_error_line(p, f"{ro}/trm_data")


# ---------------------------------------------------------------------------
# Values accepted but wrong.


def _parity():
  f = dict(np.load(PARITY / "trm_mlp.npz"))
  sd = {k[2:]: v for k, v in f.items() if k.startswith("w/")}
  from trm_jax import parity

  mcfg = config_lib.frozen_model(parity.model_fields_from_reference(json.loads(str(f["config"]))))
  return sd, mcfg


@pytest.mark.parametrize(
  "spoil, needle",
  [
    (lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a), "1 NaN/inf value(s)"),
    (lambda a: np.full(a.shape, np.inf, np.float32), "NaN/inf"),
    (lambda a: a.astype(np.complex64), "dtype complex64"),
    (lambda a: a.astype(np.int32), "dtype int32"),
  ],
)
def test_convert_refuses_non_real_or_non_finite_weights(spoil, needle):
  import jax

  from trm_jax import train_state
  from trm_jax.model import RecursiveModel

  sd, mcfg = _parity()
  key = interop.PREFIX + "lm_head.weight"
  sd[key] = spoil(np.asarray(sd[key]))
  like = jax.eval_shape(lambda: train_state.init_variables(RecursiveModel(mcfg), mcfg, jax.random.key(0)))
  with pytest.raises(interop.BadValues, match=rf"x\.npz: {re.escape(key)} .*{re.escape(needle)}"):
    interop.from_reference(sd, like, mcfg.num_puzzle_identifiers, mcfg.puzzle_emb_ndim, "x.npz")


def test_convert_cli_names_the_nan_key(tmp_path, env):
  f = dict(np.load(PARITY / "trm_mlp.npz"))
  from trm_jax import parity

  rc = json.loads(str(f["config"]))
  sd = {k[2:]: v for k, v in f.items() if k.startswith("w/")}
  key = interop.PREFIX + "lm_head.weight"
  sd[key] = sd[key].copy()
  sd[key].flat[0] = np.nan
  np.savez(tmp_path / "w.npz", **sd)
  fields = dict(parity.model_fields_from_reference(rc))
  p = run(
    "trm_jax.convert",
    f"--torch_checkpoint={tmp_path / 'w.npz'}",
    "--config=experiments/sudoku_mlp.py",
    f"--workdir={tmp_path / 'out'}",
    "--noresolve_data",
    "--config.train.global_batch_size=6",
    *[f"--config.model.{k}={v}" for k, v in fields.items()],
    env=env,
    timeout=300,
  )
  one_error_line(p, key, "NaN")
  assert not (tmp_path / "out").exists()


def _maze_csv(path: Path, rows):
  path.write_text("source,question,answer,rating\n" + "".join(f"gen,{q},{a},0\n" for q, a in rows))


def test_maze_labels_must_be_a_connected_path(tmp_path):
  q, a = maze.generate(np.random.default_rng(0), size=10, min_path=12)
  good = (maze.to_text(q), maze.to_text(a))
  path_cells = [i for i, ch in enumerate(good[1]) if ch == "o"]
  gap = good[1][: path_cells[len(path_cells) // 2]] + " " + good[1][path_cells[len(path_cells) // 2] + 1 :]
  grid = np.asarray(list(good[1])).reshape(10, 10)
  on = np.pad(np.isin(grid, list("oSG")), 1)
  near = on[:-2, 1:-1] | on[2:, 1:-1] | on[1:-1, :-2] | on[1:-1, 2:]
  far = next(int(i) for i in np.flatnonzero((grid == " ") & ~near))
  touching = next(int(i) for i in np.flatnonzero((grid == " ") & near))
  put_o = lambda i: good[1][:i] + "o" + good[1][i + 1 :]
  _maze_csv(tmp_path / "ok.csv", [good, good])
  assert maze.read_csv(tmp_path / "ok.csv")[0].shape == (2, 10, 10)
  for label, needle in (
    (gap, "is not reached from S"),
    (put_o(far), "off the path"),
    (put_o(touching), "branches or touches itself"),
  ):
    _maze_csv(tmp_path / "bad.csv", [good, (good[0], label)])
    with pytest.raises(
      common.DataError,
      match=rf"bad\.csv:3: answer's o cells must form one connected path.*"
      rf"{needle}",
    ):
      maze.read_csv(tmp_path / "bad.csv")
