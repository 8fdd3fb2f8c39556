"""Converted PyTorch ImageNet models against their torch originals, with random weights (offline).

pytorchcv's models are built by pytorchcv itself (pretrained=False); torchvision's AlexNet and VGG16 are
rebuilt here from their documented module layout (`features.N`, `avgpool`, `classifier.N`) with plain
torch.nn, so torchvision need not be installed. Skipped without torch (and pytorchcv for its models).
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from zf_jax import checkpoint, convert, deconv, layers, models

try:
  import torch
  nn = torch.nn
except ImportError:  # CI: only the torch-free tests run
  torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch (pip install torch==2.13.0)")
pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _torchvision_alexnet() -> "nn.Module":
  model = nn.Module()
  model.features = nn.Sequential(
      nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(384, 256, 3, padding=1),
      nn.ReLU(inplace=True), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
  model.avgpool = nn.AdaptiveAvgPool2d((6, 6))
  model.classifier = nn.Sequential(nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                   nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, 1000))
  return model


def _torchvision_vgg16() -> "nn.Module":
  body, channels = [], 3
  for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
    if width == "M":
      body.append(nn.MaxPool2d(2, 2))
    else:
      body += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
      channels = width
  model = nn.Module()
  model.features = nn.Sequential(*body)
  model.avgpool = nn.AdaptiveAvgPool2d((7, 7))
  model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096),
                                   nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))
  return model


def _sequential_forward(model, x):
  return model.classifier(torch.flatten(model.avgpool(model.features(x)), 1))


def _pytorchcv(name):
  pytest.importorskip("pytorchcv")
  import importlib
  module = importlib.import_module(f"pytorchcv.models.{'zfnet' if name.startswith('zfnet') else 'alexnet'}")
  return getattr(module, name)(pretrained=False)


def _torch_model(source):
  """(model, forward, ReLU modules after conv1..convN in order) with random weights."""
  torch.manual_seed(0)
  library, name = source.split(":")
  if library == "pytorchcv":
    model = _pytorchcv(name)
    relus = [unit.activ for stage in model.features for unit in stage if hasattr(unit, "activ")]
    forward = model
  else:
    model = {"alexnet": _torchvision_alexnet, "vgg16": _torchvision_vgg16}[name]()
    relus = [m for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]
    forward = lambda x: _sequential_forward(model, x)  # noqa: E731
  for module in model.modules():  # He init: activations keep their scale through VGG's 16 layers
    if isinstance(module, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
      nn.init.uniform_(module.bias, -0.1, 0.1)
    if isinstance(module, nn.ReLU):
      module.inplace = False  # Captum's hooks and our activation hooks need the outputs kept
  return model.eval(), forward, relus


def _images(n=2, seed=1):
  return np.random.default_rng(seed).uniform(0, 255, (n, 224, 224, 3)).astype(np.float32)


def _torch_input(pixels):
  x = (pixels / 255.0 - np.asarray(convert.MEAN, np.float32)) / np.asarray(convert.STD, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _rel(ours, theirs):
  return np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max()


SOURCES = ["pytorchcv:zfnet", "pytorchcv:zfnetb", "pytorchcv:alexnet", "pytorchcv:alexnetb", "torchvision:alexnet",
           "torchvision:vgg16"]


@needs_torch
@pytest.mark.parametrize("source", SOURCES)
def test_logits_and_every_conv_activation_equal_torch(source):
  model, forward, relus = _torch_model(source)
  acts = []
  hooks = [relu.register_forward_hook(lambda m, i, o: acts.append(o.detach().numpy().transpose(0, 2, 3, 1)))
           for relu in relus]
  pixels = _images()
  with torch.no_grad():
    logits = forward(_torch_input(pixels)).numpy()
  for hook in hooks:
    hook.remove()
  loaded = convert.convert_state_dict(source, model.state_dict())
  arch = loaded.arch
  assert len(acts) == len(arch.conv_names)
  inputs = pixels - loaded.mean_image
  ours, trace = models.forward(arch, jax.tree.map(jax.numpy.asarray, loaded.params), inputs)
  assert np.abs(logits).max() > 0
  assert _rel(ours, logits) < 1e-4, source
  for name, theirs in zip(arch.conv_names, acts):
    assert trace.activations[name].shape == theirs.shape, name
    assert np.abs(theirs).max() > 0, name
    assert _rel(trace.activations[name], theirs) < 1e-4, (source, name)


@needs_torch
@pytest.mark.parametrize("source", ["pytorchcv:zfnet", "pytorchcv:alexnetb", "torchvision:vgg16"])
def test_top_conv_deconvnet_projection_equals_captum(source):
  """The deconvnet from each image's strongest top-conv unit against Captum's NeuronDeconvolution.

  Captum backpropagates through LRN where the deconvnet skips it (section 2.1), so for the LRN models
  both sides drop LRN (pytorchcv's own use_lrn switch, and the Norm layers); Captum differentiates
  with respect to the normalised input, so its map is ours times 255 * std per channel.
  """
  captum_attr = pytest.importorskip("captum.attr")
  model, forward, relus = _torch_model(source)
  loaded = convert.convert_state_dict(source, model.state_dict())
  arch = loaded.arch
  if any(isinstance(layer, models.Norm) for layer in arch.layers):
    for unit in model.modules():
      if hasattr(unit, "use_lrn"):
        unit.use_lrn = False
    arch = models.Arch(arch.name, arch.input_size, tuple(l for l in arch.layers if not isinstance(l, models.Norm)))
  params = jax.tree.map(jax.numpy.asarray, loaded.params)
  pixels = _images(1)
  _, trace = models.forward(arch, params, pixels - loaded.mean_image)
  top = arch.conv_names[-1]
  act = np.asarray(trace.activations[top])
  y, x, c = np.unravel_index(np.argmax(act.reshape(len(act), -1), axis=1), act.shape[1:])
  start = act[np.arange(len(act)), y, x, c]
  ours = np.asarray(deconv.project(arch, params, trace, top, c, y, x)) / start[:, None, None, None]
  ours = ours * 255.0 * np.asarray(convert.STD, np.float32)

  class Wrapped(nn.Module):  # Captum needs a module; the torchvision rebuilds have a plain function forward
    def __init__(self):
      super().__init__()
      self.model = model

    def forward(self, inputs):
      return forward(inputs)

  rows = torch.arange(len(pixels))
  method = captum_attr.NeuronDeconvolution(Wrapped(), relus[-1])
  inputs = _torch_input(pixels).requires_grad_()
  theirs = method.attribute(inputs, lambda out: out[rows, torch.as_tensor(c), torch.as_tensor(y),
                                                    torch.as_tensor(x)]).detach().numpy().transpose(0, 2, 3, 1)
  assert np.abs(theirs).max() > 0
  assert _rel(ours, theirs) < 1e-4


@needs_torch
@pytest.mark.parametrize("size,pad", [(110, 0), (54, 0), (13, 0), (26, 0), (27, 1), (8, 1)])
def test_ceil_mode_padding_gives_torch_ceil_mode_windows_and_switches(size, pad):
  x = np.random.default_rng(size).normal(size=(2, size, size, 4)).astype(np.float32)
  theirs, index = torch.nn.functional.max_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), 3, 2, pad, ceil_mode=True,
                                                 return_indices=True)
  padding = (layers.ceil_mode_padding(size, 3, 2, pad),) * 2
  ours, switches = layers.max_pool(x, 3, 2, padding)
  np.testing.assert_array_equal(ours, theirs.numpy().transpose(0, 2, 3, 1))
  rows, cols = layers.switch_positions(switches, 3, 2, padding)
  index = index.numpy().transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(rows, index // size)
  np.testing.assert_array_equal(cols, index % size)


@needs_torch
def test_convert_state_dict_refuses_another_layout():
  model, _, _ = _torch_model("torchvision:alexnet")
  with pytest.raises(ValueError, match="not pytorchcv:zfnet's layout: missing features.stage1"):
    convert.convert_state_dict("pytorchcv:zfnet", model.state_dict())
  state = dict(model.state_dict())
  state["features.0.weight"] = state["features.0.weight"][:32]
  with pytest.raises(ValueError, match=r"features.0.weight/bias have shapes \(32, 3, 11, 11\)"):
    convert.convert_state_dict("torchvision:alexnet", state)


def _cli(*args, env=None):
  return subprocess.run([sys.executable, "-m", "zf_jax.convert", *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=300)


@needs_torch
def test_cli_converts_a_local_state_dict_into_what_load_for_analysis_applies(tmp_path):
  model, forward, _ = _torch_model("pytorchcv:zfnet")
  torch.save(model.state_dict(), tmp_path / "zfnet.pth")
  out = tmp_path / "zfnet.npz"
  run = _cli(str(tmp_path / "zfnet.pth"), "--arch=pytorchcv:zfnet", f"--out={out}")
  assert run.returncode == 0, run.stderr
  loaded = checkpoint.load_for_analysis(str(out))
  assert loaded.arch == convert.SOURCES["pytorchcv:zfnet"].arch
  assert loaded.class_names[:2] == ["tench", "goldfish"] and len(loaded.class_names) == 1000
  assert loaded.config["preprocessing"]["std"] == list(convert.STD)
  from zf_jax.data import model_inputs
  photos = [np.random.default_rng(i).integers(0, 256, (300, 260, 3), dtype=np.uint8) for i in range(2)]
  inputs = model_inputs.prepare_images(photos, 224, 256, loaded.mean_image)  # what every analysis feeds the model
  crops = inputs + loaded.mean_image
  with torch.no_grad():
    theirs = forward(_torch_input(crops)).numpy()
  ours, _ = models.forward(loaded.arch, loaded.params, inputs)
  assert _rel(ours, theirs) < 1e-4


@needs_torch
def test_cli_offline_says_so_in_one_line_and_writes_nothing(tmp_path):
  pytest.importorskip("pytorchcv")
  offline = {"HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9",
             "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""}
  for source in ("pytorchcv:zfnet", "torchvision:vgg16"):
    run = _cli(source, f"--out={tmp_path / 'out.npz'}", env=offline)
    assert run.returncode != 0
    lines = [line for line in run.stderr.splitlines() + run.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("convert: error: cannot reach the network"), lines
    assert not (tmp_path / "out.npz").exists()


def test_class_names_file_has_the_1000_imagenet_classes_in_wnid_order():
  with open(convert._CLASSES_FILE) as f:
    rows = json.load(f)
  wnids = [w for w, _ in rows]
  assert len(rows) == 1000 and wnids == sorted(wnids) and len(set(wnids)) == 1000
  assert rows[0] == ["n01440764", "tench"] and rows[999][1] == "toilet tissue"
