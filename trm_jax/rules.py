"""The rules of each puzzle: conflicting givens in a puzzle, and why an answer is invalid.

Grids are display grids (`trm_jax.render`): Sudoku digits with 0 = blank, maze tokens 1-5 (`# SGo`), ARC colours. Each
check returns None when the grid follows the rules, else one short reason.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from trm_jax.render import plural, sudoku_box, token_char

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


def _units(n: int):
  """(kind, index, cells) for every row, column and box of an n x n Sudoku."""
  br, bc = sudoku_box(n)
  for i in range(n):
    yield "row", i, [(i, c) for c in range(n)]
    yield "column", i, [(r, i) for r in range(n)]
  for b in range(n):
    r0, c0 = (b // (n // bc)) * br, (b % (n // bc)) * bc
    yield "box", b, [(r0 + r, c0 + c) for r in range(br) for c in range(bc)]


def sudoku_conflict(g) -> str | None:
  """Two equal digits in a row, column or box (1-based in the message), else None."""
  g = np.asarray(g)
  for kind, i, cells in _units(g.shape[0]):
    seen = {}
    for rc in cells:
      v = int(g[rc])
      if v == 0:
        continue
      if v in seen:
        a, b = seen[v], rc
        return f"two {v}s in {kind} {i + 1} (cells r{a[0] + 1}c{a[1] + 1} and r{b[0] + 1}c{b[1] + 1})"
      seen[v] = rc
  return None


def check_sudoku(puzzle, answer) -> str | None:
  """Why `answer` does not solve `puzzle` (a changed given, a blank, a repeated digit), else None."""
  p, a = np.asarray(puzzle), np.asarray(answer)
  n = p.shape[0]
  changed = np.argwhere((p > 0) & (a != p))
  if len(changed):
    r, c = changed[0]
    return f"changes the given {p[r, c]} at r{r + 1}c{c + 1} to {a[r, c] or 'blank'}"
  bad = np.argwhere((a < 1) | (a > n))
  if len(bad):
    r, c = bad[0]
    return f"{plural(len(bad), 'cell')} without a digit 1-{n} (first r{r + 1}c{c + 1})"
  return sudoku_conflict(a)


def maze_input_error(g) -> str | None:
  """A maze puzzle needs exactly one S and one G and only '#', ' ', 'S', 'G' cells."""
  g = np.asarray(g)
  if (g == PATH).any():
    return "the puzzle already has path cells 'o'; give only '#', ' ', 'S', 'G'"
  for token, name in ((START, "S"), (GOAL, "G")):
    k = int((g == token).sum())
    if k != 1:
      return f"needs exactly one {name}, found {k}"
  return None


def check_maze(puzzle, answer) -> str | None:
  """Why `answer` is not a path from S to G through open cells of `puzzle`, else None."""
  p, a = np.asarray(puzzle), np.asarray(answer)
  kept = p != OPEN  # walls, S and G must stay; open cells may become path
  changed = np.argwhere(kept & (a != p))
  if len(changed):
    r, c = changed[0]
    if a[r, c] == PATH and p[r, c] == WALL:
      return f"the path goes through a wall at r{r + 1}c{c + 1}"
    return f"changes the puzzle at r{r + 1}c{c + 1}"
  odd = np.argwhere(~kept & (a != OPEN) & (a != PATH))
  if len(odd):
    r, c = odd[0]
    return f"turns the open cell r{r + 1}c{c + 1} into {token_char('maze', int(a[r, c]))!r}"
  reach = _reachable(a, tuple(np.argwhere(a == START)[0]))
  if not reach[a == GOAL].any():
    return "the path does not connect S to G"
  stray = int(((a == PATH) & ~reach).sum())
  if stray:
    return f"{plural(stray, 'cell')} of path not connected to S"
  return None


def _reachable(a, start) -> np.ndarray:
  """The cells reachable from `start` along path cells (a goal cell is reached but not passed through)."""
  seen = np.zeros(a.shape, bool)
  seen[start] = True
  todo = deque([start])
  while todo:
    r, c = todo.popleft()
    for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
      if 0 <= rr < a.shape[0] and 0 <= cc < a.shape[1] and not seen[rr, cc] and a[rr, cc] in (PATH, GOAL):
        seen[rr, cc] = True
        if a[rr, cc] != GOAL:
          todo.append((rr, cc))
  return seen


def check_arc(tokens, size: int = 30, colour_offset: int = 2) -> str | None:
  """Why a predicted 30x30 ARC canvas holds no well-formed output grid, else None.

  A well-formed prediction is a non-empty top-left rectangle of colours with no colour cells outside it (what
  `arc.crop_prediction` keeps).
  """
  t = np.asarray(tokens).reshape(size, size)
  colour = t >= colour_offset
  if not colour[0, 0]:
    return "no output grid (the top-left cell is not a colour)"
  h = int(np.argmin(colour[:, 0])) if not colour[:, 0].all() else size
  w = int(np.argmin(colour[0])) if not colour[0].all() else size
  holes = int((~colour[:h, :w]).sum())
  stray = int(colour.sum() - colour[:h, :w].sum())  # colour cells outside the box
  if holes or stray:
    return (
      f"output is not a rectangle ({h}x{w} box with {plural(holes, 'cell')} missing, {plural(stray, 'cell')} outside)"
    )
  return None
