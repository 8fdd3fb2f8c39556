"""Datasets by name as random-access sources, their batches and the mean image of section 3.

A source has `len(source)` and `source[i]` -> {"image": uint8 [H, W, 3], "label": int, "file_name":
bytes (TFDS) or str, ...}. TFDS datasets are prepared once as array_record files and read through
`builder.as_data_source` (`tfds.data_source`), which needs no TensorFlow; preparing needs none either
for "synthetic", "tiny_imagenet" and catalog builders that store image files as they are (imagenette,
caltech101, ...), while those that encode numpy arrays (cifar10, mnist) need it once. ImageFolder
directories are read file by file.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from zf_jax import models
from zf_jax.data import preprocess, synthetic, tiny_imagenet  # noqa: F401  (registers the builders with TFDS)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_ALLOWED = ("'synthetic', 'tiny_imagenet', a TFDS catalog image-classification dataset (e.g. imagenet2012, "
            "imagenette, caltech101, cifar10) or an ImageFolder directory path")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One split of a dataset.

  Attributes:
    source: random access to the examples: `len(source)`, `source[i]` -> {"image": uint8 [H, W, C],
      "label": int, ...}.
    num_classes: C.
    class_names: C readable names (Tiny ImageNet: the first synonym of each wnid; otherwise the
      dataset's label names).
    name: the dataset's name, as given to `get_dataset`.
    split: the split, as given.
  """
  source: Any
  num_classes: int
  class_names: list[str]
  name: str
  split: str


class ImageFolderSource:
  """The images of `root/<split>/<class>/<file>` (the layout of `tfds.ImageFolder`), decoded on access.

  Classes are the sorted class directories of all splits, so labels agree across splits; images are
  in sorted order.
  """

  def __init__(self, root: str, split: str, encoded: bool = False):
    """encoded: give each "image" as the file's bytes (see `encoded`) instead of decoded pixels."""
    splits = _subdirectories(root)
    if split not in splits:
      raise ValueError(f"split={split!r} is not a directory of {root!r}; allowed: {', '.join(splits)}")
    self.class_names = sorted({c for s in splits for c in _subdirectories(os.path.join(root, s))})
    present = _subdirectories(os.path.join(root, split))
    self._files = [(os.path.join(split, c, f), label)
                   for label, c in enumerate(self.class_names) if c in present
                   for f in sorted(os.listdir(os.path.join(root, split, c)))
                   if f.lower().endswith(IMAGE_EXTENSIONS)]
    self._root, self._split, self._encoded = root, split, encoded

  def __len__(self) -> int:
    return len(self._files)

  def __getitem__(self, index: int) -> dict[str, Any]:
    file_name, label = self._files[index]
    if self._encoded:
      with open(os.path.join(self._root, file_name), "rb") as f:
        return {"image": f.read(), "label": label, "file_name": file_name}
    path = os.path.join(self._root, file_name)
    try:
      with preprocess.open_image(path, path) as image:
        pixels = preprocess.pil_to_rgb(image)
    except preprocess.TooManyPixels:
      raise
    except (OSError, ValueError) as e:  # not an image, truncated ("image file is truncated"), ...
      raise ValueError(f"image {path!r} cannot be decoded ({type(e).__name__}: "
                       f"{e}); allowed: a complete PNG/JPEG file") from None
    return {"image": pixels, "label": label, "file_name": file_name}


def encoded(source: Any) -> Any:
  """`source` with its images left encoded (JPEG/PNG bytes, which `load_batch` and the input pipeline
  decode at reduced scale where the target size allows: `preprocess.decode`); other sources unchanged.

  TFDS sources skip their image decoder (`tfds.decode.SkipDecoding`); ImageFolder sources read the files' bytes.
  """
  if isinstance(source, ImageFolderSource):
    return ImageFolderSource(source._root, source._split, encoded=True)
  if dataclasses.is_dataclass(source) and hasattr(source, "decoders") and hasattr(source, "dataset_info"):
    return dataclasses.replace(source, decoders={"image": tfds.decode.SkipDecoding()})
  return source


def _subdirectories(path: str) -> list[str]:
  return sorted(entry for entry in os.listdir(path) if os.path.isdir(os.path.join(path, entry)))


def _is_path(name: str) -> bool:
  return name.startswith(("/", ".", "~")) or os.path.isdir(name)


def _is_image_classification(features: Any) -> bool:
  return (isinstance(features, tfds.features.FeaturesDict) and "image" in features and "label" in features
          and isinstance(features["image"], tfds.features.Image)
          and isinstance(features["label"], tfds.features.ClassLabel))


