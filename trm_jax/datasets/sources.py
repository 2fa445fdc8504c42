"""Where the raw files of the real sets come from, and how they are fetched.

Each source is one pinned revision of a public repository; every file has a pinned sha256 (and its size where known).
`fetch` downloads the files a builder config needs with the TFDS download manager (which also checks the (size, sha256)
pairs registered in `checksums.tsv`), verifies each against the pin, and keeps verified files in a shared cache,
`<data_dir>/downloads/<source>/<revision>/<file>`, so a retry or a second config of the same builder reuses them.
`TRM_DATA_MIRROR=http://HOST:PORT` (or `mirror=`) fetches `https://H/P` from `http://HOST:PORT/H/P` instead. See
docs/data.md for the table of sources, licences and checksums.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import uuid
from pathlib import Path

import tensorflow_datasets as tfds

from trm_jax import errors
from trm_jax.datasets.errors import DataError

MIRROR_ENV = "TRM_DATA_MIRROR"


@dataclasses.dataclass(frozen=True)
class Source:
  """Files of one pinned revision: {name: (sha256, size in bytes or None)}."""

  key: str
  base_url: str  # with {revision} for the pinned revision
  revision: str
  licence: str
  files: dict

  def canonical_url(self, name: str) -> str:
    return f"{self.base_url.format(revision=self.revision)}/{name}"

  def url(self, name: str, mirror: str | None = None) -> str:
    """The URL fetched: canonical, or https://HOST/PATH -> MIRROR/HOST/PATH (mirror or $TRM_DATA_MIRROR)."""
    url = self.canonical_url(name)
    mirror = mirror or os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{url.split('://', 1)[1]}" if mirror else url


# Revision and sha256 of the Hugging Face files: the Git LFS object ids of the revision below as recorded by several
# independent public projects (see docs/data.md); train.csv's size likewise. Size None: only sha256 is checked.
SUDOKU_EXTREME = Source(
  key="sudoku_extreme",
  base_url="https://huggingface.co/datasets/sapientinc/sudoku-extreme/resolve/{revision}",
  revision="58942f96baeb572ca3127e2a9e9c70f330783d6b",
  licence="none stated (puzzles from the tdoku benchmark sets, BSD-2-Clause)",
  files={
    "train.csv": ("64b46674db0148e0d73a16346dadeb2b1c00824d3fca3f85b2ae7037f6b4b38e", 718819925),
    "test.csv": ("a2fd52aea23d331d5b4ee723c856236e838a9fb9a70e66f4e0e0cf26c338c6a8", None),
  },
)

MAZE_HARD = Source(
  key="maze_hard",
  base_url="https://huggingface.co/datasets/sapientinc/maze-30x30-hard-1k/resolve/{revision}",
  revision="549754de3d67eebe57b6b22c7d226b9412d55b07",
  licence="none stated",
  files={
    "train.csv": ("25f9e39b5aee16967da41ba63b2d1d75cf608c2360d8a1419d827f9859dbafa0", None),
    "test.csv": ("5120d52088fb3f8036e62e90103808a79ba58847d8601f9451f40991b0903a62", None),
  },
)

