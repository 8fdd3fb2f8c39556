"""What every benchmark shares: the timer, the test model, result rows and the machine's description."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Hashable, Mapping
from importlib import metadata
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import models

# Random weights that keep every layer active on random images (as tests/test_deconv.py).
WEIGHT_STD = {"conv1": 0.01, "conv2": 0.05, "conv3": 0.05, "conv4": 0.05, "conv5": 0.05, "fc6": 0.05,
              "fc7": 0.05}
NUM_CLASSES = 1000


def model(name: str, batch: int, seed: int = 0,
          num_classes: int = NUM_CLASSES) -> tuple[models.Arch, models.Params, np.ndarray]:
  """A benchmark model: the named arch, random params (bias 0.05) and `batch` random images."""
  arch = models.get_arch(name)
  params = models.init_params(arch, jax.random.key(seed), num_classes, WEIGHT_STD, bias=0.05)
  images = np.asarray(jax.random.normal(jax.random.key(seed + 1), (batch, arch.input_size, arch.input_size, 3)) * 60)
  # Classifier scaled to logits of std 2, so that softmax is neither flat nor saturated (occlusion maps).
  logits, _ = models.forward(arch, params, jnp.asarray(images))
  scale = 2.0 / float(jnp.std(logits))
  classifier = arch.layers[-1].name
  params[classifier] = {key: value * scale for key, value in params[classifier].items()}
  return arch, params, images


def without_norm(arch: models.Arch) -> models.Arch:
  """`arch` with its contrast normalization layers removed (same params)."""
  return models.Arch(f"{arch.name}-no-norm", arch.input_size,
                     tuple(layer for layer in arch.layers if not isinstance(layer, models.Norm)))


def up_to(arch: models.Arch, layer: str) -> models.Arch:
  """`arch` truncated after `layer`: forward() of it stops there (same params)."""
  return models.Arch(f"{arch.name}-to-{layer}", arch.input_size, arch.layers[:arch.layer_names.index(layer) + 1])


def timeit_rounds(fns: Mapping[Hashable, Callable[[], Any]], repeats: int,
                  warmup: int = 1) -> dict[Hashable, list[float]]:
  """Wall-clock seconds of each of `fns` in each of `repeats` rounds, after `warmup` untimed calls each.

  The functions take turns (one call of each per round), so that a change in the machine's load
  during the run falls on all of them alike. JAX results are waited for (`block_until_ready`); torch
  on CPU is synchronous.
  """
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times: dict[Hashable, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)
  return times


def timeit(fns: Mapping[Hashable, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[Hashable, float]:
  """Median wall-clock seconds of each of `fns` over `repeats` rounds (`timeit_rounds`)."""
  return {name: statistics.median(t) for name, t in timeit_rounds(fns, repeats, warmup).items()}


def row(benchmark: str, model_name: str, metric: str, ours: float, baseline: float, baseline_name: str,
        goal: float | None, config: str, note: str = "", lower_is_better: bool = False) -> dict[str, Any]:
  """One result: zf_jax's figure, the baseline's from the same run, their ratio and the goal.

  The goal is met when ratio >= goal, or ratio <= goal with `lower_is_better`.
  """
  ratio = ours / baseline
  met = None if goal is None else bool(ratio <= goal if lower_is_better else ratio >= goal)
  return {"benchmark": benchmark, "model": model_name, "metric": metric, "zf_jax": ours, "baseline": baseline,
          "baseline_name": baseline_name, "ratio": ratio, "goal": goal, "goal_op": "<=" if lower_is_better else ">=",
          "met": met, "config": config, "note": note}


def _version(package: str) -> str:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "not installed"


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor() or "unknown"
  for line in out.splitlines():
    if line.startswith("Model name:"):
      return line.split(":", 1)[1].strip()
  return "unknown"


def load_average() -> str:
  """The machine's 1, 5 and 15 minute load averages."""
  return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def environment() -> dict[str, Any]:
  """Date, machine and versions, for the results header."""
  devices = jax.devices()
  return {
      "load_average": load_average(),
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "cpu": _cpu_model(), "cores": os.cpu_count(), "jax_devices": ", ".join(str(d.device_kind) for d in devices),
      "gpu": "none lent to this run" if devices[0].platform == "cpu" else str(devices[0].device_kind),
      "python": platform.python_version(),
      **{package: _version(package) for package in ("jax", "jaxlib", "optax", "numpy", "torch", "captum")},
  }
