"""ARC-AGI-1 (+ConceptARC), TRM with self-attention, RoPE and a 16-token puzzle prefix.

    trm-train --config=experiments/arc1.py --workdir=runs/arc1

The first run downloads the reference's pinned ARC files (docs/data.md); offline:
--config.data.manual_dir=DIR with arc-agi_*_challenges.json / _solutions.json.

HRM baseline: --config=experiments/arc1.py:arch=hrm.
Expected: 44.6% pass@2 on the ARC-AGI-1 public evaluation (TRM, 7M); HRM 40.3%.
Runtime: ~3 days on 4 H100s (100k epochs, batch 768, ~1M puzzle ids).
"""
from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.arc_config(a["arch"], "arc1_aug1000")
  c.lock()
  return c


def get_sweep(arg=None):
  del arg
  return [{"train.puzzle_emb_lr": lr} for lr in (1e-2, 3e-3)]
