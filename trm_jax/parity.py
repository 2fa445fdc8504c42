"""Parity tool: run the reference's calls on its weights and batches.

    python -m trm_jax.parity --vectors IN.npz --out OUT.npz [--recursion loop|scan] [--report]

`IN` holds a reference state dict (`w/...`), a JSON `config` and two batches (layout: ../shared/parity/README.md). OUT
gets, under the same keys, every `eval/...` and `train/...` array of IN, computed by trm_jax in float32: the evaluation
rollout, training step 1 (gradients of the unscaled loss and one sparse sign-SGD step, lr 0.01, wd 0.1) and training
step 2 continuing the carry on the second batch. `--report` compares OUT with IN and prints, per group (eval / train /
grads / sign-SGD), the worst relative error, its tolerance and PASS/FAIL; the exit status is 1 when a group fails.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import config_lib, interop, optim, recursion, steps
from trm_jax.model import RecursiveModel
from trm_jax.profiling import rel_err
from trm_jax.train_state import init_variables

SIGNSGD_LR, SIGNSGD_WD = 0.01, 0.1
# --report tolerances (relative error = max-abs error / max-abs reference). Evaluation runs every supervision step and
# each amplifies float32 rounding (~7x); the worst measured here is 4.6e-4 (trm_mlp, eval/final/z_H), and `--x64` shows
# the reference's own float32 result is as far from the exact value. Arrays of integers/decisions (EXACT) must match
# exactly.
TOLERANCES = {"eval": 1e-3, "train": 1e-4, "grads": 1e-4, "sign-SGD": 1e-4}
EXACT = ("halted", "current_data", "preds", "/steps", "metrics/count", "metrics/exact_accuracy")
_OUTPUT_KEYS = ("logits", "q_halt_logits", "q_continue_logits", "preds")


def model_fields_from_reference(rc: dict, recursion_mode: str = "loop"):
  """The reference's JSON config -> our model config fields (a ConfigDict, as `--config.model.*` takes)."""
  loss = rc.get("loss_type", "stablemax_cross_entropy")
  return config_lib.model_config(
    arch=rc.get("arch", "trm"),
    seq_len=rc["seq_len"],
    vocab_size=rc["vocab_size"],
    num_puzzle_identifiers=rc.get("num_puzzle_identifiers", 1),
    hidden_size=rc["hidden_size"],
    num_heads=rc["num_heads"],
    expansion=float(rc.get("expansion", 4)),
    H_cycles=rc["H_cycles"],
    L_cycles=rc["L_cycles"],
    L_layers=rc["L_layers"],
    H_layers=rc.get("H_layers", 0),
    pos_encodings=rc.get("pos_encodings", "rope"),
    mlp_t=bool(rc.get("mlp_t", False)),
    puzzle_emb_ndim=rc.get("puzzle_emb_ndim", rc["hidden_size"]),
    puzzle_emb_len=rc.get("puzzle_emb_len", 0),
    rms_norm_eps=rc.get("rms_norm_eps", 1e-5),
    rope_theta=rc.get("rope_theta", 10000.0),
    dtype=rc.get("forward_dtype", "float32"),
    halt_max_steps=rc["halt_max_steps"],
    halt_exploration_prob=rc.get("halt_exploration_prob", 0.0),
    no_ACT_continue=bool(rc.get("no_ACT_continue", True)),
    loss_type="softmax" if loss.startswith("softmax") else "stablemax",
    recursion=recursion_mode,
    attention_impl="xla",
  )


def _batch(f, name):
  return {k: jnp.asarray(f[f"{name}/{k}"], jnp.int32) for k in ("inputs", "labels", "puzzle_identifiers")}


def run_parity(f, recursion_mode: str = "loop", dtype: str | None = None) -> dict[str, np.ndarray]:
  """Computes every eval/ and train/ array of the vectors `f` (a mapping).

  `dtype` overrides the activation dtype (e.g. "float64" under `jax_enable_x64`, to see how far the reference's own
  float32 rounding is from the exact result).
  """
  rc = json.loads(str(f["config"]))
  if dtype:
    rc["forward_dtype"] = dtype
  mcfg = config_lib.frozen_model(model_fields_from_reference(rc, recursion_mode))
  model = RecursiveModel(mcfg)
  state_dict = {k[2:]: f[k] for k in f if k.startswith("w/")}
  like = jax.eval_shape(lambda: init_variables(model, mcfg, jax.random.key(0)))
  variables, table = interop.from_reference(state_dict, like, mcfg.num_puzzle_identifiers, mcfg.puzzle_emb_ndim)
  params, consts = variables["params"], variables["consts"]
  table = jnp.zeros((mcfg.num_puzzle_identifiers, 0)) if table is None else jnp.asarray(table)
  b1, b2 = _batch(f, "batch1"), _batch(f, "batch2")
  out: dict[str, np.ndarray] = {}

  # Evaluation rollout from a fresh carry, batch1 each step.
  collect = _OUTPUT_KEYS + ("loss", "halted", "metrics")
  carry, _, _, per = jax.jit(lambda p, c, t, b: steps.rollout(model, mcfg, p, c, t, b, collect=collect))(
    params, consts, table, b1
  )
  for i in range(mcfg.halt_max_steps):
    for k in collect:
      for name, a in _flat(k, jax.tree.map(lambda x, i=i: x[i], per[k])).items():
        out[f"eval/step{i + 1}/{name}"] = a
  out.update({f"eval/final/{k}": np.asarray(v, np.float32) for k, v in carry["z"].items()})

  # Training step 1 (fresh carry, batch1), then step 2 (carry continues, batch2).
  @jax.jit
  def train_call(carry, batch, table):
    carry = recursion.reset_carry(carry, batch, consts, mcfg)
    return steps.loss_and_grads(model, mcfg, params, consts, carry, table, jax.random.key(0))

  carry = recursion.initial_carry(mcfg, b1["inputs"].shape[0])
  for step, batch in ((1, b1), (2, b2)):
    loss, g, g_rows, carry, outputs, metrics = train_call(carry, batch, table)
    pre = f"train/step{step}/"
    out[pre + "loss"] = np.asarray(loss, np.float32)
    out.update({pre + k: np.asarray(outputs[k]) for k in _OUTPUT_KEYS})
    out.update({pre + k: np.asarray(carry[k]) for k in ("halted", "steps")})
    out.update({f"{pre}current_data/{k}": np.asarray(v) for k, v in carry["data"].items()})
    out.update(_flat(pre + "metrics", metrics))
    if step == 1:
      out.update({f"{pre}grad/{k}": v for k, v in interop.to_reference({"params": g, "consts": {}}).items()})
      if g_rows is not None:
        out[pre + "grad/puzzle_emb_rows"] = np.asarray(g_rows, np.float32)
        ids = carry["data"]["puzzle_identifiers"]
        table = optim.sign_sgd_rows(table, ids, g_rows, SIGNSGD_LR, SIGNSGD_WD)
        out[pre + "puzzle_emb_after_signsgd"] = np.asarray(table, np.float32)
  return out


