"""Architectures as data, parameter initialisation and the forward pass with switches.

An architecture is an `Arch`: an input size and a tuple of layers (`Conv`, `Pool`, `Norm`,
`Dense`). Layer names are the paper's: conv1..conv5, pool1/pool2/pool5, norm1/norm2, fc6, fc7 and
the classifier fc8 (Fig. 3).

Conventions, fixed once here:
  * Images are float32 [B, H, W, 3], NHWC, mean-subtracted pixels (roughly [-128, 128], as the
    paper says in section 3).
  * `trace.activations["convN"]` is the post-ReLU, pre-pool map [B, h, w, c]; fc6/fc7 are post-ReLU
    [B, features] (before dropout) and fc8 holds the logits. Top-k, projections and "strongest map"
    all read these.
  * `trace.switches["poolN"]` is int32 [B, h, w, c]: the row-major position of each maximum inside
    its 3x3 window (see `layers.max_pool`; `layers.switch_positions` gives absolute coordinates).
  * Params are a plain nested dict: params["conv1"]["kernel"] is HWIO, params["fc6"]["kernel"] is
    [in, out]; every layer also has a "bias".
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import layers

Params = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Conv:
  """Convolution + ReLU. `padding` is ((top, bottom), (left, right))."""
  name: str
  features: int
  kernel: int
  stride: int = 1
  padding: layers.Padding = ((0, 0), (0, 0))


@dataclasses.dataclass(frozen=True)
class Pool:
  """Max pooling that records switches (3x3 regions, stride 2 in the paper)."""
  name: str
  window: int = 3
  stride: int = 2
  padding: layers.Padding = ((0, 0), (0, 0))


@dataclasses.dataclass(frozen=True)
class Norm:
  """Local contrast normalization across feature maps (`layers.local_response_norm`)."""
  name: str
  size: int = 5
  alpha: float = 1e-4
  beta: float = 0.75
  k: float = 2.0


@dataclasses.dataclass(frozen=True)
class Dense:
  """Fully connected layer. Hidden layers use ReLU then dropout; the classifier (relu=False) neither."""
  name: str
  features: int
  relu: bool = True
  dropout: float = 0.0


Layer = Union[Conv, Pool, Norm, Dense]


@dataclasses.dataclass(frozen=True)
class Arch:
  """A whole network: square RGB input of side `input_size`, then `layers` in order.

  The classifier is the last Dense layer; its `features` is a placeholder that `init_params`
  replaces with num_classes (read the real count from params["fc8"]["kernel"].shape[1]).
  """
  name: str
  input_size: int
  layers: tuple[Layer, ...]

  @property
  def layer_names(self) -> tuple[str, ...]:
    return tuple(layer.name for layer in self.layers)

  @property
  def conv_names(self) -> tuple[str, ...]:
    return tuple(layer.name for layer in self.layers if isinstance(layer, Conv))

  @property
  def activation_names(self) -> tuple[str, ...]:
    """Layers whose outputs are recorded in `Trace.activations` (conv and fc)."""
    return tuple(layer.name for layer in self.layers if isinstance(layer, (Conv, Dense)))

  def layer(self, name: str) -> Layer:
    for layer in self.layers:
      if layer.name == name:
        return layer
    raise ValueError(f"layer={name!r} is not in arch {self.name!r}; allowed: {', '.join(self.layer_names)}")

  def shapes(self) -> dict[str, tuple[int, ...]]:
    """Output shape of every layer for one image: (h, w, c) for maps, (features,) for fc."""
    h = w = self.input_size
    c = 3
    out = {}
    for layer in self.layers:
      if isinstance(layer, (Conv, Pool)):
        k = layer.kernel if isinstance(layer, Conv) else layer.window
        (top, bottom), (left, right) = layer.padding
        h = (h + top + bottom - k) // layer.stride + 1
        w = (w + left + right - k) // layer.stride + 1
        c = layer.features if isinstance(layer, Conv) else c
        out[layer.name] = (h, w, c)
      elif isinstance(layer, Norm):
        out[layer.name] = (h, w, c)
      else:
        h, w, c = 1, 1, layer.features
        out[layer.name] = (c,)
    return out


def _pad(lo: int, hi: int | None = None) -> layers.Padding:
  hi = lo if hi is None else hi
  return ((lo, hi), (lo, hi))


def _five_conv_net(name: str, input_size: int, convs: list[tuple[int, int, int, layers.Padding]],
                   pools: list[layers.Padding], fc: int) -> Arch:
  """conv1 pool1 norm1 conv2 pool2 norm2 conv3 conv4 conv5 pool5 fc6 fc7 fc8: the shape of Fig. 3."""
  c = [Conv(f"conv{i + 1}", f, k, s, p) for i, (f, k, s, p) in enumerate(convs)]
  return Arch(name, input_size, (
      c[0], Pool("pool1", padding=pools[0]), Norm("norm1"),
      c[1], Pool("pool2", padding=pools[1]), Norm("norm2"),
      c[2], c[3], c[4], Pool("pool5", padding=pools[2]),
      Dense("fc6", fc, dropout=0.5), Dense("fc7", fc, dropout=0.5), Dense("fc8", 1000, relu=False)))


def zfnet() -> Arch:
  """The paper's model (Fig. 3): maps of 110, 55, 26, 13, 13, 13, 13, 6; 6*6*256 = 9216 into fc6."""
  return _five_conv_net("zfnet", 224, [
      (96, 7, 2, _pad(1)), (256, 5, 2, _pad(0)), (384, 3, 1, _pad(1)),
      (384, 3, 1, _pad(1)), (256, 3, 1, _pad(1))],
      pools=[_pad(0, 1), _pad(0, 1), _pad(0)], fc=4096)


