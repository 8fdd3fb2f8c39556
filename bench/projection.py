"""Benchmark 1: deconvnet projections of single units, per layer, and the Fig. 2 gallery.

Per layer conv1..conv5 (ZF-224 and VGG16 at 224 px, zfnet64 at 56 px), B images and their N
strongest units of the layer each, B * N pixel-space projections on the same weights:
  * zf_jax: one forward pass to the layer (the trace) and one `deconv.project_many` call ([B, N, 3]
    units), jitted together. Single units run on windows under their receptive fields as far as the
    counted FLOPs say (`deconv.flops`);
  * Captum: N calls of NeuronDeconvolution on the B images (a per-image neuron selector), each a
    forward to the layer and a hooked backward pass, on the same weights copied into the torch model;
  * zf_jax's dense path (`windowed=False`), from the same trace, and the crop's FLOP bound: the dense
    path's projections/s times its FLOPs over the windows' FLOPs.
Every model runs without contrast normalization, where Captum and zf_jax compute the same thing
(Captum does not skip LRN on the way down), and the timed outputs are compared (Captum starts from
1, zf_jax from the activation: ours are divided by it).

The gallery: Fig. 2 for every map of conv1..conv5 of zfnet64 (with its normalization) over a data
set of random images, the top-9 scan (`topk.scan`) and the 9 projections of each map
(`topk.project_units`: each unit's image forward again, then projected), windowed against dense.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from captum.attr import NeuronDeconvolution

from bench import common, torch_models
from zf_jax import deconv, models
from zf_jax.analysis import topk

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
CAPTUM_GOAL_LAYERS = ("conv1", "conv2", "conv3")  # >= 10x Captum at 224 px (issue 22)


def top_units(activations: jax.Array, n: int) -> np.ndarray:
  """int32 [B, n, 3] (channel, y, x): each image's n strongest units of [B, h, w, c] maps."""
  b, h, w, c = activations.shape
  _, flat = jax.lax.top_k(activations.reshape(b, -1), n)
  y, x, ch = np.unravel_index(np.asarray(flat), (h, w, c))
  return np.stack([ch, y, x], axis=-1).astype(np.int32)


def captum_projections(model: torch.nn.Module, layer: str, inputs: torch.Tensor,
                       units: np.ndarray) -> list[torch.Tensor]:
  """Captum's NeuronDeconvolution of every unit of `layer`: N calls on the whole batch, [B, 3, H, W] each."""
  method = NeuronDeconvolution(model, getattr(model, f"{layer}_relu"))
  rows = torch.arange(units.shape[0])
  out = []
  for n in range(units.shape[1]):
    c, y, x = (torch.from_numpy(units[:, n, i]).long() for i in range(3))
    out.append(method.attribute(inputs, lambda maps, c=c, y=y, x=x: maps[rows, c, y, x]))
  return out


def _max_relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  """The largest difference of two [B, N, S, S, 3] sets of projections, each against its own largest pixel."""
  return float((np.abs(ours - theirs).max(axis=(2, 3, 4)) / np.abs(theirs).max(axis=(2, 3, 4))).max())


