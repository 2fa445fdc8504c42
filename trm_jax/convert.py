"""trm-convert: reference (PyTorch) state dicts <-> trm_jax run checkpoints.

    trm-convert --torch_checkpoint=step_5000.pt --config=experiments/sudoku_mlp.py --workdir=runs/ft
    trm-convert --export_torch=weights.npz --workdir=runs/ft          # or .safetensors / .pt

Forward: reads a reference state dict (`.pt`/`.pth`/`.bin`/`.ckpt` with PyTorch, `pip install trm_jax[interop]`; `.npz`
without it; `.safetensors` with the safetensors package; keys with or without the `_orig_mod.` prefix; a parity-vectors
file's `w/...` keys also work), checks every shape against the config, and writes a normal run checkpoint (step
`--step`, default 0): the weights, EMA = the weights when `train.ema` is on, a fresh optimiser state, the puzzle table
from `model.inner.puzzle_emb.weights` (zero rows appended when the config's table is larger) and a fresh ACT carry.
`trm-train --workdir=DIR` then fine-tunes from it, and evaluation and `trm-solve` load it. Like `trm-train`, the
converter reads the dataset's shapes (seq_len, vocab_size, number of puzzle ids) from `config.data`; `--noresolve_data`
takes them from the config's `model.*` fields instead (then `trm-train` resumes the checkpoint only if they match its
dataset).

Reverse: `--export_torch=OUT` writes the checkpoint's weights (the EMA weights when EMA is on, `--export_live` for the
live ones) as reference-keyed float32 arrays (`.npz`, `.safetensors` or `.pt`).

User errors print one `error: ...` line and exit with status 1; nothing is left half-written.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import sys
import tempfile

import numpy as np

from trm_jax import cli, errors, fileio, interop

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUFFIXES = (".npz", ".safetensors") + TORCH_SUFFIXES


class ConvertError(ValueError):
  """A user error of trm-convert (one line, names the file, flag or key)."""


def _suffix(path: str, flag: str) -> str:
  ext = os.path.splitext(path)[1].lower()
  if ext not in SUFFIXES:
    raise ConvertError(f"{flag}={path}: unknown file type {ext or '(none)'!r}; use one of {', '.join(SUFFIXES)}")
  return ext


def _optional(module: str, needs: str, tail: str = ""):
  """An optional dependency (`pip install 'trm_jax[interop]'`), or one ConvertError: `needs` it."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConvertError(f"{needs} (pip install 'trm_jax[interop]'){tail}") from None


def _import_torch(path: str):
  return _optional("torch", f"{path}: reading/writing PyTorch files needs PyTorch", ", or use .npz")


def _from_torch_obj(obj, path: str) -> dict:
  """A torch.load result -> {key: tensor}; accepts {'state_dict': ...} / {'model': ...} wrappers."""
  if isinstance(obj, dict):
    for wrapper in ("state_dict", "model", "model_state_dict"):
      inner = obj.get(wrapper)
      if isinstance(inner, dict) and not any(str(k).startswith(("model.", "_orig_mod.")) for k in obj):
        obj = inner
        break
  if not isinstance(obj, dict):
    raise ConvertError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
  return obj


def _to_numpy(v, key: str, path: str) -> np.ndarray:
  if hasattr(v, "detach"):  # a torch tensor (possibly bfloat16)
    v = v.detach().cpu()
    return (v.float() if v.is_floating_point() else v).numpy()
  try:
    return np.asarray(v)
  except Exception as e:  # noqa: BLE001
    raise ConvertError(f"{path}: {key}: not an array ({e})") from None


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A reference state dict from `path` -> {key: numpy array} (the `_orig_mod.` prefix kept)."""
  ext = _suffix(path, "--torch_checkpoint")
  if not os.path.isfile(path):
    raise ConvertError(f"--torch_checkpoint={path}: file not found")
  try:
    if ext == ".npz":
      with np.load(path, allow_pickle=False) as f:
        raw = {k: f[k] for k in f.files}
      if any(k.startswith("w/") for k in raw):  # parity vectors: the state dict is under w/
        raw = {k[2:]: v for k, v in raw.items() if k.startswith("w/")}
    elif ext == ".safetensors":
      st = _optional("safetensors.numpy", f"{path}: reading .safetensors needs the safetensors package")
      raw = st.load_file(path)
    else:
      torch = _import_torch(path)
      raw = _from_torch_obj(torch.load(path, map_location="cpu", weights_only=True), path)
  except ConvertError:
    raise
  except Exception as e:  # noqa: BLE001 - zip / pickle / header errors of the readers
    raise ConvertError(f"{path}: cannot read state dict ({errors.first_line(e)})") from None
  return {str(k): _to_numpy(v, str(k), path) for k, v in raw.items()}


def save_state_dict(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes reference-keyed arrays to .npz / .safetensors / .pt, atomically."""
  ext = _suffix(path, "--export_torch")
  if os.path.isdir(path):
    raise ConvertError(f"--export_torch={path}: is a directory; give a file name ending in {ext}")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ConvertError(f"--export_torch={path}: parent directory {parent} does not exist")
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  buf = io.BytesIO()
  if ext == ".npz":
    np.savez(buf, **arrays)
  elif ext == ".safetensors":
    st = _optional("safetensors.numpy", f"--export_torch={path}: writing .safetensors needs the safetensors package")
    buf.write(st.save(arrays))
  else:
    torch = _import_torch(path)
    torch.save({k: torch.from_numpy(v.copy()) for k, v in arrays.items()}, buf)
  fileio.write_bytes(path, buf.getvalue())  # a unique temporary file renamed into place