def alexnet() -> Arch:
  """Krizhevsky et al. (2012) with dense connections (the paper's baseline, sections 3 and 4.1).

  conv1 11x11 stride 4 (224 input padded by 2 gives 55, as 227 unpadded), 96/256/384/384/256 maps,
  maps of 55, 27, 27, 13, 13, 13, 13, 6.
  """
  return _five_conv_net("alexnet", 224, [
      (96, 11, 4, _pad(2)), (256, 5, 1, _pad(2)), (384, 3, 1, _pad(1)),
      (384, 3, 1, _pad(1)), (256, 3, 1, _pad(1))],
      pools=[_pad(0), _pad(0), _pad(0)], fc=4096)


def zfnet64() -> Arch:
  """ZFNet's five-conv/two-fc shape for 64-px images (Tiny ImageNet), small enough for 2 CPU cores.

  Input 56x56: crops of the 64-px images, as the paper's 224 crops of 256-px images (section 3).
  conv1 7x7 stride 2 (the paper's layer-1 choice), 48/96/192/192/128 maps, fc 512;
  maps of 28, 14, 14, 7, 7, 7, 7, 3; 3*3*128 = 1152 into fc6.
  """
  return _five_conv_net("zfnet64", 56, [
      (48, 7, 2, _pad(3)), (96, 3, 1, _pad(1)), (192, 3, 1, _pad(1)),
      (192, 3, 1, _pad(1)), (128, 3, 1, _pad(1))],
      pools=[_pad(0, 1), _pad(0, 1), _pad(0, 1)], fc=512)


def alexnet64() -> Arch:
  """AlexNet's layer 1 (11x11, stride 4) on the zfnet64 body, 56x56 input: the 64-px pair for Fig. 6.

  Maps of 14, 7, 7, 3, 3, 3, 3, 1.
  """
  return _five_conv_net("alexnet64", 56, [
      (48, 11, 4, _pad(5)), (96, 5, 1, _pad(2)), (192, 3, 1, _pad(1)),
      (192, 3, 1, _pad(1)), (128, 3, 1, _pad(1))],
      pools=[_pad(0, 1), _pad(0, 1), _pad(0, 1)], fc=512)


