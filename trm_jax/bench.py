r"""Benchmark the real jitted train step (or eval rollout) on synthetic batches.

    python -m trm_jax.bench --config=experiments/sudoku_mlp.py --steps=10
    python -m trm_jax.bench --config=experiments/sudoku_mlp.py \
        --config.train.global_batch_size=32 --config.model.recursion=scan --steps=5
    python -m trm_jax.bench --config=experiments/sudoku_mlp.py --eval --steps=3

Compiles the run's train step (`runs.Run.train_step`: its shardings and donation of state and carry, as training does)
or, with `--eval`, its eval step over all supervision steps (`runs.Run.eval_step`; batch `eval.batch_size`) for a fresh
state and a synthetic batch of the config's shapes (random tokens, labels and puzzle ids) on a mesh over all local
devices, runs `--warmup` untimed calls, then times `--steps` calls, waiting for each. Prints one JSON line: config,
label, mode ("train"|"eval"), device, n_devices, batch, the model settings in force ("auto" resolved for this backend;
mixer_impl "" without mlp_t), params, compile_s (trace + lower + compile), step_ms_median, step_ms_min, examples_per_s
(batch / median), gflop_per_step, tflops (analytic FLOPs / median step time), peak_mem_gb and peak_mem_source
("memory_stats": the device allocator's peak, GPU/TPU; "memory_analysis": arguments + outputs - aliased + temporaries
of the compiled program, CPU), temp_mem_gb (the compiled program's temporaries).

Analytic FLOP count (`profiling.model_flops`): model FLOPs, a multiply-add counted as 2, recomputation by remat not
counted. With B the batch and T = puzzle prefix + sequence length, one application of a reasoning network costs, per
layer,

  * 2 * B*T * (matmul params of the layer) for the token-wise matmuls: SwiGLU gate_up + down (3 * D * inter), and for
    attention qkv + o (4 * D^2);
  * attention's QK^T and AV: 2 * 2 * B * T^2 * D;
  * the MLP-mixer (`mlp_t`) layer: 2 * B*D * (3 * T * inter_T): its SwiGLU runs over the sequence axis per channel.

Heads: lm_head 2 * B*T * D * V (it runs on all T positions) + q_head 2 * B * D * 2. A train step is one supervision
step: the applications without gradient (TRM: (H_cycles - 1) * (L_cycles + 1); HRM and the 1-step gradient: all but the
last L and the last H application) count once (forward only); the applications with gradient (TRM: the last L_cycles +
1) and the heads count 3 times (forward, and a backward that costs twice the forward: gradients of inputs and of
weights); HRM (or TRM with no_ACT_continue=False) adds one more no-grad forward of everything for the target Q. An eval
step is `supervision_steps` forward passes of everything. Embedding gathers, norms, RoPE, losses and the optimiser
update are not counted (< 1% here).
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from trm_jax import cli, config_lib, profiling

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (experiments/<x>.py[:arg]).", lock_config=True
)
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls after compiling.")
_EVAL = flags.DEFINE_bool("eval", False, "Time the eval step (rollout over all supervision steps) instead.")
_BATCH = flags.DEFINE_integer("batch", 0, "Batch size; 0: train.global_batch_size (eval.batch_size with --eval).")
_LABEL = flags.DEFINE_string("label", "", "Free text copied into the JSON line.")


def run(config, n_steps=10, warmup=2, evaluate=False, batch=0, config_name="", label="") -> dict:
  """Benchmarks one config; returns the JSON-able result dict."""
  config_lib.validate(config)
  for flag, value, lo in (("batch", batch, 0), ("steps", n_steps, 1), ("warmup", warmup, 0)):
    if value < lo:
      raise ValueError(f"--{flag}={value}: must be >= {lo}")
  batch = batch or int(config.eval.batch_size if evaluate else config.train.global_batch_size)
  s = profiling.make_setup(config, batch)
  mcfg = s.mcfg
  if evaluate:
    sup = config.eval.supervision_steps  # <= 0: all of them
    c = profiling.compile_eval(s)
    flops = profiling.model_flops(mcfg, batch, "eval", sup if sup > 0 else None)["total"]
  else:
    c = profiling.compile_train(s)
    flops = profiling.model_flops(mcfg, batch, "train")["total"]
  profiling.time_calls(c, 0, warmup, donate=not evaluate)
  cpu0 = time.process_time()
  t = profiling.summary(profiling.time_calls(c, n_steps, 0, donate=not evaluate))
  cpu_s = (time.process_time() - cpu0) / n_steps
  seconds = t["step_ms_median"] / 1e3
  peak = profiling.device_peak_bytes()  # the device allocator's, else the compiled program's need (CPU)
  source = "memory_analysis" if peak is None else "memory_stats"
  peak = c.memory().get("total", 0) if peak is None else peak
  dev = jax.devices()[0]
  return {
    "config": config_name,
    "label": label,
    "mode": "eval" if evaluate else "train",
    "device": getattr(dev, "device_kind", dev.platform),
    "n_devices": jax.device_count(),
    "batch": batch,
    "recursion": mcfg.recursion,
    "remat": mcfg.remat,
    "attention_impl": mcfg.attention_impl,
    "mlp_impl": mcfg.mlp_impl,
    "qkv_impl": mcfg.qkv_impl,
    "mixer_impl": mcfg.mixer_impl if mcfg.mlp_t else "",
    "scan_unroll": int(mcfg.scan_unroll),
    "dtype": mcfg.dtype,
    "H_cycles": mcfg.H_cycles,
    "L_cycles": mcfg.L_cycles,
    "seq": mcfg.seq_len + profiling.puzzle_emb_len(mcfg),
    "params": s.n_params,
    "compile_s": round(c.compile_s, 3),
    "step_ms_median": round(t["step_ms_median"], 3),
    "step_ms_min": round(t["step_ms_min"], 3),
    "examples_per_s": round(batch / seconds, 2),
    "gflop_per_step": round(flops / 1e9, 3),
    "tflops": round(flops / seconds / 1e12, 4),
    "peak_mem_gb": round(peak / 2**30, 4),
    "peak_mem_source": source,
    "temp_mem_gb": round(c.memory().get("temp", 0) / 2**30, 4),
    "steps_timed": n_steps,
    "cpu_s_per_step": round(cpu_s, 3),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config=experiments/<x>.py is required")
  name = config_flags.get_config_filename(flags.FLAGS["config"])
  with cli.user_errors():
    result = run(
      _CONFIG.value, _STEPS.value, _WARMUP.value, _EVAL.value, _BATCH.value, config_name=name, label=_LABEL.value
    )
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
