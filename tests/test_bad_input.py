"""Bad input and faults (issue 13), one table per surface: the library, train.py and visualize.py.

Every case asserts the exception type (library) or exit status (CLIs), that the one error line names
the culprit and what is allowed, and that nothing was written or changed (a snapshot of every file's
path, size, mtime and mode around the case). The CLIs run in this process with their flags parsed
(visualize.py), or all train.py cases in one child process (its flags clash with visualize.py's), so
the module runs in well under a minute.
"""
import json
import os
import stat
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from jax.experimental import checkify
from PIL import Image

from zf_jax import checkpoint, convert, deconv, evaluation, flax_module, metrics, models, train_lib
from zf_jax import files as zf_files
from zf_jax.analysis import correspondence, ensemble, probes, transfer
from zf_jax.data import checks, datasets, model_inputs, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import run_visualize  # noqa: E402
from configs import smoke  # noqa: E402

TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4, "conv5": 4, "fc6": 8, "fc7": 8}, name="tiny")
CLASSES = ("a", "b")


def _snapshot(*roots):
  """Every file and folder under roots: (path, size, mtime, mode)."""
  out = []
  for root in roots:
    for d, dirs, files in os.walk(root):
      for name in dirs + files:
        path = os.path.join(d, name)
        st = os.lstat(path)
        out.append((path, st.st_size if name in files else 0, st.st_mtime_ns, st.st_mode))
  return sorted(out)


def _png(path, seed, size=64):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _truncate(path, keep=60):
  with open(path, "r+b") as f:
    f.truncate(keep)


def _folder(root, per_class=4, splits=("train", "validation")):
  """An ImageFolder of random 64-px PNGs: root/<split>/<class>/<i>.png."""
  for split in splits:
    for c, name in enumerate(CLASSES):
      for i in range(per_class):
        _png(os.path.join(root, split, name, f"{i}.png"), seed=100 * c + i)
  return str(root)


def _numpy_params(arch, num_classes, seed=0):
  """Params of arch drawn with numpy (no per-shape compilation, unlike jax.random)."""
  rng = np.random.default_rng(seed)
  return {name: {part: rng.normal(0, 0.1, shape).astype(np.float32) for part, shape in parts.items()}
          for name, parts in models.param_shapes(arch, num_classes).items()}


@pytest.fixture(scope="module")
def model():
  params = _numpy_params(TINY, 3)
  images = np.random.default_rng(0).normal(0, 50, (2, 56, 56, 3)).astype(np.float32)
  _, trace = models.forward(TINY, params, images)
  return params, images, trace


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
  """A workdir with one checkpoint of TINY, its .npz, an ImageFolder of 16 validation images, and bad files."""
  root = tmp_path_factory.mktemp("bad_input")
  params, _, _ = model
  manager = checkpoint.Manager(str(root / "workdir"))
  meta = {"step": 2, "epoch": 1.0, "arch": checkpoint.arch_to_dict(TINY), "num_classes": 3,
          "class_names": ["x", "y", "z"], "config": {"dataset": str(root / "images"), "data_dir": None}}
  extras = {"mean_image": np.full((64, 64, 3), 120, np.float32), "rng": np.zeros(2, np.uint32)}
  manager.save(2, jax.tree.map(np.asarray, params), {"m": 0}, extras, meta)
  manager.close()
  for i in range(16):
    _png(str(root / "images" / "validation" / CLASSES[i % 2] / f"{i}.png"), seed=i)
  loaded = checkpoint.load_for_analysis(str(root / "workdir"))
  checkpoint.save_params_npz(str(root / "model.npz"), loaded)
  # Bad files: a params file of the wrong shapes, a truncated .npz, a truncated PNG, a corrupt checkpoint.
  wrong = dict(np.load(root / "model.npz"))
  wrong["params/conv2/kernel"] = np.zeros((5, 5, 4, 4), np.float32)
  np.savez(root / "wrong.npz", **wrong)
  (root / "truncated.npz").write_bytes((root / "model.npz").read_bytes()[:200])
  _png(str(root / "truncated.png"), seed=0)
  _truncate(root / "truncated.png")
  _png(str(root / "folder" / "val" / "a" / "0.png"), seed=0)
  _truncate(root / "folder" / "val" / "a" / "0.png")
  os.system(f"cp -r {root / 'workdir'} {root / 'corrupt'}")
  data_dir = root / "corrupt" / "checkpoints" / "2" / "params" / "ocdbt.process_0" / "d"
  for name in os.listdir(data_dir):
    _truncate(data_dir / name, 10)
  (root / "a_file").write_text("not a folder")
  # Issue 25: a params file with one NaN, a copy of model.npz under another name, a decompression bomb
  # (a PNG whose header claims 20000 x 20000 pixels), metrics files with a torn or a damaged line.
  nan = dict(np.load(root / "model.npz"))
  nan["params/conv1/kernel"] = nan["params/conv1/kernel"].copy()
  nan["params/conv1/kernel"][0, 0, 0, 0] = np.nan
  np.savez(root / "nan.npz", **nan)
  (root / "copy.npz").write_bytes((root / "model.npz").read_bytes())
  (root / "bomb.png").write_bytes(_bomb_png(20000, 20000))
  os.makedirs(root / "bombs" / "train" / "a")  # below PIL's own limits (it would decode it), above zf_jax's
  (root / "bombs" / "train" / "a" / "0.png").write_bytes(_bomb_png(9000, 9000))
  for name, text in (("torn", '{"step": 1, "train_loss": 2.3}\n{"step": 2, "trai'),
                     ("damaged", '{"step": 1}\nnot json\n{"step": 2}\n')):
    os.makedirs(root / name)
    (root / name / "metrics.jsonl").write_text(text)
  (root / "parts.json").write_text(json.dumps({"/etc/passwd": {"eye": [0, 0, 4, 4]}}))
  return root


