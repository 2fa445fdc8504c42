"""Multi-process runs on localhost: 2 processes x 2 fake CPU devices equal 1 process x 4 devices.

Every run is its own set of subprocesses (the device-count flag and
`jax.distributed.initialize` are per process), joined over gloo CPU collectives.

- `test_two_processes_equal_one_driver`: the real driver (`trm_jax.main` with
  --coordinator_address/--num_processes/--process_id) on experiments/smoke.py:
  per-process data shards, one collective Orbax checkpoint, process-0-only
  metrics and evaluation; final state and eval metrics equal the 1 x 4 run's.
- `test_sigterm_on_both_processes_saves_and_resumes`: SIGTERM to both processes
  of the same 2 x 2 run; both save one agreed step and exit 0, and the same
  command resumes it to exactly the uninterrupted 2 x 2 run's state and metrics,
  setting aside a newer checkpoint that does not restore.
  (A restart after a crash that left metrics past the checkpoint is process-0
  bookkeeping, tested single-process in train_test and gcs_test.)
- `test_sharded_table_two_processes`: the train step with the puzzle table split
  along `table` (table_parallel=2) across the two processes, with ids repeated
  within and across devices, equals a single-device step; the compiled train
  and eval steps never hold the whole table (no all-gather of it: row gathers
  and the scatter stay partitioned).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from procs import finish, free_port, read_to_point

from trm_jax import faults, metrics, runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 400  # per launch: compiling dominates, and a shared, loaded CPU can take minutes


def start(argv_of, n_procs: int, devices_per_proc: int, env):
  """Starts `n_procs` processes (argv_of(i)) without waiting; -> their Popen objects."""
  e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_proc}")
  return [
    subprocess.Popen(argv_of(i), cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for i in range(n_procs)
  ]


def launch(argv_of, n_procs: int, devices_per_proc: int, env, timeout=TIMEOUT):
  """Starts `n_procs` processes (argv_of(i)), waits for all; -> list of (rc, stdout, stderr)."""
  return finish(start(argv_of, n_procs, devices_per_proc, env), timeout)


# ---------------------------------------------------------------------------
# The driver: 1 x 4 devices, 2 processes x 2 devices uninterrupted, and 2 x 2 stopped by SIGTERM.

# The smoke run with one cycle per level (compiles faster; every path of a run is still there):
# 64 steps, evaluations at 32 and 64 over all 24 test puzzles, a checkpoint at the end (or at SIGTERM).
STEPS = 64
FLAGS = [
  "--config=experiments/smoke.py",
  "--config.model.H_cycles=1",
  "--config.model.L_cycles=1",
  f"--config.train.steps={STEPS}",
  "--config.train.eval_every=32",
  "--config.train.checkpoint_every=0",
  "--config.train.log_every=4",
  "--config.train.keep_checkpoints=3",
  "--config.eval.max_examples=-1",
]


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


def last_eval(workdir) -> dict:
  return [e for e in metrics.read(workdir) if "eval/test/exact_accuracy" in e][-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
  """The same run on 1 process x 4 devices and, uninterrupted, on 2 processes x 2 devices.

  Both tests below compare against these runs; they start together (3 processes), so one
  compiles while another waits on its peer. -> (one, two, outputs of two's processes, seconds)."""
  t0 = time.time()
  d = tmp_path_factory.mktemp("uninterrupted")
  one, two = str(d / "one"), str(d / "two")
  p_one, p_two = start(driver(one, 1), 1, 4, env), start(driver(two, 2, free_port()), 2, 2, env)
  try:
    out_two = finish(p_two, TIMEOUT)
  finally:
    out_one = finish(p_one, TIMEOUT, check=False)  # never leaves a process behind
  assert out_one[0][0] == 0, f"the 1 x 4 run exited with {out_one[0][0]}:\n{out_one[0][2][-3000:]}"
  return one, two, out_two, time.time() - t0


def test_two_processes_equal_one_driver(uninterrupted):
  """Per-process data shards, one collective Orbax checkpoint, process-0-only metrics and a
  full evaluation: the 2 x 2 run's final state and eval metrics equal the 1 x 4 run's."""
  one, two, outs, seconds = uninterrupted
  assert ckpt_steps(one) == ckpt_steps(two) == [STEPS], "one collective checkpoint per save"
  assert f"steps 0 -> {STEPS}" in outs[0][1] + outs[0][2]
  assert "parameters:" not in outs[1][1] + outs[1][2], "only process 0 logs"
  events = metrics.read(two)
  assert sum("params" in e for e in events) == 1 and sum("compile_seconds" in e for e in events) == 1
  assert [e["step"] for e in events if "eval/test/exact_accuracy" in e] == [32, STEPS]

  # Final state (params, optimiser state, EMA, puzzle table, step) and the last evaluation.
  _, sa, _, _ = runs.load_run(one)
  _, sb, _, _ = runs.load_run(two)
  assert int(sa.step) == int(sb.step) == STEPS
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  errs = {k: rel_err(getattr(sa, k), getattr(sb, k)) for k in ("params", "opt_state", "ema", "puzzle_table")}
  assert float(np.abs(np.asarray(sa.puzzle_table)).max()) > 0
  ea, eb = last_eval(one), last_eval(two)
  assert ea["step"] == eb["step"] == STEPS
  assert ea["eval/test/count"] == eb["eval/test/count"] == 24  # both processes' rows counted
  keys = [k for k in ea if k.startswith("eval/")]
  assert keys and sorted(keys) == sorted(k for k in eb if k.startswith("eval/"))
  errs["eval"] = max(abs(ea[k] - eb[k]) / max(abs(ea[k]), 1e-12) for k in keys)
  print(f"\nmultihost driver: 1x4 and 2x2 runs side by side {seconds:.1f}s; relative errors {errs}")
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
  s4 = jax.jit(create, out_shardings=sharding.state_shardings(mesh, jax.eval_shape(create)))()
  carry_sh = sharding.carry_shardings(mesh, jax.eval_shape(carry_fn))
  c4 = jax.jit(carry_fn, out_shardings=carry_sh)()
  jitted = sharding.jit_train_step(step_fn, mesh, sharding.state_shardings(mesh, jax.eval_shape(create)), carry_sh)
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
  for _, stdout, _ in out:
    d = json.loads(stdout.strip().splitlines()[-1])
    print(d)
    assert d["moved_rows"] == [1, 2, 150, 151]  # only the batch's rows, in both table shards
    # The whole table (f32[200,32]) never appears: each device gathers from and scatters into its own
    # f32[100,32] half; only batch-sized rows (ids, gathered rows, row gradients) travel between devices.
    assert d["train_half_table"] and not d["train_full_table"], d
    assert d["all_gathers"] and all(int(g.split("[")[1].split(",")[0].rstrip("]")) <= 8 for g in d["all_gathers"]), d
    assert d["eval_half_table"] and not d["eval_full_table"], d
    assert not d["collective_on_table"], d  # no device sends or receives its table half
    for k in ("loss", "params", "opt_state", "ema", "table", "carry"):
      assert d[k] <= 1e-5, (k, d)


# ---------------------------------------------------------------------------
# SIGTERM on every process of a 2-process run (a pod / Slurm preemption).

SYNC = re.compile(r"Preemption sync counter is set: (\d+)")  # XLA's INFO line (TF_CPP_MIN_LOG_LEVEL=0)


def agreed_step(stderr_path, procs, timeout=120) -> int:
  """The step XLA's preemption sync protocol set, from a process's log (waits for the line)."""
  deadline = time.time() + timeout
  while not (m := SYNC.search(stderr_path.read_text())):
    assert all(p.poll() is None for p in procs), f"a process ended before agreeing:\n{stderr_path.read_text()[-3000:]}"
    assert time.time() < deadline, f"no preemption sync line in {stderr_path}:\n{stderr_path.read_text()[-3000:]}"
    time.sleep(0.05)
  return int(m.group(1))


def test_sigterm_on_both_processes_saves_and_resumes(tmp_path, env, uninterrupted):
  """Both processes agree on one step (JAX's preemption sync point), save it collectively and exit 0
  long before the end; the re-run (the same command) resumes from it and ends with exactly the
  uninterrupted 2-process run's metrics and state."""
  t0 = time.time()
  termed = str(tmp_path / "termed")
  # Process 0 stops where it has shown its first logged step (4; process 1 runs on until a collective
  # needs process 0), both get SIGTERM there, and process 0 goes on once the processes have agreed
  # on the step to save: one past the furthest step either had reached, whatever their speed.
  e = dict(
    env,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    TF_CPP_MIN_LOG_LEVEL="0",
    **{faults.ENV: "progress_logged"},
  )
  argv, errs, procs = driver(termed, 2, free_port()), [tmp_path / f"stderr-{i}" for i in range(2)], []
  try:
    for i in range(2):
      with open(errs[i], "w") as err:  # files: no pipe fills while process 0 waits at the point
        procs.append(
          subprocess.Popen(
            argv(i), cwd=ROOT, env=e, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
          )
        )
    head = read_to_point(procs[0], "progress_logged", errs[0])
    assert "step 4/" in head, head[-2000:]
    for p in procs:
      p.send_signal(signal.SIGTERM)
    agreed = [agreed_step(err, procs) for err in errs]
  except BaseException:
    for p in procs:
      p.kill()
      p.communicate()
    raise
  t_term = time.time()
  outs = finish(procs, TIMEOUT)  # closes stdin: releases process 0
  t_exit = time.time() - t_term
  logs = [head + outs[0][1] + errs[0].read_text(), outs[1][1] + errs[1].read_text()]
  saved = ckpt_steps(termed)
  # Agreed while process 0 waited after step 4: past it, and long before the end.
  assert agreed[0] == agreed[1] and saved == agreed[:1] and 4 < saved[0] < STEPS - 8, (agreed, saved)
  s = saved[0]
  assert f"SIGTERM: saved step {s}," in logs[0]
  assert f"process 1: SIGTERM: saved step {s}," in logs[1]

  # A newer checkpoint that does not restore (its array index is gone), as a crash mid-copy can
  # leave: both processes skip it, process 0 sets it aside, and the run resumes from step s.
  bad = os.path.join(termed, "checkpoints", str(s + 1))
  shutil.copytree(os.path.join(termed, "checkpoints", str(s)), bad)
  os.remove(os.path.join(bad, "state", "manifest.ocdbt"))

  t1 = time.time()
  again = launch(driver(termed, 2, free_port()), 2, 2, env)
  t_resume = time.time() - t1
  log0 = again[0][1] + again[0][2]
  assert f"steps {s} -> {STEPS}" in log0
  assert ckpt_steps(termed) == [s, STEPS]
  aside = [n for n in os.listdir(termed) if n.startswith(f"damaged_checkpoint_{s + 1}_")]
  assert len(aside) == 1 and f"resuming from step {s}" in log0 and aside[0] in log0, log0[-2000:]
  assert "warning:" not in again[1][2], "process 0 alone warns"
  events = metrics.read(termed)
  assert sum("params" in e for e in events) == 1
  assert sum("compile_seconds" in e for e in events) == 2  # one per launch, process 0 only
  tb = os.path.join(termed, "tensorboard")
  if os.path.isdir(tb):
    assert len(os.listdir(tb)) == 2

  ref = uninterrupted[1]
  fa, fb = last_eval(ref), last_eval(termed)
  keys = sorted(k for k in fa if k.startswith("eval/"))
  assert keys and fa["step"] == fb["step"] == STEPS
  assert {k: fa[k] for k in keys} == {k: fb[k] for k in keys}
  _, sa, _, _ = runs.load_run(ref)
  _, sb, _, _ = runs.load_run(termed)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  print(
    f"\n2-process SIGTERM: saved step {s} of {STEPS}, both exited {t_exit:.1f}s after SIGTERM; "
    f"signalled run {t1 - t0:.1f}s, resumed run {t_resume:.1f}s; total {time.time() - t0:.1f}s "
    f"(the uninterrupted reference, shared with the driver test: {uninterrupted[3]:.1f}s)"
  )
