"""Evaluating a trained checkpoint on a split (section 3's protocol; Tables 2 and 3).

Training may validate on the center crop only (configs/reference.py: eval_crops=1, to save time);
the paper's numbers are 10-crop (corners + center, with their mirrors; softmax averaged). This
module computes them afterwards from any checkpoint:

  * `accuracy(model, source, num_crops)`: top-1/top-5 counted by `train_lib.eval_step`, the step
    that validates during training, on `input_pipeline.eval_dataset`'s crops.
  * `probabilities(model, source, num_crops)`: the crop-averaged softmax of every image, for
    ensembles (Table 2).
  * `evaluate_checkpoint(workdir, role, ...)`: the accuracy of a workdir's checkpoint on its training
    or validation split, cached in `workdir/evaluations.json` per (step, split, crops, images).

The "train error" of Table 3 is `role="train", num_crops=1`: the center crop of each training
image, no flips, no dropout.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from zf_jax import checkpoint, data, files, input_pipeline, models, train_lib

CACHE_FILE = "evaluations.json"
ROLES = ("train", "val")
# How evaluation reads ahead (`input_pipeline.loader`): threads of this process, no worker processes.
READ_AHEAD = {"grain_workers": 0, "grain_read_threads": 4, "grain_prefetch": 4}


def spaced_indices(n: int, max_images: int | None, name: str = "max_images") -> np.ndarray:
  """int64 [min(n, max_images)]: the indices of `max_images` of n images evenly spaced through them (as
  `data.compute_mean_image` picks them: every class of a class-sorted split is represented); all n where
  max_images is None or >= n. `name` is what the caller's user calls max_images (e.g. "--train_images"),
  for the error message."""
  if max_images is not None and max_images < 1:
    raise ValueError(f"{name}={max_images} is not allowed; allowed: an int >= 1 (or none for all {n} images)")
  if max_images is None or max_images >= n:
    return np.arange(n, dtype=np.int64)
  return np.linspace(0, n - 1, max_images).round().astype(np.int64)


def evenly_spaced(source: Any, max_images: int | None, name: str = "max_images") -> Any:
  """`source`, or the `max_images` of its images at `spaced_indices`."""
  indices = spaced_indices(len(source), max_images, name)
  return source if len(indices) == len(source) else data.few_shot.Subset(source, indices)


def _check(model: checkpoint.Loaded, source: Any, num_crops: int, batch_size: int) -> None:
  if num_crops not in (1, 10):
    raise ValueError(f"num_crops={num_crops}; allowed: 1 (center) or 10 (corners + center, with flips)")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  if not len(source):
    raise ValueError("the split to evaluate holds no images")


def batches(model: checkpoint.Loaded, source: Any, num_crops: int = 10,
            batch_size: int = 128) -> Iterator[dict[str, np.ndarray]]:
  """Every image of `source` once, in order, as the model's evaluation inputs (`input_pipeline.eval_dataset`).

  Yields:
    {"image": float32 [B, num_crops, S, S, 3] mean-subtracted crops (S = model.arch.input_size; on the device),
     "label": int32 [B], "mask": bool [B] (False on the last batch's padding)}; B = batch_size.
  """
  _check(model, source, num_crops, batch_size)
  mean = np.asarray(model.mean_image, np.float32)
  image_size = mean.shape[0] if mean.ndim == 3 else data.image_size_for(model.arch)
  mean = np.broadcast_to(mean, (image_size, image_size, 3))
  dataset = input_pipeline.eval_dataset(source, image_size, batch_size, model.arch.input_size, num_crops)
  for batch in input_pipeline.loader(dataset, ml_collections.ConfigDict(READ_AHEAD)):
    yield {"image": _normalize(batch["image"], batch["box"], mean), "label": batch["label"], "mask": batch["mask"]}


_normalize = jax.jit(input_pipeline.normalize)  # the loader's uint8 crops minus the mean's, on the device


_eval_step = jax.jit(train_lib.eval_step, static_argnums=0)  # compiled once per (arch, batch shape)


def accuracy(model: checkpoint.Loaded, source: Any, num_crops: int = 10, batch_size: int = 128) -> dict[str, float]:
  """Top-1 and top-5 accuracy of a model on every image of `source` (section 3's evaluation), counted
  by `train_lib.eval_step`, the step that validates during training.

  Args:
    model: from `checkpoint.load_for_analysis`.
    source: random access to {"image": uint8 [H, W, 3], "label": int} (a `data.Dataset.source`).
    num_crops: 10 (the paper's validation protocol) or 1 (the center crop).
    batch_size: images per jitted call (each gives num_crops forward passes).

  Returns:
    {"top1", "top5": accuracies in [0, 1], "num_images": N}.
  """
  totals = np.zeros(3, np.int64)
  for batch in batches(model, source, num_crops, batch_size):
    totals += np.asarray(_eval_step(model.arch, model.params, batch["image"], batch["label"], batch["mask"]))
  top1, top5, count = totals
  return {"top1": float(top1 / count), "top5": float(top5 / count), "num_images": int(count)}


@functools.partial(jax.jit, static_argnames="arch")
def _crop_softmax(arch: models.Arch, params: models.Params, crops: jax.Array) -> jax.Array:
  """float32 [B, n, S, S, 3] crops -> [B, C]: the softmax averaged over each image's n crops."""
  b, n = crops.shape[:2]
  logits, _ = models.forward(arch, params, crops.reshape(b * n, *crops.shape[2:]))
  return jax.nn.softmax(logits).reshape(b, n, -1).mean(axis=1)


def probabilities(model: checkpoint.Loaded, source: Any, num_crops: int = 10,
                  batch_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
  """The class probabilities of every image of `source`, softmax averaged over its crops (section 3).

  Args:
    model, source, num_crops, batch_size: as `accuracy`.

  Returns:
    float32 [N, C] probabilities and int32 [N] labels.
  """
  probs, labels = [], []
  for batch in batches(model, source, num_crops, batch_size):
    probs.append(np.asarray(_crop_softmax(model.arch, model.params, batch["image"]))[batch["mask"]])
    labels.append(np.asarray(batch["label"])[batch["mask"]])
  return np.concatenate(probs), np.concatenate(labels).astype(np.int32)


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
  """The share of images whose label is among their k most probable classes (ties: lower index first,
  as `jax.lax.top_k`). probs: [N, C]; labels: int [N]."""
  top = np.argsort(-np.asarray(probs), axis=-1, kind="stable")[:, :k]
  return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=-1)))


def split_name(config: dict[str, Any], role: str) -> str:
  """The split a checkpoint's config trained ("train") or validated ("val") on, e.g. "train[:64]"."""
  if role not in ROLES:
    raise ValueError(f"role={role!r}; allowed: {', '.join(ROLES)}")
  key = "train_split" if role == "train" else "val_split"
  return config.get(key) or ("train" if role == "train" else "validation")


def split_source(model: checkpoint.Loaded, role: str, data_dir: str | None = None) -> Any:
  """The training or validation split of the dataset the checkpoint was trained on (its config), as
  the training pipeline reads it (`data.encoded`)."""
  config = model.config
  if not config.get("dataset"):
    raise ValueError("the checkpoint's config names no dataset, so its splits cannot be found")
  dataset = data.get_dataset(config["dataset"], split_name(config, role), data_dir or config.get("data_dir"),
                             config.get("manual_dir"))
  return data.encoded(dataset.source)


def cache_key(step: int, split: str, num_crops: int, num_images: int | None) -> str:
  """The key of one evaluation in `workdir/evaluations.json`: step, split, crops and images used."""
  return f"step={step} split={split} crops={num_crops} images={'all' if num_images is None else num_images}"


def read_cache(workdir: str) -> dict[str, dict[str, Any]]:
  """{cache_key: {"top1", "top5", "num_images", ...}} of the evaluations done in `workdir` ({} if none)."""
  path = os.path.join(workdir, CACHE_FILE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def evaluate_checkpoint(workdir: str, role: str = "val", num_crops: int = 10, step: int | None = None,
                        epoch: float | None = None, max_images: int | None = None, batch_size: int = 128,
                        data_dir: str | None = None, use_cache: bool = True,
                        model: checkpoint.Loaded | None = None) -> dict[str, Any]:
  """Top-1/top-5 accuracy of a workdir's checkpoint on its training or validation split, cached.

  Args:
    workdir: a training workdir.
    role: "val" (the config's val_split) or "train" (its train_split; the paper's "train error"
      with num_crops=1: the center crop, no augmentation).
    num_crops: 10 (the paper's validation protocol) or 1.
    step, epoch: the checkpoint (default: the latest); see `checkpoint.load_for_analysis`.
    max_images: evaluate this many images evenly spaced through the split (None: all).
    batch_size: images per jitted call.
    data_dir: where the TFDS dataset is prepared (default: the checkpoint's).
    use_cache: read and write `workdir/evaluations.json` (keyed by `cache_key`; written atomically).
    model: the checkpoint already loaded from this workdir (then step and epoch are ignored).

  Returns:
    {"top1", "top5", "num_images", "split", "num_crops", "step", "epoch"}.
  """
  model = model or checkpoint.load_for_analysis(workdir, step, epoch)
  split = split_name(model.config, role)
  if num_crops not in (1, 10):
    raise ValueError(f"num_crops={num_crops}; allowed: 1 (center) or 10 (corners + center, with flips)")
  key = cache_key(model.step, split, num_crops, max_images)
  cache = read_cache(workdir) if use_cache else {}
  if key in cache:
    return cache[key]
  source = evenly_spaced(split_source(model, role, data_dir), max_images)
  result = {**accuracy(model, source, num_crops, batch_size), "split": split, "num_crops": num_crops,
            "step": model.step, "epoch": model.epoch}
  if use_cache:
    files.save_json({**read_cache(workdir), key: result}, os.path.join(workdir, CACHE_FILE))
  return result
