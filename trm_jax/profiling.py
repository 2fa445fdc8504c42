"""Measuring helpers shared by `trm_jax.bench`, benchmarks/ and notebooks/scan_vs_loop.ipynb.

They run a run's own jitted steps (`runs.Run.train_step`, `runs.Run.eval_step`) on synthetic batches of a config's
shapes: set-up (`make_setup`), compiling (`compile_train`, `compile_eval`), timing (`time_calls`), memory
(`device_peak_bytes`, `Compiled.memory`), the analytic FLOP count documented in `trm_jax.bench` (`model_flops`) and loop
vs scan outputs and gradients (`mode_difference`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import runpy
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trm_jax import config_lib, recursion, runs, sharding, steps
from trm_jax.model import RecursiveModel, puzzle_emb_len, swiglu_inter
from trm_jax.train_state import count_params, init_variables


def synthetic_batch(mcfg, batch_size: int, seed: int = 0) -> dict:
  """Random tokens and labels in [1, vocab), random puzzle ids (numpy)."""
  r = np.random.default_rng(seed)
  shape = (batch_size, mcfg.seq_len)
  return {
    "inputs": r.integers(1, mcfg.vocab_size, shape, dtype=np.int32),
    "labels": r.integers(1, mcfg.vocab_size, shape, dtype=np.int32),
    "puzzle_identifiers": r.integers(0, max(mcfg.num_puzzle_identifiers, 1), (batch_size,), dtype=np.int32),
  }


@dataclasses.dataclass
class Setup:
  """A `runs.Run` on a one-process mesh with a state, carry and synthetic batch to call its steps on."""

  run: runs.Run
  state: Any
  carry: Any
  batch: dict
  rng: Any

  mcfg = property(lambda self: self.run.mcfg)
  batch_size = property(lambda self: int(self.run.config.train.global_batch_size))
  n_params = property(lambda self: count_params(self.state.params))


def load_config(path: str, arg: str | None = None, **overrides):
  """`get_config(arg)` of an experiment file with dotted-field overrides, e.g. **{"model.hidden_size": 64}."""
  config = runpy.run_path(path)["get_config"](arg)
  config.update_from_flattened_dict(overrides)
  return config


def model_config(config, **fields):
  """The frozen model config of `config.model`, with `fields` changed."""
  return config_lib.frozen_model(ml_collections.ConfigDict({**config.model.to_dict(), **fields}))


def make_setup(config, batch_size: int | None = None, seed: int = 0, abstract: bool = False, **model_fields) -> Setup:
  """The run's own steps (`runs.Run`) with a fresh state, carry and a synthetic batch (train batch size by default).

  With `abstract`, state, carry and batch are shape/dtype/sharding structs (enough to compile; nothing allocated).
  """
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(model_fields)
  config.train.global_batch_size = int(batch_size or config.train.global_batch_size)
  config.train.steps = config.train.steps if config.train.steps > 0 else 100_000
  config.seed = seed
  mesh = sharding.make_mesh(1)
  sharding.check_batch(config.train.global_batch_size, mesh)
  run = runs.Run(config, mesh)
  batch = synthetic_batch(run.mcfg, config.train.global_batch_size, seed)
  if abstract:
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=run.batch_sh) for k, v in batch.items()}
    return Setup(run, run.abstract_state, run.abstract_carry, batch, run.step_rng)
  return Setup(run, run.new_state(), run.new_carry(), run.make_batch(batch), run.step_rng)


@dataclasses.dataclass
class Compiled:
  compiled: Any  # jax.stages.Compiled
  args: tuple  # arguments of one call (the train step donates state and carry)
  compile_s: float  # trace + lower + compile wall time

  def memory(self) -> dict:
    """Bytes from XLA's memory analysis of the program ({} if unavailable)."""
    try:
      m = self.compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
      m = None
    if m is None:
      return {}
    names = ("argument", "output", "alias", "temp", "generated_code")
    out = {n: int(getattr(m, f"{n}_size_in_bytes", 0) or 0) for n in names}
    # What the program needs at its peak: live arguments, outputs not aliased to them, temporaries.
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out

  def program_size(self) -> dict:
    """Size of the optimised HLO: text length, instruction count, and generated code bytes."""
    text = self.compiled.as_text() or ""
    n_instr = sum(" = " in line and not line.lstrip().startswith(("//", "HloModule")) for line in text.splitlines())
    return {"hlo_chars": len(text), "hlo_instructions": n_instr, "code_bytes": self.memory().get("generated_code", 0)}


