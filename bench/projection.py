"""Benchmark 1: deconvnet projections of the top conv5 units, zf_jax vs Captum's NeuronDeconvolution.

For B images and their N strongest conv5 units each, both sides produce the same B * N pixel-space
projections:
  * zf_jax: one forward pass (the trace) and one `deconv.project_many` call ([B, N, 3] units);
  * Captum: N calls of NeuronDeconvolution on the B images (a per-image neuron selector), each a
    forward and a hooked backward pass, on the same weights copied into the torch model.
Both run the architecture without contrast normalization, where the two compute the same thing
(Captum does not skip LRN on the way down), and the timed outputs are compared (Captum starts from
1, zf_jax from the activation: ours are divided by it). zf_jax's projections/s from a trace are also
compared with its own forward img/s to conv5 on the full architecture: a projection costs about one
forward pass from pixels to conv5 (transposed convolutions, same FLOPs).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from captum.attr import NeuronDeconvolution

from bench import common, torch_models
from zf_jax import deconv, models

LAYER = "conv5"


def top_units(activations: jax.Array, n: int) -> np.ndarray:
  """int32 [B, n, 3] (channel, y, x): each image's n strongest units of [B, h, w, c] maps."""
  b, h, w, c = activations.shape
  _, flat = jax.lax.top_k(activations.reshape(b, -1), n)
  y, x, ch = np.unravel_index(np.asarray(flat), (h, w, c))
  return np.stack([ch, y, x], axis=-1).astype(np.int32)


def captum_projections(model: torch.nn.Module, inputs: torch.Tensor, units: np.ndarray) -> list[torch.Tensor]:
  """Captum's NeuronDeconvolution of every unit: N calls on the whole batch, [B, 3, H, W] each."""
  method = NeuronDeconvolution(model, getattr(model, f"{LAYER}_relu"))
  rows = torch.arange(units.shape[0])
  out = []
  for n in range(units.shape[1]):
    c, y, x = (torch.from_numpy(units[:, n, i]).long() for i in range(3))
    out.append(method.attribute(inputs, lambda maps: maps[rows, c, y, x]))
  return out


def bench_model(name: str, batch: int, num_units: int, repeats: int) -> list[dict[str, Any]]:
  """Times both sides on `name` with `batch` images and their `num_units` top conv5 units each."""
  arch, params, images = common.model(name, batch)
  plain = common.without_norm(arch)
  jimages = jnp.asarray(images)
  _, trace = models.forward(plain, params, jimages)
  units = top_units(trace.activations[LAYER], num_units)
  config = f"{batch} images x top {num_units} {LAYER} units, {arch.input_size} px"

  def ours() -> jax.Array:
    _, t = models.forward(plain, params, jimages)
    return deconv.project_many(plain, params, t, LAYER, units)

  projections = np.asarray(ours())
  to_layer = common.up_to(arch, LAYER)
  to_layer_params = {name: p for name, p in params.items() if name in to_layer.layer_names}
  model = torch_models.build(plain, params)
  inputs = torch_models.to_nchw(images).requires_grad_()
  theirs = np.stack([torch_models.to_nhwc(p) for p in captum_projections(model, inputs, units)], axis=1)
  times = common.timeit({
      "ours": ours,
      "from_trace": lambda: deconv.project_many(plain, params, trace, LAYER, units),
      "forward": lambda: models.forward(to_layer, to_layer_params, jimages)[0],
      "captum": lambda: captum_projections(model, inputs, units)}, repeats)
  ours_s, from_trace_s, forward_s, captum_s = (times[k] for k in ("ours", "from_trace", "forward", "captum"))

  act = np.asarray(trace.activations[LAYER])
  start = act[np.arange(batch)[:, None], units[..., 1], units[..., 2], units[..., 0]]
  ours_from_one = projections / start[..., None, None, None]
  scale = np.abs(theirs).max(axis=(2, 3, 4))
  error = float((np.abs(ours_from_one - theirs).max(axis=(2, 3, 4)) / scale).max())
  print(f"[projection] {name}: zf_jax {ours_s:.3f}s (from trace {from_trace_s:.3f}s), captum {captum_s:.3f}s, "
        f"forward to {LAYER} {forward_s:.3f}s, max rel error {error:.1e}", flush=True)

  count = batch * num_units
  return [
      common.row("projection", name, "projections/s (forward + project_many)", count / ours_s, count / captum_s,
                 "Captum NeuronDeconvolution, loop over units", 10.0, config,
                 f"max relative error vs Captum {error:.1e} (no-norm path)"),
      common.row("projection", name, "projections/s from the trace vs forward img/s to conv5",
                 count / from_trace_s, batch / forward_s, f"zf_jax forward img/s to {LAYER}", 0.7, config),
  ]


def run(quick: bool = False) -> list[dict[str, Any]]:
  """ZF-224 (few images and units: CPU time) and the 64-px variant."""
  if quick:
    return bench_model("zfnet64", 2, 2, 2) + bench_model("zfnet", 1, 2, 2)
  return bench_model("zfnet64", 16, 16, 3) + bench_model("zfnet", 4, 8, 3)
