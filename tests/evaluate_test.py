"""Evaluators: per-step accuracies and ARC voting on hand-made predictions."""
import json

import numpy as np
import pytest

from trm_jax import evaluate


def g(*rows):
  return np.asarray(rows, np.uint8)


A, B, C, D = g([1, 2]), g([3]), g([4, 4], [4, 4]), g([5, 6])
IN1, IN2, IN3 = g([0]), g([1]), g([2, 2])


def entry(task, idx, inp, pred, q, label):
  return dict(task=task, test_index=idx, input=inp, pred=pred, q_halt=q, label=label)


def test_arc_vote_hand_computed():
  entries = [
      # task t1, test 0 (label A): B has 2 votes, A 1 vote -> A ranked 2nd.
      entry("t1", 0, IN1, B, 0.0, A), entry("t1", 0, IN1, B, 0.0, A), entry("t1", 0, IN1, A, 5.0, A),
      # task t1, test 1 (label C): C and D with one vote each; D has higher q -> C is 2nd.
      entry("t1", 1, IN2, C, -1.0, C), entry("t1", 1, IN2, D, 3.0, C),
      # task t2, one test (label A): A with 1 vote, B/C/D tie on votes with lower q,
      # a third candidate only: top-5 includes it.
      entry("t2", 0, IN3, D, 4.0, A), entry("t2", 0, IN3, D, 4.0, A),
      entry("t2", 0, IN3, C, 2.0, A), entry("t2", 0, IN3, C, 2.0, A),
      entry("t2", 0, IN3, A, 1.0, A),
  ]
  scores, sub = evaluate.arc_vote(entries)
  # pass@1: t1 -> 0/2, t2 -> 0 => 0.  pass@2: t1 -> 2/2, t2 -> 0 => 0.5.
  # pass@5 and up: everything => 1.
  assert scores["pass@1"] == 0.0
  assert scores["pass@2"] == 0.5
  for k in (5, 10, 100, 1000):
    assert scores[f"pass@{k}"] == 1.0
  assert set(sub) == {"t1", "t2"}
  assert sub["t1"] == [{"attempt_1": B.tolist(), "attempt_2": A.tolist()},
                       {"attempt_1": D.tolist(), "attempt_2": C.tolist()}]
  # Equal votes (2 each): D's mean sigmoid(4) beats C's sigmoid(2).
  assert sub["t2"] == [{"attempt_1": D.tolist(), "attempt_2": C.tolist()}]
  json.dumps(sub)  # Kaggle format is plain JSON


def test_arc_vote_groups_by_input_and_single_candidate():
  # Two augmented copies of one test input agree; a single candidate fills both attempts.
  entries = [entry("t", 0, IN1, A, 0.5, A), entry("t", 0, IN1.copy(), A, -0.5, A)]
  scores, sub = evaluate.arc_vote(entries)
  assert scores["pass@1"] == 1.0
  assert sub == {"t": [{"attempt_1": A.tolist(), "attempt_2": A.tolist()}]}


def test_arc_vote_mean_over_tasks_of_fraction_of_tests():
  entries = [entry("a", 0, IN1, A, 0, A), entry("a", 1, IN2, B, 0, A), entry("a", 2, IN3, A, 0, A),
             entry("b", 0, IN1, C, 0, D)]
  scores, _ = evaluate.arc_vote(entries, ks=(1,))
  assert scores["pass@1"] == pytest.approx((2 / 3 + 0) / 2)


def test_set_accumulator_per_step_and_padding():
  acc = evaluate.SetAccumulator(2)
  labels = np.array([[2, 3, -100], [4, 5, 6], [-100, -100, -100]])   # last row is padding
  preds = np.array([[[2, 0, 9], [4, 5, 6], [0, 0, 0]],                # step 1: row0 half, row1 exact
                    [[2, 3, 9], [4, 5, 0], [0, 0, 0]]])               # step 2: row0 exact, row1 2/3
  q = np.array([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0]])
  acc.add(preds, q, labels)
  r = acc.result("eval/x")
  assert r["eval/x/count"] == 2
  assert r["eval/x/exact_accuracy@1"] == 0.5
  assert r["eval/x/exact_accuracy@2"] == 0.5
  assert r["eval/x/exact_accuracy"] == 0.5
  assert r["eval/x/accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
  # Halting at the first q > 0: row0 at step 1 (not exact), row1 at step 2 (not exact).
  assert r["eval/x/halted_exact_accuracy"] == 0.0
  assert r["eval/x/halted_steps"] == 1.5
