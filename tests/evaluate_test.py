"""Evaluators: per-step accuracies and ARC voting on hand-made predictions."""

import json

import numpy as np
import pytest

from trm_jax import arc_votes, evaluate


def g(*rows):
  return np.asarray(rows, np.uint8)


A, B, C, D = g([1, 2]), g([3]), g([4, 4], [4, 4]), g([5, 6])
IN1, IN2, IN3 = g([0]), g([1]), g([2, 2])


def entry(task, idx, inp, pred, q, label):
  return dict(task=task, test_index=idx, input=inp, pred=pred, q_halt=q, label=label)


def vote(entries, **kw):
  """The votes of one set of entries (one evaluation's tally, scored)."""
  return arc_votes.score(arc_votes.tally(entries), **kw)


def test_arc_vote_hand_computed():
  entries = [
    # task t1, test 0 (label A): B has 2 votes, A 1 vote -> A ranked 2nd.
    entry("t1", 0, IN1, B, 0.0, A),
    entry("t1", 0, IN1, B, 0.0, A),
    entry("t1", 0, IN1, A, 5.0, A),
    # task t1, test 1 (label C): C and D with one vote each; D has higher q -> C is 2nd.
    entry("t1", 1, IN2, C, -1.0, C),
    entry("t1", 1, IN2, D, 3.0, C),
    # task t2, one test (label A): A with 1 vote, B/C/D tie on votes with lower q,
    # a third candidate only: top-5 includes it.
    entry("t2", 0, IN3, D, 4.0, A),
    entry("t2", 0, IN3, D, 4.0, A),
    entry("t2", 0, IN3, C, 2.0, A),
    entry("t2", 0, IN3, C, 2.0, A),
    entry("t2", 0, IN3, A, 1.0, A),
  ]
  scores, sub = vote(entries)
  # pass@1: t1 -> 0/2, t2 -> 0 => 0.  pass@2: t1 -> 2/2, t2 -> 0 => 0.5.
  # pass@5 and up: everything => 1.
  assert scores["pass@1"] == 0.0
  assert scores["pass@2"] == 0.5
  for k in (5, 10, 100, 1000):
    assert scores[f"pass@{k}"] == 1.0
  assert set(sub) == {"t1", "t2"}
  assert sub["t1"] == [
    {"attempt_1": B.tolist(), "attempt_2": A.tolist()},
    {"attempt_1": D.tolist(), "attempt_2": C.tolist()},
  ]
  # Equal votes (2 each): D's mean sigmoid(4) beats C's sigmoid(2).
  assert sub["t2"] == [{"attempt_1": D.tolist(), "attempt_2": C.tolist()}]
  json.dumps(sub)  # Kaggle format is plain JSON


def test_arc_vote_groups_by_input_and_single_candidate():
  # Two augmented copies of one test input agree; a single candidate fills both attempts.
  entries = [entry("t", 0, IN1, A, 0.5, A), entry("t", 0, IN1.copy(), A, -0.5, A)]
  scores, sub = vote(entries)
  assert scores["pass@1"] == 1.0
  assert sub == {"t": [{"attempt_1": A.tolist(), "attempt_2": A.tolist()}]}


def test_arc_vote_mean_over_tasks_of_fraction_of_tests():
  entries = [
    entry("a", 0, IN1, A, 0, A),
    entry("a", 1, IN2, B, 0, A),
    entry("a", 2, IN3, A, 0, A),
    entry("b", 0, IN1, C, 0, D),
  ]
  scores, _ = vote(entries, ks=(1,))
  assert scores["pass@1"] == pytest.approx((2 / 3 + 0) / 2)


def test_set_accumulator_per_step_and_padding():
  acc = evaluate.SetAccumulator(2)
  labels = np.array([[2, 3, -100], [4, 5, 6], [-100, -100, -100]])  # last row is padding
  preds = np.array(
    [
      [[2, 0, 9], [4, 5, 6], [0, 0, 0]],  # step 1: row0 half, row1 exact
      [[2, 3, 9], [4, 5, 0], [0, 0, 0]],
    ]
  )  # step 2: row0 exact, row1 2/3
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


# ---------------------------------------------------------------------------
# Votes pooled over the evaluations of a run (the reference's aggregated voting).


CLEAN, OTHER = g([7, 8], [9, 1]), g([3, 3])


