"""Benchmark 3: the streaming top-9 scan (Fig. 2) vs plain forward passes, and its peak memory.

  * Speed: `analysis.topk.scan` over N in-memory images (all conv layers, k = 9) against the plain
    jitted forward pass over the same batches from the same host array: the median over rounds in
    which the two take turns, and the per-round ratios' range in the note (a single round, or a single
    batch, moves by 10-40 % with the machine's load).
  * Memory: the scan in a fresh process (peak resident set size, Linux's VmHWM) over a synthetic
    dataset that makes its images on demand, at two dataset sizes: the running top-k is O(maps * k),
    so the peak must not grow with the dataset. The peak of identical runs varies by up to 10 % (how
    much freed memory glibc's heap happens to keep), so each size is the median of MEMORY_RUNS
    processes. The child also records its resident set size (VmRSS) each time a batch is loaded, to
    see where memory grows (the note gives it at the first batch, at a quarter of the batches and at
    the end). Beside it, the same with glibc's dynamic mmap threshold fixed
    (MALLOC_MMAP_THRESHOLD_=131072: every block of 128 KiB or more, batch-sized buffers included,
    comes from mmap and goes back to the system when freed, so the heap keeps none of them).

`python -m bench.topk_scan --memory N --model NAME` is the child process of the memory measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
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


MEMORY_RUNS = 3  # fresh processes per dataset size: the peak varies by several % between identical runs


def peak_rss_mib(name: str, n: int, env: dict[str, str] | None = None) -> tuple[float, list[float]]:
  """Peak resident memory (MiB) of a fresh process that scans n synthetic images with `name`, and its
  resident memory (MiB) at each batch load."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-m", "bench.topk_scan", "--memory", str(n), "--model", name],
                       capture_output=True, text=True, check=True, cwd=root, env=os.environ | (env or {})).stdout
  result = json.loads(out.strip().splitlines()[-1])
  return float(result["peak_rss_mib"]), result["rss_mib_per_batch"]


def median_peak_rss_mib(name: str, n: int, runs: int,
                        env: dict[str, str] | None = None) -> tuple[float, list[float], list[float]]:
  """The median of `runs` fresh processes' peak RSS (MiB), all the peaks, and the median run's per-batch RSS."""
  results = sorted((peak_rss_mib(name, n, env) for _ in range(runs)), key=lambda result: result[0])
  peak, trace = results[len(results) // 2]
  return peak, [result[0] for result in results], trace


def _trace_note(trace: list[float]) -> str:
  return f"RSS at batch 1 / at 1/4 / at the end: {trace[0]:.0f} / {trace[len(trace) // 4]:.0f} / {trace[-1]:.0f} MiB"


def _peaks_note(peaks: list[float]) -> str:
  return "peaks " + " / ".join(f"{peak:.0f}" for peak in peaks) + " MiB"


def bench_model(name: str, n: int, sizes: tuple[int, int], repeats: int, runs: int) -> list[dict[str, Any]]:
  """Scan vs forward img/s on n images (median of `repeats` rounds), and the scan's peak memory at two
  dataset sizes (median of `runs` fresh processes each)."""
  arch, params, images = common.model(name, n)
  batches = [images[i:i + BATCH] for i in range(0, n, BATCH)]

  def forward() -> list[jax.Array]:
    return [models.forward(arch, params, jnp.asarray(batch))[0] for batch in batches]

  rounds = common.timeit_rounds({"scan": lambda: topk.scan(arch, params, images, batch_size=BATCH),
                                 "forward": forward}, repeats)
  scan_s, forward_s = statistics.median(rounds["scan"]), statistics.median(rounds["forward"])
  per_round = [f / s for s, f in zip(rounds["scan"], rounds["forward"])]
  (small, small_peaks, small_trace), (large, large_peaks, large_trace) = (
      median_peak_rss_mib(name, size, runs) for size in sizes)
  (small_fixed, _), (large_fixed, fixed_trace) = (peak_rss_mib(name, size, MMAP_THRESHOLD) for size in sizes)
  print(f"[topk_scan] {name}: scan {n / scan_s:.0f} img/s, forward {n / forward_s:.0f} img/s (per-round ratios "
        f"{[round(r, 2) for r in per_round]}); peak RSS {small_peaks} MiB at {sizes[0]} images, {large_peaks} at "
        f"{sizes[1]}; with MALLOC_MMAP_THRESHOLD_ {small_fixed:.0f} and {large_fixed:.0f}; per-batch RSS at "
        f"{sizes[1]}: {large_trace}", flush=True)
  config = f"{n} images ({n // BATCH} batches of {BATCH}), all conv layers, k = 9, {arch.input_size} px, " \
           f"median of {repeats} rounds"
  memory = f"fresh process per size, images made on demand, batch {BATCH}"
  return [
      common.row("topk_scan", name, "img/s", n / scan_s, n / forward_s, "zf_jax plain forward img/s", 0.9, config,
                 f"per-round ratios {min(per_round):.2f}-{max(per_round):.2f}"),
      common.row("topk_scan", name, f"peak RSS (MiB) at {sizes[1]} images vs at {sizes[0]}", large, small,
                 f"peak RSS at {sizes[0]} images", 1.02, f"{memory}, median of {runs} processes",
                 f"{_peaks_note(large_peaks)}, {_trace_note(large_trace)} ({sizes[1]} images); "
                 f"{_peaks_note(small_peaks)}, {_trace_note(small_trace)} ({sizes[0]})", lower_is_better=True),
      common.row("topk_scan", name, f"peak RSS (MiB) at {sizes[1]} images vs at {sizes[0]}, MALLOC_MMAP_THRESHOLD_="
                 f"{MMAP_THRESHOLD['MALLOC_MMAP_THRESHOLD_']}", large_fixed, small_fixed,
                 f"peak RSS at {sizes[0]} images, same setting", None, f"{memory}, one process",
                 f"diagnostic: glibc's dynamic mmap threshold fixed; {_trace_note(fixed_trace)} ({sizes[1]} images)",
                 lower_is_better=True),
  ]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """zfnet64 (and ZF-224 unless quick)."""
  if quick:
    return bench_model("zfnet64", 2 * BATCH, (BATCH, 4 * BATCH), 1, 1)
  return bench_model("zfnet64", 16 * BATCH, (8 * BATCH, 128 * BATCH), 7, MEMORY_RUNS) + \
      bench_model("zfnet", 4 * BATCH, (2 * BATCH, 16 * BATCH), 5, MEMORY_RUNS)


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
