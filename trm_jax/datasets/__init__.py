"""TFDS builders for TRM puzzle sets; importing this module registers them."""

from trm_jax.datasets.common import DataError, build  # noqa: F401
from trm_jax.datasets import sudoku  # noqa: F401
from trm_jax.datasets import arc_builder  # noqa: F401
from trm_jax.datasets import maze  # noqa: F401
from trm_jax.datasets import generated  # noqa: F401
