"""What every analysis shares: display scaling of projections and files written whole or not at all."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
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
  """Yields a temporary path beside `path`; renamed onto it only if the block succeeds."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  os.close(fd)
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