def _bomb_png(width, height):
  """A small PNG whose header claims width x height pixels (its data is one row: it cannot be decoded)."""
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
  header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + \
      chunk(b"IEND", b"")


# --- The library: (call, exception, fragments the message must hold). ---

def _params_with(params, layer, part, value):
  return {**params, layer: {**params[layer], part: value}}


LIBRARY = {
    "forward: a conv kernel of another shape that broadcasts": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "conv2", "kernel", np.zeros((5, 5, 4, 4), "f4")), x),
        ValueError, ["params['conv2']['kernel']", "(5, 5, 4, 4)", "(3, 3, 4, 4)"]),
    "forward: a missing layer": (
        lambda p, x, t, f: models.forward(TINY, {k: v for k, v in p.items() if k != "conv3"}, x), ValueError,
        ["missing: conv3", "takes exactly conv1, conv2, conv3"]),
    "forward: an unknown layer": (
        lambda p, x, t, f: models.forward(TINY, {**p, "conv9": p["conv1"]}, x), ValueError, ["unknown: conv9"]),
    "forward: classifier bias of another width": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "fc8", "bias", np.zeros(5, np.float32)), x),
        ValueError, ["params['fc8']['bias']", "(5,)", "(3,)"]),
    "forward: integer params": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "fc7", "bias", np.zeros(8, np.int32)), x),
        ValueError, ["params['fc7']['bias']", "int32", "expects float (8,)"]),
    "forward: params not a dict": (
        lambda p, x, t, f: models.forward(TINY, list(p.values()), x), ValueError, ["params is a list", "conv1"]),
    "forward: a NaN pixel": (
        lambda p, x, t, f: models.forward(TINY, p, np.where(np.arange(2)[:, None, None, None] == 1, np.nan, x)),
        ValueError, ["images 1 of 2", "NaN or Inf", "allowed: finite pixels"]),
    "forward: an Inf pixel (jax array)": (
        lambda p, x, t, f: models.forward(TINY, p, jnp.asarray(x).at[0, 3, 3, 0].set(jnp.inf)), ValueError,
        ["images 0 of 2", "allowed: finite pixels"]),
    "project: channel beyond int32 (no wrap-around)": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", np.int64(2**32 + 1), 1, 1), ValueError,
        ["channel=4294967297", "allowed: 0..3"]),
    "project_many: units beyond int32": (
        lambda p, x, t, f: deconv.project_many(TINY, p, t, "conv1", np.array([[0, 2**31, 0]], np.int64)),
        ValueError, ["y=2147483648", "allowed: 0..27"]),
    "project: channel as a string": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", "3"), ValueError,
        ["channel='3' is not allowed", "allowed: an int"]),
    "project: a float position": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", 1, 1.5, 1), ValueError, ["y=1.5", "allowed: an int"]),
    "project: params of another arch": (
        lambda p, x, t, f: deconv.project(TINY, _numpy_params(models.get_arch("zfnet64"), 3), t, "conv5", 1),
        ValueError, ["params['conv1']['kernel']", "(7, 7, 3, 4)"]),
    "project_many: units of the wrong shape": (
        lambda p, x, t, f: deconv.project_many(TINY, p, t, "conv5", np.zeros((2, 2), np.int32)), ValueError,
        ["units has shape (2, 2)", "allowed: int [N, 3]"]),
    "checked_project_many under jit: out of range": (
        lambda p, x, t, f: jax.jit(checkify.checkify(
            lambda tr, u: deconv.checked_project_many(TINY, p, tr, "conv5", u)))(t, jnp.array([[9, 0, 0]]))[0].throw(),
        ValueError, ["channel is out of range", "allowed: 0..3"]),
    "receptive_field: a float position": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "conv2", 1.0, 2), ValueError, ["y=1.0", "allowed: an int"]),
    "receptive_field: an fc position that project rejects": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "fc6", 3, 0), ValueError, ["y=3", "'fc6'", "0..0"]),
    "receptive_field: an unknown layer": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "conv9", 0, 0), ValueError, ["layer='conv9'", "allowed"]),
    "ablate: a width of 0": (
        lambda p, x, t, f: models.ablate(TINY, features={"conv3": 0}), ValueError,
        ["features['conv3']=0", "allowed: an int >= 1"]),
    "ablate: the classifier": (
        lambda p, x, t, f: models.ablate(TINY, remove=("fc8",)), ValueError, ["'fc8'", "allowed: conv1"]),
    "get_arch: None": (
        lambda p, x, t, f: models.get_arch(None), ValueError, ["arch=None", "allowed: zfnet, alexnet"]),
    "get_arch: a list": (
        lambda p, x, t, f: models.get_arch(["zfnet"]), ValueError, ["arch=['zfnet']", "allowed: zfnet"]),
    "init_params: 0 classes": (
        lambda p, x, t, f: models.init_params(TINY, jax.random.key(0), 0), ValueError,
        ["num_classes=0", "allowed: an int >= 1"]),
    "load_for_analysis: an npz of the wrong shapes": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "wrong.npz")), ValueError,
        ["params['conv2']['kernel']", "(5, 5, 4, 4)", "(3, 3, 4, 4)"]),
    "load_for_analysis: a truncated npz": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "truncated.npz")), ValueError,
        ["truncated.npz", "corrupt or truncated", "allowed: a .npz written by"]),
    "load_for_analysis: a corrupt checkpoint": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "corrupt")), ValueError,
        [os.path.join("corrupt", "checkpoints", "2"), "corrupt or truncated", "allowed: a complete checkpoint"]),
    "load_for_analysis: a step not there": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "workdir"), step=3), ValueError,
        ["step=3", "allowed: [2]"]),
    "read_image: a truncated PNG": (
        lambda p, x, t, f: model_inputs.read_image(str(f / "truncated.png")), ValueError,
        ["truncated.png", "allowed: a complete PNG/JPEG"]),
    "ImageFolder: a truncated PNG is named": (
        lambda p, x, t, f: datasets.ImageFolderSource(str(f / "folder"), "val")[0], ValueError,
        [os.path.join("val", "a", "0.png"), "cannot be decoded", "allowed: a complete PNG/JPEG"]),
    "ImageFolder: a decompression bomb in a training folder is refused before decoding": (
        lambda p, x, t, f: datasets.ImageFolderSource(str(f / "bombs"), "train")[0], ValueError,
        [os.path.join("bombs", "train", "a", "0.png"), "81000000 pixels",
         f"at most {preprocess.MAX_IMAGE_PIXELS} pixels"]),
    "decode: encoded bytes of a decompression bomb (training batches)": (
        lambda p, x, t, f: preprocess.decode((f / "bombs" / "train" / "a" / "0.png").read_bytes(), 56), ValueError,
        ["an encoded image", "81000000 pixels", f"at most {preprocess.MAX_IMAGE_PIXELS} pixels"]),
    "scan_split: the training split's check names the bomb": (
        lambda p, x, t, f: checks.scan_split(datasets.ImageFolderSource(str(f / "bombs"), "train"),
                                             "train_split='train'", 1, 64, progress=False), ValueError,
        ["train_split='train': image 0", "0.png", f"at most {preprocess.MAX_IMAGE_PIXELS} pixels"]),
    "to_rgb: int values beyond 0..255 (no wrap-around)": (
        lambda p, x, t, f: preprocess.to_rgb(np.full((4, 4), 300, np.int32)), ValueError,
        ["values 300..300", "allowed: uint8, uint16, or values in 0..255"]),
    "scan_split: an empty split": (
        lambda p, x, t, f: checks.scan_split([], "val_split='v'", 2, 64), ValueError,
        ["val_split='v' has no images", "allowed"]),
    "scan_split: a label out of range": (
        lambda p, x, t, f: checks.scan_split([{"image": np.zeros((64, 64, 3), np.uint8), "label": 7}], "s", 2, 64),
        ValueError, ["label 7", "allowed: 0..1"]),
    # Issue 25: non-finite weights, where they enter.
    "forward: a NaN in conv1's kernel": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "conv1", "kernel", np.where(
            np.arange(4) == 2, np.nan, p["conv1"]["kernel"]).astype(np.float32)), x), ValueError,
        ["params['conv1']['kernel']", "NaN or Inf", "allowed: finite weights"]),
    "forward: an Inf bias (jax array)": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "fc7", "bias", jnp.full(8, jnp.inf)), x), ValueError,
        ["params['fc7']['bias']", "NaN or Inf"]),
    "forward: a batch of 0 images": (
        lambda p, x, t, f: models.forward(TINY, p, x[:0]), ValueError, ["(0, 56, 56, 3)", "B >= 1"]),
    "init_params: weight_std=nan": (
        lambda p, x, t, f: models.init_params(TINY, jax.random.key(0), 3, weight_std=float("nan")), ValueError,
        ["weight_std=nan", "allowed: a finite number >= 0"]),
    "init_params: a NaN bias for one layer": (
        lambda p, x, t, f: models.init_params(TINY, jax.random.key(0), 3, bias={"fc6": float("inf")}), ValueError,
        ["bias['fc6']=inf", "allowed: a finite number"]),
    "init_params: an int, not a key": (
        lambda p, x, t, f: models.init_params(TINY, 0, 3), ValueError, ["key=0", "allowed: a jax.random key"]),
    "flax ConvNet: an arch that is neither an Arch nor a name": (
        lambda p, x, t, f: flax_module.ConvNet(5, num_classes=3).init(jax.random.key(0), x), ValueError,
        ["arch=5", "allowed: zfnet"]),
    "load_for_analysis: an npz with a NaN": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "nan.npz")), ValueError,
        ["params['conv1']['kernel'] holds 1 NaN or Inf", "allowed: finite weights"]),
    "convert_state_dict: a state_dict with a NaN": (
        lambda p, x, t, f: convert.convert_state_dict("torchvision:alexnet", _alexnet_state_dict(np.nan)), ValueError,
        ["state_dict's params['conv5']['bias']", "NaN or Inf"]),
    "convert: --out in a folder that is a file": (
        lambda p, x, t, f: convert.convert(str(f / "a_file"), str(f / "a_file" / "out.npz"), "torchvision:alexnet"),
        ValueError, ["a_file/out.npz", "cannot be written", "is a file", "allowed: a .npz file in a writable folder"]),
    "convert: a source that is a folder": (
        lambda p, x, t, f: convert.load_state_dict(str(f / "images")), ValueError, ["images", "is a folder"]),
    "project: a trace of another arch": (
        lambda p, x, t, f: deconv.project(TINY, p, models.Trace({**t.activations, "conv2": t.activations["conv2"][
            :, :7]}, t.switches), "conv5", 1), ValueError, ["trace.activations['conv2']", "another arch"]),
    "read_image: a decompression bomb": (
        lambda p, x, t, f: model_inputs.read_image(str(f / "bomb.png")), ValueError,
        ["bomb.png", "400000000 pixels", f"at most {preprocess.MAX_IMAGE_PIXELS} pixels"]),
    "save_json: a NaN": (
        lambda p, x, t, f: zf_files.save_json({"a": [1.0, float("nan")]}, str(f / "x.json")), ValueError,
        ["x.json", "the number at .a[1]", "not finite"]),
    "save_params_npz: NaN metadata": (
        lambda p, x, t, f: checkpoint.save_params_npz(str(f / "x.npz"), checkpoint.Loaded(
            TINY, p, np.zeros(3, np.float32), 3, None, 0, float("nan"), {})), ValueError, ["NaN"]),
    "metrics.read: a damaged line that is not the last": (
        lambda p, x, t, f: metrics.read(str(f / "damaged")), ValueError,
        [os.path.join("damaged", "metrics.jsonl"), "line 2", "allowed: one JSON record a line"]),
    "ensemble: one workdir twice": (
        lambda p, x, t, f: ensemble.compute([str(f / "workdir"), str(f / "workdir") + "/"]), ValueError,
        ["names", "twice", "allowed: distinct models"]),
    "ensemble: one model under two names": (
        lambda p, x, t, f: ensemble.compute([str(f / "model.npz"), str(f / "copy.npz")]), ValueError,
        ["model.npz", "copy.npz", "the same parameters"]),
    "transfer: a target of one class": (
        lambda p, x, t, f: transfer.prepare(TINY, p, np.zeros(3), 64, _one_class_target(), shots=(1,), folds=1),
        ValueError, ["target='one'", "has 1 class", "allowed: a target with at least 2 classes"]),
    "transfer: l2=-1": (
        lambda p, x, t, f: transfer.compute(object(), l2=-1.0), ValueError,
        ["l2=-1.0", "allowed: a finite number >= 0"]),
    "probes: l2=-1": (
        lambda p, x, t, f: probes.compute(object(), l2=-1), ValueError, ["l2=-1", "unbounded"]),
    "correspondence: --parts naming a file that is not an image": (
        lambda p, x, t, f: correspondence.read_parts(str(f / "parts.json")), ValueError,
        ["'/etc/passwd'", "not an image file", "allowed: image files"]),
    "zf_files.staged: --out below a file": (
        lambda p, x, t, f: zf_files.staged(str(f / "a_file" / "sub" / "out")).__enter__(), ValueError,
        ["cannot be created", "a_file is a file", "allowed: a folder"]),
    "get_dataset: an empty slice": (
        lambda p, x, t, f: datasets.get_dataset("synthetic", "validation[:0]"), ValueError,
        ["split='validation[:0]'", "allowed: a split or slice with at least one image"]),
    "evenly_spaced: max_images=-3 under the caller's name": (
        lambda p, x, t, f: evaluation.evenly_spaced(list(range(8)), -3, "--train_images"), ValueError,
        ["--train_images=-3", "allowed: an int >= 1"]),
    "zf_files.staged: --out is a file": (
        lambda p, x, t, f: zf_files.staged(str(f / "a_file")).__enter__(), ValueError,
        ["a_file", "is a file", "allowed: a folder"]),
}