def resolve(config, resolve_data: bool = True):
  """-> (resolved config, checkpoint meta, mesh), the way `trm-train` resolves a run."""
  from trm_jax import config_lib, runs, sharding, train  # noqa: PLC0415
  from trm_jax import data as data_lib  # noqa: PLC0415

  config_lib.validate(config)
  mesh = sharding.make_mesh()
  if resolve_data:
    try:
      data = data_lib.load(config.data)
    except (data_lib.DataConfigError, ValueError) as e:
      raise ConvertError(
        f"{errors.first_line(e)} (trm-convert reads the dataset's shapes like trm-train; "
        "--noresolve_data takes them from the config's model fields)"
      ) from None
    config = train.resolve_config(config, data.train.meta)
    meta = runs.run_meta(config, data)
  else:
    config = config.copy_and_resolve_references()
    m = config.model
    m.num_puzzle_identifiers = sharding.table_rows(int(m.num_puzzle_identifiers), config.mesh.table_parallel)
    name = str(config.data.name).rpartition("/")[2]
    task = next((t for t in ("sudoku", "maze", "arc") if name.startswith(t)), "sudoku")
    side = int(np.sqrt(m.seq_len))
    grid = [30, 30] if task == "arc" else ([side, side] if side * side == m.seq_len else [1, int(m.seq_len)])
    meta = {"config": config.to_json_best_effort(), "task": task, "grid": grid, "arc_ids": {}}
  return config, meta, mesh


