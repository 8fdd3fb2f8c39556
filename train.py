"""Trains a model of the paper (section 3); re-running the same command resumes.

  python train.py --config=configs/NAME.py --workdir=DIR [--config.key=value ...]

Multi-host (one process per host, e.g. TPU pods or SLURM): add --multihost, which calls
jax.distributed.initialize() before anything touches the devices: coordinator, process count and id
from the environment (TPU, SLURM, Open MPI), or given as --coordinator_address=HOST:PORT
--num_processes=N --process_id=I elsewhere (e.g. GPU hosts without a scheduler; CPU processes use
Gloo collectives). Every process runs the same command with the same --workdir on a shared file system.
"""
import logging as std_logging
import os
import re
import runpy
import sys
from typing import NoReturn

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from zf_jax import train_lib

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and tensorboard/.",
                              required=True)
CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (multi-host runs).")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --multihost: process 0's HOST:PORT "
                                  "(default: detected from TPU/SLURM/Open MPI).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --multihost: how many processes (default: detected).")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --multihost: this process's index (default: detected).")


def _fail(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a config file that cannot be loaded or a --config.KEY that the config does
  not have (or a bad value) reported in one `error:` line (exit 1) instead of ml_collections' traceback."""
  try:
    rest = flags.FLAGS(argv)
    if CONFIG.value is None:
      _fail("--config is required; allowed: a configs/*.py file, e.g. --config=configs/demo.py")
    CONFIG.value.to_dict()  # a config file that failed to load raises here
    return rest
  except flags.Error as e:  # a flag absl does not know, or a value that does not parse
    _fail(f"{str(e).splitlines()[0]}; allowed: the flags of train.py --helpfull, values of each key's type")
  except AttributeError as e:  # --config.KEY=... with a KEY the config does not have
    key, parent, keys = _unknown_key(argv)
    guess = re.search(r'Did you mean "([^"]+)"', str(e))
    where = f"{_config_path(argv)}" + (f"'s {parent}" if parent else "")
    _fail(f"--config.{key}: {where} has no such key{f' (did you mean {guess[1]}?)' if guess else ''}; "
          f"allowed: {keys}")
  except (OSError, SyntaxError, ImportError) as e:  # the config file: missing, unreadable, not Python
    detail = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
    _fail(f"--config={_config_path(argv)} cannot be loaded ({detail}); allowed: a configs/*.py file defining "
          "get_config()")


def _unknown_key(argv: list[str]) -> tuple[str, str, str]:
  """(the first --config.KEY of argv that the config file lacks, the dotted key holding it ("" at the top),
  the keys allowed there); ("?", "", the top-level keys) where the config file cannot be run."""
  try:
    config = runpy.run_path(_config_path(argv).split(":")[0])["get_config"]().to_dict()
  except Exception:
    return "?", "", _config_keys(_config_path(argv))
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg.split("=")[0][len("--config."):]
    node, parts = config, key.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, dict) or part not in node:
        parent = ".".join(parts[:i])
        allowed = ", ".join(sorted(node)) if isinstance(node, dict) and node else \
            f"none ({parent} is empty in the config file: set its keys there)" if isinstance(node, dict) else \
            f"none ({parent} is not a dict)"
        return key, parent, allowed
      node = node[part]
  return "?", "", _config_keys(_config_path(argv))


def _config_keys(path: str) -> str:
  """The top-level keys of a config file, or "the keys of PATH" where it cannot be run."""
  try:
    return ", ".join(sorted(runpy.run_path(path.split(":")[0])["get_config"]().keys()))
  except Exception:
    return f"the keys of {path}"


def _config_path(argv: list[str]) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "?")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments: {' '.join(argv[1:])}; allowed: flags only (--config=FILE --workdir=DIR ...)")
  # Keep INFO lines of this program; libraries (orbax, jax) speak at WARNING and above.
  # Orbax's own reports of a failed checkpoint write (tracebacks) are dropped: the failure reaches
  # train_lib, which says it in one line.
  logging.get_absl_logger().addFilter(
      lambda r: (r.levelno >= std_logging.WARNING and not ("/orbax/" in r.pathname and r.exc_info))
      or "/zf_jax/" in r.pathname or r.pathname == __file__)
  if MULTIHOST.value:
    jax.distributed.initialize(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  try:
    result = train_lib.train_and_evaluate(CONFIG.value, WORKDIR.value)
  except train_lib.CheckpointSaveError as e:  # orbax's threads of the failed save would hang the exit
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)
  except (ValueError, train_lib.NonFiniteLossError) as e:
    _fail(str(e))
  except OSError as e:  # the workdir or a data file became unwritable/unreadable during the run
    _fail(f"{e.filename or WORKDIR.value}: {e.strerror or e}")
  print(" ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
