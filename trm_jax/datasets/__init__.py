"""TFDS builders for TRM puzzle sets; importing this module registers them.

Builders: sudoku_extreme, maze_hard, arc_agi, sudoku_small (see `trm-data
list`). In-memory toy sets: `generated.sudoku_small`, `generated.maze_small`.
"""

from trm_jax.datasets import (
  arc_builder,  # noqa: F401
  generated,  # noqa: F401
  maze,  # noqa: F401
  sudoku,  # noqa: F401
)
from trm_jax.datasets.common import DataError, build  # noqa: F401
from trm_jax.datasets.generated import maze_small, sudoku_small  # noqa: F401
