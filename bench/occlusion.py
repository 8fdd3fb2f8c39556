"""Benchmark 2: occlusion sensitivity (Fig. 7), zf_jax vs Captum's Occlusion on the same image.

All slide the same grey (0 in mean-subtracted pixels) square with the same stride over one image
and evaluate p(correct class) at every position, in a Krypton-like setting (small occluder, small
stride, many positions):
  * zf_jax exact (the default mode of `analysis.occlusion.occlusion_maps`): incremental inference,
    only the windows of each map the occluder reaches recomputed (`analysis.incremental`); beside it,
    the FLOP bound of that recompute against a full forward pass, counted by `incremental.flops`;
  * zf_jax full (mode="full"): one batched full forward pass per position, the baseline of exact;
  * zf_jax approximate, two modes, each compared with the exact maps (SSIM, max abs difference of
    p(correct)): mode="approximate" caps the windows at a share of each map (Krypton's projective-field
    threshold); mode="coarse_to_fine" computes a coarse grid of positions exactly, finer ones only where
    p(correct) changes between neighbours, and interpolates the rest (Krypton's drill-down);
  * for the models marked so (vgg16), the time of each conv-stack layer on its windows against the same
    layer on whole maps, as shares of a full forward pass, beside the share of the map the window covers
    (`layer_times`): where the exact mode's time goes;
  * Captum: `Occlusion` on softmax(model(x)), at each of a few perturbations_per_eval, the best kept.
Each zf_jax mode runs at a few batch sizes, the best kept. Captum returns, per pixel, the mean of
p(unoccluded) - p(occluded) over the windows covering it; zf_jax's exact p(correct) map is turned
into the same per-pixel mean to compare the two.

The weights are random (checkpoints are not committed). With ZF_BENCH_OCCLUSION_WORKDIR=<training
workdir> the model of that run (e.g. a trained zfnet64) and the first image of its dataset's validation
split replace the random ones for the configuration of the same architecture (its rows say "trained").
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from captum.attr import Occlusion

from bench import common, torch_models
from zf_jax import checkpoint, data, models
from zf_jax.analysis import incremental, occlusion
from zf_jax.data import model_inputs


@dataclasses.dataclass(frozen=True)
class Config:
  """A Krypton-like setting (small occluder, small stride, many positions). zf_jax evaluates every
  position and the unoccluded image."""
  model: str
  size: int  # the occluder's side
  stride: int
  batch_sizes: tuple[int, ...]  # zf_jax's, the best kept
  per_eval: tuple[int, ...]  # Captum's perturbations_per_eval, the best kept
  threshold: float = 0.5  # mode="approximate"
  coarse: int = 4  # mode="coarse_to_fine": level 0's spacing and the tolerance (the library's defaults)
  tolerance: float = 0.2
  layers: bool = False  # time each conv-stack layer on windows vs whole maps (`layer_times`)


CONFIGS = (Config("zfnet64", 8, 2, (64, 256), (64, 256)), Config("zfnet", 16, 16, (64,), (16, 64)),
           Config("vgg16", 32, 32, (16,), (16,), layers=True))
QUICK = (Config("zfnet64", 14, 7, (16,), (8, 49), coarse=2, layers=True),)
WORKDIR = "ZF_BENCH_OCCLUSION_WORKDIR"  # a training workdir whose model replaces the random one of its arch
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


def trained_image(loaded: Any) -> np.ndarray:
  """The first image of a loaded checkpoint's (`checkpoint.load_for_analysis`) dataset's validation split,
  mean-subtracted [1, S, S, 3] (as visualize.py prepares them)."""
  arch, config, mean = loaded.arch, loaded.config, np.asarray(loaded.mean_image)
  image_size = mean.shape[0] if mean.ndim == 3 else data.image_size_for(arch)
  dataset = data.get_dataset(config["dataset"], "validation", data_dir=config.get("data_dir"),
                             manual_dir=config.get("manual_dir"))
  images, _ = data.load_batch(dataset.source, range(1), image_size)
  return model_inputs.eval_inputs(images, arch.input_size, mean)


def layer_times(arch: models.Arch, params: models.Params, image: np.ndarray, size: int, stride: int, batch: int,
                repeats: int) -> tuple[list[tuple[str, float, float, float]], float, float]:
  """Where the exact mode's time goes: each conv-stack layer that runs on windows, timed alone.

  The first `batch` occluder positions run layer by layer (`incremental.window_layer`, vmapped, one
  jitted call per layer, on that layer's windows of those positions); the same layer runs on whole maps
  (batch copies of the unoccluded input map), and a full forward pass on batch images.

  Returns:
    per layer (name, windowed seconds / full forward seconds, whole-map seconds / full forward seconds,
    the share of the map's area the window covers: the FLOP share for a conv); the layers after the
    windows (whole maps, from `Plan.dense_from`) / full forward; the full forward's seconds.
  """
  cache, _ = incremental.unoccluded(arch, params, jnp.asarray(image[0]))
  offsets, _ = occlusion.corners(arch.input_size, size, stride)
  grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2).astype(np.int32)
  corners = jnp.asarray(np.resize(grid, (batch, 2)))
  windows, dense_from = dataclasses.astuple(incremental.plan(arch, size))
  shapes = arch.shapes()
  fns, inputs = {}, {}
  patch, start = jnp.zeros((batch, size, size, image.shape[-1]), jnp.float32), corners
  whole = lambda x: jnp.broadcast_to(x[None], (batch, *x.shape)) + 0  # batch copies of one map
  for i, spec in enumerate(arch.layers[:dense_from]):
    step = jax.jit(jax.vmap(lambda p, c, i=i, spec=spec: incremental.window_layer(spec, params, cache[i], windows[i],
                                                                                 p, c)))
    fns["window", i], inputs["window", i] = step, (patch, start)
    fns["whole", i] = jax.jit(lambda x, spec=spec: models.apply_layer(spec, params, x)[0])
    inputs["whole", i] = (whole(cache[i]),)
    patch, start = step(patch, start)

  def rest(x: jax.Array) -> jax.Array:
    for spec in arch.layers[dense_from:]:
      x = models.apply_layer(spec, params, x)[0]
    return x

  fns["rest"], inputs["rest"] = jax.jit(rest), (whole(cache[dense_from]),)
  fns["full"] = jax.jit(lambda x: models.forward(arch, params, x)[0])
  inputs["full"] = (whole(jnp.asarray(image[0])),)
  times = common.timeit({key: lambda key=key: fns[key](*inputs[key]) for key in fns}, repeats)
  full = times["full"]
  rows = [(spec.name, times["window", i] / full, times["whole", i] / full, (windows[i] / shapes[spec.name][0]) ** 2)
          for i, spec in enumerate(arch.layers[:dense_from])]
  return rows, times["rest"] / full, full


def bench_model(config: Config, repeats: int) -> list[dict[str, Any]]:
  """Times exact (incremental), full and both approximate occlusions and Captum on one image of
  config.model, each at its best batch setting; compares the maps."""
  name, size, stride = config.model, config.size, config.stride
  batch_sizes, per_eval = config.batch_sizes, config.per_eval
  threshold, coarse, tolerance = config.threshold, config.coarse, config.tolerance
  arch, params, images = common.model(name, 1)
  weights = "random weights"
  workdir = os.environ.get(WORKDIR)
  loaded = checkpoint.load_for_analysis(workdir) if workdir else None
  if loaded is not None and loaded.arch.name == name:
    arch, params, images = loaded.arch, loaded.params, trained_image(loaded)
    weights = f"trained ({workdir})"

  def ours(mode: str, batch_size: int) -> dict[str, np.ndarray]:
    return occlusion.occlusion_maps(arch, params, images, size=size, stride=stride, batch_size=batch_size, mode=mode,
                                    threshold=threshold, coarse=coarse, tolerance=tolerance)

  model = torch_models.build(arch, params)
  method = Occlusion(lambda x: torch.softmax(model(x), dim=-1))
  inputs = torch_models.to_nchw(images)
  label = int(ours("exact", batch_sizes[0])["labels"][0])

  def captum(k: int) -> torch.Tensor:
    with torch.no_grad():
      return method.attribute(inputs, sliding_window_shapes=(3, size, size), strides=(3, stride, stride),
                              baselines=0.0, target=label, perturbations_per_eval=k)

  modes = ("exact", "full", "approximate", "coarse_to_fine")
  times = common.timeit({**{(m, b): lambda m=m, b=b: ours(m, b)["p_true"] for m in modes for b in batch_sizes},
                         **{("captum", k): lambda k=k: captum(k) for k in per_eval}}, repeats)
  best = {m: min(batch_sizes, key=lambda b: times[m, b]) for m in modes}
  seconds = {m: times[m, best[m]] for m in modes}
  best_captum = min(per_eval, key=lambda k: times["captum", k])
  seconds["captum"] = times["captum", best_captum]
  exact, approx = ours("exact", best["exact"]), ours("approximate", best["approximate"])
  drill = ours("coarse_to_fine", best["coarse_to_fine"])
  offsets = exact["corners"]
  positions = len(offsets) ** 2
  theirs = captum(best_captum)[0, 0].numpy()
  ours_map = pixel_means(exact["p_true"][0], float(exact["p_true_unoccluded"][0]), offsets, size, arch.input_size)
  error = float(np.abs(ours_map - theirs).max() / np.abs(theirs).max())
  approx_error = occlusion.approximation_error(exact, approx)
  drill_error = occlusion.approximation_error(exact, drill)
  incremental_flops, full_flops = incremental.flops(arch, params, size)
  bound = full_flops / incremental_flops
  approx_bound = full_flops / incremental.flops(arch, params, size, threshold)[0]
  print(f"[occlusion] {name}: " + "; ".join(f"{m} " + ", ".join(f"batch {b} {times[m, b]:.3f}s" for b in batch_sizes)
                                           for m in modes)
        + "; captum " + ", ".join(f"ppe={k} {times['captum', k]:.3f}s" for k in per_eval)
        + f"; max rel error vs captum {error:.1e}; FLOP bound {bound:.2f}; approximate {approx_error}; "
        f"coarse_to_fine {drill_error}, computed {drill['computed'].mean():.2f}", flush=True)
  setting = f"1 image, {size}x{size} window, stride {stride}: {positions} positions, {arch.input_size} px, {weights}"
  listed = lambda values: ", ".join(map(str, values))
  rate = {m: positions / t for m, t in seconds.items()}
  goals = GOALS[224 if arch.input_size >= 224 else 56]
  flop_note = f"FLOP bound of exact vs full (counted, `incremental.flops`): {bound:.2f}x"
  full_goal = goals["full"] if "full" in goals else goals["full_of_bound"] * bound
  full_row = common.row(
      "occlusion", name, "positions/s, exact (incremental)", rate["exact"], rate["full"],
      f"zf_jax full forward per position (mode='full', batch_size={best['full']})", round(float(full_goal), 2), setting,
      f"{flop_note}; measured / bound = {rate['exact'] / rate['full'] / bound:.2f}; "
      f"exact batch_size={best['exact']} (best of {listed(batch_sizes)})")
  captum_row = common.row(
      "occlusion", name, "positions/s, exact (incremental)", rate["exact"], rate["captum"],
      f"Captum Occlusion, perturbations_per_eval={best_captum} (best of {listed(per_eval)})", goals["captum"], setting,
      f"p(correct) maps: max relative error vs Captum {error:.1e}")
  approx_row = common.row(
      "occlusion", name, f"positions/s, approximate (threshold {threshold:g})", rate["approximate"], rate["full"],
      "zf_jax full forward per position", goals["approximate"], setting,
      f"vs exact: SSIM of p(correct) {approx_error['ssim_p_true']:.2f} (goal >= {SSIM_GOAL:g}), of the activity "
      f"{approx_error['ssim_activity']:.2f}, max abs diff of p(correct) {approx_error['max_abs_p_true']:.1e}, top "
      f"class agreement {approx_error['top_label_agreement']:.2f}; FLOP bound {approx_bound:.2f}x")
  approx_row["met"] = bool(approx_row["met"] and approx_error["ssim_p_true"] >= SSIM_GOAL)
  drill_row = common.row(
      "occlusion", name, f"positions/s, coarse-to-fine (coarse {coarse}, tolerance {tolerance:g})",
      rate["coarse_to_fine"], rate["full"], "zf_jax full forward per position", goals["approximate"], setting,
      f"vs exact: SSIM of p(correct) {drill_error['ssim_p_true']:.2f} (goal >= {SSIM_GOAL:g}), of the activity "
      f"{drill_error['ssim_activity']:.2f}, max abs diff of p(correct) {drill_error['max_abs_p_true']:.1e}, top "
      f"class agreement {drill_error['top_label_agreement']:.2f}; positions computed exactly "
      f"{drill['computed'].mean():.2f}; {rate['coarse_to_fine'] / rate['exact']:.2f}x exact")
  drill_row["met"] = bool(drill_row["met"] and drill_error["ssim_p_true"] >= SSIM_GOAL)
  rows = [full_row, captum_row, approx_row, drill_row]
  if config.layers:
    batch = best["exact"]
    per_layer, rest, full_seconds = layer_times(arch, params, images, size, stride, batch, repeats)
    windowed = sum(w for _, w, _, _ in per_layer)
    print(f"[occlusion] {name} per layer, batch {batch}, shares of a full forward pass ({full_seconds:.3f}s): "
          + "; ".join(f"{n} windows {w:.3f} whole {d:.3f} area {a:.3f}" for n, w, d, a in per_layer)
          + f"; after the windows {rest:.3f}", flush=True)
    rows.append(common.row(
        "occlusion", name, "time of the exact mode's layers, per batch of positions", windowed + rest, 1.0,
        f"full forward pass, batch {batch}", None, setting,
        f"diagnostic, shares of the full forward: windowed layers {windowed:.3f}, the rest on whole maps "
        f"{rest:.3f}; per layer windows / whole map (area share): "
        + ", ".join(f"{n} {w / d:.2f} ({a:.2f})" for n, w, d, a in per_layer if n.startswith("conv")),
        lower_is_better=True))
  return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The Krypton-like settings (the 64-px one only when quick); vgg16 where zf_jax has it."""
  rows = []
  for config in QUICK if quick else CONFIGS:
    if config.model not in models.ARCH_NAMES:
      print(f"[occlusion] {config.model}: not in zf_jax.models, skipped", flush=True)
      continue
    rows += bench_model(config, 1 if quick else 2)
  return rows
