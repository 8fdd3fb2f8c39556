"""Occlusion by incremental inference (Krypton: Nakandala, Kumar, Papakonstantinou, SIGMOD 2019).

A grey square changes only the pixels it covers, so in every map of the conv stack only the units
whose receptive field meets it (its projective field) can change. Instead of a full forward pass per
occluder position, each position starts from the unoccluded image's maps (kept once per image) and,
layer by layer, recomputes only a window of the layer's output: the n x n input patch that changed
is placed into the stored input map (with the halo of rows and columns the kernel, pooling window
or padding needs around it; `max_pool` pads with -inf, the convs with 0), the layer runs on that
region without padding, and its m x m output is the next patch. Local contrast normalization works
across maps only, so its window is the patch itself. Once a window would cover its whole map, the
patch is spliced into the stored map and the rest runs on whole maps (at 64 px from about conv3; at
224 px, for small occluders, only the fc layers). All positions of one image run as one vmap over
fixed-size chunks (one compilation per shape).

Exact mode recomputes the whole projective field: its maps equal the full recompute's up to float
rounding. Approximate mode (`threshold`) caps each window at a share of its map's side (Krypton's
projective-field threshold tau), centred on the projective field: changes outside it are dropped.

Window arithmetic on one axis, for a layer with kernel (or pooling window) k, stride s, low padding
lo, output side H_out, and a changed input patch at rows [p, p + n): outputs
ceil((p + lo - k + 1) / s) .. floor((p + n - 1 + lo) / s), clipped to the map, at most
(n + k - 2) // s + 1 of them.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from zf_jax import models
from zf_jax.models import Arch, Conv, Dense, Norm, Params, Pool


@dataclasses.dataclass(frozen=True)
class Plan:
  """Static shapes of the incremental pass.

  Attributes:
    windows: for each layer of the conv stack that runs on windows, the side of its output window.
    dense_from: index in arch.layers of the first layer that runs on whole maps.
  """
  windows: tuple[int, ...]
  dense_from: int


def _kernel(spec: Conv | Pool) -> int:
  return spec.kernel if isinstance(spec, Conv) else spec.window


def conv_stack(arch: Arch) -> int:
  """Index of the first Dense layer (the conv stack is arch.layers[:index])."""
  return next((i for i, spec in enumerate(arch.layers) if isinstance(spec, Dense)), len(arch.layers))


@functools.cache
def plan(arch: Arch, size: int, threshold: float | None = None) -> Plan:
  """The window sides for an occluder of side `size` (exact when threshold is None).

  Args:
    arch: the architecture.
    size: the occluder's side in input pixels.
    threshold: None (exact) or tau in (0, 1]: windows at most ceil(tau * side of the map).

  Returns:
    The `Plan`.
  """
  shapes = arch.shapes()
  n, windows = size, []
  for i, spec in enumerate(arch.layers[:conv_stack(arch)]):
    side = shapes[spec.name][0]
    if isinstance(spec, Norm):
      m = n
    else:
      m = min(side, (n + _kernel(spec) - 2) // spec.stride + 1)
      if threshold is not None:
        m = min(m, max(1, math.ceil(threshold * side)))
    if m >= side:
      return Plan(tuple(windows), i)
    windows.append(m)
    n = m
  return Plan(tuple(windows), conv_stack(arch))


def flops(arch: Arch, params: Params, size: int, threshold: float | None = None) -> tuple[float, float]:
  """Multiply-adds x 2 of one occluder position: (incremental, full forward), convs and fc layers.

  The incremental count is the windows' convolutions (m x m outputs) and everything dense after
  them; pooling and normalization are not counted (a few % of a forward pass).
  """
  shapes = arch.shapes()
  windows, dense_from = dataclasses.astuple(plan(arch, size, threshold))
  incremental = full = 0.0
  for i, spec in enumerate(arch.layers):
    if not isinstance(spec, (Conv, Dense)):
      continue
    kernel = params[spec.name]["kernel"]
    if isinstance(spec, Dense):
      cost = 2.0 * kernel.shape[0] * kernel.shape[1]
      incremental, full = incremental + cost, full + cost
      continue
    per_output = 2.0 * np.prod(kernel.shape)
    h, w, _ = shapes[spec.name]
    full += per_output * h * w
    incremental += per_output * (h * w if i >= dense_from else windows[i] ** 2)
  return incremental, full


def _apply(spec: Conv | Pool | Norm | Dense, params: Params, x: jax.Array, padding=None) -> jax.Array:
  """One layer at inference on [B, ...] (pools without switches); `padding` overrides the layer's."""
  return models.apply_layer(spec, params, x, padding)[0]


@functools.partial(jax.jit, static_argnames="arch")
def unoccluded(arch: Arch, params: Params, image: jax.Array) -> tuple[list[jax.Array], jax.Array]:
  """The unoccluded image [S, S, 3]'s maps: [image, output of each conv-stack layer], each [h, w, c];
  and its logits [C]."""
  out = [image]
  for spec in arch.layers[:conv_stack(arch)]:
    out.append(_apply(spec, params, out[-1][None])[0])
  x = out[-1][None]
  for spec in arch.layers[conv_stack(arch):]:
    x = _apply(spec, params, x)
  return out, x[0]


