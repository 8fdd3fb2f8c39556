"""Benchmark: per-layer feature extraction (sections 5.2-5.3) vs the plain forward pass.

`analysis.features.compute` over N in-memory images, every feature layer (conv1..conv5 after their
pooling and normalization, flattened; fc6, fc7) fetched to the host as numpy, against the plain
jitted forward pass (logits only) over the same batches from the same host array. Goal: >= 0.8x
the forward img/s (the features cost one forward pass plus the pooling re-applied and the copy out).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from bench import common
from zf_jax import models
from zf_jax.analysis import features

BATCH = 64


def bench_model(name: str, n: int, repeats: int) -> list[dict[str, Any]]:
  """Feature extraction vs forward img/s on n images of `name`."""
  arch, params, images = common.model(name, n)
  batches = [images[i:i + BATCH] for i in range(0, n, BATCH)]

  def forward() -> list[np.ndarray]:
    return [np.asarray(models.forward(arch, params, jnp.asarray(batch))[0]) for batch in batches]

  times = common.timeit({"features": lambda: features.compute(arch, params, images, batch_size=BATCH),
                         "forward": forward}, repeats)
  ours, base = n / times["features"], n / times["forward"]
  print(f"[features] {name}: features {ours:.0f} img/s, forward {base:.0f} img/s", flush=True)
  layers = ", ".join(features.feature_layers(arch))
  return [common.row("features", name, "img/s", ours, base, "zf_jax plain forward img/s (logits to host)", 0.8,
                     f"{n} images, batch {BATCH}, {arch.input_size} px, layers {layers} to host")]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """zfnet64 (and ZF-224 unless quick)."""
  if quick:
    return bench_model("zfnet64", 2 * BATCH, 1)
  return bench_model("zfnet64", 8 * BATCH, 3) + bench_model("zfnet", BATCH, 2)

