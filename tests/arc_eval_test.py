"""evaluate.evaluate_all on a hand-made ARC split: pooled vs per-evaluation votes,
resume, the off switch, and partial evaluations with the reference denominators."""

import json
import types

import ml_collections
import numpy as np
import pytest

from trm_jax import arc_votes, evaluate, report
from trm_jax.datasets import arc, splits

IN = np.asarray([[1, 2], [3, 4]], np.uint8)
LABEL = np.asarray([[5, 6, 7]], np.uint8)
WRONG_A = np.asarray([[1]], np.uint8)
WRONG_B = np.asarray([[2, 2]], np.uint8)
COPIES = [
  (0, np.arange(10)),
  (1, np.r_[0, 2, 1, 3:10]),
  (4, np.r_[0, 9:0:-1]),
  (6, np.arange(10)),
  (3, np.r_[0, 5:10, 1:5]),
]


def _data():
  """Task t0 (5 augmented copies of one test pair) and task t1 (1 copy)."""
  copies = [(0, d, np.asarray(p, np.uint8)) for d, p in COPIES] + [(1, 0, np.arange(10, dtype=np.uint8))]
  inputs = [arc.to_canvas(arc.transform(IN, d, p)) for _, d, p in copies]
  labels = [arc.to_canvas(arc.transform(LABEL, d, p)) for _, d, p in copies]
  n = len(copies)
  split = splits.make_split(
    np.stack(inputs),
    np.stack(labels),
    np.arange(n + 1),
    [0, 5, 6],
    np.arange(1, n + 1, dtype=np.int32),
    arc.VOCAB_SIZE,
    n + 1,
  )
  arrays = {
    "puzzle_task": np.asarray([-1] + [t for t, _, _ in copies], np.int32),
    "puzzle_dihedral": np.asarray([0] + [d for _, d, _ in copies], np.uint8),
    "puzzle_colours": np.stack([np.arange(10, dtype=np.uint8)] + [p for _, _, p in copies]),
  }
  info = {"task": "arc", "tasks": [["evaluation", "t0", "eval"], ["evaluation", "t1", "eval"]]}
  return types.SimpleNamespace(evals={"test": split}, task="arc", info=info, arrays=arrays), copies


class FakeModel:
  """eval_step answering, per puzzle id, the grid `plan[pid]` (original frame) drawn in the copy's frame."""

  def __init__(self, copies):
    self.copies, self.plan = copies, {}

  def __call__(self, params, consts, table, batch):
    preds = np.zeros(batch["inputs"].shape, np.int32)
    for row, pid in enumerate(batch["puzzle_identifiers"]):
      if pid > 0:
        _, d, p = self.copies[pid - 1]
        preds[row] = arc.to_canvas(arc.transform(self.plan[int(pid)], d, p))
    return {"preds": preds[None], "q_halt": np.zeros((1, len(preds)), np.float32)}


def _run(model, aggregate=True, batch=8, max_examples=-1):
  cfg = ml_collections.ConfigDict(
    {"eval": {"batch_size": batch, "max_examples": max_examples, "arc_aggregate_voting": aggregate}}
  )
  return types.SimpleNamespace(config=cfg, eval_step=model, eval_supervision_steps=1, make_batch=lambda b: b)


def _state(step):
  return types.SimpleNamespace(eval_params=lambda: None, consts=None, puzzle_table=None, step=np.int32(step))


# t0: evaluation 1 votes WRONG_A x3, LABEL x2; evaluation 2 votes WRONG_B x3, LABEL x2.
# Each alone ranks a wrong grid first; pooled, LABEL has 4 votes and comes first.
PLAN1 = {1: WRONG_A, 2: WRONG_A, 3: WRONG_A, 4: LABEL, 5: LABEL, 6: LABEL}
PLAN2 = {1: WRONG_B, 2: WRONG_B, 3: WRONG_B, 4: LABEL, 5: LABEL, 6: LABEL}


def _two_evals(workdir, aggregate=True, resume=False):
  data, copies = _data()
  model = FakeModel(copies)
  model.plan = PLAN1
  first = evaluate.evaluate_all(_run(model, aggregate), _state(100), data, str(workdir))
  if resume:  # a new process resuming from the step-100 checkpoint
    arc_votes.forget_after(str(workdir), 100)
    model = FakeModel(copies)
  model.plan = PLAN2
  second = evaluate.evaluate_all(_run(model, aggregate), _state(200), data, str(workdir))
  return first, second, json.loads((workdir / "submission.json").read_text())


def test_pooled_and_this_eval_scores(tmp_path):
  first, second, sub = _two_evals(tmp_path)
  # t1 is solved every time; t0 only by the pooled vote at pass@1.
  assert first["eval/ARC/pass@1"] == first["eval/ARC/pass@1_this_eval"] == 0.5
  assert second["eval/ARC/pass@1_this_eval"] == 0.5
  assert second["eval/ARC/pass@1"] == 1.0
  assert second["eval/ARC/pass@2"] == second["eval/ARC/pass@2_this_eval"] == 1.0
  assert sub["t0"][0]["attempt_1"] == LABEL.tolist()
  assert sub["t0"][0]["attempt_2"] == WRONG_A.tolist()  # 3 votes, seen before WRONG_B
  assert arc_votes.stored_steps(tmp_path, "test") == [100, 200]


def test_resume_between_evaluations_gives_the_same_result(tmp_path):
  straight = _two_evals(tmp_path / "a")
  resumed = _two_evals(tmp_path / "b", resume=True)
  assert straight == resumed


def test_off_switch_votes_per_evaluation(tmp_path):
  _, second, sub = _two_evals(tmp_path, aggregate=False)
  assert second["eval/ARC/pass@1"] == second["eval/ARC/pass@1_this_eval"] == 0.5
  assert sub["t0"][0]["attempt_1"] == WRONG_B.tolist()
  assert not (tmp_path / "arc_votes").exists()


def test_partial_evaluation_divides_by_every_test_task(tmp_path):
  data, copies = _data()
  model = FakeModel(copies)
  model.plan = {pid: LABEL for pid in range(1, 7)}
  full = evaluate.evaluate_all(_run(model, batch=5), _state(1), data, str(tmp_path / "full"))
  part = evaluate.evaluate_all(_run(model, batch=5, max_examples=5), _state(1), data, str(tmp_path / "part"))
  assert full["eval/ARC/pass@1"] == 1.0 and "eval/test/partial" not in full
  # Only t0's five copies ran: t1 counts as unsolved, as in the reference.
  assert part["eval/test/count"] == 5 and part["eval/test/partial"] == 1.0
  assert part["eval/ARC/pass@1"] == pytest.approx(0.5)
  assert "PARTIAL" in report.summary(1, part)
  # eval.max_examples <= 0 is every example (the config's default is -1), never none.
  none = evaluate.evaluate_all(_run(model, batch=5, max_examples=0), _state(1), data, str(tmp_path / "zero"))
  assert none["eval/ARC/pass@1"] == 1.0 and "eval/test/partial" not in none