def _alexnet_state_dict(bad):
  """A torchvision AlexNet state_dict of zeros (10 classes) with `bad` in conv5's bias."""
  spec = convert.get_source("torchvision:alexnet")
  shapes = models.param_shapes(spec.arch, 10)
  out = {}
  for layer, prefix in spec.keys.items():
    kernel = shapes[layer]["kernel"]
    out[f"{prefix}.weight"] = np.zeros(kernel[::-1] if len(kernel) == 2 else (kernel[3], kernel[2], *kernel[:2]),
                                       np.float32)
    out[f"{prefix}.bias"] = np.full(kernel[-1], bad if layer == "conv5" else 0, np.float32)
  return out


def _one_class_target():
  from types import SimpleNamespace
  return SimpleNamespace(name="one", train=SimpleNamespace(class_names=["a"], num_classes=1))


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library(name, model, files):
  call, error, fragments = LIBRARY[name]
  params, images, trace = model
  before = _snapshot(files)
  with pytest.raises(error) as info:
    call(params, images, trace, files)
  message = str(info.value)
  assert len(message.splitlines()) == 1 and all(f in message for f in fragments), message
  assert _snapshot(files) == before


# --- Training: train_lib.train_and_evaluate on an ImageFolder, every case failing before the first step. ---


def _config(folder, **overrides):
  config = smoke.get_config()
  config.dataset = folder
  config.train_split, config.val_split = "train", "validation"
  config.batch_size, config.eval_batch_size = 4, 4
  config.update(overrides)
  return config


