"""trm-convert: reference state dicts <-> run checkpoints (round trip, evaluation, fine-tune, errors)."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from trm_jax import checkpoint, config_lib, convert, interop, parity, runs, steps, train
from trm_jax.train_state import init_variables

ROOT = Path(__file__).resolve().parents[1]
PARITY = ROOT.parent / "shared" / "parity"
NAMES = ("trm_att", "trm_mlp", "hrm")
# The experiment each parity model belongs to; the test overrides its model fields.
EXPERIMENT = {
  "trm_att": ("sudoku_att.py", None),
  "trm_mlp": ("sudoku_mlp.py", None),
  "hrm": ("sudoku_att.py", "arch=hrm"),
}
TOL = 1e-4
TABLE = interop.PREFIX + "puzzle_emb.weights"


def vectors(name):
  return dict(np.load(PARITY / f"{name}.npz"))


def state_dict(name):
  f = vectors(name)
  return {k[2:]: f[k] for k in f if k.startswith("w/")}


def model_overrides(name) -> dict:
  rc = json.loads(str(vectors(name)["config"]))
  return dict(parity.model_fields_from_reference(rc))


def experiment(file, arg=None):
  spec = importlib.util.spec_from_file_location("exp", ROOT / "experiments" / file)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def parity_config(name):
  """The experiment config with the parity model's fields (as `--config.model.*` would set them)."""
  c = experiment(*EXPERIMENT[name])
  c.model.update(model_overrides(name))
  c.train.global_batch_size = 6
  c.eval.batch_size = 6
  return c


def cli_overrides(name) -> list[str]:
  return [f"--config.model.{k}={v}" for k, v in model_overrides(name).items()] + [
    "--config.train.global_batch_size=6",
    "--noresolve_data",
  ]


def cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TRM_TRACEBACK", None)
  return subprocess.run(
    [sys.executable, "-m", "trm_jax.convert", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
  )


def leftovers(parent: Path):
  return [p.name for p in parent.iterdir() if ".convert-" in p.name]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """{name: workdir} of each parity model converted (from the raw state dict) in-process."""
  base = tmp_path_factory.mktemp("converted")
  out = {}
  for name in NAMES:
    wd = base / name
    convert.convert(state_dict(name), parity_config(name), str(wd), source=f"{name}.npz", resolve_data=False)
    out[name] = wd
  return out


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_exact(name, converted):
  sd = state_dict(name)
  for live in (False, True):  # EMA (when on) and live weights are both the converted ones
    got = convert.export(str(converted[name]), live=live)
    assert set(got) == set(sd)
    for k, v in sd.items():
      assert got[k].dtype == np.float32
      np.testing.assert_array_equal(got[k], v, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_is_a_fresh_run(name, converted):
  """Step 0, EMA = params when on, zero optimiser moments, every carry row halted (fresh)."""
  run, state, meta, step = runs.load_run(str(converted[name]))
  assert step == 0 and int(state.step) == 0
  assert meta["converted_from"] == f"{name}.npz" and meta["task"] == "sudoku" and meta["grid"] == [4, 4]
  if run.config.train.ema:
    assert name != "hrm"
    for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params)):
      np.testing.assert_array_equal(a, b)
  else:
    assert name == "hrm" and state.ema is None
  for x in jax.tree.leaves(state.opt_state):
    assert not np.any(np.asarray(x)), "optimiser state must be fresh"
  carry_fn, carry_sh = run.carry_parts(6)
  mngr = checkpoint.manager(str(converted[name]), read_only=True)
  try:
    abstract_carry = jax.tree.map(
      lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), jax.eval_shape(carry_fn), carry_sh
    )
    _, carry, _ = checkpoint.restore(mngr, 0, run.abstract_state, abstract_carry)
  finally:
    mngr.close()
  assert np.asarray(carry["halted"]).all() and not np.asarray(carry["steps"]).any()


