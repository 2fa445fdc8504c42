"""Shared config helpers; experiment files import only this module.

`model_config()` holds every model field with the reference's defaults; `train_config()` the optimisation fields.
Experiment files override fields and return a locked `ConfigDict` (a misspelt field then fails).
"""

from __future__ import annotations

import math

import ml_collections

ARCHS = ("trm", "hrm")
VARIANTS = ("default", "separate_nets", "one_step_grad", "single_latent", "multiscale_latent")


def model_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.arch = "trm"  # "trm" | "hrm"
  c.variant = "default"  # TRM paper ablations, see VARIANTS
  c.seq_len = 81
  c.vocab_size = 11
  c.num_puzzle_identifiers = 1
  c.hidden_size = 512
  c.num_heads = 8
  c.expansion = 4.0
  c.H_cycles = 3
  c.L_cycles = 6
  c.L_layers = 2
  c.H_layers = 0  # HRM (and only HRM) uses H_layers
  c.pos_encodings = "rope"  # "rope" | "learned" | "none"
  c.mlp_t = False  # MLP-mixer over the sequence instead of attention
  c.puzzle_emb_ndim = 512  # 0 disables puzzle embeddings
  c.puzzle_emb_len = 16  # TRM prefix length; 0 -> ceil(ndim / hidden)
  c.rms_norm_eps = 1e-5
  c.rope_theta = 10000.0
  c.dtype = "bfloat16"  # activation dtype; params are float32
  c.halt_max_steps = 16
  c.halt_exploration_prob = 0.1
  c.no_ACT_continue = True  # TRM default; False adds the Q-continue loss
  c.loss_type = "stablemax"  # "stablemax" | "softmax"
  c.recursion = "loop"  # "loop" (Python-unrolled) | "scan" (jax.lax.scan)
  c.remat = "auto"  # "auto" (loop: "none"; scan: "dots" on CPU/TPU, "none" on GPU) | "none" | "dots" | "full"
  c.scan_unroll = 1  # lax.scan unroll factor of the L-cycle scan (recursion="scan" only)
  c.attention_impl = "auto"  # "auto" | "xla" | "cudnn" (GPU) | "splash" (TPU Pallas kernel)
  c.mlp_impl = "auto"  # SwiGLU: "auto" (TPU: "pallas", else "xla") | "xla" | "pallas" (one Pallas kernel, fused_mlp.py)
  c.qkv_impl = "auto"  # splash's q, k, v: "auto" (TPU: "pallas", else "xla") | "xla" | "pallas" (fused_qkv.py)
  c.mixer_impl = "auto"  # MLP-mixer token mixing: "auto" (GPU: "einsum", else "transpose") | "transpose" | "einsum"
  c.update(overrides)
  return c


def train_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.global_batch_size = 768
  c.epochs = 50000
  c.steps = -1  # -1: derived from epochs
  c.optimizer = "adam_atan2"  # "adam_atan2" | "adamw"
  c.lr = 1e-4
  c.lr_min_ratio = 1.0
  c.lr_warmup_steps = 2000
  c.beta1 = 0.9
  c.beta2 = 0.95
  c.weight_decay = 1.0
  c.puzzle_emb_lr = 1e-4
  c.puzzle_emb_weight_decay = 1.0
  c.ema = True
  c.ema_rate = 0.999
  c.eval_every = 5000  # evaluate every N steps (0: only at the end) ...
  c.eval_every_epochs = -1  # ... or every N epochs (-1: off), as the reference (experiment files)
  c.epochs_per_iter = -1  # sampler iteration (one partial batch dropped each); -1: eval_every_epochs or 1
  c.checkpoint_every = 5000
  c.log_every = 100
  c.keep_checkpoints = 3
  c.profile_steps = ""  # "a,b": jax.profiler trace of train steps a..b into <workdir>/profile
  c.update(overrides)
  return c