def _empty_class(folder):
  os.makedirs(os.path.join(folder, "train", "c"))


def _empty_val(folder):
  for name in CLASSES:
    for f in os.listdir(os.path.join(folder, "validation", name)):
      os.remove(os.path.join(folder, "validation", name, f))


TRAINING = {
    "num_epochs=0": ({"num_epochs": 0}, None, ["num_epochs=0", "allowed: an int >= 1"]),
    "num_epochs=-1": ({"num_epochs": -1}, None, ["num_epochs=-1", "allowed: an int >= 1"]),
    "negative learning rate": ({"learning_rate": -0.01}, None, ["learning_rate=-0.01", "allowed: a finite number > 0"]),
    "NaN learning rate": ({"learning_rate": float("nan")}, None, ["learning_rate=nan", "allowed"]),
    "momentum 1": ({"momentum": 1.0}, None, ["momentum=1.0", "allowed: 0 <= momentum < 1"]),
    "plateau_factor 1": ({"plateau_factor": 1.0}, None, ["plateau_factor=1.0", "allowed: a finite number > 1"]),
    "min_learning_rate above learning_rate": ({"min_learning_rate": 0.1}, None,
                                              ["min_learning_rate=0.1", "allowed: min_learning_rate <= learning_rate"]),
    "keep_epochs 0": ({"keep_epochs": (0, 2)}, None, ["keep_epochs holds [0]", "allowed: ints >= 1"]),
    "batch larger than the training split": ({"batch_size": 64}, None, ["batch_size=64", "allowed: 1..8"]),
    "an empty class folder": ({}, _empty_class, ["train_split='train'", "class 'c'", "allowed: every class"]),
    "an empty validation split": ({}, _empty_val, ["val_split='validation'", "has no images", "allowed"]),
    "a corrupt validation image": ({}, lambda f: _truncate(os.path.join(f, "validation", "b", "2.png")),
                                   ["val_split='validation'", os.path.join("validation", "b", "2.png"), "allowed"]),
    "a truncated training image": ({}, lambda f: _truncate(os.path.join(f, "train", "a", "3.png")),
                                   ["train_split='train'", os.path.join("train", "a", "3.png"), "allowed"]),
    "a workdir that is a file": ({}, "workdir-file", ["workdir=", "is a file", "allowed: a writable folder"]),
    "a workdir below a file": ({}, "workdir-below-file", ["cannot be created", "is a file", "allowed"]),
    "an unknown dataset": ({"dataset": "no_such_dataset"}, None, ["dataset='no_such_dataset'", "allowed"]),
    # Issue 25: every key is checked before anything is made; checkpoints/ and metrics history are guarded.
    "seed=-1": ({"seed": -1}, None, ["seed=-1", "allowed: an int >= 0"]),
    "train_per_class=-1": ({"train_per_class": -1}, None, ["train_per_class=-1", "allowed: an int >= 0"]),
    "batch_size=0": ({"batch_size": 0}, None, ["batch_size=0", "allowed: an int >= 1"]),
    "eval_batch_size=0": ({"eval_batch_size": 0}, None, ["eval_batch_size=0", "allowed: an int >= 1"]),
    "a NaN layer_weight_std": ({"layer_weight_std": {"conv1": float("nan")}}, None,
                               ["layer_weight_std.conv1=nan", "allowed: a finite number > 0"]),
    "checkpoints is a file": ({}, "checkpoints-file", ["checkpoints is not a folder", "allowed: a writable"]),
    "checkpoints is not writable": ({}, "checkpoints-read-only", ["checkpoints is not writable", "allowed"]),
    "metrics but no checkpoint": ({}, "metrics-only", ["has no checkpoint but metrics.jsonl holds 2 records",
                                                       "past the first checkpoint's step 2",
                                                       "allowed: another --workdir"]),
    "a workdir locked by another trainer": ({}, "locked", ["is in use by another trainer", f"(pid {os.getpid()}",
                                                           "allowed: one train.py per workdir"]),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_fails_before_the_first_step(name, tmp_path):
  overrides, damage, fragments = TRAINING[name]
  folder = _folder(tmp_path / "data")
  workdir = tmp_path / "run"
  if damage == "workdir-file":
    workdir.write_text("x")
  elif damage == "workdir-below-file":
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
  elif damage == "checkpoints-file":
    os.makedirs(workdir)
    (workdir / "checkpoints").write_text("x")
  elif damage == "checkpoints-read-only":  # root ignores permission bits: a folder of a read-only mount
    try:
      checkpoint.probe_writable("/sys/kernel/mm")
      pytest.skip("needs /sys/kernel/mm, a folder that cannot be written")
    except OSError:
      pass
    os.makedirs(workdir)
    os.symlink("/sys/kernel/mm", workdir / "checkpoints")
  elif damage == "metrics-only":
    os.makedirs(workdir)
    (workdir / "metrics.jsonl").write_text('{"step": 2, "train_loss": 2.3}\n{"step": 4, "train_loss": 2.2}\n')
  elif damage == "locked":
    lock = train_lib.lock_workdir(str(workdir))  # a second open file description: flock refuses it as any other
  elif damage:
    damage(folder)
  before = _snapshot(tmp_path)
  try:
    with pytest.raises(ValueError) as info:
      train_lib.train_and_evaluate(_config(folder, **overrides), str(workdir))
  finally:
    if damage == "locked":
      os.close(lock)
  message = str(info.value)
  assert len(message.splitlines()) == 1 and all(f in message for f in fragments), message
  assert _snapshot(tmp_path) == before  # no workdir, no checkpoints folder, data untouched


def test_absurd_learning_rate_is_a_warning_line(tmp_path):
  records = []
  handler = type("H", (absl_logging.logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})()
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    config = _config(str(tmp_path), learning_rate=1e6)
    train_lib.check_config(config, train_lib.build_arch(config))
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)
  assert any("learning_rate=1e+06" in r and "diverge" in r for r in records), records


