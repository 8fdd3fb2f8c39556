"""The deconvnet of section 2.1: project chosen activations back to pixels with the switches.

A projection starts from one layer of a `Trace`, keeps the chosen activation(s) and sets all other
activations of that layer to zero, then goes down layer by layer:
  pool -> unpool with the recorded switches, conv -> rectify then filter with the transposed
  (flipped) weights, fc -> transposed weights, norm -> skipped (contrast normalization is not
  inverted on the way down).
It reuses the forward pass's trace: no second forward pass. A single conv unit is projected on
windows that follow its receptive field down, as far as that saves FLOPs (`_plan`, `flops`), then on
whole maps; a whole map or an fc unit on whole maps.
Projections are scaled by the activation they start from, as in the paper (Captum's gradient-based
methods start from 1).

`rule` picks how each ReLU is reversed (g is the signal coming down, a the forward activation):
  "deconvnet": relu(g)                 (Zeiler & Fergus)
  "guided":    relu(g) * (a > 0)       (guided backpropagation, Springenberg et al. 2015)
  "saliency":  g * (a > 0)             (plain gradient, Simonyan et al. 2014)

Units are data: int32 (channel, y, x) triples, so many units are one vmapped, jitted call that
compiles once per shape.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import layers
from zf_jax.models import Arch, Conv, Dense, Norm, Params, Pool, Trace, check_params

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
  check_params(arch, params)
  return _down(arch, params, trace, arch.layer_names.index(layer), signal, rule)


def _down(arch: Arch, params: Params, trace: Trace, index: int, signal: jax.Array, rule: str) -> jax.Array:
  """The deconvnet from the output of arch.layers[index] down to pixels, on whole maps."""
  shapes = arch.shapes()
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


# --- One unit's projection only ever touches its receptive field, so below a conv unit the deconvnet
# can run on windows that follow the unit instead of on whole maps (at conv5 of ZF-224: 3x3, 5x5, 7x7,
# 15x15, 33x33, 67x67 of maps of 13, 13, 13, 26, 55, 110). A window is n x n positions of a map
# starting at row scale * y + shift_y and column scale * x + shift_x, (y, x) being the unit's
# position; it may hang over the map's edges, where the trace is padded (with 0 activations and -1
# switches) and the signal is kept at zero. From the layer where the windows stop, the rest of the way
# runs on whole maps (`_down`); where they stop is chosen by counting FLOPs (`_plan`).


@dataclasses.dataclass(frozen=True)
class _Window:
  """The window at the output of arch.layers[index]; `pads` are its trace's (low, high) padding."""
  index: int
  size: int
  scale: int
  shift: tuple[int, int]
  pads: tuple[tuple[int, int], tuple[int, int]]


def _all_windows(arch: Arch, layer: str) -> tuple[_Window, ...]:
  """The windows from a conv `layer` down, as long as each is smaller than its map.

  The last one is at the pixels (index -1) or at the output of the layer below which the next window
  would cover its whole map (its pads are then zero: it is never cut, only placed).
  """
  shapes = arch.shapes()
  index = arch.layer_names.index(layer)
  size, scale, shift = 1, 1, (0, 0)
  windows = []
  for i in range(index, -1, -1):
    spec = arch.layers[i]
    if isinstance(spec, Norm):
      continue
    here = shapes[spec.name][:2]
    below = shapes[arch.layers[i - 1].name][:2] if i else (arch.input_size, arch.input_size)
    k = spec.kernel if isinstance(spec, Conv) else spec.window
    if (size - 1) * spec.stride + k >= min(below):
      return (*windows, _Window(i, size, scale, shift, ((0, 0), (0, 0))))
    pads = tuple((max(0, -b), max(0, scale * (h - 1) + b + size - h)) for b, h in zip(shift, here))
    windows.append(_Window(i, size, scale, shift, pads))
    size = (size - 1) * spec.stride + k
    scale *= spec.stride
    shift = tuple(b * spec.stride - lo for b, (lo, _) in zip(shift, spec.padding))
  return (*windows, _Window(-1, size, scale, shift, ((0, 0), (0, 0))))


