"""When a run evaluates and ends: the reference's epoch cadence, or every N steps.

The reference (TRM and HRM `pretrain.py`) trains `epochs / eval_interval` iterations of `eval_interval` epochs
(its loader concatenates that many shuffles of the groups and drops the one partial batch at the end) and
evaluates after each; the learning-rate horizon is `total_steps = epochs * total_groups * mean_puzzle_examples /
batch`, and no step past it is trained. `train.eval_every_epochs > 0` reproduces that exactly (`input_pipeline`);
otherwise the run evaluates every `train.eval_every` steps. Both evaluate at the last step.
"""

from __future__ import annotations

import dataclasses

from trm_jax import input_pipeline


@dataclasses.dataclass(frozen=True)
class Cadence:
  lr_steps: int  # horizon of the learning-rate schedule (`train.steps`)
  end: int  # the step the run ends at
  eval_steps: tuple  # steps after which the run evaluates, sorted; ends with `end`
  epochs_per_iter: int  # sampler iteration length in epochs
  eval_every: int  # step interval (steps mode) or 0


def sampler_epochs_per_iter(t) -> int:
  """`train.epochs_per_iter`, or by default the evaluation interval in epochs (else 1)."""
  if t.epochs_per_iter > 0:
    return int(t.epochs_per_iter)
  return int(t.eval_every_epochs) if t.eval_every_epochs > 0 else 1


def check(t) -> None:
  """ValueError naming the field for contradictory cadence settings."""
  if t.eval_every_epochs > 0 and t.eval_every > 0:
    raise ValueError(
      f"config.train.eval_every={t.eval_every} and config.train.eval_every_epochs="
      f"{t.eval_every_epochs}: set only one (eval_every=0 or eval_every_epochs=-1)"
    )
  if t.eval_every_epochs > 0 and t.epochs > 0 and t.epochs % t.eval_every_epochs:
    raise ValueError(
      f"config.train.eval_every_epochs={t.eval_every_epochs}: must divide "
      f"config.train.epochs={t.epochs} (as in the reference)"
    )
  if t.eval_every_epochs > 0 and t.epochs_per_iter > 0 and t.epochs_per_iter != t.eval_every_epochs:
    raise ValueError(
      f"config.train.epochs_per_iter={t.epochs_per_iter}: with eval_every_epochs the "
      "sampler's iterations are the evaluation intervals; leave it at -1"
    )


def cadence(tcfg, train_split, seed: int) -> Cadence:
  """The run's schedule from a resolved `config.train` (steps already derived)."""
  check(tcfg)
  lr_steps = int(tcfg.steps)
  epochs_per_iter = sampler_epochs_per_iter(tcfg)
  if tcfg.eval_every_epochs <= 0:
    every = int(tcfg.eval_every) if tcfg.eval_every > 0 else 0
    evals = list(range(every, lr_steps, every)) if every else []
    return Cadence(lr_steps, lr_steps, tuple(evals) + (lr_steps,), epochs_per_iter, every)
  n_iters = tcfg.epochs // epochs_per_iter if tcfg.epochs > 0 else 1 << 62
  ends = input_pipeline.iteration_ends(
    train_split, seed, int(tcfg.global_batch_size), epochs_per_iter, n_iters, stop_at=lr_steps
  )
  end = min(lr_steps, int(ends[-1])) if len(ends) else lr_steps
  evals = sorted({min(int(e), end) for e in ends} | {end})
  return Cadence(lr_steps, end, tuple(evals), epochs_per_iter, 0)


def describe(c: Cadence) -> str:
  how = f"every {c.eval_every} steps" if c.eval_every else f"every {c.epochs_per_iter} epochs"
  shown = ", ".join(map(str, c.eval_steps[:6])) + (", ..." if len(c.eval_steps) > 6 else "")
  return (
    f"{len(c.eval_steps)} evaluations ({how}; at steps {shown}); run ends at step {c.end}; "
    f"sampler iterations of {c.epochs_per_iter} epochs"
  )