@functools.partial(jax.jit, static_argnums=(0, 1))
def _rollout(model, mcfg, params, consts, table, batch):
  keys = ("logits", "preds", "q_halt_logits", "q_continue_logits")
  return steps.rollout(model, mcfg, params, consts, table, batch, collect=keys)[3]


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-30))


@pytest.mark.parametrize("name", NAMES)
def test_evaluation_reproduces_parity_outputs(name, converted):
  f = vectors(name)
  run, state, _, _ = runs.load_run(str(converted[name]))  # the loader trm-solve uses
  batch = {k: np.asarray(f[f"batch1/{k}"], np.int32) for k in ("inputs", "labels", "puzzle_identifiers")}
  per = _rollout(run.model, run.mcfg, state.eval_params(), state.consts, state.puzzle_table, batch)
  # The same evaluation as trm_jax/parity.py runs it, straight from the reference weights.
  mcfg = config_lib.frozen_model(parity.model_fields_from_reference(json.loads(str(f["config"]))))
  model = parity.RecursiveModel(mcfg)
  like = jax.eval_shape(lambda: init_variables(model, mcfg, jax.random.key(0)))
  v, table = interop.from_reference(state_dict(name), like, mcfg.num_puzzle_identifiers, mcfg.puzzle_emb_ndim)
  assert mcfg == run.mcfg  # the checkpoint's config is the parity model's (so one compile serves both)
  direct = _rollout(model, mcfg, v["params"], v["consts"], table, batch)
  assert run.mcfg.halt_max_steps == 3
  for i in range(3):
    for k in per:
      ref, got = f[f"eval/step{i + 1}/{k}"], np.asarray(per[k][i])
      if k == "preds":
        np.testing.assert_array_equal(got, ref, err_msg=f"step{i + 1}/{k}")
        continue
      assert _rel(got, direct[k][i]) < TOL, f"step{i + 1}/{k} differs from the parity computation"
      # Against the file: 1e-4, or no worse than parity.py itself where the reference's own float32
      # rounding is larger (trm_mlp step 3: ~3e-4, see parity_test).
      bound = max(TOL, 1.05 * _rel(direct[k][i], ref))
      assert _rel(got, ref) <= bound, f"step{i + 1}/{k}: relative error {_rel(got, ref)}"
  # The driver's eval step (evaluation and trm-solve) on the same batch.
  out = run.eval_step(state.eval_params(), state.consts, state.puzzle_table, run.make_batch(batch))
  np.testing.assert_array_equal(np.asarray(out["preds"]), np.stack([f[f"eval/step{i}/preds"] for i in (1, 2, 3)]))
  assert _rel(out["q_halt"], np.asarray(direct["q_halt_logits"])) < TOL


def test_trm_train_fine_tunes_from_converted_checkpoint(tmp_path):
  """Shapes read from the dataset like trm-train; trm-train resumes step 0 and moves the weights a little."""
  c = parity_config("trm_mlp")
  c.model.recursion = "scan"  # compiles faster; not a weight shape
  c.data.update(name="generated/sudoku_small", config="size=4,n_train=32,n_test=16,seed=0")
  c.train.update(
    global_batch_size=8, steps=2, eval_every=0, checkpoint_every=0, log_every=1, lr=1e-4, lr_warmup_steps=1
  )
  c.eval.update(batch_size=8, max_examples=8)
  sd = state_dict("trm_mlp")
  wd = tmp_path / "ft"
  convert.convert(sd, c, str(wd))  # resolve_data=True: generated 4x4 Sudoku has seq 16, vocab 6, 1 id
  out = train.train_and_evaluate(c, str(wd))
  assert out["step"] == 2 and "eval/test/exact_accuracy" in out
  logged = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in logged if "train/loss" in r] == [1, 2]
  _, state, _, step = runs.load_run(str(wd))
  assert step == 2 and int(state.step) == 2
  got = convert.export(str(wd), live=True)
  moved = [float(np.max(np.abs(got[k] - v))) for k, v in sd.items() if k != TABLE and "_init" not in k]
  # Two AdamATan2 steps at lr 1e-4 move each weight by at most ~2 * lr * (pi/2 + wd): fine-tuned, not re-initialised.
  assert max(moved) < 1e-3 and min(moved) > 0
  for k in (interop.PREFIX + "H_init", interop.PREFIX + "L_init"):
    np.testing.assert_array_equal(got[k], sd[k])