def _conv_flops(arch: Arch, index: int, side: int) -> float:
  """2 x multiply-adds of arch.layers[index]'s transposed convolution from a side x side output
  (the same count as the conv's forward over those outputs); 0 for pools."""
  spec = arch.layers[index]
  if not isinstance(spec, Conv):
    return 0.0
  channels_in = arch.shapes()[arch.layers[index - 1].name][-1] if index else 3
  return 2.0 * side ** 2 * spec.kernel ** 2 * channels_in * spec.features


def _dense_flops(arch: Arch, index: int) -> float:
  """The FLOPs of `_down` from the output of arch.layers[index] to the pixels, for one projection (0 from
  the pixels, index -1)."""
  shapes = arch.shapes()
  return sum(_conv_flops(arch, i, shapes[arch.layers[i].name][0]) for i in range(index + 1))


@functools.cache
def _plan(arch: Arch, layer: str) -> tuple[tuple[_Window, ...], int, float]:
  """Where a unit's projection leaves windows for whole maps: the FLOP count decides.

  Stopping after the first t windows costs their transposed convolutions on windows plus `_down` on
  whole maps from the t-th window's layer; the cheapest t wins, ties going to whole maps (t = 1 is
  the dense path: the unit itself, placed into its map). Pools, ReLUs and the cutting and pasting of
  windows are not counted (elementwise).

  Returns:
    the windows to run, the layer index where whole maps take over (-1: none, the windows reach the
    pixels), and the FLOPs of one projection on that plan.
  """
  windows = _all_windows(arch, layer)
  best = (windows[:1], windows[0].index, _dense_flops(arch, windows[0].index))
  windowed = 0.0
  for t, (above, window) in enumerate(zip(windows[:-1], windows[1:]), start=1):
    windowed += _conv_flops(arch, above.index, above.size)
    cost = windowed + _dense_flops(arch, window.index)
    if cost < best[2]:
      best = (windows[:t + 1], window.index, cost)
  return best


def flops(arch: Arch, layer: str) -> tuple[float, float]:
  """Convolution FLOPs (2 x multiply-adds) of projecting one conv unit of `layer`: (on the windows
  `project_many` uses, on whole maps). The first is the crop's bound; pools and ReLUs are not counted."""
  if not isinstance(arch.layer(layer), Conv):
    raise ValueError(f"layer={layer!r} is not a conv layer of {arch.name!r}; allowed: {', '.join(arch.conv_names)}")
  return _plan(arch, layer)[2], _dense_flops(arch, arch.layer_names.index(layer))


def _window_start(window: _Window, unit: jax.Array) -> tuple[jax.Array, jax.Array]:
  return window.scale * unit[1] + window.shift[0], window.scale * unit[2] + window.shift[1]


def _cut(padded: jax.Array, window: _Window, unit: jax.Array) -> jax.Array:
  """The window [n, n, c] out of one image's map, padded by window.pads."""
  y0, x0 = _window_start(window, unit)
  start = (y0 + window.pads[0][0], x0 + window.pads[1][0], jnp.zeros_like(y0))  # one index dtype (x64 too)
  return jax.lax.dynamic_slice(padded, start, (window.size, window.size, padded.shape[-1]))


