"""How an image becomes a model input, in one place (section 3's evaluation preprocessing).

An image of any size is resized so that its smaller side is the stored image size R (64 for the 56-px
models, 256 for 224), center-cropped to R x R, then its center S x S (S = arch.input_size) is taken
and the training mean subtracted: `prepare_images` for photos, `eval_inputs` for images already at
R x R (dataset batches), `DatasetInputs` for a whole split decoded on demand. `read_image` reads a
file or a scikit-image sample photo; `input_boxes` maps boxes on a photo onto the model input.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from zf_jax.data import datasets, preprocess

SKIMAGE_PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")  # skimage.data.cat() is chelsea()
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def read_image(source: str) -> np.ndarray:
  """One image for an analysis: a file (PNG, JPEG, ...; any size, grayscale or RGB(A)), or
  "skimage:NAME" for a scikit-image sample photo (e.g. "skimage:astronaut"; needs scikit-image).

  Returns:
    uint8 [H, W, 3].
  """
  if source.startswith("skimage:"):
    import skimage.data
    name = source[len("skimage:"):]
    if name not in SKIMAGE_PHOTOS:
      raise ValueError(f"image={source!r} is unknown; allowed skimage photos: {', '.join(SKIMAGE_PHOTOS)}")
    return preprocess.to_rgb(getattr(skimage.data, name)())
  try:
    with preprocess.open_image(source, source) as image:
      return preprocess.pil_to_rgb(image)
  except preprocess.TooManyPixels:
    raise
  except (OSError, ValueError) as e:  # missing, a folder, not an image, truncated ("image file is truncated")
    raise ValueError(f"image={source!r} is not a readable image file ({type(e).__name__}: {e}); allowed: "
                     "a complete PNG/JPEG (or another format PIL reads)") from None


def mean_for_input(mean_image: Any, input_size: int) -> np.ndarray:
  """The mean to subtract from model inputs: float32 [S, S, 3].

  Args:
    mean_image: the per-pixel training mean [R, R, 3] with R >= S (its center S x S is taken, as
      the evaluation crop), a per-channel mean [3], or a scalar.
    input_size: S, the model's input side.
  """
  mean = np.asarray(mean_image, np.float32)
  if mean.ndim == 3 and mean.shape[0] == mean.shape[1] >= input_size and mean.shape[2] == 3:
    return np.ascontiguousarray(preprocess.center_crop(mean, input_size))
  if mean.ndim <= 1 and mean.size in (1, 3):
    return np.broadcast_to(mean, (input_size, input_size, 3)).copy()
  raise ValueError(f"mean_image has shape {mean.shape}; allowed: [R, R, 3] with R >= {input_size}, [3] or a scalar")


def prepare_images(images: Any, input_size: int, image_size: int, mean_image: Any) -> np.ndarray:
  """Photos of any size -> model inputs, as evaluation does (section 3).

  Smallest side resized to `image_size` and center-cropped (`preprocess.resize_and_center_crop`),
  then the center input_size x input_size crop, minus the mean.

  Args:
    images: a sequence of uint8 [H, W] or [H, W, 1|3|4] (grayscale expanded to RGB).
    input_size: S (arch.input_size).
    image_size: the side images are resized to before cropping (64 for 56-px models, 256 for 224).
    mean_image: see `mean_for_input`.

  Returns:
    float32 [B, S, S, 3], mean-subtracted.
  """
  if image_size < input_size:
    raise ValueError(f"image_size={image_size} must be >= the model's input size {input_size}")
  if not len(images):
    raise ValueError("images is empty; give at least one image")
  return eval_inputs(np.stack([preprocess.resize_and_center_crop(np.asarray(image), image_size) for image in images]),
                     input_size, mean_image)


def input_boxes(boxes: Any, image_shape: tuple[int, int], image_size: int, input_size: int) -> np.ndarray:
  """Boxes on an original photo -> boxes on the model input made by `prepare_images`.

  Args:
    boxes: int [N, 4] (y0, x0, y1, x1), half-open pixel bounds on the photo.
    image_shape: the photo's (H, W).
    image_size, input_size: as given to `prepare_images`.

  Returns:
    int [N, 4] (y0, x0, y1, x1) half-open on the S x S input, clipped to it (possibly empty).
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  h, w = image_shape
  scale = image_size / min(h, w)
  nh, nw = (max(image_size, round(h * scale)), max(image_size, round(w * scale))) if (h, w) != (image_size,) * 2 \
      else (h, w)
  inner = (image_size - input_size) // 2
  top, left = (nh - image_size) // 2 + inner, (nw - image_size) // 2 + inner
  sy, sx = nh / h, nw / w
  out = np.stack([np.floor(boxes[:, 0] * sy) - top, np.floor(boxes[:, 1] * sx) - left,
                  np.ceil(boxes[:, 2] * sy) - top, np.ceil(boxes[:, 3] * sx) - left], axis=1)
  return np.clip(out, 0, input_size).astype(np.int32)


def eval_inputs(images: Any, input_size: int, mean_image: Any) -> np.ndarray:
  """Images at the stored size -> model inputs: the center input_size crop minus the mean (section 3).

  Args:
    images: uint8 or float [B, R, R, 3], R >= input_size (e.g. `data.load_batch`'s images).
    input_size: S (arch.input_size).
    mean_image: see `mean_for_input`.

  Returns:
    float32 [B, S, S, 3], mean-subtracted.
  """
  return preprocess.subtract_mean(preprocess.center_crop(np.asarray(images), input_size),
                                  mean_for_input(mean_image, input_size))


class DatasetInputs:
  """A dataset split as model inputs, decoded on demand: `len(inputs)`, `inputs[indices]`.

  Analyses that scan a split (top-k, Fig. 2; evolution, Fig. 4) take any such random-access
  array of inputs; a numpy array [N, S, S, 3] is one too. Each image is resized and center-cropped
  to `image_size`, then its center input_size crop minus the mean is taken, as evaluation does
  (section 3, `eval_inputs`).

  Args:
    source: random access to examples {"image": uint8 [H, W, C], ...} (`data.Dataset.source`).
    input_size: S (arch.input_size).
    image_size: the side images are resized to before cropping (`data.image_size_for`).
    mean_image: see `mean_for_input`.
    limit: use only the first `limit` examples (None: all).
  """

  def __init__(self, source: Any, input_size: int, image_size: int, mean_image: Any, limit: int | None = None):
    if image_size < input_size:
      raise ValueError(f"image_size={image_size} must be >= the model's input size {input_size}")
    if limit is not None and limit < 1:
      raise ValueError(f"num_images={limit} must be >= 1")
    self._source = source
    self._len = len(source) if limit is None else min(limit, len(source))
    self._input_size, self._image_size = input_size, image_size
    self._mean = mean_for_input(mean_image, input_size)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, indices: Any) -> np.ndarray:
    """indices: a slice or int [B] -> float32 [B, S, S, 3], mean-subtracted."""
    indices = np.arange(self._len)[indices] if isinstance(indices, slice) else np.asarray(indices).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self._len):
      raise IndexError(f"image index out of range 0..{self._len - 1}")
    images, _ = datasets.load_batch(self._source, indices, self._image_size)
    return eval_inputs(images, self._input_size, self._mean)
