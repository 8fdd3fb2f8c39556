"""PyTorch ImageNet weights -> a zf_jax model file (`checkpoint.save_params_npz`).

  python -m zf_jax.convert pytorchcv:zfnet --out=zfnet_imagenet.npz       # downloads (needs network)
  python -m zf_jax.convert weights.pth --arch=torchvision:vgg16 --out=vgg16.npz   # a local state_dict

Sources (`SOURCES`), each a PyTorch state_dict layout and the zf_jax `Arch` that computes its forward:
  pytorchcv:zfnet, pytorchcv:zfnetb  osmr/imgclsmob's ImageNet ZFNet (Fig. 3) and its 512/1024/512
      variant: the paper's Table 2 models (a) and (b). Conv + ReLU, then LRN (before the pool, as
      pytorchcv puts it), 3x3/2 max-pools in ceil mode (`layers.ceil_mode_padding`).
  pytorchcv:alexnet, pytorchcv:alexnetb  Krizhevsky's one-tower AlexNet (with LRN) and its 64/192
      variant (no LRN), same layout.
  torchvision:alexnet, torchvision:vgg16  `features.N` / `classifier.N` (floor-mode pools; the
      adaptive average pool is the identity at 224 px and has no weights).

The weights expect RGB in [0, 1] normalised by the ImageNet mean and std per channel (`MEAN`, `STD`).
zf_jax models take mean-subtracted pixels in 0..255 (see `models`), so the converted model stores the
mean as its `mean_image` (255 * MEAN, [3]), which `checkpoint.load_for_analysis`, the analyses and
`visualize.py --params` subtract as they do a training mean, and conv1's kernel absorbs the division
by 255 * STD (exact: the convolution is linear and zero padding is the mean in both). Projections are
therefore in those pixels; multiply by 255 * STD to compare with gradients on PyTorch's input.
`meta["config"]["preprocessing"]` records all of this.

Weight layouts: conv OIHW -> HWIO; fc [out, in] -> [in, out]; fc6's inputs reordered from PyTorch's
(C, H, W) flattening to zf_jax's (H, W, C).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from zf_jax import checkpoint, layers, models

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
INSTALL = "pip install torch==2.13.0 && pip install --no-deps pytorchcv==0.0.74"
_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "data", "imagenet2012_classes.json")


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet 2012 class names, in the order of the classifiers' outputs (sorted wnids)."""
  with open(_CLASSES_FILE) as f:
    return [name for _, name in json.load(f)]


@dataclasses.dataclass(frozen=True)
class Source:
  """A PyTorch layout: its zf_jax arch and, per conv/fc layer, the state_dict prefix of weight and bias.

  Attributes:
    name: "library:model".
    arch: the zf_jax architecture computing the same forward.
    keys: {zf_jax layer: state_dict prefix}, e.g. {"conv1": "features.0", ...}.
    fetch: downloads the pretrained state_dict through the library's own loader (needs network).
  """
  name: str
  arch: models.Arch
  keys: Mapping[str, str]
  fetch: Callable[[], Mapping[str, Any]]


def _pytorchcv_arch(name: str, convs: list[tuple[int, int, int, int]], lrn: bool) -> models.Arch:
  """pytorchcv's AlexNet class: stages [conv1], [conv2], [conv3 conv4 conv5], each conv + ReLU (+ LRN in
  stages 1-2), each stage ended by MaxPool2d(3, 2, ceil_mode=True); fc 4096, 4096, 1000. LRN is
  F.local_response_norm(size=5, k=2): alpha 1e-4 divided by the size, as PyTorch averages the squares."""
  body, size = [], 224
  for i, (features, kernel, stride, pad) in enumerate(convs, start=1):
    body.append(models.Conv(f"conv{i}", features, kernel, stride, ((pad, pad), (pad, pad))))
    size = (size + 2 * pad - kernel) // stride + 1
    if lrn and i <= 2:
      body.append(models.Norm(f"norm{i}", size=5, alpha=1e-4 / 5, beta=0.75, k=2.0))
    if i in (1, 2, 5):
      padding = layers.ceil_mode_padding(size, 3, 2)
      body.append(models.Pool(f"pool{i}", 3, 2, (padding, padding)))
      size = (size + sum(padding) - 3) // 2 + 1
  return models.Arch(name, 224, (*body, models.Dense("fc6", 4096, dropout=0.5), models.Dense("fc7", 4096, dropout=0.5),
                                 models.Dense("fc8", 1000, relu=False)))