def test_resume_says_what_is_kept_and_what_is_taken():
  saved = json.loads(json.dumps(_config("x", keep_epochs=(1, 2)).to_dict()))  # as the checkpoint holds it
  meta = {"epoch": 2.0, "config": {**saved, "learning_rate": 0.01, "num_epochs": 2}}
  line = train_lib.resume_summary(meta, _config("x", learning_rate=0.5, num_epochs=4, keep_epochs=(1, 2)), 8, 0.001)
  assert len(line.splitlines()) == 1
  assert "kept from the checkpoint" in line and "learning rate 0.001, not the command's 0.5" in line
  assert "taken from the command: num_epochs=4 (was 2)" in line and "keep_epochs" not in line
  same = train_lib.resume_summary(meta, _config("x", learning_rate=0.01), 8, float(np.float32(0.01)))
  assert "(learning rate 0.01)" in same and "not the command's" not in same


# --- train.py: every case in one child process (train.py's flags clash with visualize.py's in this one). ---

TRAIN_CLI = {
    "a missing config file": (["--config=configs/nope.py", "--workdir={tmp}/run"],
                              ["--config=configs/nope.py cannot be loaded", "No such file", "allowed: a configs/*.py"]),
    "a misspelt config key": (["--config=configs/smoke.py", "--config.nume_epochs=3", "--workdir={tmp}/run"],
                              ["--config.nume_epochs", "did you mean num_epochs?", "allowed: arch, arch_features"]),
    "an unknown config key": (["--config=configs/smoke.py", "--config.colour=red", "--workdir={tmp}/run"],
                              ["--config.colour", "no such key", "allowed: arch"]),
    "a config value of the wrong type": (
        ["--config=configs/smoke.py", "--config.num_epochs=abc", "--workdir={tmp}/run"],
        ["--config.num_epochs=abc", "invalid literal", "allowed: the flags of train.py --helpfull"]),
    "num_epochs=0": (["--config=configs/smoke.py", "--config.num_epochs=0", "--workdir={tmp}/run"],
                     ["num_epochs=0", "allowed: an int >= 1"]),
    "a workdir below a file": (["--config=configs/smoke.py", "--workdir={tmp}/file/run"],
                               ["cannot be created", "allowed: a writable folder"]),
    "an extra argument": (["--config=configs/smoke.py", "--workdir={tmp}/run", "extra"],
                          ["unexpected arguments: extra", "allowed: flags only"]),
    "a layer arch_features lacks": (["--config=configs/smoke.py", "--config.arch_features.conv9=8",
                                     "--workdir={tmp}/run"],
                                    ["--config.arch_features.conv9", "'s arch_features has no such key",
                                     "allowed: conv1, conv2"]),
    "a key of an empty dict": (["--config=configs/smoke.py", "--config.layer_weight_std.conv1=-1",
                                "--workdir={tmp}/run"],
                               ["--config.layer_weight_std.conv1", "layer_weight_std is empty in the config file"]),
    "seed=-1": (["--config=configs/smoke.py", "--config.seed=-1", "--workdir={tmp}/run"], ["seed=-1", "allowed"]),
}

