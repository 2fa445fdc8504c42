"""Multi-process runs on localhost: 2 processes x 2 fake CPU devices equal 1 process x 4 devices.

Every run is its own set of subprocesses (the device-count flag and
`jax.distributed.initialize` are per process), joined over gloo CPU collectives.

- `test_two_processes_equal_one_driver`: the real driver (`trm_jax.main` with
  --coordinator_address/--num_processes/--process_id) on experiments/smoke.py:
  per-process data shards, one collective Orbax checkpoint, process-0-only
  metrics, evaluation, and a restart from an earlier checkpoint; final state and
  eval metrics equal the 1 x 4 run's.
- `test_sharded_table_two_processes`: the train step with the puzzle table split
  along `table` (table_parallel=2) across the two processes, with ids repeated
  within and across devices, equals a single-device step; the compiled train
  and eval steps never hold the whole table (no all-gather of it: row gathers
  and the scatter stay partitioned).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np

from trm_jax import metrics, solve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 400  # per launch: compiling dominates, and a shared, loaded CPU can take minutes


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(argv_of, n_procs: int, devices_per_proc: int, env, timeout=TIMEOUT):
  """Starts `n_procs` processes (argv_of(i)), waits for all; -> list of (rc, stdout, stderr)."""
  e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_proc}")
  procs = [subprocess.Popen(argv_of(i), cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(n_procs)]
  out, deadline = [], time.time() + timeout
  try:
    for p in procs:
      o, r = p.communicate(timeout=max(1.0, deadline - time.time()))
      out.append((p.returncode, o, r))
  finally:
    for p in procs:  # a failed peer leaves the others waiting on collectives
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (rc, o, r) in enumerate(out):
    assert rc == 0, f"process {i} exited with {rc}:\n{r[-3000:]}"
  return out


# ---------------------------------------------------------------------------
# The driver: 1 x 4 devices vs 2 processes x 2 devices with a restart.

# The smoke run with one cycle per level (compiles faster; every path of a run is still there).
FLAGS = ["--config=experiments/smoke.py", "--config.train.keep_checkpoints=3", "--config.model.H_cycles=1",
         "--config.model.L_cycles=1"]


def driver(workdir, n_procs, port=None):
  def argv(i):
    a = [sys.executable, "-m", "trm_jax.main", *FLAGS, f"--workdir={workdir}"]
    if n_procs > 1:
      a += [f"--coordinator_address=localhost:{port}", f"--num_processes={n_procs}", f"--process_id={i}"]
    return a
  return argv


def ckpt_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def rel_err(a, b) -> float:
  """Max-abs difference over max-abs of `a`, worst over the leaves."""
  out = 0.0
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape
    if x.size:
      out = max(out, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
  return out


def test_two_processes_equal_one_driver(tmp_path, env):
  t0 = time.time()
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  launch(driver(one, 1), 1, 4, env)
  t_one = time.time() - t0

  # 2 x 2: a full run, then back to the step-4 checkpoint (as if it had died
  # right after saving it) and the same command again, which resumes from it.
  t1 = time.time()
  first = launch(driver(two, 2, free_port()), 2, 2, env)
  assert ckpt_steps(two) == [4, 8, 12], "one collective checkpoint per save"
  for s in (8, 12):
    shutil.rmtree(os.path.join(two, "checkpoints", str(s)))
  second = launch(driver(two, 2, free_port()), 2, 2, env)
  assert ckpt_steps(two) == [4, 8, 12]
  t_two = time.time() - t1

  # Only process 0 logs and writes metrics / TensorBoard.
  for runs in (first, second):
    assert "steps 0 -> 12" in runs[0][1] + runs[0][2] or "steps 4 -> 12" in runs[0][1] + runs[0][2]
    assert "parameters:" not in runs[1][1] + runs[1][2]
  events = metrics.read(two)
  assert sum("params" in e for e in events) == 1
  assert sum("compile_seconds" in e for e in events) == 2                # one per launch, process 0 only
  tb = os.path.join(two, "tensorboard")
  if os.path.isdir(tb):
    assert len(os.listdir(tb)) == 2

  # Final state (params, optimiser state, EMA, puzzle table, step) and the last evaluation.
  _, sa, _ = solve.load_run(one)
  _, sb, _ = solve.load_run(two)
  assert int(sa.step) == int(sb.step) == 12
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  errs = {k: rel_err(getattr(sa, k), getattr(sb, k)) for k in ("params", "opt_state", "ema", "puzzle_table")}
  assert float(np.abs(np.asarray(sa.puzzle_table)).max()) > 0
  last_eval = lambda w: [e for e in metrics.read(w) if "eval/test/exact_accuracy" in e][-1]
  ea, eb = last_eval(one), last_eval(two)
  assert ea["step"] == eb["step"] == 12
  assert ea["eval/test/count"] == eb["eval/test/count"] == 24           # both processes' rows counted
  keys = [k for k in ea if k.startswith("eval/")]
  assert keys and sorted(keys) == sorted(k for k in eb if k.startswith("eval/"))
  errs["eval"] = max(abs(ea[k] - eb[k]) / max(abs(ea[k]), 1e-12) for k in keys)
  print(f"\nmultihost driver: 1x4 run {t_one:.1f}s, 2x2 runs (full + resume) {t_two:.1f}s, "
        f"total {time.time() - t0:.1f}s; relative errors {errs}")
  for k, v in errs.items():
    assert v <= 1e-5, (k, errs)


# ---------------------------------------------------------------------------
# The train step with the table split across processes, and its compiled HLO.

STEP_SCRIPT = textwrap.dedent("""
  import json, sys
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  pid, port = int(sys.argv[1]), int(sys.argv[2])
  jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
  import jax.numpy as jnp, numpy as np
  from trm_jax import config_lib, evaluate, optim, recursion, sharding, steps
  from trm_jax.model import RecursiveModel
  from trm_jax.train_state import create_train_state
  sys.path.insert(0, sys.argv[3])
  import tiny

  assert jax.device_count() == 4 and jax.local_device_count() == 2, jax.devices()
  N, D, B = 200, 32, 8
  cfg = tiny.mcfg(num_puzzle_identifiers=N, puzzle_emb_ndim=D, halt_max_steps=2, H_cycles=1, L_cycles=1)
  tcfg = config_lib.train_config(global_batch_size=B, lr_warmup_steps=1, puzzle_emb_lr=0.01, weight_decay=0.1,
                                 puzzle_emb_weight_decay=0.1)
  model = RecursiveModel(cfg)
  tx = optim.make_optimizer(tcfg, 10)
  step_fn = steps.make_train_step(model, cfg, tcfg, tx, 10)
  create = lambda: create_train_state(model, cfg, tcfg, tx, jax.random.key(0))
  carry_fn = lambda: recursion.initial_carry(cfg, B)
  # Ids repeated within a device, across devices and across processes, owned by both table shards.
  batches = []
  for i in range(3):
    b = {k: np.asarray(v) for k, v in tiny.batch(seed=i, b=B).items()}
    b["puzzle_identifiers"] = np.random.default_rng(i).choice([1, 2, 150, 151], B).astype(np.int32)
    batches.append(b)

  # Reference: one device of this process.
  with jax.default_device(jax.local_devices()[0]):
    one = jax.jit(step_fn)
    s1, c1, l1 = create(), carry_fn(), []
    table0 = np.asarray(s1.puzzle_table)
    for i, b in enumerate(batches):
      s1, c1, m = one(s1, c1, {k: jnp.asarray(v) for k, v in b.items()}, jax.random.key(i))
      l1.append(float(m["loss"]))

  # Four devices over two processes, table split in two; each process feeds its own rows.
  mesh = sharding.make_mesh(2)
  s4 = sharding.create_sharded(create, mesh)
  c4 = jax.jit(carry_fn, out_shardings=sharding.carry_shardings(mesh, jax.eval_shape(carry_fn)))()
  jitted = sharding.jit_train_step(step_fn, mesh, jax.eval_shape(create), jax.eval_shape(carry_fn))
  rows = slice(pid * B // 2, (pid + 1) * B // 2)
  put = lambda b: sharding.global_batch({k: v[rows] for k, v in b.items()}, mesh)
  hlo = jitted.lower(s4, c4, put(batches[0]), jax.random.key(0)).compile().as_text()
  l4 = []
  for i, b in enumerate(batches):
    s4, c4, m = jitted(s4, c4, put(b), jax.random.key(i))
    l4.append(float(m["loss"]))
  assert s4.puzzle_table.addressable_shards[0].data.shape == (N // 2, D)

  def diff(ref, got):
    # This process's shards of `got` against the same slices of the single-device `ref`.
    out = 0.0
    for x, y in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
      x = np.asarray(x, np.float64)
      scale = max(np.abs(x).max(), 1e-12) if x.size else 1.0
      for s in y.addressable_shards:
        out = max(out, float(np.abs(x[s.index] - np.asarray(s.data, np.float64)).max(initial=0.0) / scale))
    return out

  moved = np.abs(np.asarray(s1.puzzle_table) - table0).max(-1)
  repl, tsh, bsh = sharding.replicated(mesh), s4.puzzle_table.sharding, sharding.batch_sharding(mesh)
  ev = jax.jit(evaluate.make_eval_step(model, cfg, 2), in_shardings=(repl, repl, tsh, bsh))
  eval_hlo = ev.lower(s4.params, s4.consts, s4.puzzle_table, put(batches[0])).compile().as_text()
  full, half = f"f32[{N},{D}]", f"f32[{N // 2},{D}]"
  comm = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
  moves_table = any(half in l for l in hlo.splitlines() if any(c + "(" in l or c + "-start(" in l for c in comm))
  print(json.dumps({"loss": max(abs(a - b) / abs(a) for a, b in zip(l1, l4)), "params": diff(s1.params, s4.params),
                    "opt_state": diff(s1.opt_state, s4.opt_state), "ema": diff(s1.ema, s4.ema),
                    "table": diff(s1.puzzle_table, s4.puzzle_table), "carry": diff(c1, c4),
                    "moved_rows": sorted(int(r) for r in np.flatnonzero(moved > 0)),
                    "train_full_table": full in hlo, "train_half_table": half in hlo,
                    "eval_full_table": full in eval_hlo, "collective_on_table": moves_table, "eval_half_table": half in eval_hlo,
                    "all_gathers": sorted(set(l.split(" all-gather(")[0].split(" = ")[-1].split("{")[0]
                                              for l in hlo.splitlines() if " all-gather(" in l))}))
""")


def test_sharded_table_two_processes(tmp_path, env):
  t0 = time.time()
  script = tmp_path / "step.py"
  script.write_text(STEP_SCRIPT)
  port = free_port()
  out = launch(lambda i: [sys.executable, str(script), str(i), str(port), os.path.dirname(__file__)], 2, 2, env)
  print(f"\nsharded-table step on 2 processes: {time.time() - t0:.1f}s")
  for rc, stdout, _ in out:
    d = json.loads(stdout.strip().splitlines()[-1])
    print(d)
    assert d["moved_rows"] == [1, 2, 150, 151]    # only the batch's rows, in both table shards
    # The whole table (f32[200,32]) never appears: each device gathers from and scatters into its own
    # f32[100,32] half; only batch-sized rows (ids, gathered rows, row gradients) travel between devices.
    assert d["train_half_table"] and not d["train_full_table"], d
    assert d["all_gathers"] and all(int(g.split("[")[1].split(",")[0].rstrip("]")) <= 8 for g in d["all_gathers"]), d
    assert d["eval_half_table"] and not d["eval_full_table"], d
    assert not d["collective_on_table"], d       # no device sends or receives its table half
    for k in ("loss", "params", "opt_state", "ema", "table", "carry"):
      assert d[k] <= 1e-5, (k, d)


# ---------------------------------------------------------------------------
# SIGTERM on every process of a 2-process run (a pod / Slurm preemption).

PREEMPT_STEPS = 80
PREEMPT_TIMEOUT = TIMEOUT
PREEMPT_FLAGS = [f"--config.train.steps={PREEMPT_STEPS}", "--config.train.checkpoint_every=0",
                 "--config.train.eval_every=0", "--config.train.log_every=10", "--config.eval.max_examples=8"]


def test_sigterm_on_both_processes_saves_and_resumes(tmp_path, env):
  """Both processes agree on one step (JAX's preemption sync point), save it collectively and exit 0
  long before the end; the re-run ends with exactly the uninterrupted run's metrics and state."""
  t0 = time.time()
  ref, termed = str(tmp_path / "ref"), str(tmp_path / "termed")

  def argv_of(workdir, port):
    base = driver(workdir, 2, port)
    return lambda i: base(i) + PREEMPT_FLAGS

  launch(argv_of(ref, free_port()), 2, 2, env, timeout=PREEMPT_TIMEOUT)
  t_ref = time.time() - t0

  e = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  port = free_port()
  procs = [subprocess.Popen(argv_of(termed, port)(i), cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    deadline = time.time() + PREEMPT_TIMEOUT
    logged = lambda: [x["step"] for x in (metrics.read(termed) if os.path.exists(
        os.path.join(termed, "metrics.jsonl")) else []) if "train/lm_loss" in x]
    while time.time() < deadline and all(p.poll() is None for p in procs) and not logged():
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "a process ended before it was signalled"
    for p in procs:
      p.send_signal(signal.SIGTERM)
    t_term = time.time()
    outs = [p.communicate(timeout=PREEMPT_TIMEOUT) for p in procs]
    t_exit = time.time() - t_term
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  for i, (p, (_, err)) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{err[-3000:]}"
  saved = ckpt_steps(termed)
  assert len(saved) == 1 and 0 < saved[0] < PREEMPT_STEPS, saved
  s = saved[0]
  assert f"SIGTERM: saved step {s}," in outs[0][0] + outs[0][1]
  assert f"process 1: SIGTERM: saved step {s}," in outs[1][1]

  launch(argv_of(termed, free_port()), 2, 2, env, timeout=PREEMPT_TIMEOUT)
  assert ckpt_steps(termed) == [s, PREEMPT_STEPS]
  final = lambda w: [x for x in metrics.read(w) if "eval/test/exact_accuracy" in x][-1]
  fa, fb = final(ref), final(termed)
  keys = sorted(k for k in fa if k.startswith("eval/"))
  assert keys and fa["step"] == fb["step"] == PREEMPT_STEPS
  assert {k: fa[k] for k in keys} == {k: fb[k] for k in keys}
  _, sa, _ = solve.load_run(ref)
  _, sb, _ = solve.load_run(termed)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  print(f"\n2-process SIGTERM: reference {t_ref:.1f}s, saved step {s} of {PREEMPT_STEPS}, both exited "
        f"{t_exit:.1f}s after SIGTERM; total {time.time() - t0:.1f}s")