# The reference's own combined ARC-AGI-1 / ARC-AGI-2 / ConceptARC files (kaggle/combined/ of the TRM repository at this
# commit). sha256 and sizes computed from the git objects of that commit; they equal shared/data/arc byte for byte.
ARC = Source(
  key="arc_agi",
  base_url="https://raw.githubusercontent.com/SamsungSAILMontreal/TinyRecursiveModels/{revision}/kaggle/combined",
  revision="e7b68717f0a6c4cbb4ce6fbef787b14f42083bd9",
  licence=(
    "ARC-AGI-1 Apache-2.0 (F. Chollet); ARC-AGI-2 Apache-2.0 (ARC Prize Foundation); ConceptARC MIT (V. V. Odouard); "
    "combined files MIT (Samsung, TinyRecursiveModels)"
  ),
  files={
    "arc-agi_concept_challenges.json": ("4e60bd1de956c2519c3236ba9f2c352c971d5971bfc568ceafa716dd9b1a91fd", 804217),
    "arc-agi_concept_solutions.json": ("3ec5e95e416e49c85dac28475fc5b73f6998d13b7e91ff0219eee48881c327ee", 209979),
    "arc-agi_evaluation2_challenges.json": ("e7c62a4bd211867c6b538f66b8013b81f299663c82ca062f49a52bf439d6e4e8", 984679),
    "arc-agi_evaluation2_solutions.json": ("84be4f4f39b79e82c36d565fc878830988b094917f052ee7069aef30b33ca8f1", 223838),
    "arc-agi_evaluation_challenges.json": ("2b05f8f7d33b73fdbefd69914c399e9409d1949c7f16aabc78e677443a64b208", 2062906),
    "arc-agi_evaluation_solutions.json": ("629622b0eecf42c6cb4da628955ef76ec43214f0d00081f8cf63082ade496c52", 312989),
    "arc-agi_training2_challenges.json": ("779eaba89790ebad9af02514a7efc0aefaf2cf8236f046a31bbf8b9ec48f20f5", 4010050),
    "arc-agi_training2_solutions.json": ("9f07a38bd25af5e83aa5bf85c5cb1a1fefdb30f6a755256fa65429e697ca97f9", 658743),
    "arc-agi_training_challenges.json": ("5b02a4753e9088134744d952b048a03f6f23abf4eb6c04e3f27822cf3d439634", 1269733),
    "arc-agi_training_solutions.json": ("47212ad04ef4211221ac6141cba8c8d425e20e90da90ace575ef286c5f992534", 184616),
  },
)

ALL = (SUDOKU_EXTREME, MAZE_HARD, ARC)


def _matches(path: Path, sha: str, size) -> tuple[bool, str]:
  info = tfds.download.checksums.compute_url_info(path)
  ok = info.checksum == sha and (size is None or int(info.size) == size)
  return ok, f"got sha256 {info.checksum[:12]}... ({int(info.size)} bytes)"


def _reason(e: BaseException) -> str:
  from tensorflow_datasets.core.download import download_manager

  if isinstance(e, download_manager.NonMatchingChecksumError):
    return "checksum mismatch: damaged download or not the pinned file"
  line = errors.first_line(e)
  if code := re.search(r"HTTP code: (\d+)", line):
    return f"HTTP {code.group(1)}"
  return f"{type(e).__name__}: {line}"[:200]


def fetch(source: Source, names, dl_manager, cache_root, mirror=None) -> Path:
  """A directory holding the verified files `names` of `source`; DataError naming the URL and what to do on any
  failure (a file that fails verification is deleted, so a retry downloads it again)."""
  cache = Path(os.fspath(cache_root)) / source.key / source.revision
  names = list(names)
  advice = f"retry, or put {', '.join(names)} in a directory and pass --manual_dir DIR"
  advice += " (trm-train: --config.data.manual_dir=DIR)"
  for name in names:
    sha, size = source.files[name]
    final = cache / name
    if final.is_file():
      if _matches(final, sha, size)[0]:
        continue
      final.unlink(missing_ok=True)  # damaged cache entry: fetch it again
    url = source.url(name, mirror)
    try:
      got = Path(os.fspath(dl_manager.download(url)))
    except Exception as e:  # pylint: disable=broad-except
      raise DataError(f"{url}: download failed ({_reason(e)}); {advice}") from None
    ok, what = _matches(got, sha, size)
    if not ok:
      got.unlink(missing_ok=True)
      raise DataError(
        f"{url}: checksum mismatch, {what}, expected sha256 {sha[:12]}...{'' if size is None else f' ({size} bytes)'} "
        f"(truncated or damaged download, an error page, or not the pinned file); {advice}"
      )
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{name}.{uuid.uuid4().hex}.tmp"
    shutil.move(got, tmp)  # then an atomic rename on the cache's file system
    os.replace(tmp, final)
  return cache
