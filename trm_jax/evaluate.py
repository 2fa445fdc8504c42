"""Evaluation: exact / token accuracy per set and per supervision step, ARC votes (`arc_votes`).

The eval step is `steps.rollout` (all supervision steps from a fresh carry); accuracies are computed on the host
from the per-step predictions, each process scoring its own rows.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import arc_votes, input_pipeline, rundir, steps
from trm_jax.losses import IGNORE_LABEL


def make_eval_step(model, mcfg, n_steps: int):
  """eval_step(params, consts, table, batch) -> per-step preds (n, B, S) and q_halt logits (n, B)."""

  def eval_step(params, consts, table, batch):
    batch = {k: batch[k] for k in ("inputs", "labels", "puzzle_identifiers")}
    _, _, _, per_step = steps.rollout(
      model, mcfg, params, consts, table, batch, n_steps, collect=("preds", "q_halt_logits")
    )
    return {"preds": per_step["preds"].astype(jnp.int32), "q_halt": per_step["q_halt_logits"]}

  return eval_step


def evaluate_all(run, state, data, workdir=None, eval_step=None) -> dict:
  """Every eval set of `data` with the EMA weights when EMA is on; ARC adds voting and a submission.

  ARC's `eval/ARC/pass@K` and `submission.json` vote over every evaluation so far when `eval.arc_aggregate_voting`
  (the reference's default; the votes are stored in `workdir`), else over this one; `eval/ARC/pass@K_this_eval`
  is always this evaluation's own. `eval_step`: `run.eval_step` compiled for eval batches (default: as is).
  """
  out, step = {}, int(jax.device_get(state.step))
  run_dir = rundir.RunDir(workdir) if workdir else None
  arc = (data.info, data.arrays) if data.task == "arc" else None
  for name, split in data.evals.items():
    m, entries = evaluate_split(run, eval_step or run.eval_step, state, split, name, arc)
    if jax.process_count() > 1:  # each process scored only its own rows of every batch
      parts = _gather_objects((m, entries))
      m = _merge_split_metrics([p[0] for p in parts], f"eval/{name}/count")
      entries = None if entries is None else [e for p in parts for e in p[1]]
    out.update(m)
    if arc is not None:
      counts = arc_test_counts(split, *arc)  # every test task: the reference's denominators
      this = arc_votes.tally(entries)
      scores, submission = arc_votes.score(this, test_counts=counts)
      out.update({f"eval/ARC/{k}_this_eval": v for k, v in scores.items()})
      if run.config.eval.arc_aggregate_voting and run_dir:
        pooled = arc_votes.pool(run_dir, name, step, this, write=jax.process_index() == 0)
        scores, submission = arc_votes.score(pooled, test_counts=counts)
      out.update({f"eval/ARC/{k}": v for k, v in scores.items()})
      if run_dir and jax.process_index() == 0:
        arc_votes.write_submission(run_dir.submission, submission)
  return out


def _gather_objects(obj) -> list:
  """Every process's picklable `obj`, in process order (a collective: all processes call it)."""
  from jax.experimental import multihost_utils

  blob = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int32))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[: blob.size] = blob
  blobs = np.asarray(multihost_utils.process_allgather(padded))
  return [pickle.loads(blobs[i, : int(n)].tobytes()) for i, n in enumerate(sizes)]


def _merge_split_metrics(parts: list, count_key: str) -> dict:
  """Per-process results of one eval split -> the whole split's (every other value is a mean per example)."""
  counts = [float(p[count_key]) for p in parts]
  total = sum(counts)
  mean = lambda k: sum(float(p[k]) * c for p, c in zip(parts, counts)) / max(total, 1.0)
  return {**{k: mean(k) for k in parts[0] if k != count_key}, count_key: total}


def solve_one(run, state, inputs, puzzle_id: int = 0, n_steps: int | None = None) -> dict:
  """Runs one example -> answer tokens, steps used, halting confidence, per-step answers."""
  rows, seq = run.mesh.size, run.mcfg.seq_len
  batch = {"inputs": np.zeros((rows, seq), np.int32), "labels": np.full((rows, seq), IGNORE_LABEL, np.int32)}
  batch["puzzle_identifiers"] = np.zeros((rows,), np.int32)
  batch["inputs"][0] = inputs
  batch["puzzle_identifiers"][0] = puzzle_id
  step_fn = run.eval_step
  if n_steps is not None and n_steps != run.eval_supervision_steps:
    step_fn = jax.jit(make_eval_step(run.model, run.mcfg, n_steps))
  out = step_fn(state.eval_params(), state.consts, state.puzzle_table, run.make_batch(batch))
  preds = np.asarray(jax.device_get(out["preds"]))[:, 0]
  q = np.asarray(jax.device_get(out["q_halt"]))[:, 0]
  k = int(np.argmax(q > 0)) if (q > 0).any() else len(q) - 1  # the first step that halts, else the last
  return {
    "answer": preds[k],
    "steps": k + 1,
    "confidence": float(1 / (1 + np.exp(-q[k]))),
    "per_step": preds,
    "q_halt": q,
  }