def _torchvision_alexnet() -> models.Arch:
  """torchvision's AlexNet: 64/192/384/256/256 maps, no LRN, 3x3/2 floor-mode pools; maps of 55, 27, 27,
  13, 13, 13, 13, 6."""
  convs = [(64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
  body = []
  for i, (features, kernel, stride, pad) in enumerate(convs, start=1):
    body.append(models.Conv(f"conv{i}", features, kernel, stride, ((pad, pad), (pad, pad))))
    if i in (1, 2, 5):
      body.append(models.Pool(f"pool{i}"))
  return models.Arch("torchvision-alexnet", 224, (*body, models.Dense("fc6", 4096, dropout=0.5),
                                                  models.Dense("fc7", 4096, dropout=0.5),
                                                  models.Dense("fc8", 1000, relu=False)))


def _fetch_pytorchcv(model: str) -> Callable[[], Mapping[str, Any]]:
  def fetch():
    module = "zfnet" if model.startswith("zfnet") else "alexnet"
    try:
      library = importlib.import_module(f"pytorchcv.models.{module}")  # not pytorchcv.model_provider: torchvision
    except ImportError as e:
      raise ValueError(f"pytorchcv:{model} needs torch and pytorchcv ({e}); install them with: {INSTALL}") from None
    return getattr(library, model)(pretrained=True).state_dict()
  return fetch


_TORCHVISION_URLS = {"alexnet": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                     "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth"}


def _fetch_torchvision(model: str) -> Callable[[], Mapping[str, Any]]:
  def fetch():  # torchvision's IMAGENET1K_V1 weights are these files, read by torch.hub as torchvision does
    try:
      import torch.hub
    except ImportError as e:
      raise ValueError(f"torchvision:{model} needs torch ({e}); install it with: pip install torch==2.13.0") from None
    return torch.hub.load_state_dict_from_url(_TORCHVISION_URLS[model], map_location="cpu", progress=False)
  return fetch


def _fc_keys(prefixes: tuple[str, str, str]) -> dict[str, str]:
  return dict(zip(("fc6", "fc7", "fc8"), prefixes))


def _sources() -> dict[str, Source]:
  zf = [(96, 7, 2, 1), (256, 5, 2, 0), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)]
  zfb = [(96, 7, 2, 1), (256, 5, 2, 0), (512, 3, 1, 1), (1024, 3, 1, 1), (512, 3, 1, 1)]
  alex = [(96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1), (384, 3, 1, 1), (256, 3, 1, 1)]
  alexb = [(64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]
  pytorchcv_keys = {"conv1": "features.stage1.unit1.conv", "conv2": "features.stage2.unit1.conv",
                    **{f"conv{i + 3}": f"features.stage3.unit{i + 1}.conv" for i in range(3)},
                    **_fc_keys(("output.fc1.fc", "output.fc2.fc", "output.fc3"))}
  out = {}
  for model, convs, lrn in (("zfnet", zf, True), ("zfnetb", zfb, True), ("alexnet", alex, True),
                            ("alexnetb", alexb, False)):
    name = f"pytorchcv:{model}"
    out[name] = Source(name, _pytorchcv_arch(f"pytorchcv-{model}", convs, lrn), pytorchcv_keys,
                       _fetch_pytorchcv(model))
  alexnet_keys = {**{f"conv{i + 1}": f"features.{n}" for i, n in enumerate((0, 3, 6, 8, 10))},
                  **_fc_keys(("classifier.1", "classifier.4", "classifier.6"))}
  out["torchvision:alexnet"] = Source("torchvision:alexnet", _torchvision_alexnet(), alexnet_keys,
                                      _fetch_torchvision("alexnet"))
  vgg_convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
  vgg_keys = {**{f"conv{i + 1}": f"features.{n}" for i, n in enumerate(vgg_convs)},
              **_fc_keys(("classifier.0", "classifier.3", "classifier.6"))}
  out["torchvision:vgg16"] = Source("torchvision:vgg16", models.get_arch("vgg16"), vgg_keys,
                                    _fetch_torchvision("vgg16"))
  return out


SOURCES = _sources()


def get_source(name: str) -> Source:
  if name not in SOURCES:
    raise ValueError(f"source={name!r} is unknown; allowed: {', '.join(SOURCES)}")
  return SOURCES[name]


def _numpy(value: Any) -> np.ndarray:
  detach = getattr(value, "detach", None)  # a torch tensor
  return np.asarray(detach().cpu().numpy() if detach else value, np.float32)


def convert_state_dict(source: str, state_dict: Mapping[str, Any], weights: str = "") -> checkpoint.Loaded:
  """A PyTorch state_dict of layout `source` -> a zf_jax model with its preprocessing.

  Args:
    source: a name in `SOURCES` ("pytorchcv:zfnet", "torchvision:vgg16", ...).
    state_dict: {key: tensor or array}, exactly the layout's keys (any number of classes in the classifier).
    weights: where the weights came from, recorded in the config.

  Returns:
    A `checkpoint.Loaded` (numpy params; mean_image = 255 * MEAN [3]; ImageNet class names for 1000
    classes), ready for `checkpoint.save_params_npz`.
  """
  spec = get_source(source)
  wanted = {f"{prefix}.{part}" for prefix in spec.keys.values() for part in ("weight", "bias")}
  missing, extra = sorted(wanted - set(state_dict)), sorted(set(state_dict) - wanted)
  if missing or extra:
    raise ValueError(f"the state_dict is not {source}'s layout: missing {', '.join(missing[:3]) or '-'}"
                     f"{' ...' if len(missing) > 3 else ''}; unknown {', '.join(extra[:3]) or '-'}"
                     f"{' ...' if len(extra) > 3 else ''}")
  arch = spec.arch
  num_classes = int(np.shape(state_dict[f"{spec.keys['fc8']}.weight"])[0])
  expected = models.param_shapes(arch, num_classes)
  shapes = arch.shapes()
  scale = np.float32(255.0) * np.asarray(STD, np.float32)
  params = {}
  for i, layer in enumerate(arch.layers):
    if layer.name not in spec.keys:
      continue
    prefix = spec.keys[layer.name]
    weight, bias = _numpy(state_dict[f"{prefix}.weight"]), _numpy(state_dict[f"{prefix}.bias"])
    kernel_shape = expected[layer.name]["kernel"]
    if isinstance(layer, models.Conv):
      torch_shape = (kernel_shape[3], kernel_shape[2], kernel_shape[0], kernel_shape[1])
    else:
      torch_shape = (kernel_shape[1], kernel_shape[0])
    if weight.shape != torch_shape or bias.shape != (torch_shape[0],):
      raise ValueError(f"{prefix}.weight/bias have shapes {weight.shape}/{bias.shape}; {source} expects "
                       f"{torch_shape}/{(torch_shape[0],)}")
    if isinstance(layer, models.Conv):
      kernel = weight.transpose(2, 3, 1, 0)
      if layer.name == arch.conv_names[0]:
        kernel = kernel / scale[None, None, :, None]
    else:
      below = shapes[arch.layers[i - 1].name]
      kernel = weight.T
      if len(below) == 3:  # fc6: PyTorch flattens (C, H, W), zf_jax (H, W, C)
        h, w, c = below
        kernel = weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)
    params[layer.name] = {"kernel": np.ascontiguousarray(kernel, np.float32), "bias": bias}
  models.check_finite_params(params, what=f"the {source} state_dict's params")
  config = {"source": source, "weights": weights, "dataset": "imagenet2012",
            "preprocessing": {"input": "RGB in [0, 1], (x - mean) / std per channel", "mean": list(MEAN),
                              "std": list(STD), "mean_image": "255 * mean, subtracted from 0..255 pixels",
                              "conv1": "kernel divided by 255 * std per input channel"}}
  return checkpoint.Loaded(arch=arch, params=params, mean_image=np.float32(255.0) * np.asarray(MEAN, np.float32),
                           num_classes=num_classes, class_names=imagenet_class_names() if num_classes == 1000 else None,
                           step=0, epoch=0.0, config=config)


def load_state_dict(path: str) -> Mapping[str, Any]:
  """A state_dict saved with torch.save (tensors only, read with weights_only=True)."""
  if os.path.isdir(path):
    raise ValueError(f"{path!r} is a folder; allowed: a source ({', '.join(SOURCES)}) or a .pth state_dict file")
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} does not exist; give a source ({', '.join(SOURCES)}) or a .pth state_dict file")
  try:
    import torch
  except ImportError as e:
    raise ValueError(f"reading {path!r} needs torch ({e}); install it with: pip install torch==2.13.0") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many kinds (pickle, zip, runtime) for a file that is not a state_dict
    raise ValueError(f"{path!r} is not a readable PyTorch state_dict ({type(e).__name__})") from None
  if not isinstance(state, Mapping):
    raise ValueError(f"{path!r} holds a {type(state).__name__}; allowed: a state_dict (model.state_dict())")
  return state