def _pad_value(spec: Conv | Pool | Norm) -> float:
  return -jnp.inf if isinstance(spec, Pool) else 0.0


def _placed(patch: jax.Array, start: tuple[jax.Array, jax.Array], side: int, fill: jax.Array) -> jax.Array:
  """`fill` [side, side, c] with patch [n, n, c] written at start (y, x) (what falls outside is dropped)."""
  n = patch.shape[0]
  r = jnp.arange(side)
  rows, cols = r - start[0], r - start[1]  # the patch's row and column at each position of fill
  moved = jnp.take(jnp.take(patch, jnp.clip(rows, 0, n - 1), axis=0), jnp.clip(cols, 0, n - 1), axis=1)
  inside = ((rows >= 0) & (rows < n))[:, None, None] & ((cols >= 0) & (cols < n))[None, :, None]
  return jnp.where(inside, moved, fill)


def _window(spec: Conv | Pool, side_out: int, m: int, patch_start: jax.Array, n: int) -> jax.Array:
  """Start (y, x) of the m-wide output window covering the outputs a patch [p, p + n) reaches."""
  k, s = _kernel(spec), spec.stride
  lo = jnp.array([spec.padding[0][0], spec.padding[1][0]])
  first = jnp.maximum(0, -((k - 1 - patch_start - lo) // s))  # ceil((p + lo - k + 1) / s)
  last = jnp.minimum(side_out - 1, (patch_start + n - 1 + lo) // s)
  return jnp.clip((first + last + 1 - m) // 2, 0, side_out - m)


def window_layer(spec: Conv | Pool | Norm, params: Params, stored: jax.Array, m: int, patch: jax.Array,
                 start: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One conv-stack layer on a window, for one occluder position.

  Args:
    spec, params: the layer and the model's params.
    stored: the layer's input map on the unoccluded image [h, w, c].
    m: the side of the output window (`Plan.windows`; unused for a Norm, whose window is the patch).
    patch: the changed part of the input map [n, n, c], at start int [2] (y, x).

  Returns:
    The output window [m, m, c'] and its start [2] in the output map.
  """
  if isinstance(spec, Norm):
    return _apply(spec, params, patch[None])[0], start
  side = (m - 1) * spec.stride + _kernel(spec)
  side_out = (stored.shape[0] + sum(spec.padding[0]) - _kernel(spec)) // spec.stride + 1
  out_start = _window(spec, side_out, m, start, patch.shape[0])
  padded = jnp.pad(stored, (*spec.padding, (0, 0)), constant_values=_pad_value(spec))
  region_start = out_start * spec.stride
  region = lax.dynamic_slice(padded, (region_start[0], region_start[1], 0), (side, side, padded.shape[-1]))
  lo = jnp.array([spec.padding[0][0], spec.padding[1][0]])
  region = _placed(patch, start + lo - region_start, side, region)
  return _apply(spec, params, region[None], ((0, 0), (0, 0)))[0], out_start  # m x m outputs


def occluded(arch: Arch, params: Params, cache: list[jax.Array], size: int, corner: jax.Array,
             threshold: float | None = None) -> tuple[jax.Array, jax.Array | None]:
  """One occluder position of one image, incrementally.

  Args:
    arch, params: the model.
    cache: `unoccluded` maps of the image.
    size: the occluder's side; corner: int [2] its top-left (y, x) in input pixels.
    threshold: as `plan`.

  Returns:
    The logits [C], and the map of every conv-stack layer as windows or whole maps: a list of
    (output [m, m, c] or [h, w, c], start [2]) per layer, start (0, 0) for whole maps.
  """
  windows, dense_from = dataclasses.astuple(plan(arch, size, threshold))
  patch, start = jnp.zeros((size, size, cache[0].shape[-1]), cache[0].dtype), corner
  outputs = []
  for i, spec in enumerate(arch.layers[:dense_from]):
    patch, start = window_layer(spec, params, cache[i], windows[i], patch, start)
    outputs.append((patch, start))
  x = _placed(patch, start, cache[dense_from].shape[0], cache[dense_from])[None]
  for spec in arch.layers[dense_from:]:
    x = _apply(spec, params, x)
    if len(outputs) < conv_stack(arch):
      outputs.append((x[0], jnp.zeros(2, jnp.int32)))
  return x[0], outputs


@functools.partial(jax.jit, static_argnames=("arch", "size", "layer", "threshold"))
def positions(arch: Arch, params: Params, cache: list[jax.Array], label: jax.Array, channel: jax.Array,
              corners: jax.Array, size: int, layer: str,
              threshold: float | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Occluder positions of one image (its `unoccluded` maps) at corners int [N, 2] -> total
  activation of map `channel` of `layer` [N], p(label) [N], top-1 class [N] (as a full forward pass
  of each occluded image would give)."""
  index = arch.layer_names.index(layer)
  stored = cache[index + 1][..., channel]
  total = stored.sum()

  def one(corner):
    logits, outputs = occluded(arch, params, cache, size, corner, threshold)
    window, start = outputs[index]
    new = window[..., channel]
    old = lax.dynamic_slice(stored, (start[0], start[1]), new.shape)
    activity = total + (new - old).sum()
    return activity, jax.nn.softmax(logits)[label], jnp.argmax(logits).astype(jnp.int32)

  return jax.vmap(one)(corners)
