"""Puzzles as text and pictures: shared by `trm-solve`, `trm-train`'s example print and `trm-data show`."""
from __future__ import annotations

import numpy as np

MAZE_CHARS = "# SGo"
ARC_COLOURS = ('#000000', '#0074D9', '#FF4136', '#2ECC40', '#FFDC00',
               '#AAAAAA', '#F012BE', '#FF851B', '#7FDBFF', '#870C25')


def render(task: str, grid: tuple, tokens) -> str:
  t = np.asarray(tokens)
  if task == "arc":
    return "\n".join("".join(str(int(v)) for v in row) for row in np.atleast_2d(t))
  rows, cols = grid
  t = t.reshape(rows, cols)
  if task == "maze":
    return "\n".join("".join(MAZE_CHARS[v - 1] if 1 <= v <= 5 else "?" for v in row) for row in t)
  return "\n".join(" ".join("." if v <= 1 else str(v - 1) for v in row) for row in t)


def side_by_side(task: str, grid: tuple, inputs, answer) -> str:
  a, b = render(task, grid, inputs).splitlines(), render(task, grid, answer).splitlines()
  w = max(len(x) for x in a)
  n = max(len(a), len(b))
  a, b = a + [""] * (n - len(a)), b + [""] * (n - len(b))
  return "\n".join(f"{x:<{w}}   {'->' if i == n // 2 else '  '}   {y}" for i, (x, y) in enumerate(zip(a, b)))


def write_png(path: str, task: str, grid: tuple, inputs, answer) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  if task == "arc":
    pics = [np.asarray(inputs), np.asarray(answer)]
  else:
    pics = [np.asarray(inputs).reshape(grid), np.asarray(answer).reshape(grid)]
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  for ax, pic, title in zip(axes, pics, ("puzzle", "answer")):
    ax.imshow(pic, cmap="tab10" if task != "sudoku" else "Blues", interpolation="nearest")
    if task == "sudoku":
      for (r, c), v in np.ndenumerate(pic):
        if v > 1:
          ax.text(c, r, str(v - 1), ha="center", va="center", fontsize=12)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def draw_example(task, x, y, path, title):
  """A dataset example (input, label grids) as a PNG (`trm-data show --png`)."""
  try:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
  except ImportError:
    from trm_jax.datasets.common import DataError  # noqa: PLC0415
    raise DataError('--png needs matplotlib (pip install matplotlib)') from None
  fig, axes = plt.subplots(1, 2, figsize=(8, 4))
  for ax, g, name in zip(axes, (x, y), ('input', 'label')):
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
    if task == 'arc':
      ax.imshow(g, cmap=ListedColormap(ARC_COLOURS), vmin=0, vmax=9)
    elif task == 'maze':
      cmap = ListedColormap(['#000000', '#ffffff', '#2ECC40', '#FF4136',
                             '#FFDC00'])
      ax.imshow(g, cmap=cmap, vmin=1, vmax=5)
    else:
      n = g.shape[0]
      ax.imshow(np.ones_like(g), cmap='gray', vmin=0, vmax=1)
      for r in range(n):
        for c in range(g.shape[1]):
          if g[r, c] > 0:
            given = x[r, c] > 0
            ax.text(c, r, str(int(g[r, c])), ha='center', va='center',
                    color='black' if given else '#0074D9',
                    fontweight='bold' if given else 'normal')
      from trm_jax.datasets.generated import BOXES
      br, bc = BOXES.get(n, (n, n))
      for k in range(n + 1):
        ax.axvline(k - 0.5, color='black', lw=2 if k % bc == 0 else 0.5)
        ax.axhline(k - 0.5, color='black', lw=2 if k % br == 0 else 0.5)
  fig.suptitle(title)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  plt.close(fig)