def validate_model(c) -> None:
  """Clear errors for impossible model settings, naming the field."""

  def bad(field, msg):
    raise ValueError(f"config.model.{field}: {msg}")

  if c.arch not in ARCHS:
    bad("arch", f"must be one of {ARCHS}, got {c.arch!r}")
  if c.variant not in VARIANTS:
    bad("variant", f"must be one of {VARIANTS}, got {c.variant!r}")
  if c.arch == "hrm" and c.variant != "default":
    bad("variant", "ablation variants apply to TRM only")
  if c.arch == "hrm" and c.H_layers <= 0:
    bad("H_layers", "HRM needs H_layers > 0")
  if c.recursion not in ("scan", "loop"):
    bad("recursion", f"must be 'scan' or 'loop', got {c.recursion!r}")
  if c.remat not in ("auto", "none", "dots", "full"):
    bad("remat", f"must be 'auto', 'none', 'dots' or 'full', got {c.remat!r}")
  if c.get("scan_unroll", 1) < 1:
    bad("scan_unroll", f"must be >= 1, got {c.scan_unroll}")
  if c.get("mixer_impl", "auto") not in ("auto", "transpose", "einsum"):
    bad("mixer_impl", f"must be 'auto', 'transpose' or 'einsum', got {c.mixer_impl!r}")
  for field in ("mlp_impl", "qkv_impl"):
    if c.get(field, "auto") not in ("auto", "xla", "pallas"):
      bad(field, f"must be 'auto', 'xla' or 'pallas', got {c[field]!r}")
  if c.pos_encodings not in ("rope", "learned", "none"):
    bad("pos_encodings", f"must be 'rope', 'learned' or 'none', got {c.pos_encodings!r}")
  for field, lo, hi in MODEL_INTS:
    _check_int(c, field, lo, hi, "model")
  for field, lo, hi, ends in MODEL_FLOATS:
    _check_float(c, field, lo, hi, ends, "model")
  for field in ("mlp_t", "no_ACT_continue"):
    if not isinstance(c[field], bool):
      bad(field, f"must be True or False, got {c[field]!r}")
  if c.dtype not in DTYPES:
    bad("dtype", f"must be one of {DTYPES}, got {c.dtype!r}")
  if c.attention_impl not in ("auto", "xla", "cudnn", "splash"):
    bad("attention_impl", f"must be 'auto', 'xla', 'cudnn' or 'splash', got {c.attention_impl!r}")
  if not str(c.loss_type).startswith(("stablemax", "softmax")):
    bad("loss_type", f"must be 'stablemax' or 'softmax', got {c.loss_type!r}")
  if not c.mlp_t and c.hidden_size % c.num_heads:
    bad("num_heads", f"hidden_size {c.hidden_size} is not divisible by {c.num_heads} heads")