class SetAccumulator:
  """Host-side sums of exact and token accuracy after each supervision step."""

  def __init__(self, n_steps: int):
    self.n, self.count = n_steps, 0
    self.exact, self.token = np.zeros(n_steps), np.zeros(n_steps)
    self.halt_exact, self.halt_steps = 0.0, 0.0  # exact accuracy and steps at the first step whose q_halt > 0

  def add(self, preds: np.ndarray, q_halt: np.ndarray, labels: np.ndarray) -> None:
    """preds (n, B, S), q_halt (n, B), labels (B, S); rows without labels are padding."""
    mask = labels != IGNORE_LABEL
    valid = mask.any(-1)
    n_valid = np.maximum(mask.sum(-1), 1)
    correct = (preds == labels[None]) & mask[None]
    exact = correct.sum(-1) == mask.sum(-1)[None]  # (n, B)
    self.count += int(valid.sum())
    self.exact += (exact & valid[None]).sum(-1)
    self.token += ((correct.sum(-1) / n_valid[None]) * valid[None]).sum(-1)
    halts = q_halt > 0
    first = np.where(halts.any(0), halts.argmax(0), self.n - 1)  # (B,)
    self.halt_exact += float((exact[first, np.arange(exact.shape[1])] & valid).sum())
    self.halt_steps += float(((first + 1) * valid).sum())

  def result(self, prefix: str) -> dict:
    c = max(self.count, 1)
    out = {
      f"{prefix}/exact_accuracy": self.exact[-1] / c,
      f"{prefix}/accuracy": self.token[-1] / c,
      f"{prefix}/count": self.count,
      f"{prefix}/halted_exact_accuracy": self.halt_exact / c,
      f"{prefix}/halted_steps": self.halt_steps / c,
    }
    out.update({f"{prefix}/exact_accuracy@{k + 1}": self.exact[k] / c for k in range(self.n)})
    return {k: float(v) for k, v in out.items()}


def evaluate_split(run, eval_fn, state, split, name: str, arc=None):
  """Runs one split through `eval_fn` (the run's eval step) -> (metrics dict, ARC entries or None).
  With `config.eval.max_examples > 0` only the first batches holding that many run, and `eval/<name>/partial` = 1."""
  batch_size, max_examples = run.config.eval.batch_size, run.config.eval.max_examples
  acc = SetAccumulator(run.eval_supervision_steps)
  entries = [] if arc is not None else None
  params, seen, partial = state.eval_params(), 0, False
  batches = input_pipeline.eval_batches(split, batch_size, jax.process_index(), jax.process_count(), with_index=True)
  for local in batches:
    if 0 < max_examples <= seen:
      partial = True
      break
    index = local.pop("example_index")
    out = eval_fn(params, state.consts, state.puzzle_table, run.make_batch(local))
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
    out.append(
      dict(
        task=task,
        test_index=int(ex - split.puzzle_indices[puzzle]),
        input=arc_lib.invert(arc_lib.crop_prediction(local["inputs"][row]), d, perm),
        pred=arc_builder.invert_prediction(final_preds[row], pid, info, arrays),
        q_halt=float(final_q_halt[row]),
        label=arc_lib.invert(arc_lib.crop_prediction(labels), d, perm),
      )
    )
  return out


def arc_test_counts(split, info, arrays) -> dict:
  """{task id: number of test inputs} for every task with examples in an ARC eval split.
  The reference's denominators: pass@K is a mean over every test task of the fraction of its inputs solved."""
  tasks = arrays["puzzle_task"][np.asarray(split.puzzle_identifiers)]
  sizes = np.diff(np.asarray(split.puzzle_indices))
  return {info["tasks"][ti][1]: int(n) for ti, n in zip(tasks.tolist(), sizes.tolist()) if ti >= 0 and n > 0}