def _round(pred_counts, label, task="t", inp=IN1):
  """Entries of one evaluation: {pred grid: votes} for one test input."""
  out = []
  for pred, n in pred_counts:
    out += [entry(task, 0, inp, pred, 0.0, label) for _ in range(n)]
  return out


# Evaluation 1 prefers A, evaluation 2 prefers B; the label C is 2nd in both, 1st pooled.
ROUND1 = _round([(A, 3), (C, 2)], C)
ROUND2 = _round([(B, 3), (C, 2)], C)


def test_pooled_votes_rank_over_both_evaluations(tmp_path):
  s1, _ = arc_votes.score(arc_votes.pool(tmp_path, "test", 10, arc_votes.tally(ROUND1), write=True), ks=(1,))
  pooled = arc_votes.pool(tmp_path, "test", 20, arc_votes.tally(ROUND2), write=True)
  s2, sub = arc_votes.score(pooled, ks=(1, 2))
  assert s1["pass@1"] == 0.0 and vote(ROUND2, ks=(1,))[0]["pass@1"] == 0.0
  assert s2 == {"pass@1": 1.0, "pass@2": 1.0}
  # C: 4 votes; A and B: 3 each, A first (both q = sigmoid(0), A seen first).
  assert sub == {"t": [{"attempt_1": C.tolist(), "attempt_2": A.tolist()}]}
  assert arc_votes.stored_steps(tmp_path, "test") == [10, 20]
  # The same result as voting over all entries at once.
  assert vote(ROUND1 + ROUND2, ks=(1, 2)) == (s2, sub)


def test_pooled_votes_survive_resume_and_redone_evaluations(tmp_path):
  straight = tmp_path / "straight"
  arc_votes.pool(straight, "test", 10, arc_votes.tally(ROUND1), write=True)
  expect = arc_votes.score(arc_votes.pool(straight, "test", 20, arc_votes.tally(ROUND2), write=True))
  # A run evaluated at 10 and 20, was preempted and resumes from its step-10 checkpoint:
  # the step-20 votes are dropped and the redone evaluation is counted once.
  run = tmp_path / "resumed"
  arc_votes.pool(run, "test", 10, arc_votes.tally(ROUND1), write=True)
  arc_votes.pool(run, "test", 20, arc_votes.tally(ROUND1), write=True)  # a different future
  assert arc_votes.forget_after(run, 10) == ["test/step_20.npz"]
  assert arc_votes.stored_steps(run, "test") == [10]
  got = arc_votes.score(arc_votes.pool(run, "test", 20, arc_votes.tally(ROUND2), write=True))
  assert got == expect
  # Re-evaluating the same step (preempted between evaluation and checkpoint) overwrites it.
  again = arc_votes.score(arc_votes.pool(run, "test", 20, arc_votes.tally(ROUND2), write=True))
  assert again == expect
  assert not list((run / "arc_votes" / "test").glob(".*tmp"))  # nothing half-written


def test_tally_file_roundtrip(tmp_path):
  entries = ROUND1 + [entry("u", 1, IN2, np.zeros((0, 0), np.uint8), 1.5, None), entry("u", 0, IN3, OTHER, -2.0, CLEAN)]
  t = arc_votes.tally(entries)
  arc_votes.save(tmp_path / "x.npz", t)
  back = arc_votes.load(tmp_path / "x.npz")
  assert set(back) == set(t)
  for key, grp in t.items():
    assert back[key].test_index == grp.test_index
    assert (back[key].label is None) == (grp.label is None)
    if grp.label is not None:
      np.testing.assert_array_equal(back[key].label, grp.label)
    assert {k: (v[1], v[2]) for k, v in back[key].cands.items()} == {k: (v[1], v[2]) for k, v in grp.cands.items()}
  assert arc_votes.score(back) == arc_votes.score(t)


def test_reference_denominators_count_unevaluated_tests():
  # Task t: 2 test inputs, one evaluated and solved; task u (1 test input) not evaluated at all.
  entries = [entry("t", 0, IN1, A, 0.0, A)]
  seen, _ = vote(entries, ks=(1,))
  assert seen["pass@1"] == 1.0
  ref, sub = vote(entries, ks=(1,), test_counts={"t": 2, "u": 1})
  assert ref["pass@1"] == pytest.approx((1 / 2 + 0) / 2)
  assert sub == {"t": [{"attempt_1": A.tolist(), "attempt_2": A.tolist()}], "u": []}