def fetch(source: str) -> Mapping[str, Any]:
  """The pretrained state_dict of `source`, through its library's own loader (cached by that library).

  Raises:
    ValueError: one line when the network cannot be reached or the library is missing.
  """
  spec = get_source(source)
  output = io.StringIO()  # the loaders print download progress and retries
  try:
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
      return spec.fetch()
  except OSError as e:  # requests' and urllib's connection errors are OSErrors
    raise ValueError(f"cannot reach the network to download {source}'s weights ({type(e).__name__}); offline, "
                     f"convert a local state_dict: python -m zf_jax.convert FILE.pth --arch={source} "
                     "--out=FILE.npz") from None
  except (RuntimeError, UserWarning) as e:  # pytorchcv: an HTTP status other than 200, or a bad checksum
    raise ValueError(f"downloading {source}'s weights failed: {' '.join(str(e).split())}") from None


def check_out(out: str) -> None:
  """Raises one ValueError unless `out` can be written: its folder exists (or can be made) and is writable."""
  folder = os.path.dirname(os.path.abspath(out))
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if os.path.isdir(out):
    raise ValueError(f"--out={out!r} is a folder; allowed: a .npz file in a writable folder")
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    why = "is a file" if not os.path.isdir(existing) else "is not writable"
    raise ValueError(f"--out={out!r} cannot be written ({existing} {why}); allowed: a .npz file in a writable folder")


