"""Benchmark 2: occlusion sensitivity (Fig. 7), zf_jax vs Captum's Occlusion on the same image.

Both slide the same grey (0 in mean-subtracted pixels) square with the same stride over one image
and evaluate p(correct class) at every position:
  * zf_jax: `analysis.occlusion.occlusion_maps` (batched, jitted forward passes; it also records the
    strongest conv5 map's activity and the top class at each position), at each of a few batch
    sizes, the best kept;
  * Captum: `Occlusion` on softmax(model(x)), at each of a few perturbations_per_eval, the best kept.
Captum returns, per pixel, the mean of p(unoccluded) - p(occluded) over the windows covering it;
zf_jax's p(correct) map is turned into the same per-pixel mean to compare the two.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import Occlusion

from bench import common, torch_models
from zf_jax.analysis import occlusion

# (model, window, stride, zf_jax batch sizes, Captum perturbations_per_eval): the paper's proportions
# at 64 px (window S/4, stride S/28: 22 x 22 positions); at 224 px a coarser stride (7 x 7 positions)
# to fit the time budget. zf_jax evaluates the positions and the unoccluded image (485 and 50 rows).
CONFIGS = (("zfnet64", 14, 2, (16, 64), (16, 64, 256)), ("zfnet", 56, 28, (10, 50), (8, 16, 49)))
QUICK = (("zfnet64", 14, 7, (16,), (8, 49)),)


def pixel_means(p_true: np.ndarray, p0: float, offsets: np.ndarray, size: int, side: int) -> np.ndarray:
  """[P, P] p(correct) per occluder position -> [side, side] mean of p0 - p over the windows on each pixel."""
  total = np.zeros((side, side))
  count = np.zeros((side, side))
  for i, y in enumerate(offsets):
    for j, x in enumerate(offsets):
      total[y:y + size, x:x + size] += p0 - p_true[i, j]
      count[y:y + size, x:x + size] += 1
  return total / np.maximum(count, 1)


def _best(times: dict[int, float]) -> int:
  return min(times, key=times.get)


def bench_model(name: str, size: int, stride: int, batch_sizes: tuple[int, ...],
                per_eval: tuple[int, ...], repeats: int) -> list[dict[str, Any]]:
  """Times both sides on one image of `name`, each at its best setting; compares their maps."""
  arch, params, images = common.model(name, 1)

  def ours(batch_size: int) -> dict[str, np.ndarray]:
    return occlusion.occlusion_maps(arch, params, images, size=size, stride=stride, batch_size=batch_size)

  model = torch_models.build(arch, params)
  method = Occlusion(lambda x: torch.softmax(model(x), dim=-1))
  inputs = torch_models.to_nchw(images)
  label = int(ours(batch_sizes[0])["labels"][0])

  def captum(k: int) -> torch.Tensor:
    with torch.no_grad():
      return method.attribute(inputs, sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
                              baselines=0.0, target=label, perturbations_per_eval=k)

  times = common.timeit({**{("zf_jax", b): lambda b=b: ours(b)["p_true"] for b in batch_sizes},
                         **{("captum", k): lambda k=k: captum(k) for k in per_eval}}, repeats)
  ours_times = {b: times["zf_jax", b] for b in batch_sizes}
  captum_times = {k: times["captum", k] for k in per_eval}
  maps = ours(_best(ours_times))
  offsets = maps["corners"]
  positions = len(offsets) ** 2
  theirs = captum(_best(captum_times))[0, 0].numpy()
  ours_map = pixel_means(maps["p_true"][0], float(maps["p_true_unoccluded"][0]), offsets, size, arch.input_size)
  error = float(np.abs(ours_map - theirs).max() / np.abs(theirs).max())
  print(f"[occlusion] {name}: zf_jax " + ", ".join(f"batch {b} {t:.3f}s" for b, t in ours_times.items())
        + "; captum " + ", ".join(f"ppe={k} {t:.3f}s" for k, t in captum_times.items())
        + f"; max rel error of the maps {error:.1e}", flush=True)
  config = f"1 image, {size}x{size} window, stride {stride}: {positions} positions, {arch.input_size} px"
  listed = lambda values: ", ".join(map(str, values))
  return [common.row(
      "occlusion", name, "positions/s", positions / ours_times[_best(ours_times)],
      positions / captum_times[_best(captum_times)],
      f"Captum Occlusion, perturbations_per_eval={_best(captum_times)} (best of {listed(per_eval)})", 2.0, config,
      f"zf_jax batch_size={_best(ours_times)} (best of {listed(batch_sizes)}); p(correct) maps: max relative "
      f"error vs Captum {error:.1e}")]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """Both models (the 64-px one only when quick)."""
  rows = []
  for name, size, stride, batch_sizes, per_eval in QUICK if quick else CONFIGS:
    rows += bench_model(name, size, stride, batch_sizes, per_eval, 1 if quick else 3)
  return rows