def build_state(run, state_dict: dict, step: int = 0, source: str = "state dict"):
  """A TrainState holding the reference weights (checked against `run`'s config)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from trm_jax import train_state  # noqa: PLC0415

  mcfg = run.mcfg
  like = jax.eval_shape(lambda: train_state.init_variables(run.model, mcfg, jax.random.key(0)))
  variables, table = interop.from_reference(state_dict, like, None, mcfg.puzzle_emb_ndim, source)
  rows, ndim = int(mcfg.num_puzzle_identifiers), max(int(mcfg.puzzle_emb_ndim), 0)
  if table is None:
    table = np.zeros((0, ndim), np.float32)
  elif table.ndim != 2 or table.shape[1] != ndim or table.shape[0] > rows:
    raise ConvertError(
      f"{source}: {interop.PREFIX}puzzle_emb.weights has shape {table.shape}, the config expects ({rows}, {ndim})"
      " (rows: config.model.num_puzzle_identifiers)"
    )
  table = np.pad(table, ((0, rows - table.shape[0]), (0, 0)))  # zero rows for the ids the file does not have
  sh = run.state_sh
  params = jax.device_put(variables["params"], sh.params)
  consts = jax.device_put(variables["consts"], sh.consts)
  opt_state = jax.jit(run.tx.init, out_shardings=sh.opt_state)(params)
  ema = None if sh.ema is None else jax.device_put(jax.tree.map(np.copy, variables["params"]), sh.ema)
  state = train_state.TrainState(
    step=jax.device_put(jnp.asarray(step, jnp.int32), sh.step),
    params=params,
    consts=consts,
    opt_state=opt_state,
    ema=ema,
    puzzle_table=jax.device_put(jnp.asarray(table), sh.puzzle_table),
  )
  spec = lambda tree: (jax.tree.structure(tree), [(a.shape, a.dtype) for a in jax.tree.leaves(tree)])
  if spec(state) != spec(run.abstract_state):  # a driver change this module does not know about
    raise RuntimeError(f"converted state {spec(state)} does not match the run's {spec(run.abstract_state)}")
  return state


def convert(
  state_dict: dict, config, workdir: str, step: int = 0, source: str = "state dict", resolve_data: bool = True
) -> str:
  """Writes `state_dict` as a run checkpoint of `config` in `workdir`; returns the step directory.

  Everything is checked before anything is written. A local checkpoint is written next to `workdir` and moved into place
  only when complete; on gs:// (no rename) Orbax writes it in place and marks it complete last.
  """
  from trm_jax import checkpoint, rundir, runs, sharding  # noqa: PLC0415

  if step < 0:
    raise ConvertError(f"--step={step}: must be >= 0")
  run_dir = rundir.RunDir(workdir).prepare()
  ckpts = run_dir.checkpoints()
  if fileio.exists(ckpts) and (not fileio.isdir(ckpts) or fileio.listdir(ckpts)):
    raise ConvertError(f"--workdir={run_dir}: already holds checkpoints; convert into a fresh directory")
  workdir = run_dir.root
  config, meta, mesh = resolve(config, resolve_data)
  meta["converted_from"] = source
  try:
    sharding.check_batch(config.train.global_batch_size, mesh)
    run = runs.Run(config, mesh)
  except ValueError as e:
    raise ConvertError(errors.first_line(e)) from None
  state = build_state(run, state_dict, step, source)
  carry = run.new_carry()

  if fileio.is_remote(workdir):
    _save(checkpoint, run_dir, config, step, state, carry, meta)
    return run_dir.checkpoints(step)
  parent, base = os.path.split(workdir)
  tmp = tempfile.mkdtemp(prefix=f".{base}.convert-", dir=parent)
  try:
    _save(checkpoint, tmp, config, step, state, carry, meta)
    if not os.path.exists(workdir):
      os.rename(tmp, workdir)
    else:
      if os.path.isdir(ckpts):
        os.rmdir(ckpts)  # empty (checked above)
      os.rename(rundir.RunDir(tmp).checkpoints(), ckpts)
      shutil.rmtree(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return run_dir.checkpoints(step)


def _save(checkpoint, workdir, config, step: int, state, carry, meta: dict) -> None:
  with checkpoint.manager(workdir, int(config.train.keep_checkpoints)) as mngr:  # closing waits for the write
    checkpoint.save(mngr, step, state, carry, meta, force=True)


def export(workdir: str, step: int | None = None, live: bool = False, prefix: str = "") -> dict[str, np.ndarray]:
  """A run checkpoint -> reference-keyed float32 arrays (EMA weights when EMA is on, unless `live`)."""
  from trm_jax import runs  # noqa: PLC0415

  _, state, _, _ = runs.load_run(workdir, step)
  params = state.params if live else state.eval_params()
  out = interop.to_reference({"params": params, "consts": state.consts}, state.puzzle_table)
  return {prefix + k: v for k, v in out.items()}


def main(argv) -> int:
  from absl import flags  # noqa: PLC0415

  if len(argv) > 1:
    raise ConvertError(f"unexpected arguments: {' '.join(argv[1:])}")
  f = flags.FLAGS
  if bool(f.torch_checkpoint) == bool(f.export_torch):
    raise ConvertError("give exactly one of --torch_checkpoint (convert) and --export_torch (export)")
  if not f.workdir:
    raise ConvertError("--workdir is required")
  if f.export_torch:
    if f.config is not None:
      raise ConvertError("--config is not used with --export_torch (the checkpoint holds its config)")
    _suffix(f.export_torch, "--export_torch")
    arrays = export(f.workdir, None if f.step < 0 else f.step, f.export_live, f.export_prefix)
    save_state_dict(f.export_torch, arrays)
    print(f"wrote {len(arrays)} arrays to {f.export_torch}", flush=True)
    return 0
  config = cli.loaded_config(f)
  if config is None:
    raise ConvertError("--config is required, e.g. --config=experiments/sudoku_mlp.py")
  path = f.torch_checkpoint
  state_dict = load_state_dict(path)
  where = convert(state_dict, config, f.workdir, max(f.step, 0), source=path, resolve_data=f.resolve_data)
  print(f"wrote {where} ({len(state_dict)} arrays from {path})", flush=True)
  return 0


def run():
  from absl import app, flags  # noqa: PLC0415
  from ml_collections import config_flags  # noqa: PLC0415

  config_flags.DEFINE_config_file(
    "config", None, "Experiment file, e.g. experiments/sudoku_mlp.py[:arch=hrm].", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Run directory (written by conversion, read by --export_torch).")
  flags.DEFINE_string(
    "torch_checkpoint", None, "Reference state dict to convert (.pt/.pth/.bin/.ckpt, .npz, .safetensors)."
  )
  flags.DEFINE_string(
    "export_torch", None, "Write the run's weights as a reference state dict (.npz, .safetensors, .pt)."
  )
  flags.DEFINE_integer(
    "step",
    -1,
    "Conversion: the checkpoint's step (default 0). Export: which step (default the latest).",
    lower_bound=-1,
  )
  flags.DEFINE_bool(
    "resolve_data",
    True,
    "Conversion: read seq_len, vocab_size and the number of puzzle ids from config.data, like trm-train.",
  )
  flags.DEFINE_bool("export_live", False, "Export the live parameters instead of the EMA ones.")
  flags.DEFINE_string("export_prefix", "", "Prefix for exported keys, e.g. '_orig_mod.'.")
  cli.own_help(__name__)

  def wrapped(argv):
    from absl import logging  # noqa: PLC0415

    logging.set_verbosity(logging.ERROR)  # orbax's read-only notices
    with cli.user_errors():
      sys.exit(main(argv))

  app.run(wrapped, flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
