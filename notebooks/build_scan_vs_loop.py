"""Writes notebooks/scan_vs_loop.ipynb.

    python notebooks/build_scan_vs_loop.py             # cells only, outputs stripped
    python notebooks/build_scan_vs_loop.py --execute   # and run it (CPU: ~3 min), keeping outputs and plots
    python notebooks/build_scan_vs_loop.py --refresh   # new text; outputs of unchanged code cells kept

The committed notebook is the executed one, so GitHub and Colab show the plots
before anyone runs it.
"""
import os
import sys
from pathlib import Path

import nbformat as nbf

md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell


def _deps() -> list[str]:
  """setup.cfg's install_requires without jax/jaxlib and without versions (so pip fits them to Colab's JAX)."""
  text = (Path(__file__).resolve().parents[1] / "setup.cfg").read_text()
  block = text.split("install_requires =", 1)[1].split("\n\n", 1)[0].split("[", 1)[0]
  names = [l.strip().split("=")[0].split(">")[0].split("<")[0].strip() for l in block.splitlines() if l.strip()]
  return [n for n in names if n not in ("jax", "jaxlib")]


DEPS = _deps()
cells = [
    md("""# `scan` vs `loop`: TRM's recursion in JAX

TRM applies one weight-tied network `H_cycles * (L_cycles + 1)` times per
supervision step. `trm_jax` can compose those applications with a Python loop
(`model.recursion="loop"`: XLA sees the unrolled program) or with
`jax.lax.scan` (`"scan"`: one loop body, reused). This notebook checks that both
compute the same function, and measures what each costs: compile time and
compiled-program size as the cycle counts grow, steady-state step time, and
memory.

`SIZE` is chosen automatically from the backend: `"tiny"` on a CPU (a few
minutes top to bottom), `"sudoku"` (the published Sudoku-attention shape,
batch 768) on a GPU or TPU runtime (Colab: *Runtime > Change runtime type*);
assign it by hand after that cell to override. The outputs saved with this
notebook come from a CPU run on this project's shared 2-core machine while it
was heavily loaded: its compile and step times are inflated and noisy (program
sizes and memory are exact); run it yourself for your numbers. All measuring
code lives in
`trm_jax/profiling.py`; the command-line twin is `python -m trm_jax.bench`."""),
    code(f"""# Colab: install trm_jax from its repository (skipped when it is already importable).
# A JAX that is already installed (Colab's GPU/TPU build) is kept: trm_jax goes in without its
# dependencies, and those are installed with jax/jaxlib pinned to the versions already here.
import importlib.metadata, importlib.util, pathlib
REPO = "git+https://github.com/OWNER/trm_jax"   # set to this repository's URL
DEPS = "{' '.join(DEPS)} matplotlib"
if importlib.util.find_spec("trm_jax") is None:
    if importlib.util.find_spec("jax") is None:
        %pip install -q "trm_jax @ {{REPO}}" matplotlib
    else:
        keep = []
        for p in ("jax", "jaxlib"):
            try:
                keep.append(f"{{p}}=={{importlib.metadata.version(p)}}")
            except importlib.metadata.PackageNotFoundError:
                pass
        pathlib.Path("keep_jax.txt").write_text("\\n".join(keep) + "\\n")
        %pip install -q --no-deps "trm_jax @ {{REPO}}"
        %pip install -q -c keep_jax.txt {{DEPS}}"""),
    code("""import os
import jax
import matplotlib.pyplot as plt
from trm_jax import config_lib, profiling

print("JAX", jax.__version__, "on", jax.devices())
SIZE = "tiny" if jax.default_backend() == "cpu" else "sudoku"
QUICK = os.environ.get("TRM_NOTEBOOK_QUICK") == "1"   # fewer sweep points (the test suite sets it)

def make_config(**model):
    c = config_lib.base_config("trm")
    c.model.update(seq_len=81, vocab_size=11, pos_encodings="rope")
    if SIZE == "tiny":   # 4x4 Sudoku shapes, a one-layer network of width 32
        c.model.update(seq_len=16, vocab_size=6, hidden_size=32, num_heads=2, expansion=2.0, L_layers=1,
                       puzzle_emb_ndim=32, puzzle_emb_len=1, H_cycles=2, L_cycles=2, halt_max_steps=2)
        c.train.global_batch_size = 4
    else:
        c.train.global_batch_size = 768
    c.model.update(model)
    c.lock()
    return c

config = make_config()
print(SIZE, "model, batch", config.train.global_batch_size)"""),
    md("""## 1. The two modes compute the same function

One training call (float32, fresh carry) in each mode: the loss, logits, new
latents, and the gradient of every parameter and of the puzzle-embedding rows.
Differences are relative to the largest magnitude of each array; they should be
float32 rounding (the two programs add in a different order), ~1e-6."""),
    code("""errs = profiling.mode_difference(make_config(H_cycles=2, L_cycles=3), batch_size=2)
worst = max(errs, key=errs.get)
print(f"{len(errs)} arrays compared; max relative difference {errs[worst]:.2e} ({worst})")
assert errs[worst] < 1e-4
names = sorted(errs, key=errs.get)
fig, ax = plt.subplots(figsize=(7, 0.18 * len(names) + 1))
ax.barh(range(len(names)), [max(errs[n], 1e-12) for n in names])
ax.set_yticks(range(len(names)), [n.replace("['", "").replace("']", "/") for n in names], fontsize=6)
ax.set_xscale("log"); ax.set_xlabel("max |loop - scan| / max |loop|"); ax.set_title("scan vs loop, one train call")
plt.tight_layout(); plt.show()"""),
    md("""## 2. Compile time and program size as the cycles grow

The loop mode's program grows with every application; the scan mode's body is
compiled once. Memory analysis of the compiled train step also shows whether
temporaries grow with `H_cycles` (they should not: the cycles without gradient
keep no residuals)."""),
    code("""H_GRID = ([1, 2] if QUICK else [1, 2, 4]) if SIZE == "tiny" else [1, 2, 3, 4, 6]
L_GRID = ([1, 2] if QUICK else [1, 2, 4]) if SIZE == "tiny" else [1, 2, 4, 6, 8]
# Warm up once (backend start, tracing caches) on a shape outside the grids, so the first point
# measures compilation only.
for mode in ("loop", "scan"):
    profiling.compile_stats(make_config(H_cycles=1, L_cycles=1), recursion=mode)
rows = []
for mode in ("loop", "scan"):
    for H in H_GRID:
        rows.append(dict(profiling.compile_stats(make_config(H_cycles=H, L_cycles=2), recursion=mode), sweep="H"))
    for L in L_GRID:
        rows.append(dict(profiling.compile_stats(make_config(H_cycles=2, L_cycles=L), recursion=mode), sweep="L"))
for r in rows:
    print(f"{r['sweep']} {r['recursion']:4s} H={r['H_cycles']} L={r['L_cycles']}: compile {r['compile_s']:5.2f} s, "
          f"{r['hlo_instructions']:6d} HLO instructions, temp {r['temp_mb']:7.2f} MB")"""),
    code("""fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
for row, (sweep, var) in enumerate((("H", "H_cycles"), ("L", "L_cycles"))):
    for col, (key, label) in enumerate((("compile_s", "compile time (s)"),
                                        ("hlo_instructions", "optimised HLO instructions"),
                                        ("temp_mb", "train-step temporaries (MB)"))):
        ax = axes[row, col]
        for mode in ("loop", "scan"):
            pts = [(r[var], r[key]) for r in rows if r["sweep"] == sweep and r["recursion"] == mode]
            ax.plot(*zip(*pts), "o-", label=mode)
        ax.set_xticks(H_GRID if sweep == "H" else L_GRID)   # cycle counts are integers
        ax.set_xlabel(var + (" (L_cycles=2)" if sweep == "H" else " (H_cycles=2)")); ax.set_ylabel(label)
        ax.legend()
plt.tight_layout(); plt.show()"""),
    md("""## 3. Steady-state step time and memory

The real jitted train step (state and carry donated) on a synthetic batch, in
each mode, and in scan mode with each remat policy for the scanned cycles.
`program_mb` is the compiled program's peak need (arguments + outputs +
temporaries); on GPU/TPU `device_peak_mb` is the allocator's peak so far in
this process."""),
    code("""shape = (dict(H_cycles=2, L_cycles=2) if QUICK else dict(H_cycles=2, L_cycles=4)) if SIZE == "tiny" else {}
variants = [("loop", "none"), ("scan", "none"), ("scan", "dots")]
if SIZE != "tiny":
    variants += [("loop", "dots"), ("scan", "full")]
results = []
for mode, remat in variants:
    r = profiling.measure_train(make_config(**shape), n_steps=5, warmup=1, recursion=mode, remat=remat)
    results.append(r)
    print(f"{mode:4s} remat={remat:5s}: compile {r['compile_s']:5.2f} s, step {r['step_ms_median']:8.2f} ms "
          f"(min {r['step_ms_min']:.2f}), program {r['program_mb']:.1f} MB, temporaries {r['temp_mb']:.1f} MB")
base = results[0]
for r in results[1:]:
    print(f"{r['recursion']}/{r['remat']}: {r['step_ms_median'] / base['step_ms_median']:.2f}x loop's time, "
          f"{r['program_mb'] / base['program_mb']:.2f}x its memory")"""),
    code("""labels = [f"{r['recursion']}\\nremat={r['remat']}" for r in results]
fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
for ax, key, title in zip(axes, ("step_ms_median", "program_mb", "compile_s"),
                          ("step time (ms, median)", "train-step memory (MB)", "compile time (s)")):
    ax.bar(labels, [r[key] for r in results], color=[f"C{i}" for i in range(len(results))])
    ax.set_title(title)
plt.tight_layout(); plt.show()"""),
    md("""## 4. Scan vs loop on a TPU pod, from this runtime

With `libtpu` installed (no TPU needed: `%pip install libtpu`), `trm-plan`
compiles the real train and eval steps for a TPU topology and reads the
compiler's memory and cost analysis. Both modes for a v5e 2x2 slice: compile
time, per-chip memory, FLOPs and HBM bytes per step (loop trip counts applied:
XLA costs a `while` body once, so the scan row takes them from the loop
program) and the estimated step time. These are compiler estimates, not TPU
measurements; `trm-plan --config=experiments/sudoku_mlp.py --topology=v5e-16
--recursion=both` does the same for a full-size experiment."""),
    code("""try:
    import libtpu  # noqa: F401  (compile-only TPU devices)
    from trm_jax import plan
    tpu_config = make_config()
    if SIZE == "tiny":   # the same tiny model on generated 4x4 Sudoku shapes
        tpu_config.data.update(name="generated/sudoku_small", config="size=4,n_train=64,n_test=8,seed=0")
    tpu = plan.plan(tpu_config, "v5e:2x2", "both")
    print(f"{tpu['topology']}: {tpu['chips']} chips; {tpu['estimate']}")
    for p in tpu["plans"]:
        t = p["train"]
        print(f"{p['recursion']:>4} (remat {p['remat']}): compiled in {t['compile_s']:.0f} s, "
              f"{t['total_gib'] * 1024:.1f} MiB per chip, {t['flops']:.3g} FLOPs, {t['hbm_bytes']:.3g} HBM bytes, "
              f"est. {t['est_step_ms']:.3f} ms per train step")
except ImportError:
    print("libtpu is not installed: %pip install libtpu (compiles for a TPU without one)")"""),
    md("""## Takeaways

* Both modes give the same outputs and gradients up to float32 rounding
  (section 1), and share one parameter tree (checkpoints move between them).
* Compile time and program size: the cell below states how they grew in this
  run, from the numbers of section 2 (a rerun states its own). Timings on a
  small model and a loaded CPU are noisy; program sizes are exact.
* Step time and memory: see the table in section 3, and `benchmarks/NOTES.md`
  for the full-size numbers on CPU and GPU (`python -m trm_jax.bench`)."""),
    code("""# Printed from section 2's numbers (as printed there), so the text follows from this run's outputs.
for sweep, var, grid in (("H", "H_cycles", H_GRID), ("L", "L_cycles", L_GRID)):
    for key, what, fmt in (("compile_s", "compile time (s)", ".2f"), ("hlo_instructions", "HLO instructions", ".0f")):
        pts = {m: [round(r[key], 2) for r in rows if r["sweep"] == sweep and r["recursion"] == m] for m in ("loop", "scan")}
        grew = {m: f"{v[0]:{fmt}} -> {v[-1]:{fmt}} (x{v[-1] / v[0]:.2f})" for m, v in pts.items()}
        lower = sum(s < l for s, l in zip(pts["scan"], pts["loop"]))
        print(f"{what}, {var} {grid[0]} -> {grid[-1]}: loop {grew['loop']}, scan {grew['scan']}; "
              f"scan below loop at {lower} of {len(grid)} points")"""),
]
nb = nbf.v4.new_notebook(cells=cells, metadata={
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
    "colab": {"provenance": []},
    "accelerator": "GPU"})
out = Path(__file__).with_name("scan_vs_loop.ipynb")
if "--execute" in sys.argv[1:]:
  from nbclient import NotebookClient
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(out.parent)}}).execute()
  for c in nb.cells:   # keep outputs, drop run-specific metadata (timings) so diffs stay small
    c.metadata.pop("execution", None)
elif "--refresh" in sys.argv[1:] and out.exists():
  old = {c.source: c for c in nbf.read(out, as_version=4).cells if c.cell_type == "code"}
  for c in nb.cells:
    if c.cell_type == "code" and c.source in old:
      c.outputs, c.execution_count = old[c.source].outputs, old[c.source].execution_count
nbf.write(nb, out)
print("wrote", out)