def bench_layer(name: str, arch: models.Arch, params: models.Params, images: np.ndarray, layer: str,
                num_units: int, repeats: int) -> list[dict[str, Any]]:
  """Times one layer's projections: windowed (with its forward) vs Captum, windowed vs dense, vs the bound."""
  to_layer = common.up_to(common.without_norm(arch), layer)
  to_layer_params = {n: p for n, p in params.items() if n in to_layer.layer_names}
  jimages = jnp.asarray(images)
  _, trace = models.forward(to_layer, to_layer_params, jimages)
  units = top_units(trace.activations[layer], num_units)
  batch = len(images)
  config = f"{batch} images x top {num_units} {layer} units, {arch.input_size} px"

  @jax.jit
  def ours(p: models.Params, x: jax.Array, u: jax.Array) -> jax.Array:
    return deconv.project_many(to_layer, p, models.forward(to_layer, p, x)[1], layer, u)

  windowed = np.asarray(ours(to_layer_params, jimages, units))
  dense = np.asarray(deconv.project_many(to_layer, to_layer_params, trace, layer, units, windowed=False))
  model = torch_models.build(to_layer, to_layer_params)
  inputs = torch_models.to_nchw(images).requires_grad_()
  theirs = np.stack([torch_models.to_nhwc(p) for p in captum_projections(model, layer, inputs, units)], axis=1)
  times = common.timeit({
      "ours": lambda: ours(to_layer_params, jimages, units),
      "windowed": lambda: deconv.project_many(to_layer, to_layer_params, trace, layer, units),
      "dense": lambda: deconv.project_many(to_layer, to_layer_params, trace, layer, units, windowed=False),
      "captum": lambda: captum_projections(model, layer, inputs, units)}, repeats)

  act = np.asarray(trace.activations[layer])
  start = act[np.arange(batch)[:, None], units[..., 1], units[..., 2], units[..., 0]]
  vs_captum = _max_relative_error(windowed / start[..., None, None, None], theirs)
  vs_dense = _max_relative_error(windowed, dense)
  window_flops, dense_flops = deconv.flops(to_layer, layer)
  count = batch * num_units
  rate = {key: count / seconds for key, seconds in times.items()}
  bound = rate["dense"] * dense_flops / window_flops
  print(f"[projection] {name} {layer}: projections/s with forward {rate['ours']:.0f}, captum {rate['captum']:.1f}; "
        f"from the trace windowed {rate['windowed']:.0f}, dense {rate['dense']:.0f}, FLOP bound {bound:.0f}; "
        f"max rel error vs captum {vs_captum:.1e}, vs dense {vs_dense:.1e}", flush=True)
  captum_goal = 10.0 if arch.input_size == 224 and layer in CAPTUM_GOAL_LAYERS else None
  flop_note = (f"FLOPs per projection {window_flops / 1e6:.3g} M windowed, {dense_flops / 1e6:.3g} M dense "
               f"(`deconv.flops`): {dense_flops / window_flops:.3g}x")
  return [
      common.row("projection", name, f"{layer}: projections/s (forward + project_many)", rate["ours"],
                 rate["captum"], "Captum NeuronDeconvolution, loop over units", captum_goal, config,
                 f"max relative error vs Captum {vs_captum:.1e} (no-norm path)"),
      common.row("projection", name, f"{layer}: projections/s from the trace", rate["windowed"], rate["dense"],
                 "zf_jax dense path (windowed=False)", 1.0, config, f"max relative error {vs_dense:.1e}; {flop_note}"),
      common.row("projection", name, f"{layer}: projections/s from the trace vs the crop's FLOP bound",
                 rate["windowed"], bound, "dense projections/s x dense / windowed FLOPs", 0.7, config),
  ]


def bench_model(name: str, batch: int, num_units: int, repeats: int) -> list[dict[str, Any]]:
  """`bench_layer` for conv1..conv5 of `name`, on the same weights and images."""
  arch, params, images = common.model(name, batch, num_classes=10)
  return [row for layer in LAYERS for row in bench_layer(name, arch, params, images, layer, num_units, repeats)]


def gallery(num_images: int, layers: tuple[str, ...], repeats: int) -> list[dict[str, Any]]:
  """Fig. 2 for every map of `layers` of zfnet64: top-9 scan + 9 projections per map, windowed vs dense."""
  arch, params, images = common.model("zfnet64", num_images, num_classes=10)
  count = topk.K * sum(arch.shapes()[layer][-1] for layer in layers)

  def run(windowed: bool) -> None:
    top = topk.scan(arch, params, images, layers=layers)
    for layer in layers:
      units = np.stack([np.broadcast_to(np.arange(top[layer]["image"].shape[0])[:, None], top[layer]["y"].shape),
                        top[layer]["y"], top[layer]["x"]], axis=-1).reshape(-1, 3)
      topk.project_units(arch, params, images, layer, top[layer]["image"].reshape(-1), units, windowed=windowed)

  times = common.timeit({"windowed": lambda: run(True), "dense": lambda: run(False)}, repeats)
  print(f"[projection] gallery: {count} projections, windowed {times['windowed']:.1f} s, dense {times['dense']:.1f} s",
        flush=True)
  return [common.row("projection", "zfnet64", "Fig. 2 gallery: seconds (scan + projections)", times["windowed"],
                     times["dense"], "the same with the dense path", 1.0,
                     f"{num_images} images, top {topk.K} of every map of {', '.join(layers)}: {count} projections, "
                     f"56 px", lower_is_better=True)]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """Per layer at 64 and 224 px (few images and units at 224 px: CPU time), then the gallery."""
  start = time.perf_counter()
  if quick:
    rows = bench_model("zfnet64", 1, 2, 1) + bench_model("zfnet", 1, 1, 1) + gallery(16, ("conv1",), 1)
  else:
    rows = bench_model("zfnet64", 8, 8, 3) + bench_model("zfnet", 2, 4, 3) + bench_model("vgg16", 1, 2, 3) \
        + gallery(1000, LAYERS, 1)
  print(f"[projection] {time.perf_counter() - start:.0f} s in all", flush=True)
  return rows
