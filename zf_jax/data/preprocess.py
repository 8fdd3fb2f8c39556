"""Preprocessing of section 3, in numpy at the edges of the library.

Images arrive as uint8 [H, W, 3] (any size; grayscale [H, W] or [H, W, 1] is expanded to RGB) or as
encoded JPEG/PNG bytes (`decode`: large JPEGs are decoded at reduced scale by the DCT), are
resized so the smallest side is `size` and center-cropped to size x size (256 for 224-px models, 64
for the 64-px variants), have the per-pixel mean image subtracted, and are cropped to the model's
input (224 or 56): random crops with horizontal flips in training, the center or 10 crops
(corners + center, with flips) in evaluation.
"""
from __future__ import annotations

import contextlib
import io
import math
import re
import warnings
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image

# The largest image read, in pixels (e.g. 8192 x 8192: 192 MiB as uint8 RGB): a small file can claim far more
# (a decompression bomb). Below PIL's own limit, so PIL never warns or raises first.
MAX_IMAGE_PIXELS = 8192 * 8192


class TooManyPixels(ValueError):
  """An image whose header declares more than MAX_IMAGE_PIXELS pixels (refused before it is decoded)."""


def _too_many(name: str, pixels: str) -> TooManyPixels:
  return TooManyPixels(f"image={name!r} is {pixels} pixels; allowed: at most {MAX_IMAGE_PIXELS} pixels "
                       "(a decompression bomb, or a photo to downscale first)")


def check_image_pixels(width: int, height: int, name: str) -> None:
  """Raises TooManyPixels if a width x height image (named `name`) has more than MAX_IMAGE_PIXELS pixels; call
  it with the size an image file's header declares, before decoding it (any upload endpoint too)."""
  if width * height > MAX_IMAGE_PIXELS:
    raise _too_many(name, f"{width} x {height} = {width * height}")


@contextlib.contextmanager
def open_image(source: str | BinaryIO, name: str) -> Iterator[Image.Image]:
  """`PIL.Image.open(source)` (the header only), refused with TooManyPixels above MAX_IMAGE_PIXELS, as every
  image zf_jax reads is: files, dataset images, uploads. `name` names the image in the error."""
  try:
    with warnings.catch_warnings():  # PIL's DecompressionBombWarning: check_image_pixels says it in one line
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      opened = Image.open(source)
  except Image.DecompressionBombError as e:  # PIL's own limit (2 x 89 M pixels) is met while opening
    pixels = re.search(r"\((\d+) pixels\)", str(e))
    raise _too_many(name, pixels[1] if pixels else "too many") from None
  with opened as image:
    check_image_pixels(*image.size, name)
    yield image


def to_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3].

  uint16 images (16-bit PNG/TIFF) are scaled from 0..65535 to 0..255; other integer types must hold
  values in 0..255 (ValueError otherwise: they are not wrapped around).
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f"image has shape {image.shape}; allowed: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]")
  if image.dtype == np.uint16:
    image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
  elif image.dtype != np.uint8 and image.size and (image.min() < 0 or image.max() > 255):
    raise ValueError(f"image has dtype {image.dtype} and values {image.min()}..{image.max()}; allowed: uint8, "
                     "uint16, or values in 0..255")
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def pil_to_rgb(image: Image.Image) -> np.ndarray:
  """A PIL image of any mode -> uint8 [H, W, 3]. 16-bit grayscale ("I;16*", and "I", as which PIL opens
  16-bit PNGs) is scaled from 0..65535 to 0..255, where `convert("RGB")` would clip it to white."""
  if image.mode.startswith("I;16") or image.mode == "I":
    return to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
  return np.asarray(image.convert("RGB"))


def decode(encoded: bytes, size: int | None = None) -> np.ndarray:
  """JPEG/PNG bytes -> uint8 [H, W, 3].

  With `size`, a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode:
  the inverse DCT does the reduction, several times faster than a full decode), keeping its
  smallest side >= size for the resize that follows; other formats decode at full size. An image of
  more than MAX_IMAGE_PIXELS pixels is refused (TooManyPixels) before it is decoded.
  """
  with open_image(io.BytesIO(encoded), "an encoded image") as image:
    if size is not None:
      scale = size / min(image.size)
      image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
    return pil_to_rgb(image)


def resize_and_center_crop(image: np.ndarray | bytes, size: int) -> np.ndarray:
  """Smallest side resized to `size` (bilinear, antialiased), then the center size x size.

  Args:
    image: uint8 [H, W] or [H, W, C], or encoded bytes (`decode`, at reduced scale where size allows).
    size: the output side.

  Returns:
    uint8 [size, size, 3].
  """
  image = to_rgb(decode(image, size) if isinstance(image, bytes) else image)
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    top, left = (nh - size) // 2, (nw - size) // 2
    image = image[top:top + size, left:left + size]
  return image


def subtract_mean(images: np.ndarray, mean_image: np.ndarray) -> np.ndarray:
  """uint8 [..., S, S, 3] minus the per-pixel mean float32 [S, S, 3] -> float32 [..., S, S, 3]."""
  return images.astype(np.float32) - mean_image.astype(np.float32)


def center_crop(images: np.ndarray, crop: int) -> np.ndarray:
  """[..., S, S, C] -> [..., crop, crop, C], the center."""
  s = images.shape[-2]
  o = (s - crop) // 2
  return images[..., o:o + crop, o:o + crop, :]


def random_crop_boxes(b: int, s: int, crop: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The random crops and flips of `random_crop_flip` for b images of side s: int ys [b], int xs [b], bool flips [b]
  (the crop of image i is [ys[i], ys[i] + crop) x [xs[i], xs[i] + crop), mirrored where flips[i])."""
  ys = rng.integers(0, s - crop + 1, b)
  xs = rng.integers(0, s - crop + 1, b)
  return ys, xs, rng.random(b) < 0.5


def random_crop_flip(images: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
  """Training augmentation: one random crop and a coin-flip horizontal mirror per image.

  Args:
    images: [B, S, S, C].
    crop: output side.
    rng: numpy Generator (seed it from the step for exact resume).

  Returns:
    [B, crop, crop, C].
  """
  return crop_flip(images, crop, *random_crop_boxes(images.shape[0], images.shape[1], crop, rng))


def crop_flip(images: np.ndarray, crop: int, ys: np.ndarray, xs: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """[B, S, S, C] -> [B, crop, crop, C]: image i's crop at (ys[i], xs[i]), mirrored where flips[i]."""
  b = images.shape[0]
  out = np.empty((b, crop, crop, images.shape[-1]), images.dtype)
  for i in range(b):
    patch = images[i, ys[i]:ys[i] + crop, xs[i]:xs[i] + crop]
    out[i] = patch[:, ::-1] if flips[i] else patch
  return out


def ten_crops(images: np.ndarray, crop: int) -> np.ndarray:
  """The 10 evaluation crops of section 3: 4 corners and the center, each also mirrored.

  Args:
    images: [B, S, S, C].

  Returns:
    [B, 10, crop, crop, C]: top-left, top-right, bottom-left, bottom-right, center, then the same
    five flipped horizontally.
  """
  boxes = ten_crop_boxes(images.shape[1], crop)
  return np.stack([crop_flip(np.broadcast_to(image, (10, *image.shape)), crop, *boxes) for image in images])


def ten_crop_boxes(s: int, crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Where `ten_crops` cuts images of side s: ys [10], xs [10], flips [10] (as `random_crop_boxes`)."""
  e = s - crop
  c = e // 2
  return np.array([0, 0, e, e, c] * 2), np.array([0, e, 0, e, c] * 2), np.arange(10) >= 5
