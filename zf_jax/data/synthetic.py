"""The "synthetic" TFDS dataset: procedurally drawn 64-px images that need no download.

Ten classes, one foreground object per image:

  0 disk, 1 square, 2 triangle, 3 ring, 4 cross          filled shapes (square, triangle and cross
                                                         at any rotation)
  5 grating_0, 6 grating_45, 7 grating_90, 8 grating_135 round patches of parallel bars, the class
                                                         is their orientation (+-10 degrees)
  9 checkerboard                                         a round patch of a rotated checkerboard

Each object has a random position (wholly inside the image), radius (10-22 px) and saturated colour,
on a background of another random colour with a smooth colour gradient and per-pixel noise; edges are
antialiased. Colour, position and size carry no class information, so a classifier has to use shape:
the data is designed to give the deconvnet of section 2.1 structure to show, oriented edges and bars,
colour blobs, corners, curves, periodic textures and whole objects. zfnet64 learns it on a CPU: in
our check (Adam 1e-3, He-initialised weights, inputs / 64), 500 steps of 64 random 56-px crops, about
4 minutes on two cores, reached 67% validation accuracy (chance: 10%).

Image i of a split depends only on (seed, split, i), so the dataset is deterministic and `draw`
redraws any image; labels are i mod 10, so the splits are balanced. The default config draws 5,000
training and 500 validation images in about 10 s.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

CLASS_NAMES = ("disk", "square", "triangle", "ring", "cross",
               "grating_0", "grating_45", "grating_90", "grating_135", "checkerboard")
SIZE = 64
_SPLIT_IDS = {"train": 0, "validation": 1}
_SUPERSAMPLE = 2


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """How many images to draw, from which seed."""
  seed: int = 0
  num_train: int = 5000
  num_validation: int = 500


def _shape_mask(label: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Whether each point is inside object `label`, in object coordinates (radius 1, any rotation).

  Args:
    label: the class.
    u, v: float [H, W] coordinates, already rotated and divided by the object's radius.
    rng: draws the period of gratings and checkerboards.

  Returns:
    bool [H, W].
  """
  r = np.hypot(u, v)
  if label == 0:
    return r <= 1
  if label == 1:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8
  if label == 2:  # equilateral triangle inscribed in the unit circle
    return (v <= 0.5) & (np.sqrt(3) * u - v <= 1) & (-np.sqrt(3) * u - v <= 1)
  if label == 3:
    return (r <= 1) & (r >= 0.55)
  if label == 4:
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1))
  frequency = rng.uniform(2.0, 3.0)  # across the diameter: 2-3 pairs of bars, 4-6 checkerboard squares
  if label == 9:
    return (r <= 1) & ((np.floor(u * frequency) + np.floor(v * frequency)) % 2 == 0)
  return (r <= 1) & (np.sin(np.pi * frequency * v) > 0)  # bars along u


def _rotation(label: int, rng: np.random.Generator) -> float:
  """The object's rotation in radians: free for shapes, the class's orientation +-10 deg for gratings."""
  if 5 <= label <= 8:
    return np.deg2rad(45 * (label - 5) + rng.uniform(-10, 10))
  return rng.uniform(0, 2 * np.pi)


def _colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
  """A random saturated RGB colour (float [3]) at least 100 away from `away_from`."""
  while True:
    colour = rng.uniform(0, 255, 3)
    colour[rng.integers(3)] = rng.choice([rng.uniform(0, 60), rng.uniform(195, 255)])
    if away_from is None or np.linalg.norm(colour - away_from) >= 100:
      return colour


def draw(seed: int, split: str, index: int) -> tuple[np.ndarray, int]:
  """Image `index` of `split`: uint8 [64, 64, 3] and its label (index mod 10)."""
  label = index % len(CLASS_NAMES)
  rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
  background = _colour(rng)
  foreground = _colour(rng, away_from=background)
  radius = rng.uniform(10, 22)
  cy, cx = rng.uniform(radius, SIZE - radius, 2)
  angle = _rotation(label, rng)
  n = SIZE * _SUPERSAMPLE
  y, x = (np.mgrid[:n, :n] + 0.5) / _SUPERSAMPLE
  dy, dx = (y - cy) / radius, (x - cx) / radius
  u = np.cos(angle) * dx + np.sin(angle) * dy
  v = -np.sin(angle) * dx + np.cos(angle) * dy
  mask = _shape_mask(label, u, v, rng).astype(np.float32)
  coverage = mask.reshape(SIZE, _SUPERSAMPLE, SIZE, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
  yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
  gradient = (rng.normal(0, 40, (1, 1, 3)) * yy[..., None] + rng.normal(0, 40, (1, 1, 3)) * xx[..., None])
  image = (1 - coverage) * (background + gradient) + coverage * foreground
  image += rng.normal(0, 8, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label


class Synthetic(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the synthetic shapes dataset (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Ten classes of shapes, gratings and checkerboards, 64 px."}
  BUILDER_CONFIGS = [SyntheticConfig(name="default", description="5,000 train + 500 validation, seed 0")]

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    """Stores array_record by default: random access through `tfds.data_source`, no TensorFlow."""
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(SIZE, SIZE, 3), encoding_format="png"),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    del dl_manager  # nothing to download
    return {"train": self._generate_examples("train", self.builder_config.num_train),
            "validation": self._generate_examples("validation", self.builder_config.num_validation)}

  def _generate_examples(self, split: str, count: int):
    for index in range(count):
      image, label = draw(self.builder_config.seed, split, index)
      name = f"{split}/{CLASS_NAMES[label]}/{index:05d}.png"
      yield name, {"image": Image.fromarray(image), "label": label, "file_name": name}
