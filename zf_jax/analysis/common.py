"""What every analysis shares: reading and preparing images, display scaling, batching in fixed-size
chunks, and files written whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import Any, Iterator

import numpy as np


def to_display(pixels: np.ndarray, mean_image: np.ndarray | None = None) -> np.ndarray:
  """Projections or mean-subtracted images -> float [0, 1] for plotting.

  Projections are shown as the paper's figures do: each image centred on grey and scaled by its
  own largest magnitude ("contrast artificially enhanced", Fig. 4). A mean-subtracted input gets
  its mean back first when `mean_image` is given.

  Args:
    pixels: [..., H, W, 3].
    mean_image: [H, W, 3] to add back (images), or None (projections).

  Returns:
    float32 [..., H, W, 3] in [0, 1].
  """
  pixels = np.asarray(pixels, np.float32)
  if mean_image is not None:
    return np.clip((pixels + mean_image) / 255.0, 0.0, 1.0)
  scale = np.abs(pixels).max(axis=(-3, -2, -1), keepdims=True)
  return 0.5 + 0.5 * pixels / np.where(scale > 0, scale, 1.0)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; renamed onto it only if the block succeeds.

  The file is created as `open()` would create it, with mode 0666 less the umask (not mkstemp's 0600).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{os.path.splitext(path)[1]}")
  os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_json(obj: Any, path: str) -> None:
  """Writes numbers as JSON (numpy scalars and arrays converted), whole or not at all."""
  def default(o):
    if isinstance(o, np.ndarray):
      return o.tolist()
    if isinstance(o, np.generic):
      return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=default)


def save_figure(fig: Any, path: str, dpi: int = 100) -> None:
  """Saves a matplotlib figure as PNG, whole or not at all, and closes it."""
  import matplotlib.pyplot as plt
  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)


def read_image(source: str) -> np.ndarray:
  """One image for an analysis: a file (PNG, JPEG, ...; any size, grayscale or RGB(A)), or
  "skimage:NAME" for a scikit-image sample photo (e.g. "skimage:astronaut"; needs scikit-image).

  Returns:
    uint8 [H, W, 3].
  """
  from zf_jax.data import preprocess
  if source.startswith("skimage:"):
    import skimage.data
    name = source[len("skimage:"):]
    if name not in ("astronaut", "camera", "cat", "chelsea", "coffee", "rocket"):
      raise ValueError(f"image={source!r} is unknown; allowed skimage photos: astronaut, camera, cat, chelsea, "
                       "coffee, rocket")
    return preprocess.to_rgb(getattr(skimage.data, name)())
  from PIL import Image
  try:
    with Image.open(source) as image:
      return preprocess.pil_to_rgb(image)
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
  from zf_jax.data import preprocess
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
  from zf_jax.data import preprocess
  if image_size < input_size:
    raise ValueError(f"image_size={image_size} must be >= the model's input size {input_size}")
  if not len(images):
    raise ValueError("images is empty; give at least one image")
  crops = np.stack([preprocess.center_crop(preprocess.resize_and_center_crop(np.asarray(image), image_size),
                                           input_size) for image in images])
  return preprocess.subtract_mean(crops, mean_for_input(mean_image, input_size))


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


def map_chunks(fn: Any, arrays: tuple[Any, ...], chunk: int) -> Any:
  """fn over fixed-size chunks of the arrays' leading axis, results concatenated.

  Every call sees exactly `chunk` rows (the last chunk is padded by repeating its first row, then
  trimmed), so a jitted `fn` compiles once and every row is computed at the same batch size (XLA's
  result for one example can depend on the batch size, e.g. in the fc layers).

  Args:
    fn: takes one chunk of each array, returns a pytree of arrays with the chunk's leading axis.
    arrays: arrays sharing the leading axis N.
    chunk: the batch size.

  Returns:
    fn's pytree with leading axis N, as numpy arrays.
  """
  import jax
  if chunk < 1:
    raise ValueError(f"batch_size={chunk} must be >= 1")
  n = len(arrays[0])
  outs = []
  for start in range(0, n, chunk):
    part = [np.asarray(a[start:start + chunk]) for a in arrays]
    pad = chunk - len(part[0])
    part = [np.concatenate([p, np.repeat(p[:1], pad, axis=0)]) if pad else p for p in part]
    outs.append(jax.tree.map(lambda o, keep=chunk - pad: np.asarray(o)[:keep], fn(*part)))
  return jax.tree.map(lambda *o: np.concatenate(o), *outs)


def display_images(images: Any, mean_image: Any = None) -> np.ndarray:
  """Mean-subtracted model inputs [B, S, S, 3] -> float32 [0, 1] for figures.

  With `mean_image` (see `mean_for_input`) the photos are shown as they are; without it, each is
  contrast-stretched about grey as `to_display` does for projections.
  """
  images = np.asarray(images, np.float32)
  mean = None if mean_image is None else mean_for_input(mean_image, images.shape[-2])
  return to_display(images, mean)


def check_labels(labels: Any, batch: int, num_classes: int) -> np.ndarray:
  """int [B] class indices in 0..num_classes-1, or ValueError naming what is wrong."""
  labels = np.asarray(labels)
  if labels.shape != (batch,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels has shape {labels.shape} and dtype {labels.dtype}; allowed: int [{batch}], one per image")
  if batch and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels={labels.min() if labels.min() < 0 else labels.max()} is out of range; "
                     f"allowed: 0..{num_classes - 1}")
  return labels.astype(np.int32)


class DatasetInputs:
  """A dataset split as model inputs, decoded on demand: `len(inputs)`, `inputs[indices]`.

  Analyses that scan a split (top-k, Fig. 2; evolution, Fig. 4) take any such random-access
  array of inputs; a numpy array [N, S, S, 3] is one too. Each image is resized and center-cropped
  to `image_size`, then its center input_size crop minus the mean is taken, as evaluation does
  (section 3, `prepare_images`).

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
    from zf_jax import data
    indices = np.arange(self._len)[indices] if isinstance(indices, slice) else np.asarray(indices).reshape(-1)
    if indices.size and (indices.min() < 0 or indices.max() >= self._len):
      raise IndexError(f"image index out of range 0..{self._len - 1}")
    images, _ = data.load_batch(self._source, indices, self._image_size)
    return data.preprocess.subtract_mean(data.preprocess.center_crop(images, self._input_size), self._mean)