_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    sys.path.insert(0, {root!r})
    import train
    from absl import flags
    results = {{}}
    for name, argv in json.loads(sys.argv[1]).items():
      flags.FLAGS.unparse_flags()
      for flag in [f for f in flags.FLAGS if f.startswith("config.")]:  # the last case's --config.KEY overrides
        delattr(flags.FLAGS, flag)
      err = io.StringIO()
      code = 0
      sys.argv = ["train.py", *argv]  # ml_collections reads the --config.KEY overrides from sys.argv
      with contextlib.redirect_stderr(err):
        try:
          train.main(train.parse_flags(sys.argv))
        except SystemExit as e:
          code = e.code
      results[name] = [code, err.getvalue()]
    # A corrupt checkpoint, read in a fresh process as visualize.py does: one error, then no stray
    # `Event loop is closed` tracebacks from orbax's other reads (give them time to arrive).
    import time
    from zf_jax import checkpoint
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      try:
        checkpoint.load_for_analysis({corrupt!r})
      except ValueError as e:
        print(f"error: {{e}}", file=sys.stderr)
      time.sleep(1)
    results["corrupt checkpoint"] = [1, err.getvalue()]
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def train_cli(tmp_path_factory, files):
  tmp = tmp_path_factory.mktemp("train_cli")
  (tmp / "file").write_text("x")
  cases = {name: [a.format(tmp=tmp) for a in argv] for name, (argv, _) in TRAIN_CLI.items() if argv}
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  before = _snapshot(tmp)
  driver = _DRIVER.format(root=ROOT, corrupt=str(files / "corrupt"))
  run = subprocess.run([sys.executable, "-c", driver, json.dumps(cases)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1]), _snapshot(tmp) == before


