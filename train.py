"""Trains a model of the paper (section 3); re-running the same command resumes.

  python train.py --config=configs/NAME.py --workdir=DIR [--config.key=value ...]

Multi-host (one process per host, e.g. TPU pods or SLURM): add --multihost, which calls
jax.distributed.initialize() (coordinator, process count and id from the environment) before
anything touches the devices. Every process runs the same command with the same --workdir on a
shared file system.
"""
import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from zf_jax import train_lib

WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl and tensorboard/.",
                              required=True)
CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first (multi-host runs).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Keep INFO lines of this program; libraries (orbax, jax) speak at WARNING and above.
  logging.get_absl_logger().addFilter(
      lambda r: r.levelno >= std_logging.WARNING or "/zf_jax/" in r.pathname or r.pathname == __file__)
  if MULTIHOST.value:
    jax.distributed.initialize()
  logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
  try:
    result = train_lib.train_and_evaluate(CONFIG.value, WORKDIR.value)
  except (ValueError, train_lib.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(" ".join(f"{k}={v:.4g}" for k, v in sorted(result.items())))


if __name__ == "__main__":
  app.run(main)
