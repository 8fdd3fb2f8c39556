"""Benchmark 3: the streaming top-9 scan (Fig. 2) vs plain forward passes, and its peak memory.

  * Speed: `analysis.topk.scan` over N in-memory images (all conv layers, k = 9) against the plain
    jitted forward pass over the same batches from the same host array.
  * Memory: the scan in a fresh process (peak resident set size, Linux's VmHWM) over a synthetic
    dataset that makes its images on demand, at two dataset sizes: the running top-k is O(maps * k),
    so the peak must not grow with the dataset. The child also records its resident set size (VmRSS)
    each time a batch is loaded, to see where memory grows (the note gives it at the first batch, at a
    quarter of the batches and at the end). Beside it, the same at the larger size with glibc's
    dynamic mmap threshold fixed (MALLOC_MMAP_THRESHOLD_=131072: batch-sized buffers freed on other
    threads than they were allocated on, Grain's loader threads and XLA's, then stay in malloc's arenas).

`python -m bench.topk_scan --memory N --model NAME` is the child process of the memory measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from zf_jax import models
from zf_jax.analysis import topk

BATCH = 64


class SyntheticImages:
  """N random mean-subtracted images made on demand (image i is always the same): a lazy dataset.
  `rss` collects this process's resident memory (MiB) at each read (one per batch in a scan)."""

  def __init__(self, n: int, side: int):
    self.n, self.side, self.rss = n, side, []

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, indices: slice) -> np.ndarray:
    self.rss.append(_status_kib("VmRSS") / 1024)
    return np.stack([np.random.default_rng(i).normal(0.0, 60.0, (self.side, self.side, 3)).astype(np.float32)
                     for i in range(*indices.indices(self.n))])


MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def peak_rss_mib(name: str, n: int, env: dict[str, str] | None = None) -> tuple[float, list[float]]:
  """Peak resident memory (MiB) of a fresh process that scans n synthetic images with `name`, and its
  resident memory (MiB) at each batch load."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "bench.topk_scan", "--memory", str(n), "--model", name],
                       capture_output=True, text=True, check=True, cwd=root, env=os.environ | (env or {})).stdout
  result = json.loads(out.strip().splitlines()[-1])
  return float(result["peak_rss_mib"]), result["rss_mib_per_batch"]


def _trace_note(trace: list[float]) -> str:
  return f"RSS at batch 1 / at 1/4 / at the end: {trace[0]:.0f} / {trace[len(trace) // 4]:.0f} / {trace[-1]:.0f} MiB"


def bench_model(name: str, n: int, sizes: tuple[int, int], repeats: int) -> list[dict[str, Any]]:
  """Scan vs forward img/s on n images, and the scan's peak memory at two dataset sizes."""
  arch, params, images = common.model(name, n)
  batches = [images[i:i + BATCH] for i in range(0, n, BATCH)]

  def forward() -> list[jax.Array]:
    return [models.forward(arch, params, jnp.asarray(batch))[0] for batch in batches]

  times = common.timeit({"scan": lambda: topk.scan(arch, params, images, batch_size=BATCH), "forward": forward},
                        repeats)
  scan_s, forward_s = times["scan"], times["forward"]
  (small, small_trace), (large, large_trace) = (peak_rss_mib(name, size) for size in sizes)
  (small_fixed, _), (large_fixed, fixed_trace) = (peak_rss_mib(name, size, MMAP_THRESHOLD) for size in sizes)
  print(f"[topk_scan] {name}: scan {n / scan_s:.0f} img/s, forward {n / forward_s:.0f} img/s; peak RSS "
        f"{small:.0f} MiB at {sizes[0]} images, {large:.0f} MiB at {sizes[1]}; with MALLOC_MMAP_THRESHOLD_ "
        f"{small_fixed:.0f} and {large_fixed:.0f}; per-batch RSS at {sizes[1]}: {large_trace}", flush=True)
  config = f"{n} images, batch {BATCH}, all conv layers, k = 9, {arch.input_size} px"
  memory = f"fresh process per size, images made on demand, batch {BATCH}"
  return [
      common.row("topk_scan", name, "img/s", n / scan_s, n / forward_s, "zf_jax plain forward img/s", 0.9, config),
      common.row("topk_scan", name, f"peak RSS (MiB) at {sizes[1]} images vs at {sizes[0]}", large, small,
                 f"peak RSS at {sizes[0]} images", 1.02, memory, f"{_trace_note(large_trace)} ({sizes[1]} images); "
                 f"{_trace_note(small_trace)} ({sizes[0]})", lower_is_better=True),
      common.row("topk_scan", name, f"peak RSS (MiB) at {sizes[1]} images vs at {sizes[0]}, MALLOC_MMAP_THRESHOLD_="
                 f"{MMAP_THRESHOLD['MALLOC_MMAP_THRESHOLD_']}", large_fixed, small_fixed,
                 f"peak RSS at {sizes[0]} images, same setting", None, memory,
                 f"diagnostic: glibc's dynamic mmap threshold fixed; {_trace_note(fixed_trace)} ({sizes[1]} images)",
                 lower_is_better=True),
  ]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """zfnet64 (and ZF-224 unless quick)."""
  if quick:
    return bench_model("zfnet64", 2 * BATCH, (BATCH, 4 * BATCH), 1)
  return bench_model("zfnet64", 8 * BATCH, (8 * BATCH, 128 * BATCH), 3) + \
      bench_model("zfnet", BATCH, (BATCH, 4 * BATCH), 2)


def _status_kib(field: str) -> int:
  """A memory figure of this process from /proc/self/status: VmHWM (peak resident set size, which
  unlike ru_maxrss starts afresh at exec) or VmRSS (now)."""
  with open("/proc/self/status") as f:
    return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def _memory_child(name: str, n: int) -> None:
  """Scans n synthetic images; prints the peak RSS and the RSS at each batch load as JSON (the last line)."""
  arch, params, _ = common.model(name, 1)
  images = SyntheticImages(n, arch.input_size)
  top = topk.scan(arch, params, images, batch_size=BATCH)
  assert np.isfinite(top[arch.conv_names[-1]]["value"]).all()
  print(json.dumps({"images": n, "peak_rss_mib": _status_kib("VmHWM") / 1024,
                    "rss_mib_per_batch": [round(r, 1) for r in images.rss]}))


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--memory", type=int, required=True, help="images to scan")
  parser.add_argument("--model", default="zfnet64")
  args = parser.parse_args()
  _memory_child(args.model, args.memory)
