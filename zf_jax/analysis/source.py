"""Where an analysis takes its model and its images from, each loaded on first use.

The model: a shipped one (`zf_jax.pretrained`, the default), a training workdir (its latest
checkpoint, or `step`) or a .npz from `checkpoint.save_params_npz`. The images: `image_files` when
given, else `dataset_name`'s split, else the dataset the model was trained on when it is present on
this machine, else the scikit-image sample photos bundled with scikit-image (no download).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from zf_jax import checkpoint, data, pretrained
from zf_jax.data import model_inputs

SAMPLE_PHOTOS = tuple(f"skimage:{name}" for name in model_inputs.SKIMAGE_PHOTOS)


class NeedsDataset(ValueError):
  """An analysis needs a labelled dataset that this source does not have (its message names the flag)."""


@dataclasses.dataclass
class Source:
  """The model and the images of one analysis command.

  Attributes:
    model_name: a shipped model (`pretrained.available()`); the default when no other is given.
    workdir: a training workdir, or
    params_file: a .npz file (`checkpoint.save_params_npz`).
    step: the workdir's checkpoint (default: the latest).
    dataset_name: a dataset name or ImageFolder path (default: the model's own, where present).
    split: the split to take images from.
    data_dir: the TFDS data_dir (default: the model's).
    image_files: image files (or "skimage:NAME") to use instead of a dataset.
    num_images: how many images of the split the scanning analyses use (0: all).
  """
  model_name: str | None = None
  workdir: str | None = None
  params_file: str | None = None
  step: int | None = None
  dataset_name: str | None = None
  split: str = "validation"
  data_dir: str | None = None
  image_files: Sequence[str] | None = None
  num_images: int = 500

  def __post_init__(self):
    given = [name for name, value in (("--model", self.model_name), ("--workdir", self.workdir),
                                      ("--params", self.params_file)) if value]
    if len(given) > 1:
      raise ValueError(f"give one of --model, --workdir or --params (got {' and '.join(given)})")
    if not given:
      self.model_name = pretrained.DEFAULT
    if self.step is not None and not self.workdir:
      raise ValueError("--step selects a checkpoint of --workdir; --model and --params are one model each")
    if self.image_files is not None and not list(self.image_files):
      raise ValueError("images is empty; give at least one image file")

  @property
  def path(self) -> str | None:
    """The workdir or .npz file (None for a shipped model)."""
    return self.workdir or self.params_file

  @property
  def label(self) -> str:
    """What the model is, for captions and reports."""
    return self.path or f"shipped model {self.model_name}"

  @functools.cached_property
  def model(self) -> checkpoint.Loaded:
    if self.model_name:
      return pretrained.load_model(self.model_name)
    return checkpoint.load_for_analysis(self.path, self.step)

  @functools.cached_property
  def image_size(self) -> int:
    mean = np.asarray(self.model.mean_image)
    return mean.shape[0] if mean.ndim == 3 else data.image_size_for(self.model.arch)

  def _own_dataset_present(self) -> bool:
    """Whether the dataset the model was trained on can be read here without a download."""
    config = self.model.config
    name = config.get("dataset")
    if not name:
      return False
    if name == "synthetic":
      return True
    if name == "tiny_imagenet":
      return bool(config.get("manual_dir")) and os.path.isdir(config["manual_dir"])
    return os.path.isdir(os.path.expanduser(name))

  @functools.cached_property
  def photos(self) -> list[np.ndarray] | None:
    """uint8 photos when the images are files or sample photos; None when they come from a dataset."""
    if self.image_files is not None:
      return [model_inputs.read_image(path) for path in self.image_files]
    if self.dataset_name or self._own_dataset_present():
      return None
    logging.warning("the model's dataset %r is not on this machine: using scikit-image's sample photos",
                    self.model.config.get("dataset"))
    return [model_inputs.read_image(path) for path in SAMPLE_PHOTOS]

  @functools.cached_property
  def dataset(self) -> data.Dataset:
    config = self.model.config
    name = self.dataset_name or config.get("dataset")
    if self.photos is not None or not name:
      raise NeedsDataset("this analysis needs a labelled dataset: pass --dataset=NAME_OR_FOLDER (the model's own "
                         f"dataset {config.get('dataset')!r} is not on this machine)")
    manual_dir = config.get("manual_dir") if name == config.get("dataset") else None  # the copy it was trained on
    return data.get_dataset(name, self.split, data_dir=self.data_dir or config.get("data_dir"), manual_dir=manual_dir)

  def scan_inputs(self) -> Any:
    """Model inputs to scan: the photos, or the first `num_images` of the split (decoded on demand)."""
    arch, mean = self.model.arch, self.model.mean_image
    if self.photos is not None:
      return model_inputs.prepare_images(self.photos, arch.input_size, self.image_size, mean)
    return model_inputs.DatasetInputs(self.dataset.source, arch.input_size, self.image_size, mean,
                                      self.num_images or None)

  def scan_labels(self) -> np.ndarray | None:
    """int32 labels of `scan_inputs` (None for photos)."""
    if self.photos is not None:
      return None
    labels = data.few_shot.labels_of(self.dataset.source)
    return labels[:self.num_images] if self.num_images else labels

  def examples(self, n: int, flag: str = "num_examples") -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 [n, R, R, 3] images at the stored image size R and their labels (None for photos); n = 0:
    the whole split (all photos). `flag` names n in errors."""
    if self.photos is not None:
      return np.stack([data.preprocess.resize_and_center_crop(p, self.image_size) for p in self.photos]), None
    if n < 0:
      raise ValueError(f"--{flag}={n} is not allowed; allowed: an int >= 0 (0 = the whole split)")
    count = len(self.dataset.source) if n == 0 else min(n, len(self.dataset.source))
    return data.load_batch(self.dataset.source, range(count), self.image_size)

  def example_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [n, S, S, 3] mean-subtracted center crops and their labels (None for photos)."""
    images, labels = self.examples(n)
    return model_inputs.eval_inputs(images, self.model.arch.input_size, self.model.mean_image), labels
