"""Batches for training and evaluation (section 3), as pure functions of (seed, step).

Training batch `step` of a run is fixed by the seed alone, so a resumed run sees exactly the data an
uninterrupted run would:
  * epoch e visits the training set in the order `epoch_order(seed, e, n)` (a numpy permutation),
    batch b of it holds positions [b*B, (b+1)*B) (the last partial batch is dropped);
  * image i of global batch `step` is mean-subtracted, then randomly cropped and flipped with the
    numpy generator seeded by (seed, step, i), whichever process or device it lands on.
Evaluation takes the center crop or the 10 crops (corners + center, with flips) of every image.
Batches are assembled on host threads a few steps ahead of the device.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from zf_jax import data
from zf_jax.data import preprocess


@dataclasses.dataclass(frozen=True)
class Datasets:
  """The splits of a dataset as random-access sources of {"image": uint8 [H, W, 3], "label": int}.

  Attributes:
    train, val: the sources (`len(source)`, `source[i]`).
    num_classes: C.
    class_names: C names, or None.
    image_size: S, the side every image is resized and center-cropped to (256 or 64).
  """
  train: Any
  val: Any
  num_classes: int
  class_names: list[str] | None
  image_size: int


@functools.lru_cache(maxsize=2)
def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The order in which epoch `epoch` visits the n training images (int64 [n]; do not modify)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batch(datasets: Datasets, mean_image: np.ndarray, seed: int, step: int, batch_size: int, crop: int,
                shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
  """This process's part of global training batch `step`.

  Args:
    datasets: the data.
    mean_image: float32 [S, S, 3].
    seed: the run's seed.
    step: the global step (epoch = step // steps_per_epoch).
    batch_size: B, the global batch.
    crop: the model's input side (224 or 56).
    shard: (process index, process count); each process takes its contiguous B / count images.

  Returns:
    float32 [B / count, crop, crop, 3] mean-subtracted random crops, int32 [B / count] labels.
  """
  steps_per_epoch = len(datasets.train) // batch_size
  epoch, batch = divmod(step, steps_per_epoch)
  index, count = shard
  local = batch_size // count
  positions = range(index * local, (index + 1) * local)
  order = epoch_order(seed, epoch, len(datasets.train))[batch * batch_size:(batch + 1) * batch_size]
  images, labels = data.load_batch(datasets.train, order[positions.start:positions.stop], datasets.image_size)
  images = preprocess.subtract_mean(images, mean_image)
  crops = [preprocess.random_crop_flip(images[j:j + 1], crop, np.random.default_rng([seed, step, i]))
           for j, i in enumerate(positions)]
  return np.concatenate(crops), labels


def eval_batch(source: Any, image_size: int, mean_image: np.ndarray, start: int, batch_size: int, crop: int,
               num_crops: int, shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """This process's part of the evaluation batch of images [start, start + B), padded past the end.

  Args:
    source: the split to evaluate.
    image_size: S.
    mean_image: float32 [S, S, 3].
    start: the batch's first image.
    batch_size: B images (global) per batch.
    crop: the model's input side.
    num_crops: 1 (center) or 10 (corners + center, with flips; section 3).
    shard: (process index, process count).

  Returns:
    float32 [B / count, num_crops, crop, crop, 3], int32 labels [B / count], bool mask [B / count]
    (False on padding).
  """
  index, count = shard
  local = batch_size // count
  ids = np.arange(start + index * local, start + (index + 1) * local)
  mask = ids < len(source)
  images, labels = data.load_batch(source, np.where(mask, ids, 0), image_size)
  images = preprocess.subtract_mean(images, mean_image)
  if num_crops == 10:
    return preprocess.ten_crops(images, crop), labels, mask
  return preprocess.center_crop(images, crop)[:, None], labels, mask


def prefetch(make: Callable[[Any], Any], args: Sequence[Any], depth: int = 3, workers: int = 2) -> Iterator[Any]:
  """Yields make(a) for each a in args, computed on `workers` threads up to `depth` items ahead."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: collections.deque = collections.deque()
    for arg in args:
      pending.append(pool.submit(make, arg))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def load_datasets(config: Any) -> Datasets:
  """The config.train_split and config.val_split of config.dataset (TFDS, prepared in config.data_dir
  on first use from config.manual_dir where the dataset needs local files), at config.image_size."""
  train = data.get_dataset(config.dataset, config.train_split, config.data_dir, config.manual_dir)
  val = data.get_dataset(config.dataset, config.val_split, config.data_dir, config.manual_dir)
  return Datasets(train.source, val.source, train.num_classes, train.class_names, config.image_size)
