"""The deconvnet of section 2.1: project chosen activations back to pixels with the switches.

A projection starts from one layer of a `Trace`, keeps the chosen activation(s) and sets all other
activations of that layer to zero, then goes down layer by layer:
  pool -> unpool with the recorded switches, conv -> rectify then filter with the transposed
  (flipped) weights, fc -> transposed weights, norm -> skipped (contrast normalization is not
  inverted on the way down).
It reuses the forward pass's trace: no second forward pass. Projections are scaled by the
activation they start from, as in the paper (Captum's gradient-based methods start from 1).

`rule` picks how each ReLU is reversed (g is the signal coming down, a the forward activation):
  "deconvnet": relu(g)                 (Zeiler & Fergus)
  "guided":    relu(g) * (a > 0)       (guided backpropagation, Springenberg et al. 2015)
  "saliency":  g * (a > 0)             (plain gradient, Simonyan et al. 2014)

Units are data: int32 (channel, y, x) triples, so many units are one vmapped, jitted call that
compiles once per shape.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import layers, models
from zf_jax.models import Arch, Conv, Dense, Norm, Params, Pool, Trace

RULES = ("deconvnet", "guided", "saliency")


def _reverse_relu(signal: jax.Array, activation: jax.Array, rule: str) -> jax.Array:
  if rule == "deconvnet":
    return jax.nn.relu(signal)
  if rule == "guided":
    return jnp.where(activation > 0, jax.nn.relu(signal), 0.0)
  return jnp.where(activation > 0, signal, 0.0)


def project_signal(arch: Arch, params: Params, trace: Trace, layer: str, signal: jax.Array,
                   rule: str = "deconvnet") -> jax.Array:
  """Takes any signal at a layer's output down to pixel space (the deconvnet proper).

  Args:
    arch, params: the model.
    trace: the forward trace of the same images (switches, and activations for the ReLU rules).
    layer: a conv or fc layer name.
    signal: [B, h, w, c] (or [B, f] for fc), shaped as trace.activations[layer].
    rule: "deconvnet", "guided" or "saliency".

  Returns:
    [B, S, S, 3] pixels.
  """
  shapes = arch.shapes()
  index = arch.layer_names.index(layer)
  for i in range(index, -1, -1):
    spec = arch.layers[i]
    below = shapes[arch.layers[i - 1].name] if i else (arch.input_size, arch.input_size, 3)
    if isinstance(spec, Conv):
      signal = _reverse_relu(signal, trace.activations[spec.name], rule)
      signal = layers.conv2d_transpose(signal, params[spec.name]["kernel"], spec.stride, spec.padding, below[:2])
    elif isinstance(spec, Pool):
      signal = layers.unpool(signal, trace.switches[spec.name], spec.window, spec.stride, spec.padding, below[:2])
    elif isinstance(spec, Dense):
      if spec.relu:
        signal = _reverse_relu(signal, trace.activations[spec.name], rule)
      signal = (signal @ params[spec.name]["kernel"].T).reshape(signal.shape[0], *below)
    else:
      assert isinstance(spec, Norm)  # skipped on the way down (section 2.1)
  return signal


def _select(activation: jax.Array, unit: jax.Array, whole_map: bool) -> jax.Array:
  """Zero all of activation [B, ...] but the unit of each image; unit is int32 [B, 3] or [B, 1]."""
  channel = unit[:, 0]
  if activation.ndim == 2:
    keep = jnp.arange(activation.shape[1])[None] == channel[:, None]
  else:
    keep = jnp.arange(activation.shape[3])[None, None, None] == channel[:, None, None, None]
    if not whole_map:
      keep &= jnp.arange(activation.shape[1])[None, :, None, None] == unit[:, 1, None, None, None]
      keep &= jnp.arange(activation.shape[2])[None, None, :, None] == unit[:, 2, None, None, None]
  return jnp.where(keep, activation, 0.0)


@functools.partial(jax.jit, static_argnames=("arch", "layer", "rule"))
def _project_units(arch: Arch, params: Params, trace: Trace, layer: str, units: jax.Array,
                   rule: str) -> jax.Array:
  """units int32 [B, N, 3] or [B, N, 1] -> pixels [B, N, S, S, 3], vmapped over N."""
  whole_map = units.shape[-1] == 1

  def one(unit):  # unit: [B, 3] or [B, 1]
    signal = _select(trace.activations[layer], unit, whole_map)
    return project_signal(arch, params, trace, layer, signal, rule)

  return jax.vmap(one, in_axes=1, out_axes=1)(units)


def _check(arch: Arch, trace: Trace, layer: str, rule: str) -> tuple[int, ...]:
  if rule not in RULES:
    raise ValueError(f"rule={rule!r} is unknown; allowed: {', '.join(RULES)}")
  if layer not in arch.activation_names:
    raise ValueError(f"layer={layer!r} cannot be projected in {arch.name!r}; allowed: "
                     f"{', '.join(arch.activation_names)}")
  if layer not in trace.activations:
    raise ValueError(f"trace has no activations for layer={layer!r}: is it the trace of {arch.name!r}?")
  return tuple(trace.activations[layer].shape)


def _check_range(name: str, values: Any, size: int) -> None:
  if isinstance(values, jax.core.Tracer):
    return  # values only known at run time: the caller jits us
  values = np.asarray(values)
  if values.size and (values.min() < 0 or values.max() >= size):
    raise ValueError(f"{name}={values.min() if values.min() < 0 else values.max()} is out of range; "
                     f"allowed: 0..{size - 1}")


def project_many(arch: Arch, params: Params, trace: Trace, layer: str, units: Any,
                 rule: str = "deconvnet") -> jax.Array:
  """Projects many units at once: one jitted call, vmapped over units (section 2.1, Fig. 2).

  Args:
    arch, params: the model.
    trace: from `models.forward` on B images.
    layer: a conv or fc layer ("conv1".."conv5", "fc6", ...).
    units: int [N, 3] (channel, y, x), the same N units in every image, or [B, N, 3], N units per
      image. [N, 1] or [B, N, 1] (channel only) projects whole feature maps. For fc layers use
      y = x = 0 or channel only.
    rule: "deconvnet" (the paper), "guided" or "saliency".

  Returns:
    [B, N, S, S, 3] pixels, each projection scaled by the activation(s) it starts from.
  """
  shape = _check(arch, trace, layer, rule)
  units = jnp.asarray(units)
  batch = shape[0]
  if not jnp.issubdtype(units.dtype, jnp.integer) or units.ndim not in (2, 3) or units.shape[-1] not in (1, 3) \
      or (units.ndim == 3 and units.shape[0] != batch):
    raise ValueError(f"units has shape {tuple(units.shape)} and dtype {units.dtype}; allowed: int [N, 3] "
                     f"(channel, y, x), [N, 1] (whole maps), or [{batch}, N, 3|1] per image")
  limits = (shape[-1], shape[1], shape[2]) if len(shape) == 4 else (shape[-1], 1, 1)
  for i, name in enumerate(("channel", "y", "x")[:units.shape[-1]]):
    _check_range(name, units[..., i], limits[i])
  if units.ndim == 2:
    units = jnp.broadcast_to(units[None], (batch, *units.shape))
  return _project_units(arch, params, trace, layer, units.astype(jnp.int32), rule)


def project(arch: Arch, params: Params, trace: Trace, layer: str, channel: Any, y: Any = None,
            x: Any = None, rule: str = "deconvnet") -> jax.Array:
  """Projects one unit, or one whole feature map, of every image down to pixels (section 2.1).

  Args:
    arch, params: the model.
    trace: from `models.forward` on B images.
    layer: a conv or fc layer.
    channel: the feature map; an int, or int [B] (one per image).
    y, x: the position in the map (ints or int [B]); None for both projects the whole map.
    rule: "deconvnet", "guided" or "saliency".

  Returns:
    [B, S, S, 3] pixels.
  """
  shape = _check(arch, trace, layer, rule)
  if (y is None) != (x is None):
    raise ValueError("give both y and x (one unit) or neither (the whole feature map)")
  parts = (channel,) if y is None else (channel, y, x)
  unit = jnp.stack([jnp.broadcast_to(jnp.asarray(p), (shape[0],)) for p in parts], axis=-1)
  return project_many(arch, params, trace, layer, unit[:, None], rule)[:, 0]


def receptive_field(arch: Arch, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
  """The input pixels a unit can see: (y0, x0, y1, x1), half-open (image[y0:y1, x0:x1]), clipped.

  Args:
    arch: the architecture.
    layer: a conv or pool layer (fc layers see the whole image).
    y, x: the unit's position in that layer's map.

  Returns:
    (y0, x0, y1, x1) input-pixel bounds.
  """
  names = arch.layer_names
  if layer not in names:
    raise ValueError(f"layer={layer!r} is not in arch {arch.name!r}; allowed: {', '.join(names)}")
  shapes = arch.shapes()
  index = names.index(layer)
  if any(isinstance(spec, Dense) for spec in arch.layers[:index + 1]):
    return 0, 0, arch.input_size, arch.input_size
  h, w = shapes[layer][:2]
  for name, value, size in (("y", y, h), ("x", x, w)):
    if not 0 <= value < size:
      raise ValueError(f"{name}={value} is out of range for {layer!r}; allowed: 0..{size - 1}")
  bounds = [[y, y], [x, x]]
  for i in range(index, -1, -1):
    spec = arch.layers[i]
    if not isinstance(spec, (Conv, Pool)):
      continue
    k = spec.kernel if isinstance(spec, Conv) else spec.window
    below = shapes[arch.layers[i - 1].name][:2] if i else (arch.input_size, arch.input_size)
    for axis in (0, 1):
      lo_pad = spec.padding[axis][0]
      lo, hi = bounds[axis]
      bounds[axis] = [max(lo * spec.stride - lo_pad, 0), min(hi * spec.stride - lo_pad + k - 1, below[axis] - 1)]
  return bounds[0][0], bounds[1][0], bounds[0][1] + 1, bounds[1][1] + 1
