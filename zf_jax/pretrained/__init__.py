"""Trained models that ship with zf_jax: the paper's analyses with no training and no download.

Each model is two files in this folder: NAME.npz (compressed numpy arrays, no pickle:
"params/<layer>/<kernel|bias>" and the training "mean_image") and NAME.json, its card: the
architecture, the classes (WordNet ids and words), the preprocessing, the training config and commit,
the measured 10-crop and center-crop top-1/top-5, and the sha256 of NAME.npz, checked on every load.

  arch, params, card = pretrained.load("zfnet64-tiny-imagenet-100")
  inputs = pretrained.prepare([skimage.data.chelsea()], card)      # float32 [1, 56, 56, 3]
  logits, trace = models.forward(arch, params, inputs)
  pretrained.top_classes(logits, card)                             # [[(word, wnid, p), ...5]]
  pixels = deconv.project(arch, params, trace, "conv5", channel)   # section 2.1

The models are 64-px nets trained on 100 Tiny ImageNet classes (docs/REPRODUCTION.md), not ImageNet.
`export` writes a model from a training workdir (`python -m zf_jax.pretrained.export`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from zf_jax import checkpoint, models
from zf_jax.data import model_inputs

DEFAULT = "zfnet64-tiny-imagenet-100"
CARD_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Card:
  """What a shipped model is and how it was made (NAME.json), plus its mean image (from NAME.npz).

  Attributes:
    name: e.g. "zfnet64-tiny-imagenet-100".
    arch: the architecture.
    wnids: C WordNet ids, in label order.
    words: C readable class names (the first synonym of each WordNet id).
    mean_image: float32 [R, R, 3], the per-pixel training mean at the stored image size R.
    image_size: R: images are resized (smaller side) and center-cropped to R x R, then the center
      arch.input_size crop is taken and the mean's center crop subtracted (`prepare`).
    accuracy: {"val_10crop": {"top1", "top5"}, "val_center": {...}, ...} as measured by `export`.
    info: the whole card as read from NAME.json (config, commit, command, sha256, ...).
  """
  name: str
  arch: models.Arch
  wnids: tuple[str, ...]
  words: tuple[str, ...]
  mean_image: np.ndarray
  image_size: int
  accuracy: dict[str, Any]
  info: dict[str, Any]

  @property
  def num_classes(self) -> int:
    return len(self.wnids)


def _folder() -> Any:
  return importlib.resources.files(__name__)


def available() -> list[str]:
  """The names of the shipped models (those with both NAME.npz and NAME.json here)."""
  names = {entry.name[:-4] for entry in _folder().iterdir() if entry.name.endswith(".npz")}
  return sorted(n for n in names if _folder().joinpath(f"{n}.json").is_file())


def _check_name(name: str) -> None:
  if name not in available():
    raise ValueError(f"model={name!r} is not a shipped model; available: {', '.join(available()) or '(none)'}")


def sha256(path: str) -> str:
  """The hex sha256 of a file."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_card_json(name: str) -> dict[str, Any]:
  """NAME.json as a dict."""
  _check_name(name)
  with _folder().joinpath(f"{name}.json").open() as f:
    return json.load(f)


def read_arrays(path: str, expected_sha256: str | None = None) -> tuple[models.Params, np.ndarray]:
  """A shipped-model .npz -> (params {layer: {"kernel", "bias"}} as numpy, mean_image float32 [R, R, 3]).

  Raises one ValueError (naming the file) if its sha256 differs from `expected_sha256`, if it is not
  a readable zip of arrays (corrupt, truncated), or if any weight is not finite (naming the layer).
  """
  if expected_sha256 is not None and (found := sha256(path)) != expected_sha256:
    raise ValueError(f"{path}: sha256 {found[:12]}... does not match its card's {expected_sha256[:12]}...; the file "
                     "is damaged or was replaced (reinstall zf_jax, or re-export it with python -m "
                     "zf_jax.pretrained.export)")
  try:
    with np.load(path, allow_pickle=False) as arrays:
      params = checkpoint.params_from_arrays(arrays)
      mean_image = np.asarray(arrays["mean_image"], np.float32)
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: cannot be read, it is corrupt or truncated ({type(e).__name__}: {e}); allowed: an "
                     "NAME.npz written by python -m zf_jax.pretrained.export") from None
  models.check_finite_params(params, f"{path}: params")
  return params, mean_image