def _flat(prefix, tree) -> dict[str, np.ndarray]:
  if isinstance(tree, dict):
    return {f"{prefix}/{k}": np.asarray(v, np.float32) for k, v in tree.items()}
  a = np.asarray(tree)
  return {prefix: a.astype(np.float32) if a.dtype.kind == "f" else a}


def compare(ref, ours: dict[str, np.ndarray]) -> dict[str, float]:
  """Relative error (max-abs err / max-abs ref) of every eval/ and train/ key."""
  errs = {}
  for k in ref:
    if not k.startswith(("eval/", "train/")):
      continue
    if k not in ours:
      raise KeyError(f"trm_jax produced no {k}")
    r, o = np.asarray(ref[k]), np.asarray(ours[k])
    if r.shape != o.shape:
      raise ValueError(f"{k}: shape {o.shape}, reference {r.shape}")
    errs[k] = rel_err(r, o)
  return errs


def group(key: str) -> str:
  """The report group of a vectors key: eval, train, grads or sign-SGD."""
  if "signsgd" in key:
    return "sign-SGD"
  if "/grad/" in key:
    return "grads"
  return key.split("/", 1)[0]


def report(errs: dict[str, float]) -> tuple[str, bool]:
  """-> (table, all passed): per group the worst relative error, its key, tolerance and verdict."""
  rows, ok_all = [], True
  for name, tol in TOLERANCES.items():
    keys = [k for k in errs if group(k) == name]
    if not keys:
      continue
    worst = max(keys, key=errs.get)
    bad_exact = [k for k in keys if any(e in k for e in EXACT) and errs[k] > 0]
    ok = errs[worst] <= tol and not bad_exact
    ok_all &= ok
    note = f"not exact: {bad_exact[0]}" if bad_exact else worst
    rows.append((name, len(keys), f"{errs[worst]:.2e}", f"{tol:.0e}", "PASS" if ok else "FAIL", note))
  head = ("group", "arrays", "worst rel err", "tolerance", "result", "worst array")
  widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
  line = lambda r: "  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)).rstrip()
  return "\n".join([line(head)] + [line(r) for r in rows]), ok_all


def _error(line: str) -> int:
  print(f"error: {line}", file=sys.stderr)
  return 2


def main(argv=None) -> int:
  import argparse

  ap = argparse.ArgumentParser(prog="python -m trm_jax.parity", description=__doc__.split("\n\n")[0])
  ap.add_argument("--vectors", required=True, help="reference vectors (.npz)")
  ap.add_argument("--out", required=True, help="where to write trm_jax's arrays (.npz)")
  ap.add_argument("--recursion", default="loop", choices=("loop", "scan"))
  ap.add_argument(
    "--report", action="store_true", help="compare with the vectors: a PASS/FAIL table per group; exit status 1 on FAIL"
  )
  ap.add_argument(
    "--x64", action="store_true", help="compute in float64 (shows the reference's own float32 rounding error)"
  )
  a = ap.parse_args(argv)
  out_dir = os.path.dirname(os.path.abspath(a.out))
  if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
    return _error(f"--out={a.out}: directory {out_dir} does not exist or is not writable")
  if os.path.isdir(a.out):
    return _error(f"--out={a.out}: is a directory")
  if a.x64:
    jax.config.update("jax_enable_x64", True)
  try:
    f = dict(np.load(a.vectors))
  except (OSError, ValueError) as e:
    return _error(f"{a.vectors}: cannot read vectors ({e})")
  try:
    with jax.default_matmul_precision("highest"):  # this call only (tests call main in-process)
      out = run_parity(f, a.recursion, "float64" if a.x64 else None)
  except (KeyError, ValueError) as e:
    return _error(f"{a.vectors}: {e}")
  tmp = a.out + ".tmp.npz"
  np.savez(tmp, **out)
  os.replace(tmp, a.out)
  if a.report:
    table, ok = report(compare(f, out))
    print(table)
    print(f"{'PASS' if ok else 'FAIL'}: {a.vectors} ({a.recursion}) vs trm_jax; wrote {a.out}", flush=True)
    return 0 if ok else 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
