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
import weakref
from collections.abc import Mapping
from typing import Any

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


Layer = Conv | Pool | Norm | Dense


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


def vgg16() -> Arch:
  """Simonyan & Zisserman (2015) configuration D: the network most deconvnet and guided-backprop pictures
  are made with (torchvision's `vgg16` layout).

  13 conv 3x3 stride 1 padding 1 + ReLU in five blocks of 64, 128, 256, 512, 512 maps, each block ended by
  a 2x2/2 max-pool with switches; fc 4096, 4096, 1000. Layers are numbered through: conv1..conv13 are
  VGG's conv1_1..conv5_3, pool1..pool5 end the blocks. Maps of 224, 112, 56, 28, 14; 7*7*512 = 25088
  into fc6.
  """
  blocks = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
  body, n = [], 0
  for block, widths in enumerate(blocks, start=1):
    for width in widths:
      n += 1
      body.append(Conv(f"conv{n}", width, 3, 1, _pad(1)))
    body.append(Pool(f"pool{block}", window=2, stride=2))
  return Arch("vgg16", 224, (*body, Dense("fc6", 4096, dropout=0.5), Dense("fc7", 4096, dropout=0.5),
                             Dense("fc8", 1000, relu=False)))


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
  hidden = [layer.name for layer in arch.layers[:-1] if isinstance(layer, (Conv, Dense))]
  for layer_name in (*remove, *features):
    if layer_name not in hidden:
      raise ValueError(f"ablate: {layer_name!r} is not a hidden conv or fc layer of {arch.name!r}; "
                       f"allowed: {', '.join(hidden)}")
  for layer_name, width in features.items():
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
      raise ValueError(f"ablate: features[{layer_name!r}]={width!r} is not allowed; allowed: an int >= 1")
  new_layers = tuple(dataclasses.replace(layer, features=features[layer.name]) if layer.name in features
                     else layer for layer in arch.layers if layer.name not in remove)
  return Arch(name or f"{arch.name}-ablated", arch.input_size, new_layers)


_BASE = {"zfnet": zfnet, "alexnet": alexnet, "zfnet64": zfnet64, "alexnet64": alexnet64}
_OTHERS = {"vgg16": vgg16}  # no Table 3 ablations

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

ARCH_NAMES = tuple(_BASE) + tuple(f"{base}-{ablation}" for base in _BASE for ablation in _ABLATIONS) + tuple(_OTHERS)


def get_arch(name: str) -> Arch:
  """An architecture by name: a base ("zfnet", "alexnet", "zfnet64", "alexnet64") or a Table 3
  ablation of one, "<base>-<ablation>" (e.g. "zfnet-no-conv34", "zfnet64-wide-conv345"), or "vgg16".

  Widths of the ablations scale the base: "wide-conv345" makes zfnet's 384/384/256 into the paper's
  512/1024/512, "fc-double" makes 4096 into 8192.
  """
  if not isinstance(name, str):
    raise ValueError(f"arch={name!r} is not a name; allowed: {', '.join(ARCH_NAMES)}")
  return _named_arch(name)


@functools.cache
def _named_arch(name: str) -> Arch:
  if name in _BASE or name in _OTHERS:
    return (_BASE | _OTHERS)[name]()
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
  check_init(weight_std, bias)
  if not isinstance(key, jax.Array) or not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or
                                            (key.dtype == jnp.uint32 and key.shape == (2,))):
    raise ValueError(f"key={key!r} is not a random key; allowed: a jax.random key, e.g. jax.random.key(0)")
  params: Params = {}
  all_shapes = param_shapes(arch, num_classes)
  keys = dict(zip(arch.layer_names, jax.random.split(key, len(arch.layers))))
  for name, shapes in all_shapes.items():
    params[name] = {
        "kernel": _per_layer(weight_std, name, 0.01) * jax.random.normal(keys[name], shapes["kernel"], jnp.float32),
        "bias": jnp.full(shapes["bias"], _per_layer(bias, name, 0.0), jnp.float32)}
  return params


def check_init(weight_std: float | Mapping[str, float], bias: float | Mapping[str, float]) -> None:
  """Raises one ValueError unless every initialisation value (one, or a {layer: value} mapping) is a finite
  number, the stds >= 0."""
  for name, value in (("weight_std", weight_std), ("bias", bias)):
    for layer, v in (value.items() if isinstance(value, Mapping) else [(None, value)]):
      where = f"{name}[{layer!r}]" if layer is not None else name
      if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
          or (name == "weight_std" and v < 0):
        raise ValueError(f"{where}={v!r} is not allowed; allowed: a finite number{' >= 0' * (name == 'weight_std')}")


