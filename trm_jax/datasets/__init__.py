"""TFDS builders for TRM puzzle sets; importing this module registers them.

Builders: sudoku_extreme, maze_hard, arc_agi, sudoku_small (see `trm-data list`). In-memory toy sets:
`generated.sudoku_small`, `generated.maze_small`.
"""

from trm_jax.datasets import arc_builder, generated, maze, sudoku  # noqa: F401  (registers the builders)