def test_cli_round_trip_with_orig_mod_prefix(tmp_path):
  sd = {"_orig_mod." + k: v for k, v in state_dict("hrm").items()}
  sd["_orig_mod.model.inner.puzzle_emb.local_weights"] = np.zeros((6, 64), np.float32)  # ignored buffers
  sd["_orig_mod.model.inner.puzzle_emb.local_ids"] = np.zeros((6,), np.int32)
  src = tmp_path / "hrm_sd.npz"
  np.savez(src, **sd)
  wd = tmp_path / "run"
  r = cli(
    f"--torch_checkpoint={src}", "--config=experiments/sudoku_att.py:arch=hrm", f"--workdir={wd}", *cli_overrides("hrm")
  )
  assert r.returncode == 0, r.stderr
  assert (wd / "checkpoints" / "0").is_dir()
  out = tmp_path / "back.npz"
  r = cli(f"--export_torch={out}", f"--workdir={wd}", "--export_prefix=_orig_mod.")
  assert r.returncode == 0, r.stderr
  back = dict(np.load(out))
  assert set(back) == {k for k in sd if "local_" not in k}
  for k in back:
    np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  assert not leftovers(tmp_path)


@pytest.mark.parametrize("case", ["wrong_shape", "missing_key"])
def test_cli_bad_state_dict_is_one_line_and_writes_nothing(tmp_path, case):
  sd = state_dict("trm_att")
  key = interop.PREFIX + ("L_level.layers.1.mlp.down_proj.weight" if case == "wrong_shape" else "q_head.bias")
  if case == "wrong_shape":
    sd[key] = np.zeros((64, 128), np.float32)
  else:
    del sd[key]
  src = tmp_path / "bad.npz"
  np.savez(src, **sd)
  wd = tmp_path / "run"
  r = cli(
    f"--torch_checkpoint={src}", "--config=experiments/sudoku_att.py", f"--workdir={wd}", *cli_overrides("trm_att")
  )
  assert r.returncode != 0
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], r.stderr
  assert "Traceback" not in r.stderr + r.stdout
  if case == "wrong_shape":
    assert "(64, 128)" in lines[0] and "(64, 256)" in lines[0]
  else:
    assert "missing" in lines[0]
  assert not wd.exists() and not leftovers(tmp_path)