TRAIN_CLI["corrupt checkpoint"] = ([], ["checkpoints/2", "corrupt or truncated", "allowed: a complete checkpoint"])


@pytest.mark.parametrize("name", list(TRAIN_CLI))
def test_train_cli(name, train_cli):
  results, unchanged = train_cli
  code, err = results[name]
  errors = [line for line in err.splitlines() if line.startswith("error: ")]
  assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
  assert all(f in errors[0] for f in TRAIN_CLI[name][1]), errors[0]
  assert unchanged


# --- visualize.py: in this process, with its flags parsed. ---




VISUALIZE = {
    "--params of the wrong shapes": (["topk", "--params={f}/wrong.npz"], ["params['conv2']['kernel']", "(3, 3, 4, 4)"]),
    "a truncated --params": (["filters", "--params={f}/truncated.npz"], ["truncated.npz", "corrupt or truncated"]),
    "a corrupt checkpoint": (["filters", "--workdir={f}/corrupt"], ["checkpoints/2", "corrupt or truncated"]),
    "a truncated --images": (["topk", "--workdir={f}/workdir", "--images={f}/truncated.png"],
                             ["truncated.png", "allowed: a complete PNG/JPEG"]),
    "--out is a file": (["filters", "--workdir={f}/workdir", "--out={f}/a_file"], ["a_file", "allowed: a folder"]),
    "--k=0": (["topk", "--workdir={f}/workdir", "--k=0"], ["k=0", "allowed: 1..16"]),
    "--k beyond the images": (["topk", "--workdir={f}/workdir", "--k=17"], ["k=17", "allowed: 1..16"]),
    "--maps out of range": (["topk", "--workdir={f}/workdir", "--maps=9"], ["maps=9", "allowed: 0..3"]),
    "--maps not integers": (["topk", "--workdir={f}/workdir", "--maps=a"], ["maps=a", "allowed: comma-separated"]),
    "--workdir and --params": (["filters", "--workdir={f}/workdir", "--params={f}/model.npz"],
                               ["give one of --model, --workdir or --params", "got --workdir and --params"]),
    "--step with --params": (["filters", "--params={f}/model.npz", "--step=2"], ["--step", "--params are one model"]),
    "--num_examples=-1": (["occlusion", "--workdir={f}/workdir", "--num_examples=-1"],
                          ["--num_examples=-1 is not allowed", "allowed: an int >= 0"]),
    "--train_images=-3": (["ablation", "--workdirs={f}/workdir", "--train_images=-3"],
                          ["--train_images=-3 is not allowed", "allowed: an int >= 1"]),
    "--step not in the workdir": (["filters", "--workdir={f}/workdir", "--step=7"], ["step=7", "allowed: [2]"]),
    "an unknown subcommand": (["frobnicate", "--workdir={f}/workdir"], ["'frobnicate'", "allowed: topk"]),
}


