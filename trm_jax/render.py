"""Puzzles as text and pictures: shared by `trm-solve`, `trm-train`'s example print and `trm-data show`.

Text works on token sequences. Pictures (`draw_pair`, matplotlib: `pip install -e '.[plots]'`) work on display grids:
Sudoku digits (0 = blank), maze tokens 1-5 (`# SGo`), ARC colours 0-9.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np

from trm_jax.errors import UserError

MAZE_CHARS = "# SGo"
ARC_COLOURS = tuple("#000000 #0074D9 #FF4136 #2ECC40 #FFDC00 #AAAAAA #F012BE #FF851B #7FDBFF #870C25".split())
MAZE_COLOURS = ("#000000", "#FFFFFF", "#2ECC40", "#FF4136", "#FFDC00")  # '#', ' ', S, G, o
DIGIT_COLOURS = tuple("#1F77B4 #D62728 #2CA02C #9467BD #FF7F0E #8C564B #E377C2 #17BECF #7F7F7F".split())  # digits 1-9


def plural(n: int, word: str) -> str:
  return f"{n} {word}" if n == 1 else f"{n} {word}s"


def sudoku_box(n: int) -> tuple[int, int]:
  """Box shape (rows, cols) of an n x n Sudoku: 4 -> 2x2, 6 -> 2x3, 9 -> 3x3."""
  rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
  return rows, n // rows


def token_char(task: str, v: int) -> str:
  """A maze token as its character ('?' if none), a Sudoku token as its digit ('.' blank)."""
  if task == "maze":
    return MAZE_CHARS[v - 1] if 1 <= v <= 5 else "?"
  return "." if v <= 1 else str(v - 1)


def render(task: str, grid: tuple, tokens) -> str:
  t = np.asarray(tokens)
  if task == "arc":
    return "\n".join("".join(str(int(v)) for v in row) for row in np.atleast_2d(t))
  sep = "" if task == "maze" else " "
  return "\n".join(sep.join(token_char(task, v) for v in row) for row in t.reshape(grid))


def puzzle_text(task: str, tokens) -> str:
  """A puzzle as the one-line text `trm-solve --sudoku=` / `--maze=` reads."""
  return "".join(token_char(task, v) for v in np.asarray(tokens).ravel())


def side_by_side(task: str, grid: tuple, inputs, answer) -> str:
  a, b = render(task, grid, inputs).splitlines(), render(task, grid, answer).splitlines()
  w, n = max(len(x) for x in a), max(len(a), len(b))
  rows = enumerate(itertools.zip_longest(a, b, fillvalue=""))
  return "\n".join(f"{x:<{w}}   {'->' if i == n // 2 else '  '}   {y}" for i, (x, y) in rows)


def prepare_png(path: str, flag: str = "--png") -> str:
  """Checks up front that a picture can be written: matplotlib is there, the directory exists (made if not)."""
  try:
    import matplotlib  # noqa: F401, PLC0415
  except ImportError:
    raise UserError(f"{flag} needs matplotlib: pip install -e '.[plots]'") from None
  parent = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise UserError(f"{flag}={path}: cannot create directory {parent} ({e.strerror})") from None
  if os.path.isdir(path):
    raise UserError(f"{flag}={path}: is a directory")
  return path


def draw_pair(path: str, task: str, x, y, names=("input", "label"), title: str | None = None) -> None:
  """Two display grids side by side as a PNG (Sudoku: box lines, givens bold, one colour per digit)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  x, y = np.asarray(x), np.asarray(y)
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  for ax, g, name in zip(axes, (x, y), names):
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
    if g.size == 0:
      ax.text(0.5, 0.5, "(empty)", ha="center", va="center", transform=ax.transAxes)
    elif task == "sudoku":
      _draw_sudoku(ax, g, x)
    else:
      _draw_cells(ax, g, task)
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)


def _draw_cells(ax, g, task):
  from matplotlib.colors import ListedColormap  # noqa: PLC0415

  colours, lo = (ARC_COLOURS, 0) if task == "arc" else (MAZE_COLOURS, 1)  # ARC colours 0-9, maze tokens 1-5
  ax.imshow(g, cmap=ListedColormap(colours), vmin=lo, vmax=lo + len(colours) - 1)
  if max(g.shape) <= 30:  # thin cell lines, as ARC viewers draw them
    for k in range(g.shape[1] + 1):
      ax.axvline(k - 0.5, color="#555555", lw=0.3)
    for k in range(g.shape[0] + 1):
      ax.axhline(k - 0.5, color="#555555", lw=0.3)


def _draw_sudoku(ax, g, givens):
  """Digits coloured by value; givens bold on grey; a given that the grid changes on red."""
  n = g.shape[0]
  shade = np.ones(g.shape + (3,))
  given = givens > 0
  shade[given] = (0.9, 0.9, 0.9)
  shade[given & (g != givens)] = (1.0, 0.6, 0.6)
  ax.imshow(shade)
  size = max(6, 80 // n)
  for (r, c), v in np.ndenumerate(g):
    if 1 <= v <= len(DIGIT_COLOURS):
      colour, weight = DIGIT_COLOURS[int(v) - 1], "bold" if given[r, c] else "normal"
      ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=size, color=colour, fontweight=weight)
  br, bc = sudoku_box(n)
  for k in range(n + 1):
    ax.axvline(k - 0.5, color="black", lw=2 if k % bc == 0 else 0.5)
    ax.axhline(k - 0.5, color="black", lw=2 if k % br == 0 else 0.5)
