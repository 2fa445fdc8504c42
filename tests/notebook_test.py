"""notebooks/scan_vs_loop.ipynb runs top to bottom on CPU (tiny config) and stays small on disk."""

import contextlib
import io
import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "scan_vs_loop.ipynb"


def _setup_deps():
  text = (NOTEBOOK.parents[1] / "setup.cfg").read_text()
  block = text.split("install_requires =", 1)[1].split("\n\n", 1)[0].split("[", 1)[0]
  return {re.split(r"[=<>]", l.strip())[0] for l in block.splitlines() if l.strip()}


def test_notebook_committed_small_and_colab_ready():
  assert NOTEBOOK.stat().st_size < 400_000
  nb = nbformat.read(NOTEBOOK, as_version=4)
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  # The install cell is guarded so it is skipped when trm_jax is importable.
  assert 'find_spec("trm_jax")' in first_code.source and "pip install" in first_code.source
  # ... and keeps an existing (accelerator) JAX: trm_jax without deps, the rest with jax/jaxlib pinned.
  assert "--no-deps" in first_code.source and "-c keep_jax.txt" in first_code.source
  deps = set(re.search(r'DEPS = "([^"]+)"', first_code.source).group(1).split())
  assert deps == (_setup_deps() - {"jax", "jaxlib"}) | {"matplotlib"}
  # Reusable measuring code lives in the library, not in the notebook.
  assert all("def " not in c.source.replace("def make_config", "") for c in nb.cells if c.cell_type == "code")


def test_notebook_committed_executed_with_plots():
  """GitHub and Colab show the results before anyone runs it."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.execution_count for c in code[1:])
  outputs = [o for c in code for o in c.get("outputs", [])]
  assert not any(o.get("output_type") == "error" for o in outputs)
  assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
  text = "\n".join(o.get("text", "") for o in outputs)
  assert "max relative difference" in text and "x loop's time" in text
  # The compile sweep warms up first, outside the grid, and its panels use the grid as ticks.
  sweep = next(c.source for c in code if "H_GRID" in c.source)
  assert sweep.index("H_cycles=1, L_cycles=1") < sweep.index("rows = []")
  assert any("set_xticks(H_GRID" in c.source for c in code)


def test_notebook_executes(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  env_before = os.environ.get("JAX_PLATFORMS")
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["TRM_NOTEBOOK_QUICK"] = "1"  # fewer sweep points; the same cells run
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    os.environ.pop("TRM_NOTEBOOK_QUICK", None)
    if env_before is None:
      os.environ.pop("JAX_PLATFORMS", None)
    else:
      os.environ["JAX_PLATFORMS"] = env_before
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "max relative difference" in text
  assert "HLO instructions" in text and "x loop's time" in text
  # The TPU section compiled both modes for a v5e 2x2 slice (libtpu is in the test extra).
  assert "v5e:2x2: 4 chips" in text and "scan (remat dots)" in text and "loop (remat none)" in text
  images = sum(
    "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
  )
  assert images >= 3


def test_takeaways_follow_from_the_committed_numbers():
  """The takeaway lines are printed by a cell from section 2's numbers: run on the committed numbers, it prints the
  committed lines (text in the notebook never claims what its outputs contradict)."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  text = lambda c: "".join(o.get("text", "") for o in c.get("outputs", []))
  sweep = next(c for c in code if "rows = []" in c.source)
  pattern = r"^(\w) (\w+) H=(\d+) L=(\d+): compile +([\d.]+) s, +(\d+) HLO"
  rows = [
    dict(sweep=s, recursion=m, H_cycles=int(h), L_cycles=int(l), compile_s=float(t), hlo_instructions=int(n))
    for s, m, h, l, t, n in re.findall(pattern, text(sweep), re.M)
  ]
  grid = lambda var: sorted({r[var] for r in rows if r["sweep"] == var[0]})
  takeaways = next(c for c in code if "scan below loop" in c.source)
  assert code.index(takeaways) > code.index(sweep) and len(rows) >= 8
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(takeaways.source, {"rows": rows, "H_GRID": grid("H_cycles"), "L_GRID": grid("L_cycles")})
  assert printed.getvalue() == text(takeaways) and "compile time" in text(takeaways)
