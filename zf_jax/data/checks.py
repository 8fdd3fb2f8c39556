"""Checks of a dataset before training starts (section 3's data, fail fast): every image decodes, every
label is a class, no split is empty, every class has training images.

`scan_split` decodes every image of a split once, at the size training reads it (`load_batch`:
JPEGs at reduced scale where the size allows), on threads (PIL decodes without the GIL), with a
progress bar. A full decode, not a header check: PIL's `verify()` does not read JPEG scan data, so it
would let truncated files through. The pass over the training split also sums the mean image, which
training needs anyway, so checking it costs nothing extra on a run's first start; the validation
split costs what one evaluation reads.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from typing import Any

import numpy as np
import tqdm
from absl import logging

from zf_jax.data import datasets


@dataclasses.dataclass(frozen=True)
class SplitScan:
  """What `scan_split` found.

  Attributes:
    counts: int64 [C], images per class.
    mean_image: float32 [S, S, 3], the per-pixel mean (as `datasets.compute_mean_image`), or None.
  """
  counts: np.ndarray
  mean_image: np.ndarray | None


def _file(source: Any, index: int) -> str:
  try:
    name = source[index].get("file_name")
  except Exception:  # the example itself cannot be read
    name = None
  name = name.decode() if isinstance(name, bytes) else name
  return f"image {index} ({name})" if name else f"image {index}"


def _chunk(source: Any, indices: np.ndarray, image_size: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """(sum of the images float64 [S, S, 3], labels int64 [B]); ValueError naming the first image that fails."""
  try:
    images, labels = datasets.load_batch(source, indices, image_size)
  except Exception:  # find which image, then say so in one line
    for index in indices:
      try:
        datasets.load_batch(source, [index], image_size)
      except Exception as e:
        message = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{what}: {_file(source, int(index))} cannot be decoded ({type(e).__name__}: {message}); "
                         "allowed: complete JPEG/PNG images (remove or replace the file)") from None
    raise
  return images.sum(axis=0, dtype=np.float64), labels.astype(np.int64)


def scan_split(source: Any, what: str, num_classes: int, image_size: int, mean: bool = False,
               batch_size: int = 256, workers: int | None = None, progress: bool = True) -> SplitScan:
  """Decodes every image of a split; fails at the first that does not decode or has a label not in 0..C-1.

  Args:
    source: random access to {"image", "label", "file_name"?} (`Dataset.source`).
    what: how to name the split in messages, e.g. "val_split='validation' of 'synthetic'".
    num_classes: C.
    image_size: S, the side images are read at.
    mean: also sum the per-pixel mean image (the same numbers as `datasets.compute_mean_image`).
    batch_size: images decoded per task.
    workers: decoding threads (default: the CPU count, at most 8).
    progress: show a progress bar.

  Returns:
    A `SplitScan`.

  Raises:
    ValueError: an empty split, an image that does not decode (named), a label out of range.
  """
  n = len(source)
  if n == 0:
    raise ValueError(f"{what} has no images; allowed: a split with at least one image")
  workers = workers or min(8, os.cpu_count() or 1)
  starts = range(0, n, batch_size)
  total = np.zeros((image_size, image_size, 3), np.float64)
  counts = np.zeros(num_classes, np.int64)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool, \
      tqdm.tqdm(total=n, desc=f"checking {what}", unit="img", disable=not progress, leave=False) as bar:
    pending: collections.deque = collections.deque()
    for start in (*starts, None):
      if start is not None:
        indices = np.arange(start, min(start + batch_size, n))
        pending.append(pool.submit(_chunk, source, indices, image_size, what))
      while pending and (start is None or len(pending) > 2 * workers):
        images_sum, labels = pending.popleft().result()  # in order: the same float sums as compute_mean_image
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
          raise ValueError(f"{what} has label {bad[0]}; allowed: 0..{num_classes - 1}")
        total += images_sum
        counts += np.bincount(labels, minlength=num_classes)
        bar.update(len(labels))
  logging.info("Checked %s: %d images decode, %d classes", what, n, int((counts > 0).sum()))
  return SplitScan(counts, (total / n).astype(np.float32) if mean else None)


def check_classes(counts: np.ndarray, class_names: list[str] | None, what: str, whole: bool) -> None:
  """Every class must have images in a whole training split (an ImageFolder's empty class folder, say).

  A slice of a split ("train[:10%]") may leave classes out: then a warning names them instead.
  """
  empty = np.flatnonzero(counts == 0)
  if not empty.size:
    return
  names = ", ".join(f"{class_names[i]!r}" if class_names else str(i) for i in empty[:10]) + \
      (f" and {empty.size - 10} more" if empty.size > 10 else "")
  message = f"{what} has no images of class {names} ({empty.size} of {len(counts)} classes)"
  if whole:
    raise ValueError(f"{message}; allowed: every class with at least one training image (add images or remove "
                     "the empty class)")
  logging.warning("%s; these classes cannot be learnt from this slice", message)