# Sane bounds (inclusive) for every numeric field: zero, negative or absurd sizes fail before any allocation.
BIG = 1 << 24
MODEL_INTS = (
  ("seq_len", 1, 1 << 16),
  ("vocab_size", 2, 1 << 16),
  ("num_puzzle_identifiers", 1, 1 << 27),
  ("hidden_size", 1, 1 << 16),
  ("num_heads", 1, 1 << 12),
  ("H_cycles", 1, 1 << 10),
  ("L_cycles", 1, 1 << 10),
  ("L_layers", 1, 1 << 10),
  ("H_layers", 0, 1 << 10),
  ("puzzle_emb_ndim", 0, 1 << 16),
  ("puzzle_emb_len", 0, 1 << 12),
  ("halt_max_steps", 1, 1 << 12),
)
MODEL_FLOATS = (  # (field, lo, hi, the interval's brackets)
  ("expansion", 0.0, 1024.0, "(]"),
  ("rms_norm_eps", 0.0, 1.0, "(]"),
  ("rope_theta", 0.0, 1e12, "(]"),
  ("halt_exploration_prob", 0.0, 1.0, "[]"),
)
TRAIN_INTS = (
  ("global_batch_size", 1, BIG),
  ("lr_warmup_steps", 0, 1 << 40),
  ("eval_every", 0, 1 << 40),
  ("eval_every_epochs", -1, 1 << 40),
  ("epochs_per_iter", -1, 1 << 40),
  ("checkpoint_every", 0, 1 << 40),
  ("log_every", 0, 1 << 40),
  ("keep_checkpoints", 1, 1 << 20),
)
INF = float("inf")  # finite is always required; rates may be absurd on purpose (the non-finite guard's test)
TRAIN_FLOATS = (
  ("lr", 0.0, INF, "[]"),
  ("lr_min_ratio", 0.0, 1.0, "[]"),
  ("beta1", 0.0, 1.0, "[)"),
  ("beta2", 0.0, 1.0, "[)"),
  ("weight_decay", 0.0, INF, "[]"),
  ("puzzle_emb_lr", 0.0, INF, "[]"),
  ("puzzle_emb_weight_decay", 0.0, INF, "[]"),
  ("ema_rate", 0.0, 1.0, "[]"),
)
DTYPES = ("bfloat16", "float32", "float16", "float64")  # float64: parity --x64 (needs jax_enable_x64)


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _check_int(c, field, lo, hi, section):
  v = c[field]
  if not _is_int(v) or not lo <= v <= hi:
    raise ValueError(f"config.{section}.{field}: must be an integer in [{lo}, {hi}], got {v!r}")


def _check_float(c, field, lo, hi, ends, section):
  """`ends`: the interval's brackets, "[]", "(]" or "[)"."""
  v = c[field]
  ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
  if not (ok and (lo <= v if ends[0] == "[" else lo < v) and (v <= hi if ends[1] == "]" else v < hi)):
    raise ValueError(f"config.{section}.{field}: must be a number in {ends[0]}{lo:g}, {hi:g}{ends[1]}, got {v!r}")


def validate(config) -> None:
  """Every field of a run config checked against sane bounds (call before any allocation).

  Raises ValueError naming the first bad field (`config.train.global_batch_size: ...`)."""
  t = config.train
  if not _is_int(config.seed) or not 0 <= config.seed < 1 << 32:
    raise ValueError(f"config.seed: must be an integer in [0, 2**32), got {config.seed!r}")
  for field, lo, hi in TRAIN_INTS:
    _check_int(t, field, lo, hi, "train")
  for field, lo, hi, ends in TRAIN_FLOATS:
    _check_float(t, field, lo, hi, ends, "train")
  if t.steps is not None and (not _is_int(t.steps) or t.steps > 1 << 40):
    raise ValueError(f"config.train.steps: must be an integer (-1: derived from epochs), got {t.steps!r}")
  if t.steps is None or t.steps < 0:
    _check_float(t, "epochs", 0.0, 1e9, "(]", "train")
  if not isinstance(t.ema, bool):
    raise ValueError(f"config.train.ema: must be True or False, got {t.ema!r}")
  if t.optimizer not in ("adam_atan2", "adamw"):
    raise ValueError(f"config.train.optimizer: must be 'adam_atan2' or 'adamw', got {t.optimizer!r}")
  e = config.eval
  _check_int(e, "batch_size", 1, BIG, "eval")
  for field in ("supervision_steps", "max_examples"):  # <= 0: the default (all steps / all examples)
    _check_int(e, field, -1, 1 << 40, "eval")
  if not isinstance(e.arc_aggregate_voting, bool):
    raise ValueError(f"config.eval.arc_aggregate_voting: must be True or False, got {e.arc_aggregate_voting!r}")
  _check_int(config.mesh, "table_parallel", 1, 1 << 16, "mesh")
  if not str(config.data.name):
    raise ValueError("config.data.name: must not be empty")
  validate_model(config.model)