def load(name: str = DEFAULT) -> tuple[models.Arch, models.Params, Card]:
  """A shipped model, checked against its card's sha256.

  Args:
    name: one of `available()`.

  Returns:
    (arch, params {layer: {"kernel", "bias"}} as jax arrays, card). `models.forward(arch, params,
    prepare(images, card))` classifies; `deconv.project` works on its trace.
  """
  info = read_card_json(name)
  path = str(_folder().joinpath(f"{name}.npz"))
  params, mean_image = read_arrays(path, info["sha256"])
  arch = checkpoint.arch_from_dict(info["arch"])
  try:
    num_classes = models.check_params(arch, params)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  classes = info["classes"]
  if num_classes != len(classes):
    raise ValueError(f"{path}: fc8 has {num_classes} classes, its card lists {len(classes)}")
  card = Card(name=name, arch=arch, wnids=tuple(c["wnid"] for c in classes), words=tuple(c["words"] for c in classes),
              mean_image=mean_image, image_size=int(info["preprocessing"]["image_size"]),
              accuracy=info["accuracy"], info=info)
  return arch, jax.tree.map(jax.numpy.asarray, params), card


def load_model(name: str = DEFAULT) -> checkpoint.Loaded:
  """A shipped model as the analyses take it (`checkpoint.Loaded`, as from a training workdir)."""
  arch, params, card = load(name)
  trained = card.info["trained"]
  return checkpoint.Loaded(arch=arch, params=params, mean_image=card.mean_image, num_classes=card.num_classes,
                           class_names=list(card.words), step=int(trained["step"]), epoch=float(trained["epoch"]),
                           config=dict(card.info["config"]))


def prepare(images: Any, card: Card) -> np.ndarray:
  """Photos -> the model's inputs, exactly as the validation pipeline prepares them (section 3).

  Each image's smaller side is resized to card.image_size and the image center-cropped to a square,
  then its center arch.input_size crop is taken and the training mean (its same crop) subtracted.

  Args:
    images: one uint8 image [H, W] or [H, W, 1|3|4] of any size (grayscale is expanded to RGB, alpha
      dropped), or a sequence of them.
    card: from `load`.

  Returns:
    float32 [B, S, S, 3], S = card.arch.input_size.
  """
  if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype == np.uint8:
    images = [images]
  return model_inputs.prepare_images([np.asarray(image) for image in images], card.arch.input_size, card.image_size,
                                     card.mean_image)


def top_classes(logits: Any, card: Card, k: int = 5) -> list[list[tuple[str, str, float]]]:
  """The k most probable classes of each image: [[(words, wnid, probability), ...k], ...B].

  Args:
    logits: [B, C] from `models.forward`.
    card: from `load`.
  """
  probs = np.asarray(jax.nn.softmax(jax.numpy.asarray(logits, jax.numpy.float32), axis=-1))
  if probs.ndim != 2 or probs.shape[1] != card.num_classes:
    raise ValueError(f"logits has shape {probs.shape}; allowed: [B, {card.num_classes}] from models.forward")
  if not 1 <= k <= card.num_classes:
    raise ValueError(f"k={k}; allowed: 1..{card.num_classes}")
  order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
  return [[(card.words[c], card.wnids[c], float(p[c])) for c in row] for p, row in zip(probs, order)]


def card_for(arch: models.Arch, mean_image: np.ndarray, classes: Sequence[tuple[str, str]], **info: Any) -> dict:
  """The JSON card of a model (`export` fills in the rest: accuracy, config, commit, sha256)."""
  mean = np.asarray(mean_image, np.float32)
  return {"card_version": CARD_VERSION, "name": info.pop("name"), "arch_name": arch.name,
          "arch": checkpoint.arch_to_dict(arch), "num_classes": len(classes),
          "classes": [{"wnid": wnid, "words": words} for wnid, words in classes],
          "preprocessing": {"image_size": int(mean.shape[0]), "input_size": arch.input_size,
                            "steps": "smaller side resized to image_size (bilinear, antialiased), center crop to "
                                     "image_size x image_size, center input_size crop, minus the same crop of "
                                     "mean_image (float32 RGB, 0-255); zf_jax.pretrained.prepare",
                            "mean_image": "mean_image in the .npz: the per-pixel mean of the training images",
                            "mean_rgb": [round(float(v), 4) for v in mean.reshape(-1, 3).mean(axis=0)]},
          **info}


__all__ = ["Card", "DEFAULT", "available", "card_for", "load", "load_model", "prepare", "read_arrays", "sha256",
           "top_classes"]
