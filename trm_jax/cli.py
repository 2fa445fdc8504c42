"""What the console scripts share: user errors as one `error: ...` line, one-line flag errors, `--help`.

User errors print one line and exit with status 1; set TRM_TRACEBACK=1 to see the traceback instead. Bugs (anything not
in `USER_ERRORS`) keep their traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import traceback

from trm_jax import errors
from trm_jax.errors import USER_ERRNOS, USER_ERRORS, UserError, first_line, os_error_line


def _quiet_closed_loop(unraisable, default=sys.unraisablehook):
  """Drops 'Event loop is closed' from tensorstore reads that finish after a failed orbax restore gave up."""
  if unraisable.exc_type is RuntimeError and "Event loop is closed" in str(unraisable.exc_value):
    return
  default(unraisable)


_ERROR_LINE_PRINTED = threading.Event()


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Drops what orbax's background threads (and asyncio, for their futures) log for a full disk (the error line names it)
  or once the error line is printed (an abandoned save still finishing), and asyncio's 'Task exception was never
  retrieved' for reads a failed orbax restore abandoned (the restore's own error says what failed)."""
  if record.getMessage().startswith("Task exception was never retrieved"):
    return False
  if "orbax" not in record.pathname and record.name != "asyncio":
    return True
  exc = record.exc_info[1] if record.exc_info else None
  full = errors.disk_full(record.getMessage()) or errors.disk_full(exc)
  return not (full or _ERROR_LINE_PRINTED.is_set())


@contextlib.contextmanager
def user_errors():
  """Turns user errors into one `error: ...` line and exit status 1."""
  if os.environ.get("TRM_TRACEBACK"):
    yield
    return
  sys.unraisablehook = _quiet_closed_loop
  logging.getLogger("asyncio").addFilter(_quiet_orbax)
  logging.getLogger("absl").addFilter(_quiet_orbax)
  try:
    yield
  except USER_ERRORS as e:
    _fail(first_line(e))
  except OSError as e:
    if e.errno not in USER_ERRNOS:
      raise
    _fail(os_error_line(e))


def _fail(line: str) -> None:
  print(f"error: {line}", file=sys.stderr, flush=True)
  _ERROR_LINE_PRINTED.set()
  sys.exit(1)


def own_help(module_name: str) -> None:
  """Makes a console script's `--help` show `module_name`'s docstring and flags.

  absl's `--help` lists the key flags and the docstring of `__main__`, which for an installed console script is the
  generated wrapper (no docstring, no flags).
  """
  from absl import flags  # noqa: PLC0415

  module = sys.modules[module_name]
  main = sys.modules.get("__main__")
  if main is not None and main is not module and not main.__doc__:
    main.__doc__ = module.__doc__
  for flag in flags.FLAGS.get_flags_for_module(module_name):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def config_error(e: BaseException, argv) -> str:
  """A config override's error as one line: `unknown field train.stpes; did you mean train.steps?`."""
  text = str(e).replace("\\'", "'").replace('\\"', '"').replace("\\n", "\n")
  key = re.match(r"""^['"]*'([^'\n]+)'""", text)
  guess = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if key is None:
    return f"--config: {first_line(e)}"
  bad = key.group(1)
  paths = [a[2:].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  path = next((p.split(".", 1)[1] for p in paths if bad in p.split(".")[1:]), bad)
  if guess is None:
    return f"unknown field {path}"
  fixed = ".".join(guess.group(1) if p == bad else p for p in path.split("."))
  return f"unknown field {path}; did you mean {fixed}?"


def loaded_config(flag_values):
  """`--config`'s ConfigDict (None when not given), loaded now (config_flags loads the file lazily): whatever loading
  raises becomes one UserError, `--config: <its text on one line>` (TRM_TRACEBACK=1 keeps the traceback)."""
  try:
    config = flag_values.config
    if config is not None:
      config.keys()
    return config
  except Exception as e:  # noqa: BLE001 - whatever loading the experiment file raised
    if os.environ.get("TRM_TRACEBACK"):
      raise
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    text = text.replace("Configuration is not available because of an earlier failure to load: ", "")
    raise UserError(f"--config: {text}") from None


def _config_line(e: BaseException, argv) -> str:
  """`FILE:LINE` of the deepest traceback frame inside the --config file ('' when it did not raise there)."""
  path = next((a.split("=", 1)[1].split(":", 1)[0] for a in argv if a.startswith("--config=")), "")
  where = os.path.abspath(path)
  lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if path and os.path.abspath(f.filename) == where]
  return f"{path}:{lines[-1]}" if lines else ""


def parse_flags(argv):
  """absl flag parsing with bad flags / config overrides reported as one line (absl `flags_parser`)."""
  from absl import flags  # noqa: PLC0415

  try:
    return flags.FLAGS(argv)
  except SystemExit as e:  # absl's --help/--helpfull print the usage, then exit 1: asking for help is no error
    sys.exit(0 if e.code == 1 else e.code)
  except flags.Error as e:  # one line; a config file that raised while loading keeps its cause (the last line)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(" Error whilst parsing config file:"):
      _fail(f"{lines[0].removesuffix(' Error whilst parsing config file:')} {lines[-1]}")
    _fail(first_line(e))
  except Exception as e:  # noqa: BLE001 - errors raised while loading the config file
    if os.environ.get("TRM_TRACEBACK"):
      raise
    where = _config_line(e, argv)
    if where:
      _fail(f"--config: {where}: {type(e).__name__}: {first_line(e)}")
    _fail(config_error(e, argv) if isinstance(e, (KeyError, AttributeError)) else f"--config: {first_line(e)}")
