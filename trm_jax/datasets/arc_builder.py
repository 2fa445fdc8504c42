"""ARC-AGI TFDS builder: augmentation plan, splits and puzzle-id mapping.

Every augmented copy (dihedral + colour permutation, copy 0 = identity) of a task is a puzzle with its own id (1..N, 0 =
blank). Training-subset tasks put all pairs in `train`; evaluation-subset tasks put their demonstrations in `train` and
their test pairs in `test`, under the same id. Metadata arrays `puzzle_task`, `puzzle_dihedral`, `puzzle_colours` map an
id back to its task (index into the JSON `tasks` list) and transform.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from trm_jax.datasets import arc, common, sources

RETRY_FACTOR = 5


def augment_copies(pairs, num_aug: int, rng) -> list[tuple[int, np.ndarray]]:
  """Identity plus up to num_aug distinct (dihedral, colour perm) copies."""
  grids = [g for p in pairs for g in p]
  variants = [[np.ascontiguousarray(arc.dihedral(g, d)) for d in range(8)] for g in grids]
  ident = np.arange(10, dtype=np.uint8)

  def key(d, perm):  # the copy's grids, shapes included
    return b"".join(bytes(v[d].shape) + perm[v[d]].tobytes() for v in variants)

  copies = [(0, ident)]
  seen = {key(0, ident)}
  for _ in range(RETRY_FACTOR * num_aug):
    if len(copies) > num_aug:
      break
    d = int(rng.integers(8))
    perm = np.concatenate([[0], rng.permutation(9) + 1]).astype(np.uint8)
    k = key(d, perm)
    if k not in seen:
      seen.add(k)
      copies.append((d, perm))
  return copies


def render_pairs(pairs, d, perm, translate, rng):
  """(k, 900) input and label canvases of the transformed pairs. With `translate`, every pair but one goes to a
  random offset (inputs and outputs together); the one kept at the origin is drawn at random, as in the reference's
  builder (`no_aug_id`)."""
  inputs = np.empty((len(pairs), arc.SEQ_LEN), np.uint8)
  labels = np.empty_like(inputs)
  keep = int(rng.integers(len(pairs))) if translate else -1
  for i, (a, b) in enumerate(pairs):
    a, b = arc.transform(a, d, perm), arc.transform(b, d, perm)
    r0 = c0 = 0
    if translate and i != keep:
      r0 = int(rng.integers(0, arc.MAX_SIZE - max(a.shape[0], b.shape[0]) + 1))
      c0 = int(rng.integers(0, arc.MAX_SIZE - max(a.shape[1], b.shape[1]) + 1))
    inputs[i] = arc.to_canvas(a, r0, c0)
    labels[i] = arc.to_canvas(b, r0, c0)
  return inputs, labels


def build_plans(tasks, num_aug: int, seed: int, translate: bool = True):
  """tasks: list of (subset, task_id, role in {'train','eval'}, task)."""
  rng = np.random.default_rng(seed)
  all_copies = [
    augment_copies(t["train"] + t["test"], num_aug, rng)
    for _, _, _, t in tqdm(tasks, desc="arc augment", disable=num_aug < 100)
  ]
  first_id = np.cumsum([0] + [len(c) for c in all_copies]) + 1
  copies = [(ti, d, perm) for ti, c in enumerate(all_copies) for d, perm in c]  # of puzzle ids 1, 2, ...
  arrays = {
    "puzzle_task": np.asarray([-1] + [c[0] for c in copies], np.int32),
    "puzzle_dihedral": np.asarray([0] + [c[1] for c in copies], np.uint8),
    "puzzle_colours": np.stack([np.arange(10, dtype=np.uint8)] + [c[2] for c in copies]),
  }

  def split_pairs(task, role, split):
    if split == "test":
      return task["test"] if role == "eval" else []
    return task["train"] + (task["test"] if role == "train" else [])

  plans = {}
  for split in ("train", "test"):
    members = {ti: pairs for ti, (_, _, role, t) in enumerate(tasks) if (pairs := split_pairs(t, role, split))}
    sizes = [len(pairs) for ti, pairs in members.items() for _ in all_copies[ti]]
    gsizes = [len(all_copies[ti]) for ti in members]
    ids = [first_id[ti] + ci for ti in members for ci in range(len(all_copies[ti]))]

    def blocks(split=split, members=members):
      for ti, pairs in members.items():
        for ci, (d, perm) in enumerate(all_copies[ti]):
          yield render_pairs(pairs, d, perm, translate and split == "train", np.random.default_rng([seed, ti, ci]))

    plans[split] = common.SplitPlan(
      np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
      np.concatenate([[0], np.cumsum(gsizes)]).astype(np.int64),
      np.asarray(ids, np.int32),
      blocks,
    )
  info = {"task": "arc", "tasks": [[s, tid, role] for s, tid, role, _ in tasks]}
  return plans, len(copies) + 1, info, arrays


def original_of(puzzle_id: int, info: dict, arrays: dict):
  """(subset, task id, dihedral, colour perm) of a stored puzzle id."""
  ti = int(arrays["puzzle_task"][puzzle_id])
  if ti < 0:
    raise ValueError(f"puzzle id {puzzle_id} is the blank id")
  subset, tid, _ = info["tasks"][ti]
  return (subset, tid, int(arrays["puzzle_dihedral"][puzzle_id]), arrays["puzzle_colours"][puzzle_id])


def invert_prediction(canvas, puzzle_id: int, info: dict, arrays: dict):
  """Crops a predicted canvas and maps it back to the original task frame."""
  _, _, d, perm = original_of(puzzle_id, info, arrays)
  return arc.invert(arc.crop_prediction(canvas), d, perm)


@dataclasses.dataclass(eq=False)
class ArcConfig(tfds.core.BuilderConfig):
  train_subsets: tuple = ("training", "concept")
  eval_subsets: tuple = ("evaluation",)
  num_aug: int = 1000
  max_tasks: int | None = None  # first N tasks of each subset (tests)
  translate: bool = True
  seed: int = 42
  seq_len: int = arc.SEQ_LEN
  vocab_size: int = arc.VOCAB_SIZE
  needs_files: bool = True


_A1 = dict(train_subsets=("training", "concept"), eval_subsets=("evaluation",))
_A2 = dict(train_subsets=("training2", "concept"), eval_subsets=("evaluation2",))


class ArcAgi(common.TrmBuilder):
  """ARC-AGI from combined JSON files arc-agi_<subset>_{challenges,solutions}."""

  SOURCE = sources.ARC
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
    "1.1.0": "The training example kept at the origin is drawn at random (the reference's rule), not always the first.",
    "1.0.0": "Initial release.",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Put arc-agi_<subset>_challenges.json / _solutions.json (subsets training, evaluation, training2, evaluation2, "
    "concept) in manual_dir. Without manual_dir they are downloaded (sources.ARC)."
  )
  BUILDER_CONFIGS = [
    ArcConfig(name="arc1_aug1000", **_A1, description="ARC-AGI-1 + ConceptARC, 1000 augmentations."),
    ArcConfig(name="arc2_aug1000", **_A2, description="ARC-AGI-2 + ConceptARC, 1000 augmentations."),
    ArcConfig(name="arc1_aug10", num_aug=10, **_A1, description="ARC-AGI-1 + ConceptARC, 10 augmentations."),
    ArcConfig(
      name="arc1_small", num_aug=10, max_tasks=6, **_A1, description="6 tasks per subset, 10 augmentations (tests)."
    ),
    ArcConfig(
      name="arc2_small", num_aug=10, max_tasks=6, **_A2, description="6 tasks per subset, 10 augmentations (tests)."
    ),
  ]

  def raw_files(self):
    cfg = self.builder_config
    return tuple(
      f"arc-agi_{s}_{kind}.json"
      for s in (*cfg.train_subsets, *cfg.eval_subsets)
      for kind in ("challenges", "solutions")
    )

  def make_plans(self, manual_dir):
    cfg = self.builder_config
    tasks = []
    for role, subsets in (("train", cfg.train_subsets), ("eval", cfg.eval_subsets)):
      for subset in subsets:
        loaded = arc.load_subset(Path(manual_dir), subset)
        tasks += [(subset, tid, role, loaded[tid]) for tid in list(loaded)[: cfg.max_tasks]]
    return build_plans(tasks, cfg.num_aug, cfg.seed, cfg.translate)