_FINITE_CHECKED: dict[int, Any] = {}  # id(leaf) -> weakref of params leaves found finite (forward checks once)


def check_finite_params(params: Params, what: str = "params") -> None:
  """Raises one ValueError naming the first layer whose kernel or bias holds NaN or Inf.

  Concrete values only (under jax.jit there is nothing to check); arrays already found finite are not
  read again, so calling `forward` repeatedly with the same params costs one check.
  """

  for name, parts in params.items():
    for part, value in parts.items():
      if isinstance(value, jax.core.Tracer):
        return
      ref = _FINITE_CHECKED.get(id(value))
      if ref is not None and ref() is value:
        continue
      if isinstance(value, np.ndarray):
        finite = bool(np.isfinite(value).all())
      else:
        with jax.ensure_compile_time_eval():
          finite = bool(jnp.isfinite(value).all())
      if not finite:
        count = int(np.size(value) - np.isfinite(np.asarray(value)).sum())
        raise ValueError(f"{what}[{name!r}][{part!r}] holds {count} NaN or Inf values; allowed: finite weights "
                         "(the file or the training run that produced them is broken)")
      try:
        if len(_FINITE_CHECKED) > 4096:
          _FINITE_CHECKED.clear()
        _FINITE_CHECKED[id(value)] = weakref.ref(value)
      except TypeError:  # not weak-referenceable: checked again next time
        pass


def param_shapes(arch: Arch, num_classes: int) -> dict[str, dict[str, tuple[int, ...]]]:
  """{layer: {"kernel": HWIO (k, k, in, out) or (in, out), "bias": (out,)}} for every conv and fc layer."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: an int >= 1")
  shapes, out, channels = arch.shapes(), {}, 3
  for i, layer in enumerate(arch.layers):
    if isinstance(layer, Conv):
      kernel = (layer.kernel, layer.kernel, channels, layer.features)
    elif isinstance(layer, Dense):
      kernel = (int(np.prod(shapes[arch.layers[i - 1].name])), int(num_classes) if layer is arch.layers[-1]
                else layer.features)
    else:
      continue
    out[layer.name] = {"kernel": kernel, "bias": kernel[-1:]}
    channels = kernel[-1]
  return out


def check_params(arch: Arch, params: Any) -> int:
  """Raises one ValueError unless `params` has exactly the layers of `arch`, each a float "kernel" and
  "bias" of the shapes `param_shapes` gives (the classifier's width, num_classes, read from fc8; an
  arch that ends with a conv layer has no classifier and gives 0).

  Only shapes are read, so it also holds under `jax.jit` (and costs nothing there: shapes are static).

  Returns:
    num_classes.
  """
  names = [layer.name for layer in arch.layers if isinstance(layer, (Conv, Dense))]
  if not isinstance(params, Mapping):
    raise ValueError(f"params is a {type(params).__name__}; arch {arch.name!r} takes a dict of layers "
                     f"{', '.join(names)}, each {{'kernel', 'bias'}}")
  missing, extra = [n for n in names if n not in params], sorted(set(params) - set(names), key=str)
  if missing or extra:
    raise ValueError(f"params has layers {', '.join(map(str, params))}; arch {arch.name!r} takes exactly "
                     f"{', '.join(names)} (missing: {', '.join(missing) or '-'}; unknown: "
                     f"{', '.join(map(str, extra)) or '-'})")
  for name in names:
    if not isinstance(params[name], Mapping) or set(params[name]) != {"kernel", "bias"}:
      found = sorted(params[name]) if isinstance(params[name], Mapping) else type(params[name]).__name__
      raise ValueError(f"params[{name!r}] holds {found}; allowed: exactly 'kernel' and 'bias'")
  last = params[names[-1]]["kernel"]
  classifier = isinstance(arch.layer(names[-1]), Dense)  # an arch cut after a conv layer has none
  num_classes = int(last.shape[-1]) if classifier and getattr(last, "ndim", 0) == 2 else 0
  expected = param_shapes(arch, max(num_classes, 1))
  for name in names:
    for part in ("kernel", "bias"):
      value, want = params[name][part], expected[name][part]
      shape, dtype = tuple(getattr(value, "shape", ())), getattr(value, "dtype", None)
      if shape != want or dtype is None or not jnp.issubdtype(dtype, jnp.floating) \
          or (classifier and name == names[-1] and not num_classes):
        if classifier and name == names[-1]:  # any number of classes C >= 1, the same in kernel and bias
          want = f"({want[0]}, C) with C >= 1 classes" if part == "kernel" else f"({num_classes},), as the kernel's C"
        raise ValueError(f"params[{name!r}][{part!r}] has shape {shape} and dtype {dtype}; arch {arch.name!r} "
                         f"expects float {want}")
  return num_classes


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
    raise ValueError(f"images has shape {tuple(shape)}; {arch.name!r} takes {want} with B >= 1")
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"images has dtype {dtype}; {arch.name!r} takes {want} (mean-subtracted pixels)")
  if isinstance(images, jax.core.Tracer):
    return  # values only known at run time (under jax.jit): NaN/Inf pixels then give NaN logits
  if isinstance(images, np.ndarray):
    finite = np.isfinite(images).all(axis=(1, 2, 3))
  else:
    with jax.ensure_compile_time_eval():  # concrete images captured inside an outer trace, too
      finite = np.asarray(jnp.isfinite(images).all(axis=(1, 2, 3)))
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise ValueError(f"images {', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} of {shape[0]} hold "
                     "NaN or Inf; allowed: finite pixels")


def forward(arch: Arch, params: Params, images: jax.Array, train: bool = False,
            rng: jax.Array | None = None) -> tuple[jax.Array, Trace]:
  """The convnet (section 2): images -> logits, recording activations and pooling switches.

  Jitted (`arch` and `train` static). Bad input raises one ValueError: images not float [B, S, S, 3]
  (`check_images`), params not of `arch` (`check_params`: every layer and shape). NaN or Inf pixels
  are refused when the images are concrete; under an outer `jax.jit` their values are unknown and
  give NaN logits: call `check_images(arch, images)` outside the jit to check them.

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
  check_params(arch, params)
  check_finite_params(params)
  if train and rng is None and any(isinstance(l, Dense) and l.dropout for l in arch.layers):
    raise ValueError("forward(train=True) applies dropout and needs rng=jax.random.key(...)")
  return _forward(arch, params, images, train, rng)


