"""The layout of a run directory (`--workdir`, local or gs://): the one place that names its paths.

    checkpoints/<step>/, damaged_checkpoint_<step>_<time>/   `checkpoint` (the latter: set aside on resume)
    metrics.jsonl, tensorboard/                               `metrics`
    arc_votes/<split>/step_<N>.npz, submission.json           `arc_votes`, `evaluate`
    profile/                                                  `hooks.StepTrace`
    run.lock                                                  `workdir_lock`

Modules take a `RunDir` or a workdir path (`RunDir(path)` reads either).
"""

from __future__ import annotations

from trm_jax import fileio


class RunDir:
  """The paths of one run directory (a workdir path or a RunDir); `str()`, `os.fspath()`: the resolved workdir."""

  DIRS = ("checkpoints", "tensorboard", "arc_votes", "profile")  # folders a run creates in it

  def __init__(self, workdir):
    self.root = fileio.resolve(workdir)

  def __fspath__(self) -> str:
    return self.root

  __str__ = __fspath__

  def path(self, *names) -> str:
    return fileio.join(self.root, *names)

  def prepare(self) -> RunDir:
    """Creates the workdir's parents; refuses a workdir or run folder that is not a directory or not the user's."""
    fileio.prepare_workdir(self.root, [self.path(name) for name in self.DIRS])
    return self

  def checkpoints(self, step: int | None = None) -> str:
    return self.path("checkpoints") if step is None else self.path("checkpoints", str(step))

  def damaged_checkpoint(self, step: int, stamp: str) -> str:
    return self.path(f"damaged_checkpoint_{step}_{stamp}")

  def arc_votes(self, split: str | None = None, step: int | None = None) -> str:
    names = ([] if split is None else [split]) + ([] if step is None else [f"step_{step}.npz"])
    return self.path("arc_votes", *names)

  metrics = property(lambda self: self.path("metrics.jsonl"))
  tensorboard = property(lambda self: self.path("tensorboard"))
  submission = property(lambda self: self.path("submission.json"))
  profile = property(lambda self: self.path("profile"))
  lock = property(lambda self: self.path("run.lock"))