def _place(signal: jax.Array, window: _Window, unit: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """The window [n, n, c] put in a whole map [h, w, c] (zero elsewhere; what hangs over is dropped)."""
  y0, x0 = _window_start(window, unit)
  framed = jnp.pad(signal, ((hw[0], hw[0]), (hw[1], hw[1]), (0, 0)))
  return jax.lax.dynamic_slice(framed, (hw[0] - y0, hw[1] - x0, jnp.zeros_like(y0)), (*hw, signal.shape[-1]))


def _inside(signal: jax.Array, window: _Window, unit: jax.Array, hw: tuple[int, int]) -> jax.Array:
  """The window's signal with the positions that hang over the map's edges set to zero."""
  y0, x0 = _window_start(window, unit)
  rows = y0 + jnp.arange(window.size)
  cols = x0 + jnp.arange(window.size)
  keep = ((rows >= 0) & (rows < hw[0]))[:, None, None] & ((cols >= 0) & (cols < hw[1]))[None, :, None]
  return jnp.where(keep, signal, 0.0)


def _project_windowed(arch: Arch, params: Params, padded: Trace, trace: Trace, layer: str, unit: jax.Array,
                      rule: str) -> jax.Array:
  """One image's projection of one conv unit (channel, y, x) -> [S, S, 3], on windows.

  `padded` holds the windows' trace maps padded as `_all_windows` says, `trace` the whole maps (both
  without the batch axis).
  """
  shapes = arch.shapes()
  windows, dense_from, _ = _plan(arch, layer)
  top = trace.activations[layer]  # the first window is the unit itself, inside the map: no padding
  signal = jnp.where(jnp.arange(top.shape[-1]) == unit[0], _cut(top, windows[0], unit), 0.0)
  for window, below in zip(windows[:-1], windows[1:]):
    spec = arch.layers[window.index]
    size = (below.size, below.size)
    if isinstance(spec, Conv):
      signal = _reverse_relu(signal, _cut(padded.activations[spec.name], window, unit), rule)
      signal = layers.conv2d_transpose(signal[None], params[spec.name]["kernel"], spec.stride, ((0, 0), (0, 0)),
                                       size)[0]
    else:
      switches = _cut(padded.switches[spec.name], window, unit)
      signal = layers.unpool(signal[None], switches[None], spec.window, spec.stride, ((0, 0), (0, 0)), size)[0]
    if isinstance(spec, Conv) and below.index >= 0:  # the transposed filters also reach the conv's padding
      signal = _inside(signal, below, unit, shapes[arch.layers[below.index].name][:2])
  last = windows[-1]
  if dense_from < 0:
    return _place(signal, last, unit, (arch.input_size, arch.input_size))
  whole = _place(signal, last, unit, shapes[arch.layers[dense_from].name][:2])
  one = jax.tree.map(lambda a: a[None], trace)
  return _down(arch, params, one, dense_from, whole[None], rule)[0]


def _pad_trace(arch: Arch, trace: Trace, layer: str) -> Trace:
  """The trace maps the windows read, [B, ...] padded as `_all_windows` says (0 activations, -1 switches)."""
  activations, switches = {}, {}
  for window in _plan(arch, layer)[0][:-1]:
    spec = arch.layers[window.index]
    pads = ((0, 0), *window.pads, (0, 0))
    if isinstance(spec, Conv):
      activations[spec.name] = jnp.pad(trace.activations[spec.name], pads)
    else:
      switches[spec.name] = jnp.pad(trace.switches[spec.name], pads, constant_values=-1)
  return Trace(activations, switches)


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


@functools.partial(jax.jit, static_argnames=("arch", "layer", "rule", "windowed"))
def _project_units(arch: Arch, params: Params, trace: Trace, layer: str, units: jax.Array, rule: str,
                   windowed: bool = True) -> jax.Array:
  """units int32 [B, N, 3] or [B, N, 1] -> pixels [B, N, S, S, 3], vmapped over N.

  Single conv units run on windows that follow their receptive fields where `_plan` finds that
  cheaper (and `windowed`); whole maps and fc units run on whole maps.
  """
  if (windowed and units.shape[-1] == 3 and isinstance(arch.layer(layer), Conv)
      and _plan(arch, layer)[1] != arch.layer_names.index(layer)):
    per_image = jax.vmap(lambda p, t, unit: _project_windowed(arch, params, p, t, layer, unit, rule))
    return jax.vmap(per_image, in_axes=(None, None, 1), out_axes=1)(_pad_trace(arch, trace, layer), trace, units)
  whole_map = units.shape[-1] == 1

  def one(unit):  # unit: [B, 3] or [B, 1]
    signal = _select(trace.activations[layer], unit, whole_map)
    return project_signal(arch, params, trace, layer, signal, rule)

  return jax.vmap(one, in_axes=1, out_axes=1)(units)


def _check(arch: Arch, params: Params, trace: Trace, layer: str, rule: str) -> tuple[int, ...]:
  check_params(arch, params)
  if rule not in RULES:
    raise ValueError(f"rule={rule!r} is unknown; allowed: {', '.join(RULES)}")
  if layer not in arch.activation_names:
    raise ValueError(f"layer={layer!r} cannot be projected in {arch.name!r}; allowed: "
                     f"{', '.join(arch.activation_names)}")
  if layer not in trace.activations:
    raise ValueError(f"trace has no activations for layer={layer!r}: is it the trace of {arch.name!r}?")
  want, last = arch.shapes(), arch.layers[-1].name
  for name, value in trace.activations.items():
    got = tuple(value.shape[1:])
    if name in want and (got != want[name] if name != last else got[:-1] != want[name][:-1]):
      raise ValueError(f"trace.activations[{name!r}] has shape {tuple(value.shape)}; arch {arch.name!r} makes "
                       f"[B, {', '.join(map(str, want[name]))}]: the trace is of another arch; allowed: "
                       f"models.forward({arch.name!r}, ...)'s trace")
  return tuple(trace.activations[layer].shape)


def _is_int_array(values: Any) -> bool:
  dtype = getattr(values, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.integer) and not jnp.issubdtype(dtype, jnp.bool_)


def _unit_limits(shape: tuple[int, ...]) -> tuple[int, int, int]:
  """(channels, rows, columns) of a layer's activations [B, h, w, c] or [B, f] (fc: one position)."""
  return (shape[-1], shape[1], shape[2]) if len(shape) == 4 else (shape[-1], 1, 1)


def _check_units_shape(units: Any, batch: int) -> None:
  if not _is_int_array(units) or units.ndim not in (2, 3) or units.shape[-1] not in (1, 3) \
      or (units.ndim == 3 and units.shape[0] != batch):
    raise ValueError(f"units has shape {tuple(getattr(units, 'shape', ()))} and dtype {getattr(units, 'dtype', None)};"
                     f" allowed: int [N, 3] (channel, y, x), [N, 1] (whole maps), or [{batch}, N, 3|1] per image")


def check_units(arch: Arch, trace: Trace, layer: str, units: Any) -> np.ndarray:
  """Checks units eagerly (their values must be concrete): int [N, 3|1] or [B, N, 3|1] in range.

  Values are checked before any conversion to int32, so ints beyond int32 cannot wrap around to valid
  ones.

  Returns:
    the units as int32 numpy, same shape.
  """
  shape = tuple(trace.activations[layer].shape) if layer in trace.activations else None
  if shape is None:
    raise ValueError(f"trace has no activations for layer={layer!r}: is it the trace of {arch.name!r}?")
  values = np.asarray(units)
  _check_units_shape(values, shape[0])
  for i, (name, size) in enumerate(zip(("channel", "y", "x"), _unit_limits(shape))):
    if i < values.shape[-1] and values.size and (values[..., i].min() < 0 or values[..., i].max() >= size):
      bad = values[..., i].min() if values[..., i].min() < 0 else values[..., i].max()
      raise ValueError(f"{name}={bad} is out of range; allowed: 0..{size - 1}")
  return values.astype(np.int32)


def project_many(arch: Arch, params: Params, trace: Trace, layer: str, units: Any,
                 rule: str = "deconvnet", windowed: bool = True) -> jax.Array:
  """Projects many units at once: one jitted call, vmapped over units (section 2.1, Fig. 2).

  Bad input raises one ValueError: params not of `arch` (`models.check_params`), an unknown layer or
  rule, units of the wrong shape or dtype or out of range (`check_units`). Under an outer `jax.jit`
  the units are tracers: their shape and dtype are still checked, their values cannot be, and a unit
  out of range then gives an all-zero projection; check them first with `check_units`, or call
  `checked_project_many` inside `jax.experimental.checkify.checkify`.

  Args:
    arch, params: the model.
    trace: from `models.forward` on B images.
    layer: a conv or fc layer ("conv1".."conv5", "fc6", ...).
    units: int [N, 3] (channel, y, x), the same N units in every image, or [B, N, 3], N units per
      image. [N, 1] or [B, N, 1] (channel only) projects whole feature maps. For fc layers use
      y = x = 0 or channel only.
    rule: "deconvnet" (the paper), "guided" or "saliency".
    windowed: single conv units run on windows under their receptive fields as far as that saves
      FLOPs (`flops`); False runs them on whole maps (the same numbers, up to float rounding).

  Returns:
    [B, N, S, S, 3] pixels, each projection scaled by the activation(s) it starts from.
  """
  shape = _check(arch, params, trace, layer, rule)
  if isinstance(units, jax.core.Tracer):
    _check_units_shape(units, shape[0])
  else:
    units = check_units(arch, trace, layer, units)
  units = jnp.asarray(units, jnp.int32)
  if units.ndim == 2:
    units = jnp.broadcast_to(units[None], (shape[0], *units.shape))
  return _project_units(arch, params, trace, layer, units, rule, windowed)


def checked_project_many(arch: Arch, params: Params, trace: Trace, layer: str, units: Any,
                         rule: str = "deconvnet") -> jax.Array:
  """`project_many` whose unit range checks are `checkify` checks, so they also hold under `jax.jit`.

  Use it inside `jax.experimental.checkify.checkify`, e.g.
    f = checkify.checkify(lambda t, u: deconv.checked_project_many(arch, params, t, "conv5", u))
    err, pixels = jax.jit(f)(trace, units)
    err.throw()   # checkify.JaxRuntimeError (a ValueError) naming the coordinate and its range
  Called eagerly it raises at once.
  """
  from jax.experimental import checkify
  shape = _check(arch, params, trace, layer, rule)
  units = jnp.asarray(units)
  _check_units_shape(units, shape[0])
  for i, (name, size) in enumerate(zip(("channel", "y", "x"), _unit_limits(shape))):
    if i < units.shape[-1]:
      checkify.check(jnp.all((units[..., i] >= 0) & (units[..., i] < size)),
                     f"a unit's {name} is out of range for {layer!r}; allowed: 0..{size - 1}")
  units = units.astype(jnp.int32)
  if units.ndim == 2:
    units = jnp.broadcast_to(units[None], (shape[0], *units.shape))
  return _project_units(arch, params, trace, layer, units, rule)


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
  shape = _check(arch, params, trace, layer, rule)
  if (y is None) != (x is None):
    raise ValueError("give both y and x (one unit) or neither (the whole feature map)")
  parts = (channel,) if y is None else (channel, y, x)
  names = ("channel", "y", "x")
  traced = any(isinstance(p, jax.core.Tracer) for p in parts)
  xp = jnp if traced else np
  values = [p if isinstance(p, jax.core.Tracer) else np.asarray(p) for p in parts]
  for name, part, value in zip(names, parts, values):
    if not _is_int_array(value) or value.ndim > 1 or value.size not in (1, shape[0]):
      raise ValueError(f"{name}={part!r} is not allowed; allowed: an int, or int [{shape[0]}] (one per image)")
  unit = xp.stack([xp.broadcast_to(value.reshape(-1), (shape[0],)) for value in values], axis=-1)
  return project_many(arch, params, trace, layer, unit[:, None], rule)[:, 0]


def receptive_field(arch: Arch, layer: str, y: int, x: int) -> tuple[int, int, int, int]:
  """The input pixels a unit can see: (y0, x0, y1, x1), half-open (image[y0:y1, x0:x1]), clipped.

  Args:
    arch: the architecture.
    layer: a conv, pool or norm layer, or an fc layer (y = x = 0; it sees the whole image).
    y, x: the unit's position in that layer's map (ints).

  Returns:
    (y0, x0, y1, x1) input-pixel bounds.
  """
  names = arch.layer_names
  if layer not in names:
    raise ValueError(f"layer={layer!r} is not in arch {arch.name!r}; allowed: {', '.join(names)}")
  shapes = arch.shapes()
  index = names.index(layer)
  fc = any(isinstance(spec, Dense) for spec in arch.layers[:index + 1])
  h, w = (1, 1) if fc else shapes[layer][:2]  # an fc unit has the one position (0, 0), as in `project`
  for name, value, size in (("y", y, h), ("x", x, w)):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
      raise ValueError(f"{name}={value!r} is not allowed for {layer!r}; allowed: an int in 0..{size - 1}")
    if not 0 <= value < size:
      raise ValueError(f"{name}={value} is out of range for {layer!r}; allowed: 0..{size - 1}")
  if fc:
    return 0, 0, arch.input_size, arch.input_size
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
