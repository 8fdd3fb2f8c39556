"""What analyses share: display scaling, fixed-size chunks, label checks, and the report section each
analysis writes (its figures and its numbers as JSON).

Files are written through `zf_jax.files`; images become model inputs in `zf_jax.data.model_inputs`."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from zf_jax import files
from zf_jax.data import model_inputs


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

  With `mean_image` (see `model_inputs.mean_for_input`) the photos are shown as they are; without it, each is
  contrast-stretched about grey as `to_display` does for projections.
  """
  images = np.asarray(images, np.float32)
  mean = None if mean_image is None else model_inputs.mean_for_input(mean_image, images.shape[-2])
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


@dataclasses.dataclass(frozen=True)
class Section:
  """One analysis in the report.

  Attributes:
    name: short id, e.g. "topk".
    title: e.g. "Fig. 2: top-9 activations, projected".
    figures: PNG file names relative to the output folder.
    numbers: the JSON file name relative to the output folder.
    caption: what the figure shows and how to read the numbers.
  """
  name: str
  title: str
  figures: tuple[str, ...]
  numbers: str
  caption: str = ""


def write_section(numbers: Mapping[str, Any], figures: Mapping[str, Callable[[str], None]], out: str, name: str,
                  title: str, caption: str) -> Section:
  """Writes an analysis's numbers as NAME.json and draws its figures (file name -> draw(path)) into `out`;
  returns the report section that shows them."""
  for file_name, draw in figures.items():
    draw(os.path.join(out, file_name))
  files.save_json(numbers, os.path.join(out, f"{name}.json"))
  return Section(name, title, tuple(figures), f"{name}.json", caption)