def get_dataset(name: str, split: str, data_dir: str | None = None, manual_dir: str | None = None) -> Dataset:
  """One split of a dataset, prepared as array_record on first use and reused afterwards.

  Args:
    name: "synthetic" (drawn, no download), "tiny_imagenet", any TFDS catalog image-classification
      dataset ("imagenet2012", "imagenette/320px-v2", "caltech101", ...), or an ImageFolder directory
      (`<split>/<class>/<image>`): an existing directory, or a path starting with "/", "." or "~".
    split: a TFDS split ("train", "validation", "test"; slices like "train[:10%]") or, for an
      ImageFolder, a subdirectory.
    data_dir: where TFDS datasets are prepared; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
    manual_dir: local copy of the raw data: for tiny_imagenet the directory of tar shards (e.g.
      shared/data/tiny-imagenet-100) or of tiny-imagenet-200.zip; for imagenet2012 the ILSVRC tars.

  Returns:
    The split as a `Dataset`.
  """
  if _is_path(name):
    root = os.path.expanduser(name)
    if not os.path.isdir(root):
      raise ValueError(f"dataset={name!r} is not a directory; allowed: {_ALLOWED}")
    source = ImageFolderSource(root, split)
    return Dataset(source, len(source.class_names), source.class_names, name, split)
  try:
    # tiny_imagenet's prepared data is keyed by the local copy it was prepared from (never confused).
    config = {"config": tiny_imagenet.builder_config(manual_dir, data_dir)} if name == "tiny_imagenet" else {}
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record", **config)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"dataset={name!r} is unknown; allowed: {_ALLOWED}") from None
  except (ValueError, AssertionError) as e:  # a known dataset with an unknown config or version
    raise ValueError(" ".join(f"dataset={name!r}: {e}".split())) from None
  if not _is_image_classification(builder.info.features):
    raise ValueError(f"dataset={name!r} has no 'image' and 'label' (ClassLabel) features; "
                     f"allowed: {_ALLOWED}")
  if manual_dir is None and not builder.is_prepared():
    _check_reachable(builder, name)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except ModuleNotFoundError as e:
    if "tensorflow" not in str(e):
      raise
    raise ValueError(f"dataset={name!r}: its TFDS builder needs TensorFlow to prepare the data; install it "
                     "for that once (pip install tensorflow), reading the prepared data does not") from None
  splits = list(builder.info.splits)
  if split.split("[")[0] not in splits:
    raise ValueError(f"split={split!r} is not a split of {name!r}; allowed: {', '.join(splits)}")
  labels = builder.info.features["label"]
  class_names = list((builder.info.metadata or {}).get("class_names", labels.names))
  try:
    source = builder.as_data_source(split=split)
  except ValueError as e:  # e.g. "Paths sequence can not be of 0 length" for a slice with no examples
    raise ValueError(f"split={split!r} of {name!r} cannot be read ({' '.join(str(e).split())[:200]}); allowed: a split "
                     f"or slice with at least one image (splits: {', '.join(splits)})") from None
  return Dataset(source, labels.num_classes, class_names, name, split)


def _check_reachable(builder: tfds.core.DatasetBuilder, name: str) -> None:
  """One error line within seconds when a dataset to download names a host that cannot be reached
  (TFDS itself retries for minutes)."""
  for url in sorted(builder.url_infos or {}):
    parsed = urllib.parse.urlparse(url)
    try:
      socket.create_connection((parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)),
                               timeout=10).close()
    except OSError as e:
      raise ValueError(f"dataset={name!r} is not prepared in {builder.data_dir} and the network is unreachable "
                       f"({parsed.hostname}: {type(e).__name__}); prepare it where there is network, or pass "
                       "manual_dir with its downloaded files") from None


def load_batch(source: Any, indices: Sequence[int], image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Examples `indices` of `source`, resized and center-cropped to image_size (section 3).

  Args:
    source: a `Dataset.source`.
    indices: B example indices.
    image_size: S (256 for 224-px models, 64 for 56-px ones; `image_size_for`).

  Returns:
    uint8 [B, S, S, 3] images, int32 [B] labels.
  """
  indices = [int(i) for i in indices]
  examples = source.__getitems__(indices) if hasattr(source, "__getitems__") else [source[i] for i in indices]
  images = np.stack([preprocess.resize_and_center_crop(e["image"], image_size) for e in examples])
  return images, np.array([int(e["label"]) for e in examples], np.int32)


def compute_mean_image(source: Any, image_size: int, max_images: int | None = None,
                       batch_size: int = 256) -> np.ndarray:
  """The per-pixel mean image over a split (section 3), summed in float64.

  Args:
    source: a `Dataset.source` (the training split).
    image_size: S.
    max_images: average only this many images, evenly spaced through the source (default: all).
    batch_size: images decoded at a time.

  Returns:
    float32 [S, S, 3].
  """
  n = len(source)
  if n == 0 or (max_images is not None and max_images < 1):
    raise ValueError(f"compute_mean_image: {n} images and max_images={max_images}; allowed: >= 1 of each")
  if max_images is None or max_images >= n:
    indices = np.arange(n)
  else:
    indices = np.linspace(0, n - 1, max_images).round().astype(np.int64)
  total = np.zeros((image_size, image_size, 3), np.float64)
  for start in range(0, len(indices), batch_size):
    images, _ = load_batch(source, indices[start:start + batch_size], image_size)
    total += images.sum(axis=0, dtype=np.float64)
  return (total / len(indices)).astype(np.float32)


def image_size_for(arch: models.Arch | str) -> int:
  """The side images are resized and center-cropped to before cropping arch's input: input * 8 / 7.

  Section 3: 256-px images for the 224-px models, hence 64-px images for the 56-px ones.
  """
  arch = models.get_arch(arch) if isinstance(arch, str) else arch
  return round(arch.input_size * 8 / 7)