def _compile(jitted, args) -> Compiled:
  t0 = time.perf_counter()
  return Compiled(jitted.lower(*args).compile(), args, time.perf_counter() - t0)


def compile_train(s: Setup) -> Compiled:
  """The run's train step (shardings, donation of state and carry), lowered and compiled."""
  return _compile(s.run.train_step, (s.state, s.carry, s.batch, s.rng))


def compile_eval(s: Setup) -> Compiled:
  """The run's eval step: every supervision step (`config.eval.supervision_steps`) on a fixed batch."""
  return _compile(s.run.eval_step, (s.state.eval_params(), s.state.consts, s.state.puzzle_table, s.batch))


def time_calls(c: Compiled, n: int, warmup: int = 1, donate: bool = True) -> list[float]:
  """Seconds per call for `n` calls after `warmup` calls.

  With `donate`, the first two outputs (the train step's state and carry) are fed back, as a training loop does.
  """
  times = []
  for _ in range(warmup + n):
    t0 = time.perf_counter()
    out = jax.block_until_ready(c.compiled(*c.args))
    times.append(time.perf_counter() - t0)
    if donate:
      c.args = (out[0], out[1]) + tuple(c.args[2:])
  return times[warmup:]


def device_peak_bytes() -> int | None:
  """Allocator peak over all local devices, where the backend reports it."""
  peaks = []
  for d in jax.local_devices():
    with contextlib.suppress(Exception):  # backends without allocator statistics
      peaks.append(int(d.memory_stats()["peak_bytes_in_use"]))
  return max(peaks, default=None)


def summary(times: list[float]) -> dict:
  return {"step_ms_median": 1e3 * statistics.median(times), "step_ms_min": 1e3 * min(times)}


def application_flops(mcfg, batch_size: int, net: str = "L") -> dict:
  """Forward FLOPs {"matmul": ..., "attention": ...} of one application of the L (or H) network on a batch."""
  c = mcfg
  d = c.hidden_size
  t = c.seq_len + puzzle_emb_len(c)
  layers = c.H_layers if (net == "H" and c.arch == "hrm") else c.L_layers
  inter = swiglu_inter(d, c.expansion)
  mlp = 2 * batch_size * t * (d * 2 * inter + inter * d)
  if c.mlp_t:
    inter_t = swiglu_inter(t, c.expansion)
    mix = 2 * batch_size * d * (t * 2 * inter_t + inter_t * t)
    att = 0
  else:
    mix = 2 * batch_size * t * (d * 3 * d + d * d)
    att = 2 * 2 * batch_size * t * t * d  # QK^T and AV
  return {"matmul": layers * (mlp + mix), "attention": layers * att}


def _apps(mcfg) -> tuple[dict, dict]:
  """(# no-grad applications, # applications with gradient) per supervision step, by net."""
  c = mcfg
  total_L, total_H = c.H_cycles * c.L_cycles, c.H_cycles
  if c.variant == "single_latent":
    # Each cycle: L_cycles + 1 applications, all of the L network.
    total_L, total_H = c.H_cycles * (c.L_cycles + 1), 0
    grad = {"L": (c.L_cycles + 1), "H": 0}
  elif c.arch == "hrm" or c.variant == "one_step_grad":
    grad = {"L": 1, "H": 1}
  else:
    grad = {"L": c.L_cycles, "H": 1}
  nograd = {"L": total_L - grad["L"], "H": total_H - grad["H"]}
  if c.arch != "hrm" and c.variant != "separate_nets":
    # TRM's H update uses the L network.
    nograd = {"L": nograd["L"] + nograd["H"], "H": 0}
    grad = {"L": grad["L"] + grad["H"], "H": 0}
  return nograd, grad