def ablate(arch: Arch, remove: tuple[str, ...] = (), features: Mapping[str, int] | None = None,
           name: str | None = None) -> Arch:
  """A variant of `arch` for the ablations of section 5.1 (Tables 2 and 3).

  Args:
    arch: the base architecture.
    remove: conv or fc layers to drop (e.g. ("conv3", "conv4") or ("fc6", "fc7")); following layers
      take whatever the layer before them gives.
    features: new widths, e.g. {"conv3": 512, "conv4": 1024, "conv5": 512} or {"fc6": 8192, "fc7": 8192}.
    name: the variant's name (default: derived from the change).

  Returns:
    A new `Arch`.
  """
  features = dict(features or {})
  for layer_name in (*remove, *features):
    layer = arch.layer(layer_name)
    if not isinstance(layer, (Conv, Dense)) or layer_name == arch.layers[-1].name:
      raise ValueError(f"ablate: {layer_name!r} is not a hidden conv or fc layer of {arch.name!r}")
  new_layers = tuple(dataclasses.replace(layer, features=features[layer.name]) if layer.name in features
                     else layer for layer in arch.layers if layer.name not in remove)
  return Arch(name or f"{arch.name}-ablated", arch.input_size, new_layers)


_BASE = {"zfnet": zfnet, "alexnet": alexnet, "zfnet64": zfnet64, "alexnet64": alexnet64}

# Table 3's rows, for either input size: (removed layers, new widths).
_ABLATIONS = {
    "no-conv34": (("conv3", "conv4"), {}),
    "no-fc7": (("fc7",), {}),
    "no-fc67": (("fc6", "fc7"), {}),
    "no-conv34-fc67": (("conv3", "conv4", "fc6", "fc7"), {}),
    "fc-half": ((), {"fc6": 0.5, "fc7": 0.5}),
    "fc-double": ((), {"fc6": 2, "fc7": 2}),
    "wide-conv345": ((), {"conv3": 4 / 3, "conv4": 8 / 3, "conv5": 2}),
    "wide-conv345-fc-double": ((), {"conv3": 4 / 3, "conv4": 8 / 3, "conv5": 2, "fc6": 2, "fc7": 2}),
}

ARCH_NAMES = tuple(_BASE) + tuple(f"{base}-{ablation}" for base in _BASE for ablation in _ABLATIONS)


@functools.cache
def get_arch(name: str) -> Arch:
  """An architecture by name: a base ("zfnet", "alexnet", "zfnet64", "alexnet64") or a Table 3
  ablation of one, "<base>-<ablation>" (e.g. "zfnet-no-conv34", "zfnet64-wide-conv345").

  Widths of the ablations scale the base: "wide-conv345" makes zfnet's 384/384/256 into the paper's
  512/1024/512, "fc-double" makes 4096 into 8192.
  """
  if name in _BASE:
    return _BASE[name]()
  for base, make in _BASE.items():
    ablation = name[len(base) + 1:] if name.startswith(base + "-") else None
    if ablation in _ABLATIONS:
      arch = make()
      remove, scale = _ABLATIONS[ablation]
      widths = {n: int(round(arch.layer(n).features * s)) for n, s in scale.items()}
      return ablate(arch, remove, widths, name)
  raise ValueError(f"arch={name!r} is unknown; allowed: {', '.join(ARCH_NAMES)}")


