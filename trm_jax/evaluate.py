"""Evaluation: exact / token accuracy per set and per supervision step, ARC votes.

The eval step is `steps.rollout` (every row runs all supervision steps from a
fresh carry); accuracies are computed on the host from the per-step
predictions. ARC voting (REFERENCE.md section 8) lives in `arc_votes`; this
module turns evaluated rows into its entries.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import input_pipeline, steps
from trm_jax.arc_votes import PASS_KS, vote as arc_vote, write_submission  # noqa: F401  (API)
from trm_jax.losses import IGNORE_LABEL


def make_eval_step(model, mcfg, n_steps: int):
  """eval_step(params, consts, table, batch) -> per-step preds (n, B, S) and q_halt logits (n, B)."""

  def eval_step(params, consts, table, batch):
    batch = {k: batch[k] for k in ("inputs", "labels", "puzzle_identifiers")}
    _, _, _, per_step = steps.rollout(model, mcfg, params, consts, table, batch, n_steps,
                                      collect=("preds", "q_halt_logits"))
    return {"preds": per_step["preds"].astype(jnp.int32), "q_halt": per_step["q_halt_logits"]}

  return eval_step


class SetAccumulator:
  """Host-side sums of exact and token accuracy after each supervision step."""

  def __init__(self, n_steps: int):
    self.n = n_steps
    self.count = 0
    self.exact = np.zeros(n_steps)
    self.token = np.zeros(n_steps)
    self.halt_exact = 0.0     # exact accuracy at the first step whose q_halt > 0
    self.halt_steps = 0.0

  def add(self, preds: np.ndarray, q_halt: np.ndarray, labels: np.ndarray) -> None:
    """preds (n, B, S), q_halt (n, B), labels (B, S); rows without labels are padding."""
    mask = labels != IGNORE_LABEL
    valid = mask.any(-1)
    n_valid = np.maximum(mask.sum(-1), 1)
    correct = (preds == labels[None]) & mask[None]
    exact = correct.sum(-1) == mask.sum(-1)[None]                      # (n, B)
    self.count += int(valid.sum())
    self.exact += (exact & valid[None]).sum(-1)
    self.token += ((correct.sum(-1) / n_valid[None]) * valid[None]).sum(-1)
    halts = q_halt > 0
    first = np.where(halts.any(0), halts.argmax(0), self.n - 1)       # (B,)
    self.halt_exact += float((exact[first, np.arange(exact.shape[1])] & valid).sum())
    self.halt_steps += float(((first + 1) * valid).sum())

  def result(self, prefix: str) -> dict:
    c = max(self.count, 1)
    out = {f"{prefix}/exact_accuracy": self.exact[-1] / c, f"{prefix}/accuracy": self.token[-1] / c,
           f"{prefix}/count": self.count, f"{prefix}/halted_exact_accuracy": self.halt_exact / c,
           f"{prefix}/halted_steps": self.halt_steps / c}
    for k in range(self.n):
      out[f"{prefix}/exact_accuracy@{k + 1}"] = self.exact[k] / c
    return {k: float(v) for k, v in out.items()}


def evaluate_split(eval_fn, params, consts, table, split, batch_size: int, n_steps: int, make_batch,
                   max_examples: int = -1, name: str = "test", arc=None):
  """Runs one split -> (metrics dict, ARC entries or None).

  With `max_examples >= 0` only the first batches holding that many examples
  run; the metrics then include `eval/<name>/partial` = 1.
  """
  acc = SetAccumulator(n_steps)
  entries = [] if arc is not None else None
  seen, partial = 0, False
  for local in input_pipeline.eval_batches(split, batch_size, jax.process_index(), jax.process_count(),
                                           with_index=True):
    if 0 <= max_examples <= seen:
      partial = True
      break
    index = local.pop("example_index")
    out = eval_fn(params, consts, table, make_batch(local))
    preds = np.asarray(jax.device_get(_local(out["preds"])))
    q_halt = np.asarray(jax.device_get(_local(out["q_halt"])))
    acc.add(preds, q_halt, local["labels"])
    if arc is not None:
      entries += arc_entries(split, index, local, preds[-1], q_halt[-1], *arc)
    seen += batch_size
  metrics = acc.result(f"eval/{name}")
  if partial:
    metrics[f"eval/{name}/partial"] = 1.0
  return metrics, entries


def _local(x):
  """This process's rows of a batch-sharded global array (all of it on one process)."""
  if jax.process_count() == 1:
    return x
  unique = {}
  for s in x.addressable_shards:
    unique.setdefault(s.index[1].start or 0, s)
  return np.concatenate([np.asarray(unique[k].data) for k in sorted(unique)], axis=1)


# ---------------------------------------------------------------------------
# ARC voting (REFERENCE.md section 8).


def arc_entries(split, index, local, final_preds, final_q_halt, info, arrays):
  """One vote per evaluated example: (task, test index, input, pred, q_halt, label), un-augmented."""
  from trm_jax.datasets import arc as arc_lib
  from trm_jax.datasets import arc_builder
  out = []
  for row, ex in enumerate(index):
    if ex < 0:
      continue
    pid = int(local["puzzle_identifiers"][row])
    _, task, d, perm = arc_builder.original_of(pid, info, arrays)
    puzzle = split.example_puzzle[ex]
    labels = np.where(local["labels"][row] < 0, 0, local["labels"][row])
    out.append(dict(task=task, test_index=int(ex - split.puzzle_indices[puzzle]),
                    input=arc_lib.invert(arc_lib.crop_prediction(local["inputs"][row]), d, perm),
                    pred=arc_builder.invert_prediction(final_preds[row], pid, info, arrays),
                    q_halt=float(final_q_halt[row]),
                    label=arc_lib.invert(arc_lib.crop_prediction(labels), d, perm)))
  return out


def arc_test_counts(split, info, arrays) -> dict:
  """{task id: number of test inputs} for every task with examples in an ARC eval split.

  These are the reference's denominators: pass@K is a mean over every test
  task of the fraction of its test inputs solved, evaluated or not.
  """
  tasks = arrays["puzzle_task"][np.asarray(split.puzzle_identifiers)]
  sizes = np.diff(np.asarray(split.puzzle_indices))
  out = {}
  for ti, n in zip(tasks.tolist(), sizes.tolist()):
    if ti >= 0 and n > 0:
      out[info["tasks"][ti][1]] = int(n)
  return out
