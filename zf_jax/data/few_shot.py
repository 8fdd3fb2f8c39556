"""N images per class, drawn the same way everywhere (section 5.2's few-shot protocol).

`split_per_class` is the one place that decides which images of a split form the training set of
fold f with N images per class and which are held out for testing; the transfer study's softmax
(`zf_jax.analysis.transfer`) and a model trained from scratch on the same images
(`train.py --config.train_per_class=N`, through `few_shot`) both call it, so they see the same images.

Per class c, with `seed`:
  * test: the first min(num_test, n_c) images of a permutation drawn from (seed, c), the same for
    every fold and every N;
  * train of fold f: the first N of the remaining images, in a permutation drawn from (seed, f, c).
    The N-image sets of one fold are nested (the 5-image set holds the 3-image one), folds differ.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from zf_jax.data import datasets


class Subset:
  """The examples `indices` of a random-access source: `len`, `[i]` and `__getitems__` as the source's."""

  def __init__(self, source: Any, indices: Sequence[int]):
    self.source, self.indices = source, np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[int(self.indices[index])]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    chosen = [int(self.indices[i]) for i in indices]
    if hasattr(self.source, "__getitems__"):
      return self.source.__getitems__(chosen)
    return [self.source[i] for i in chosen]


def labels_of(source: Any) -> np.ndarray:
  """int32 [len(source)]: every example's label (read with the images left encoded: `datasets.encoded`)."""
  if isinstance(source, Subset):
    return labels_of(source.source)[source.indices]
  encoded = datasets.encoded(source)
  examples = encoded.__getitems__(list(range(len(source)))) if hasattr(encoded, "__getitems__") else encoded
  return np.array([int(e["label"]) for e in examples], np.int32)


def split_per_class(labels: Any, num_train: int, fold: int = 0, seed: int = 0, num_test: int = 0,
                    num_classes: int | None = None,
                    class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Training and test indices of one fold, num_train and up to num_test images per class.

  Args:
    labels: int [M], the label of every example of the split.
    num_train: N images per class for training (0: none).
    fold: the fold (any int >= 0); changes the training images, not the test images.
    seed: the draw; the same (labels, N, fold, seed, num_test) give the same indices.
    num_test: up to this many images per class held out for testing first (0: none).
    num_classes: C (default: max label + 1); every class must have N training images.
    class_names: for error messages.

  Returns:
    int64 [C * N] training indices, int64 [sum_c min(num_test, n_c)] test indices; each sorted, disjoint.

  Raises:
    ValueError: a class with fewer than N images left for training (the first such class is named).
  """
  labels = np.asarray(labels)
  if num_train < 0 or num_test < 0 or fold < 0:
    raise ValueError(f"num_train={num_train}, num_test={num_test}, fold={fold}; allowed: integers >= 0")
  num_classes = int(labels.max()) + 1 if num_classes is None and labels.size else (num_classes or 0)
  train, test = [], []
  for c in range(num_classes):
    members = np.flatnonzero(labels == c)
    held = members[np.random.default_rng([seed, c]).permutation(len(members))[:min(num_test, len(members))]]
    pool = np.setdiff1d(members, held)
    if len(pool) < num_train:
      name = f"{class_names[c]!r} (label {c})" if class_names is not None else f"label {c}"
      raise ValueError(f"class {name} has {len(pool)} images for training ({len(members)} in all, {len(held)} held out "
                       f"for testing); num_train={num_train} per class needs at least that many; allowed: "
                       f"num_train <= {len(pool)} for this class")
    train.append(pool[np.random.default_rng([seed, fold, c]).permutation(len(pool))[:num_train]])
    test.append(held)
  return np.sort(np.concatenate(train or [[]])).astype(np.int64), np.sort(np.concatenate(test or [[]])).astype(np.int64)


def few_shot(dataset: datasets.Dataset, per_class: int, fold: int = 0, seed: int = 0,
             holdout: int = 0) -> datasets.Dataset:
  """The training split reduced to `per_class` images per class (`split_per_class`); 0 = unchanged.

  Args:
    dataset: the training split.
    per_class: N (config.train_per_class); 0 keeps every image.
    fold, seed: as in `split_per_class` (config.train_per_class_fold, config.train_per_class_seed).
    holdout: images per class held out for testing first (config.train_per_class_holdout): a
      single-split target whose test images come from the same split; 0 when the test split is separate.

  Returns:
    `dataset` with its source replaced by a `Subset` of C * N examples.
  """
  if not per_class:
    return dataset
  train, _ = split_per_class(labels_of(dataset.source), per_class, fold, seed, holdout, dataset.num_classes,
                             dataset.class_names)
  return dataclasses.replace(dataset, source=Subset(dataset.source, train))


def from_config(dataset: datasets.Dataset, config: Any) -> datasets.Dataset:
  """`few_shot` with config.train_per_class, train_per_class_fold, _seed and _holdout (absent keys: 0)."""
  return few_shot(dataset, *(int(config.get(key, 0)) for key in (
      "train_per_class", "train_per_class_fold", "train_per_class_seed", "train_per_class_holdout")))
