"""ARC-AGI-2 (+ConceptARC), TRM with self-attention, RoPE and a 16-token puzzle prefix.

    trm-train --config=experiments/arc2.py --workdir=runs/arc2

The first run downloads the reference's pinned ARC files (docs/data.md); offline:
--config.data.manual_dir=DIR with arc-agi_*_challenges.json / _solutions.json.

HRM baseline: --config=experiments/arc2.py:arch=hrm.
Expected: 7.8% pass@2 on the ARC-AGI-2 public evaluation (TRM, 7M); HRM 5.0%.
Runtime: ~3 days on 4 H100s (100k epochs, batch 768, ~1M puzzle ids).

Protocol, as the reference runs it (its cfg_pretrain.yaml: epochs 100000,
eval_interval 10000, the ARC evaluator with aggregated_voting=True; HRM's ARC
runs use the same numbers): an evaluation every 10k epochs
(`train.eval_every_epochs`), 10 in all, each 10k-epoch sampler iteration
dropping its one partial batch; `eval/ARC/pass@K` and `submission.json` vote
over the predictions of every evaluation so far (`eval.arc_aggregate_voting`;
the votes live in WORKDIR/arc_votes/ and survive resumes), so the final pass@2
pools the 10 EMA checkpoints' votes; `eval/ARC/pass@K_this_eval` is each
evaluation's own score. pass@K divides by every test task, also when
`eval.max_examples` cuts an evaluation short (then logged as PARTIAL).
Alternatives: --config.eval.arc_aggregate_voting=false votes per evaluation;
--config.train.eval_every_epochs=-1 --config.train.eval_every=N evaluates
every N steps. The steps are printed at the start of every run.
"""

from trm_jax import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, arch="trm")
  c = config_lib.arc_config(a["arch"], "arc2_aug1000")
  c.lock()
  return c