# What "auto" means, by the platform of the devices a program is compiled for (not the host's: a TPU program is compiled
# from a CPU host). remat applies to a scanned gradient cycle (loops need none). On CPU "dots" (recompute all but the
# weight matmuls) was measured: without it a scanned cycle stacks every residual of its body (1.6x the loop's memory,
# 1.4x its time). On a GPU the recomputed memory-bound elementwise chains cost 14-17% of the step (issue 15) and an H200
# holds the stacked residuals. Unknown platforms get the CPU's.
AUTO = {
  "attention_impl": {"gpu": "cudnn", "tpu": "xla", "cpu": "xla"},
  "mixer_impl": {"gpu": "einsum", "tpu": "transpose", "cpu": "transpose"},
  "mlp_impl": {"gpu": "xla", "tpu": "pallas", "cpu": "xla"},
  "qkv_impl": {"gpu": "xla", "tpu": "pallas", "cpu": "xla"},
  "remat": {"gpu": "none", "tpu": "dots", "cpu": "dots"},
}


# On TPU the Pallas splash kernel keeps the (T, T) scores out of HBM; the compiler's estimate
# (benchmarks/splash_cost.py) has it move 2.6x fewer bytes than XLA's attention at T = 916 (ARC, maze) but 1.7x more at
# T = 97 (Sudoku: lane padding and per-head copies outweigh small scores).
SPLASH_MIN_SEQ = 512


def resolve_auto(c, platform: str, chip: str = "") -> dict:
  """The fields of model config `c` that are "auto", with their value on `platform` (and `chip`, a device_kind)."""
  out = {}
  for field, by_platform in AUTO.items():
    if c.get(field, "auto") == "auto":
      out[field] = by_platform.get(platform, by_platform["cpu"])
  if out.get("remat") and c.recursion != "scan":
    out["remat"] = "none"
  if out.get("attention_impl") == "xla" and platform == "tpu" and c.seq_len >= SPLASH_MIN_SEQ:
    out["attention_impl"] = "splash"
  if out.get("qkv_impl") and out.get("attention_impl", c.attention_impl) != "splash":
    out["qkv_impl"] = "xla"  # the kernel makes the splash kernel's operands
  for field in ("mlp_impl", "qkv_impl"):
    if platform == "tpu" and out.get(field, c.get(field, "auto")) == "pallas" and not _kernel_fits(field, c, chip):
      if field not in out:
        raise ValueError(f"model.{field}: 'pallas' does not fit the VMEM of a {chip or 'TPU'}; use 'auto' or 'xla'")
      out[field] = "xla"
  return out


def _kernel_fits(field: str, c, chip: str) -> bool:
  """Whether the Pallas kernel of `field` fits the VMEM of a `chip` TensorCore."""
  from trm_jax import fused_mlp, fused_qkv, model  # noqa: PLC0415  (JAX: only for TPU programs)

  if field == "qkv_impl":
    return fused_qkv.fits(c.hidden_size, c.num_heads, chip)
  itemsize = {"float32": 4, "float64": 8}.get(c.dtype, 2)
  return fused_mlp.fits(c.hidden_size, model.swiglu_inter(c.hidden_size, c.expansion), itemsize, chip)


def frozen_model(c, platform: str | None = None, chip: str = "") -> ml_collections.FrozenConfigDict:
  """The hashable model config that modules and jitted steps close over.

  "auto" choices are resolved for `platform` (the platform of the devices the program runs on, e.g.
  `mesh.devices.flat[0].platform`; default: JAX's default backend), which is kept in the `platform` field.
  """
  validate_model(c)
  if platform is None:
    import jax  # noqa: PLC0415  (experiment files import this module without JAX)

    platform = jax.default_backend()
  out = ml_collections.ConfigDict(c.to_dict())
  out.update(resolve_auto(c, platform, chip), platform=platform)
  if "scan_unroll" not in out:  # configs saved before the field existed
    out.scan_unroll = 1
  return ml_collections.FrozenConfigDict(out)


def differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Fields whose values differ between two plain-dict configs: ["model.hidden_size: 64 there, 128 here", ...]."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key, "(absent)"), current.get(key, "(absent)")
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} there, {b!r} here")
  return out


def replace(frozen, **fields) -> ml_collections.FrozenConfigDict:
  """A copy of a frozen config with some fields changed."""
  c = frozen.as_configdict()
  c.update(fields)
  return ml_collections.FrozenConfigDict(c)


def parse_arg(arg: str | None, **defaults) -> dict:
  """'arch=hrm,variant=att' -> {'arch': 'hrm', 'variant': 'att'} over defaults; an unknown key fails, naming it."""
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    key = key.strip()
    if not sep or key not in defaults:
      raise ValueError(f"config argument {part!r}: expected key=value with key in {sorted(defaults)}")
    out[key] = value.strip()
  return out


def data_config(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "sudoku_extreme"  # TFDS builder name, or "generated/<set>" for in-memory toy sets
  c.config = ""  # builder config name
  c.data_dir = "~/tensorflow_datasets"
  c.manual_dir = ""  # raw files for builders that need them (else downloaded)
  c.mirror = ""  # download from MIRROR/HOST/PATH instead of https://HOST/PATH
  c.build_timeout_s = 7200.0  # processes > 0 wait this long for process 0 to build the set
  c.eval_sets = ("test",)
  c.update(overrides)
  return c


def base_config(arch: str = "trm") -> ml_collections.ConfigDict:
  """Every field of a run with the reference defaults; experiments override.

  arch="hrm" gives HRM's published shape (2x2 cycles, 4+4 layers, no EMA)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = data_config()
  c.model = model_config()
  c.train = train_config()
  # arc_aggregate_voting: ARC pass@K votes over every evaluation of the run so far (the reference's default); False
  # votes over the current evaluation only.
  c.eval = ml_collections.ConfigDict(
    dict(batch_size=768, supervision_steps=-1, max_examples=-1, arc_aggregate_voting=True)
  )
  # Devices that split the puzzle-embedding table by rows (the rest is data parallel).
  c.mesh = ml_collections.ConfigDict(dict(table_parallel=1))
  if arch == "hrm":
    c.model.update(arch="hrm", H_cycles=2, L_cycles=2, H_layers=4, L_layers=4, puzzle_emb_len=0, no_ACT_continue=False)
    c.train.ema = False
  elif arch != "trm":
    raise ValueError(f"config argument arch={arch!r}: expected 'trm' or 'hrm'")
  return c


def arc_config(arch: str, data_config_name: str) -> ml_collections.ConfigDict:
  """The published ARC setting (shared by the ARC-AGI-1 and -2 experiments)."""
  c = base_config(arch)
  c.data.update(name="arc_agi", config=data_config_name)
  # num_puzzle_identifiers comes from the dataset's metadata at run time.
  c.model.update(seq_len=900, vocab_size=12, num_puzzle_identifiers=1, pos_encodings="rope")
  if arch == "trm":
    c.model.update(H_cycles=3, L_cycles=4, puzzle_emb_len=16)
  c.train.update(lr=1e-4, puzzle_emb_lr=1e-2, weight_decay=0.1, puzzle_emb_weight_decay=0.1)
  # TRM's and HRM's ARC runs: 100k epochs, an evaluation every 10k (10 in all), votes pooled over them.
  reference_schedule(c, epochs=100000, eval_every_epochs=10000)
  return c


def reference_schedule(c, epochs: int, eval_every_epochs: int) -> None:
  """The reference's run length and cadence: `epochs`, evaluating every `eval_every_epochs`."""
  c.train.update(epochs=epochs, steps=-1, eval_every_epochs=eval_every_epochs, eval_every=0, epochs_per_iter=-1)