def test_errors_name_the_key_in_process(tmp_path):
  c = parity_config("trm_att")
  wd = tmp_path / "run"

  def fails(sd, match):
    with pytest.raises(ValueError, match=match) as e:
      convert.convert(sd, c, str(wd), source="ref.pt", resolve_data=False)
    assert "\n" not in str(e.value) and str(e.value).startswith("ref.pt: ")
    assert not wd.exists() and not leftovers(tmp_path)

  sd = state_dict("trm_att")
  fails(
    dict(sd, **{interop.PREFIX + "L_level.layers.2.mlp.down_proj.weight": np.zeros((64, 256))}),
    r"unexpected keys: model\.inner\.L_level\.layers\.2\.mlp\.down_proj\.weight",
  )
  fails({k: v for k, v in sd.items() if k != TABLE}, r"missing keys: model\.inner\.puzzle_emb\.weights")
  fails(dict(sd, **{TABLE: np.zeros((11, 64), np.float32)}), r"puzzle_emb\.weights has shape \(11, 64\)")
  fails(dict(sd, **{interop.PREFIX + "H_init": np.zeros((32,), np.float32)}), r"H_init has shape \(32,\)")
  with pytest.raises(convert.ConvertError, match="unknown file type '.h5'"):
    convert.load_state_dict(str(tmp_path / "x.h5"))
  with pytest.raises(convert.ConvertError, match="file not found"):
    convert.load_state_dict(str(tmp_path / "x.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(convert.ConvertError, match="junk.npz: cannot read state dict"):
    convert.load_state_dict(str(tmp_path / "junk.npz"))
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoints directory"):
    convert.export(str(tmp_path / "nothing"))


def test_existing_checkpoints_and_failed_writes_leave_things_alone(tmp_path, monkeypatch, converted):
  sd, c = state_dict("trm_att"), parity_config("trm_att")
  with pytest.raises(convert.ConvertError, match="already holds checkpoints"):
    convert.convert(sd, c, str(converted["trm_att"]), resolve_data=False)
  assert sorted(os.listdir(converted["trm_att"] / "checkpoints")) == ["0"]

  def broken_save(*a, **k):
    raise OSError("disk full")

  monkeypatch.setattr(checkpoint, "save", broken_save)
  wd = tmp_path / "run"
  with pytest.raises(OSError, match="disk full"):
    convert.convert(sd, c, str(wd), resolve_data=False)
  assert not wd.exists() and not leftovers(tmp_path)
  wd.mkdir()  # an existing (empty) workdir is kept as it was
  with pytest.raises(OSError, match="disk full"):
    convert.convert(sd, c, str(wd), resolve_data=False)
  assert wd.is_dir() and not os.listdir(wd) and not leftovers(tmp_path)


def test_table_is_padded_to_the_config_rows_and_step_flag(tmp_path):
  c = parity_config("trm_mlp")
  c.model.num_puzzle_identifiers = 3
  sd = state_dict("trm_mlp")
  wd = tmp_path / "run"
  where = convert.convert(sd, c, str(wd), step=7, resolve_data=False)
  assert where.endswith(os.path.join("checkpoints", "7"))
  got = convert.export(str(wd), step=7)
  assert got[TABLE].shape == (3, 64)
  np.testing.assert_array_equal(got[TABLE][:1], sd[TABLE])
  assert not got[TABLE][1:].any()
  with pytest.raises(checkpoint.CheckpointError, match=r"--step=3: no such checkpoint"):
    convert.export(str(wd), step=3)


def test_export_to_a_directory_is_one_error_naming_it(tmp_path):
  out = tmp_path / "w.npz"
  out.mkdir()
  with pytest.raises(convert.ConvertError, match=rf"--export_torch={out}: is a directory"):
    convert.save_state_dict(str(out), {"a": np.zeros(2)})
  assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # nothing else written


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_other_file_formats(tmp_path, ext, converted):
  pytest.importorskip("safetensors" if ext == ".safetensors" else "torch")
  out = tmp_path / f"w{ext}"
  arrays = convert.export(str(converted["trm_att"]))
  convert.save_state_dict(str(out), arrays)
  back = convert.load_state_dict(str(out))
  assert set(back) == set(arrays)
  for k, v in arrays.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  wd = tmp_path / "again"
  convert.convert(back, parity_config("trm_att"), str(wd), resolve_data=False)
  again = convert.export(str(wd))
  for k, v in arrays.items():
    np.testing.assert_array_equal(again[k], v, err_msg=k)


def test_learned_positions_round_trip(tmp_path):
  """Learned position tables (no parity file uses them) convert and come back exactly."""
  c = parity_config("trm_att")
  c.model.pos_encodings = "learned"
  sd = state_dict("trm_att")
  key = interop.PREFIX + "embed_pos.embedding_weight"
  with pytest.raises(interop.KeyMismatch, match="missing keys: " + key.replace(".", r"\.")):
    convert.convert(sd, c, str(tmp_path / "run"), resolve_data=False)
  sd[key] = np.random.default_rng(0).normal(size=(16 + 4, 64)).astype(np.float32)
  convert.convert(sd, c, str(tmp_path / "run"), resolve_data=False)
  got = convert.export(str(tmp_path / "run"))
  assert set(got) == set(sd)
  for k, a in sd.items():
    np.testing.assert_array_equal(got[k], a, err_msg=k)
