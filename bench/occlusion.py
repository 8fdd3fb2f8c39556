"""Benchmark 2: occlusion sensitivity (Fig. 7), zf_jax vs Captum's Occlusion on the same image.

All slide the same grey (0 in mean-subtracted pixels) square with the same stride over one image
and evaluate p(correct class) at every position, in a Krypton-like setting (small occluder, small
stride, many positions):
  * zf_jax exact (the default mode of `analysis.occlusion.occlusion_maps`): incremental inference,
    only the windows of each map the occluder reaches recomputed (`analysis.incremental`); beside it,
    the FLOP bound of that recompute against a full forward pass, counted by `incremental.flops`;
  * zf_jax full (mode="full"): one batched full forward pass per position, the baseline of exact;
  * zf_jax approximate (mode="approximate"): windows capped at a share of each map; its maps
    compared with the exact ones (SSIM, max abs difference of p(correct));
  * Captum: `Occlusion` on softmax(model(x)), at each of a few perturbations_per_eval, the best kept.
Each zf_jax mode runs at a few batch sizes, the best kept. Captum returns, per pixel, the mean of
p(unoccluded) - p(occluded) over the windows covering it; zf_jax's exact p(correct) map is turned
into the same per-pixel mean to compare the two.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from captum.attr import Occlusion

from bench import common, torch_models
from zf_jax import models
from zf_jax.analysis import incremental, occlusion

# Krypton-like settings (small occluder, small stride, many positions): (model, window, stride, zf_jax
# batch sizes, Captum perturbations_per_eval, threshold of the approximate mode). zf_jax evaluates
# every position and the unoccluded image.
CONFIGS = (("zfnet64", 8, 2, (64, 256), (64, 256), 0.5), ("zfnet", 16, 16, (64,), (16, 64), 0.5),
           ("vgg16", 32, 32, (16,), (16,), 0.5))
QUICK = (("zfnet64", 14, 7, (16,), (8, 49), 0.5),)
# Goals of issue 12: exact vs zf_jax's full forward per position (at 64 px: a share of the FLOP bound),
# exact vs Captum, approximate vs full.
GOALS = {224: {"full": 3.0, "captum": 2.0, "approximate": 10.0},
         56: {"full_of_bound": 0.8, "captum": 1.3, "approximate": 10.0}}
SSIM_GOAL = 0.9


def pixel_means(p_true: np.ndarray, p0: float, offsets: np.ndarray, size: int, side: int) -> np.ndarray:
  """[P, P] p(correct) per occluder position -> [side, side] mean of p0 - p over the windows on each pixel."""
  total = np.zeros((side, side))
  count = np.zeros((side, side))
  for i, y in enumerate(offsets):
    for j, x in enumerate(offsets):
      total[y:y + size, x:x + size] += p0 - p_true[i, j]
      count[y:y + size, x:x + size] += 1
  return total / np.maximum(count, 1)


def bench_model(name: str, size: int, stride: int, batch_sizes: tuple[int, ...], per_eval: tuple[int, ...],
                threshold: float, repeats: int) -> list[dict[str, Any]]:
  """Times exact (incremental), full and approximate occlusion and Captum on one image of `name`,
  each at its best batch setting; compares the maps."""
  arch, params, images = common.model(name, 1)

  def ours(mode: str, batch_size: int) -> dict[str, np.ndarray]:
    return occlusion.occlusion_maps(arch, params, images, size=size, stride=stride, batch_size=batch_size, mode=mode,
                                    threshold=threshold)

  model = torch_models.build(arch, params)
  method = Occlusion(lambda x: torch.softmax(model(x), dim=-1))
  inputs = torch_models.to_nchw(images)
  label = int(ours("exact", batch_sizes[0])["labels"][0])

  def captum(k: int) -> torch.Tensor:
    with torch.no_grad():
      return method.attribute(inputs, sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
                              baselines=0.0, target=label, perturbations_per_eval=k)

  modes = ("exact", "full", "approximate")
  times = common.timeit({**{(m, b): lambda m=m, b=b: ours(m, b)["p_true"] for m in modes for b in batch_sizes},
                         **{("captum", k): lambda k=k: captum(k) for k in per_eval}}, repeats)
  best = {m: min(batch_sizes, key=lambda b: times[m, b]) for m in modes}
  seconds = {m: times[m, best[m]] for m in modes}
  best_captum = min(per_eval, key=lambda k: times["captum", k])
  seconds["captum"] = times["captum", best_captum]
  exact, approx = ours("exact", best["exact"]), ours("approximate", best["approximate"])
  offsets = exact["corners"]
  positions = len(offsets) ** 2
  theirs = captum(best_captum)[0, 0].numpy()
  ours_map = pixel_means(exact["p_true"][0], float(exact["p_true_unoccluded"][0]), offsets, size, arch.input_size)
  error = float(np.abs(ours_map - theirs).max() / np.abs(theirs).max())
  approx_error = occlusion.approximation_error(exact, approx)
  incremental_flops, full_flops = incremental.flops(arch, params, size)
  bound = full_flops / incremental_flops
  approx_bound = full_flops / incremental.flops(arch, params, size, threshold)[0]
  print(f"[occlusion] {name}: " + "; ".join(f"{m} " + ", ".join(f"batch {b} {times[m, b]:.3f}s" for b in batch_sizes)
                                           for m in modes)
        + "; captum " + ", ".join(f"ppe={k} {times['captum', k]:.3f}s" for k in per_eval)
        + f"; max rel error vs captum {error:.1e}; FLOP bound {bound:.2f}; approximate {approx_error}", flush=True)
  config = f"1 image, {size}x{size} window, stride {stride}: {positions} positions, {arch.input_size} px"
  listed = lambda values: ", ".join(map(str, values))
  rate = {m: positions / t for m, t in seconds.items()}
  goals = GOALS[224 if arch.input_size >= 224 else 56]
  flop_note = f"FLOP bound of exact vs full (counted, `incremental.flops`): {bound:.2f}x"
  full_goal = goals["full"] if "full" in goals else goals["full_of_bound"] * bound
  full_row = common.row(
      "occlusion", name, "positions/s, exact (incremental)", rate["exact"], rate["full"],
      f"zf_jax full forward per position (mode='full', batch_size={best['full']})", round(float(full_goal), 2), config,
      f"{flop_note}; measured / bound = {rate['exact'] / rate['full'] / bound:.2f}; "
      f"exact batch_size={best['exact']} (best of {listed(batch_sizes)})")
  captum_row = common.row(
      "occlusion", name, "positions/s, exact (incremental)", rate["exact"], rate["captum"],
      f"Captum Occlusion, perturbations_per_eval={best_captum} (best of {listed(per_eval)})", goals["captum"], config,
      f"p(correct) maps: max relative error vs Captum {error:.1e}")
  approx_row = common.row(
      "occlusion", name, f"positions/s, approximate (threshold {threshold:g})", rate["approximate"], rate["full"],
      "zf_jax full forward per position", goals["approximate"], config,
      f"vs exact: SSIM of p(correct) {approx_error['ssim_p_true']:.2f} (goal >= {SSIM_GOAL:g}), of the activity "
      f"{approx_error['ssim_activity']:.2f}, max abs diff of p(correct) {approx_error['max_abs_p_true']:.1e}, top "
      f"class agreement {approx_error['top_label_agreement']:.2f}; FLOP bound {approx_bound:.2f}x")
  approx_row["met"] = bool(approx_row["met"] and approx_error["ssim_p_true"] >= SSIM_GOAL)
  return [full_row, captum_row, approx_row]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The Krypton-like settings (the 64-px one only when quick); vgg16 where zf_jax has it."""
  rows = []
  for name, size, stride, batch_sizes, per_eval, threshold in QUICK if quick else CONFIGS:
    if name not in models.ARCH_NAMES:
      print(f"[occlusion] {name}: not in zf_jax.models, skipped", flush=True)
      continue
    rows += bench_model(name, size, stride, batch_sizes, per_eval, threshold, 1 if quick else 2)
  return rows