def apply_layer(layer: Layer, params: Params, x: jax.Array,
                padding: Any = None) -> tuple[jax.Array, jax.Array | None]:
  """One layer without dropout on x [B, ...]: (output, the pool's switches or None).

  `padding` overrides a conv's or pool's own (e.g. for a window cut out of a map). Conv and Dense
  outputs are rectified (a Dense only if layer.relu).
  """
  if isinstance(layer, Conv):
    p = params[layer.name]
    return jax.nn.relu(layers.conv2d(x, p["kernel"], p["bias"], layer.stride,
                                     layer.padding if padding is None else padding)), None
  if isinstance(layer, Pool):
    return layers.max_pool(x, layer.window, layer.stride, layer.padding if padding is None else padding)
  if isinstance(layer, Norm):
    return layers.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k), None
  p = params[layer.name]
  x = x.reshape(x.shape[0], -1) @ p["kernel"] + p["bias"]
  return (jax.nn.relu(x) if layer.relu else x), None


@functools.partial(jax.jit, static_argnames=("arch", "train"))
def _forward(arch: Arch, params: Params, images: jax.Array, train: bool,
             rng: jax.Array | None) -> tuple[jax.Array, Trace]:
  x = images.astype(jax.tree.leaves(params)[0].dtype)  # float32, or bfloat16 params for bf16 compute
  activations, switches = {}, {}
  for layer in arch.layers:
    x, layer_switches = apply_layer(layer, params, x)
    if layer_switches is not None:
      switches[layer.name] = layer_switches
    if isinstance(layer, (Conv, Dense)):
      activations[layer.name] = x
    if train and isinstance(layer, Dense) and layer.dropout:
      rng, sub = jax.random.split(rng)
      keep = jax.random.bernoulli(sub, 1.0 - layer.dropout, x.shape)
      x = jnp.where(keep, x / (1.0 - layer.dropout), 0.0)
  return x, Trace(activations, switches)
