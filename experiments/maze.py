"""Maze-Hard 30x30, TRM with self-attention and RoPE.

    trm-train --config=experiments/maze.py --workdir=runs/maze

The first run downloads sapientinc/maze-30x30-hard-1k (1,000 train / 1,000
test mazes, pinned revision, sha256-checked; docs/data.md) and builds
maze_hard/csv, as the reference's build_maze_dataset.py (default: no
augmentation). Offline: --config.data.manual_dir=DIR with train.csv / test.csv.
--config.data.config=csv_aug8 adds the 8 dihedral images; =generated uses
seeded generated mazes instead (no download).

HRM baseline: --config=experiments/maze.py:arch=hrm.
Expected: 85.3% exact accuracy (TRM, 7M); HRM 74.5%.
Runtime: ~24 h on 4 H100s (50k epochs of 1000 mazes; data.config=csv_aug8 adds the 8 dihedral images).

Data: the paper's 85.3% most likely comes from the un-augmented set (`csv`,
the default here): the reference README's comment says "1000 examples, 8
augments", but its command (`python dataset/build_maze_dataset.py`) builds
with the script's default `aug=False` into the directory its training command
reads (data/maze-30x30-hard-1k). To run the other reading, add the 8 dihedral
images: --config.data.config=csv_aug8 (each maze's 8 images form one group,
so an epoch still draws 1,000 mazes and the schedule below is unchanged).

Schedule, as the reference runs it (README: epochs=50000 eval_interval=5000):
an evaluation every 5k epochs (`train.eval_every_epochs`), 10 in all, at steps
6510, ..., 65100 (learning-rate horizon 65104 steps; each 5k-epoch sampler
iteration drops its one partial batch). HRM baseline (:arch=hrm) uses HRM's
own schedule (HRM README: epochs=20000 eval_interval=2000, lr 1e-4): 10
evaluations at 2604, ..., 26040 steps; "HRM 74.5%" is HRM's paper result for
that setup. Alternative: --config.train.eval_every_epochs=-1
--config.train.eval_every=N evaluates every N steps. Step numbers: `python
benchmarks/schedules.py`, and printed at the start of every run.
"""

from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.base_config(a["arch"])
  c.data.update(name="maze_hard", config="csv")
  c.model.update(seq_len=900, vocab_size=6, num_puzzle_identifiers=1, pos_encodings="rope")
  if a["arch"] == "trm":
    c.model.update(H_cycles=3, L_cycles=4)
  c.train.update(lr=1e-4, puzzle_emb_lr=1e-4, weight_decay=1.0, puzzle_emb_weight_decay=1.0)
  if a["arch"] == "trm":
    config_lib.reference_schedule(c, epochs=50000, eval_every_epochs=5000)
  else:
    config_lib.reference_schedule(c, epochs=20000, eval_every_epochs=2000)
  c.lock()
  return c