def init_params(arch: Arch, key: jax.Array, num_classes: int = 1000, weight_std: float | Mapping[str, float] = 0.01,
                bias: float | Mapping[str, float] = 0.0) -> Params:
  """Weights N(0, weight_std^2), biases constant: 1e-2 and 0 as the paper (section 3).

  Args:
    arch: the architecture.
    key: a jax.random key.
    num_classes: C of the softmax.
    weight_std: one std for all layers, or a {layer name: std} mapping (missing layers get 0.01).
    bias: one value for all, or a {layer name: value} mapping (missing layers get 0).

  Returns:
    {layer: {"kernel": HWIO or [in, out], "bias": [out]}} for every conv and fc layer.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes={num_classes} must be >= 1")
  params: Params = {}
  channels = 3
  shapes = arch.shapes()
  keys = jax.random.split(key, len(arch.layers))
  for i, (layer, layer_key) in enumerate(zip(arch.layers, keys)):
    if isinstance(layer, Conv):
      shape = (layer.kernel, layer.kernel, channels, layer.features)
    elif isinstance(layer, Dense):
      fan_in = int(np.prod(shapes[arch.layers[i - 1].name]))
      shape = (fan_in, num_classes if layer is arch.layers[-1] else layer.features)
    else:
      continue
    params[layer.name] = {
        "kernel": _per_layer(weight_std, layer.name, 0.01) * jax.random.normal(layer_key, shape, jnp.float32),
        "bias": jnp.full((shape[-1],), _per_layer(bias, layer.name, 0.0), jnp.float32)}
    channels = shape[-1]
  return params


def _per_layer(value: float | Mapping[str, float], name: str, default: float) -> float:
  return value.get(name, default) if isinstance(value, Mapping) else value


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trace:
  """Everything the forward pass records for the deconvnet and the analyses.

  Attributes:
    activations: {"conv1".."conv5": post-ReLU pre-pool [B, h, w, c], "fc6", "fc7": post-ReLU
      [B, f], "fc8": logits [B, C]}.
    switches: {"pool1", "pool2", "pool5": int32 [B, h, w, c]} (see `layers.max_pool`).
  """
  activations: dict[str, jax.Array]
  switches: dict[str, jax.Array]


def check_images(arch: Arch, images: Any) -> None:
  """Raises ValueError unless images is float [B, S, S, 3] with S = arch.input_size."""
  shape = getattr(images, "shape", None)
  dtype = getattr(images, "dtype", None)
  want = f"float [B, {arch.input_size}, {arch.input_size}, 3]"
  if shape is None or dtype is None:
    raise ValueError(f"images must be an array of {want}, got {type(images).__name__}")
  if len(shape) != 4 or shape[0] < 1 or tuple(shape[1:]) != (arch.input_size, arch.input_size, 3):
    raise ValueError(f"images has shape {tuple(shape)}; {arch.name!r} takes {want}")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"images has dtype {dtype}; {arch.name!r} takes {want} (mean-subtracted pixels)")


@functools.partial(jax.jit, static_argnames=("arch", "train"))
def forward(arch: Arch, params: Params, images: jax.Array, train: bool = False,
            rng: jax.Array | None = None) -> tuple[jax.Array, Trace]:
  """The convnet (section 2): images -> logits, recording activations and pooling switches.

  Args:
    arch: the architecture (static).
    params: from `init_params` or a checkpoint.
    images: float [B, S, S, 3], mean-subtracted.
    train: apply dropout (needs `rng`).
    rng: a jax.random key, used only when train=True.

  Returns:
    logits [B, C] and the `Trace`.
  """
  check_images(arch, images)
  if train and rng is None and any(isinstance(l, Dense) and l.dropout for l in arch.layers):
    raise ValueError("forward(train=True) applies dropout and needs rng=jax.random.key(...)")
  x = images.astype(jnp.float32)
  activations, switches = {}, {}
  for layer in arch.layers:
    if isinstance(layer, Conv):
      p = params[layer.name]
      x = jax.nn.relu(layers.conv2d(x, p["kernel"], p["bias"], layer.stride, layer.padding))
      activations[layer.name] = x
    elif isinstance(layer, Pool):
      x, switches[layer.name] = layers.max_pool(x, layer.window, layer.stride, layer.padding)
    elif isinstance(layer, Norm):
      x = layers.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)
    else:
      p = params[layer.name]
      x = x.reshape(x.shape[0], -1) @ p["kernel"] + p["bias"]
      if layer.relu:
        x = jax.nn.relu(x)
      activations[layer.name] = x
      if train and layer.dropout:
        rng, sub = jax.random.split(rng)
        keep = jax.random.bernoulli(sub, 1.0 - layer.dropout, x.shape)
        x = jnp.where(keep, x / (1.0 - layer.dropout), 0.0)
  return x, Trace(activations, switches)