@pytest.mark.parametrize("name", list(VISUALIZE))
def test_visualize(name, files, capsys):
  args, fragments = VISUALIZE[name]
  out = files / "out"
  before = _snapshot(files)
  args = [a.format(f=files) for a in args]
  out_flag = [] if any(a.startswith("--out=") for a in args) else [f"--out={out}"]
  assert run_visualize(*args, *out_flag, "--num_images=16", "--num_maps=2", "--batch_size=8") == 2
  stderr = capsys.readouterr().err
  err = [line for line in stderr.splitlines() if "visualize.py" in line]  # besides progress bars
  assert len(err) == 1 and err[0].startswith("visualize.py: error: ") and "Traceback" not in stderr, stderr
  assert all(f in err[0] for f in fragments), err[0]
  assert _snapshot(files) == before


# --- Valid values that used to fail, and the output folder's switch. ---


def test_topk_with_k_2_and_16_images_and_umask_modes(files, capsys):
  out = files / "topk_out"
  os.makedirs(out)
  (out / "keep.txt").write_text("old")
  stale = files / f".topk_out.tmp-{2**22 + 12345}-dead"  # a staging folder of a process that is gone
  os.makedirs(stale)
  old_umask = os.umask(0o022)
  try:
    assert run_visualize("topk", f"--workdir={files}/workdir", f"--out={out}", "--num_images=16", "--k=2",
                      "--num_maps=2", "--layers=conv1,conv5", "--batch_size=8") == 0
  finally:
    os.umask(old_umask)
  capsys.readouterr()
  assert sorted(os.listdir(out)) == ["keep.txt", "topk.json", "topk_conv1.png", "topk_conv5.png"]
  assert not [e for e in os.listdir(files) if ".tmp-" in e]
  assert stat.S_IMODE(os.stat(out / "topk.json").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(files):
  records = []
  handler = type("H", (absl_logging.logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})()
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    assert metrics.read(str(files / "torn")) == [{"step": 1, "train_loss": 2.3}]
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)
  assert any(os.path.join("torn", "metrics.jsonl") in r and "torn last line 2" in r for r in records), records


def test_flax_convnet_takes_an_arch_name():
  x = np.zeros((1, 56, 56, 3), np.float32)
  by_name = flax_module.ConvNet("zfnet64", num_classes=3)
  variables = by_name.init(jax.random.key(0), x)
  same = flax_module.ConvNet(models.get_arch("zfnet64"), num_classes=3).init(jax.random.key(0), x)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), variables, same))


def test_finite_params_are_checked_once_per_array(model):
  params, images, _ = model
  params = jax.tree.map(jnp.asarray, params)
  models.forward(TINY, params, images)
  checked = dict(models._FINITE_CHECKED)
  assert all(id(leaf) in checked for leaf in jax.tree.leaves(params))
  models.forward(TINY, params, images)  # the same arrays: not read again
  assert models._FINITE_CHECKED == checked


def test_sixteen_bit_grayscale_png_keeps_its_tones(tmp_path):
  ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
  Image.fromarray(ramp).save(tmp_path / "g16.png")
  image = model_inputs.read_image(str(tmp_path / "g16.png"))
  assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
  np.testing.assert_allclose(image[..., 0], ramp / 257, atol=1)