def model_flops(mcfg, batch_size: int, mode: str = "train", n_steps: int | None = None) -> dict:
  """Analytic FLOPs of one train step (one supervision step) or one eval rollout."""
  c = mcfg
  d = c.hidden_size
  t = c.seq_len + puzzle_emb_len(c)
  per_app = {n: sum(application_flops(c, batch_size, n).values()) for n in ("L", "H")}
  heads = 2 * batch_size * t * d * c.vocab_size + 2 * batch_size * d * 2
  nograd, grad = _apps(c)
  forward_all = sum((nograd[n] + grad[n]) * per_app[n] for n in per_app) + heads
  if mode == "eval":
    return {"total": (n_steps or c.halt_max_steps) * forward_all, "per_supervision_step": forward_all, "heads": heads}
  if mode != "train":
    raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
  total = sum(nograd[n] * per_app[n] for n in per_app) + 3 * (sum(grad[n] * per_app[n] for n in per_app) + heads)
  if recursion.uses_q_continue(c) and c.halt_max_steps > 1:
    total += forward_all  # the no-grad target-Q forward
  return {"total": total, "no_grad_apps": nograd, "grad_apps": grad, "heads": heads}


def mode_difference(config, batch_size: int = 2, seed: int = 0, **model_fields) -> dict:
  """{name: `rel_err`} of loop vs scan on one training call (float32): the loss, the logits, the new carry's
  latents and every gradient (parameters and puzzle rows)."""
  fields = {"dtype": "float32", **model_fields}
  results = {}
  for mode in ("loop", "scan"):
    mcfg = model_config(config, recursion=mode, **fields)
    model = RecursiveModel(mcfg)
    variables = init_variables(model, mcfg, jax.random.key(seed))
    # Non-zero puzzle rows, so that their gradients flow through something real.
    table = jax.random.normal(jax.random.key(seed + 7), (mcfg.num_puzzle_identifiers, mcfg.puzzle_emb_ndim))
    batch = {k: jnp.asarray(v) for k, v in synthetic_batch(mcfg, batch_size, seed).items()}
    call = jax.jit(functools.partial(_one_call, model, mcfg, seed))
    results[mode] = call(variables["params"], variables["consts"], table, batch)
  flat_a = jax.tree_util.tree_flatten_with_path(results["loop"])[0]
  return {jax.tree_util.keystr(p): rel_err(a, b) for (p, a), b in zip(flat_a, jax.tree.leaves(results["scan"]))}


def rel_err(a, b) -> float:
  """max|a - b| / max|a| (the absolute error where a is all zero)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale, err = np.abs(a).max(initial=0.0), np.abs(a - b).max(initial=0.0)
  return float(err / scale if scale > 0 else err)


def _one_call(model, mcfg, seed, params, consts, table, batch):
  carry = recursion.reset_carry(recursion.initial_carry(mcfg, batch["inputs"].shape[0]), batch, consts, mcfg)
  out = steps.loss_and_grads(model, mcfg, params, consts, carry, table, jax.random.key(seed))
  logits, z = out.outputs["logits"], out.carry["z"]
  return {"loss": out.loss, "logits": logits, "z": z, "grad": out.param_grads, "grad_rows": out.row_grads}


def compile_stats(config, batch_size: int | None = None, **model_fields) -> dict:
  """Compile the train step once: compile time, program size and memory analysis (no run)."""
  s = make_setup(config, batch_size, abstract=True, **model_fields)
  c = compile_train(s)
  mem = c.memory()
  size = c.program_size()
  return {
    "recursion": s.mcfg.recursion,
    "remat": s.mcfg.remat,
    "H_cycles": s.mcfg.H_cycles,
    "L_cycles": s.mcfg.L_cycles,
    "compile_s": c.compile_s,
    "hlo_instructions": size["hlo_instructions"],
    "hlo_chars": size["hlo_chars"],
    "temp_mb": mem.get("temp", 0) / 2**20,
    "total_mb": mem.get("total", 0) / 2**20,
  }


def measure_train(config, n_steps: int = 5, warmup: int = 1, batch_size: int | None = None, **model_fields) -> dict:
  """Compile and time the train step: compile_s, step ms (median, min), peak memory."""
  s = make_setup(config, batch_size, **model_fields)
  c = compile_train(s)
  times = time_calls(c, n_steps, warmup)
  mem = c.memory()
  device_peak = device_peak_bytes()
  # program_mb: the compiled program's own need (comparable across runs in one process); device_peak_mb: the allocator's
  # peak so far in this process (GPU/TPU only).
  return {
    "recursion": s.mcfg.recursion,
    "remat": s.mcfg.remat,
    "compile_s": c.compile_s,
    "program_mb": mem.get("total", 0) / 2**20,
    "temp_mb": mem.get("temp", 0) / 2**20,
    "device_peak_mb": None if device_peak is None else device_peak / 2**20,
    **summary(times),
  }