def convert(source: str, out: str, arch: str | None = None) -> checkpoint.Loaded:
  """Converts and writes `out` (.npz, whole or not at all).

  Args:
    source: a name in `SOURCES` (downloads) or a .pth state_dict file (then `arch` names its layout).
    out: the .npz to write.
    arch: the layout of a local file, a name in `SOURCES`.
  """
  if not out.endswith(".npz"):
    raise ValueError(f"--out={out!r} must end in .npz")
  check_out(out)
  if source in SOURCES:
    if arch is not None and arch != source:
      raise ValueError(f"--arch={arch!r} is for a local .pth file; {source!r} names its own layout")
    loaded = convert_state_dict(source, fetch(source), weights=f"{source} pretrained")
  else:
    if arch is None:
      raise ValueError(f"{source!r} is not a source ({', '.join(SOURCES)}); for a local .pth state_dict give "
                       "--arch=SOURCE, its layout")
    get_source(arch)
    loaded = convert_state_dict(arch, load_state_dict(source), weights=os.path.abspath(source))
  checkpoint.save_params_npz(out, loaded)
  return loaded


def main(argv: list[str]) -> None:
  from absl import flags, logging
  logging.set_verbosity(logging.WARNING)  # pytorchcv logs its download attempts at INFO
  if len(argv) != 2:
    print(f"convert: error: give one source ({', '.join(SOURCES)}) or a .pth file; got {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  try:
    if not flags.FLAGS.out:
      raise ValueError("give --out=FILE.npz, the file to write")
    convert(argv[1], flags.FLAGS.out, flags.FLAGS.arch)
  except OSError as e:  # writing --out failed after the checks (a full disk, a read-only mount)
    print(f"convert: error: cannot write --out={flags.FLAGS.out!r} ({e.strerror or e}); allowed: a .npz file in a "
          "writable folder", file=sys.stderr)
    sys.exit(2)
  except ValueError as e:
    print(f"convert: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(flags.FLAGS.out)


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("out", None, "The .npz file to write.")
  flags.DEFINE_string("arch", None, f"The layout of a local .pth state_dict: {', '.join(SOURCES)}.")
  app.run(main)
