"""Batches for training and evaluation (section 3) as Grain datasets, pure functions of (seed, step).

Training batch `step` of a run is fixed by the seed alone, so a resumed run sees exactly the data an
uninterrupted run would:
  * epoch e visits the training set in the order `epoch_order(seed, e, n)` (a numpy permutation),
    batch b of it holds positions [b*B, (b+1)*B) (the last partial batch is dropped);
  * image i of global batch `step` is mean-subtracted, then randomly cropped and flipped with the
    numpy generator seeded by (seed, step, i), whichever process, worker or device it lands on.
Evaluation takes the center crop or the 10 crops (corners + center, with flips) of every image.

The loader hands out uint8 crops with their boxes (where each was cut from the S x S image); `normalize`
subtracts the mean image's same crop on the device (the float32 values of the mean-subtracted crop,
bit for bit). A worker process thus sends 1 byte a pixel instead of 4, and the host copies 4x fewer
bytes to the device (handing float32 crops back from a worker was its costliest step after decoding
and resizing: bench/input_pipeline.py profiles it).

Each process reads only its contiguous B / process_count images of every global batch (`shard`).
The records are a `grain.MapDataset` (one decoded, augmented image each), batched per process;
`loader` turns one into an iterator that decodes on `config.grain_workers` worker processes (0: read
threads of this process) ahead of the device, and whose state `checkpoint.Manager` saves.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import threading
import time
from multiprocessing import shared_memory
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from zf_jax import data
from zf_jax.data import preprocess
from zf_jax.files import pid_alive


@dataclasses.dataclass(frozen=True)
class Datasets:
  """The splits of a dataset as random-access sources of {"image": uint8 [H, W, 3] or encoded bytes, "label": int}.

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


def _local(batch_size: int, shard: tuple[int, int]) -> int:
  index, count = shard
  if batch_size % count or not 0 <= index < count:
    raise ValueError(f"batch_size={batch_size} cannot be split into {count} equal process shares (shard={shard})")
  return batch_size // count


def train_example(datasets: Datasets, seed: int, batch_size: int, crop: int, shard: tuple[int, int],
                  record: int) -> dict[str, np.ndarray]:
  """Record `record` of this process: image i = index * B / count + record % (B / count) of batch record // (B / count).

  Returns:
    {"image": uint8 [crop, crop, 3] random crop (flipped or not), "box": int32 [3] where (`normalize`),
    "label": int32 [], "step": int32 [] the global step}.
  """
  local = _local(batch_size, shard)
  step, j = divmod(record, local)
  i = shard[0] * local + j
  n = len(datasets.train)
  epoch, batch = divmod(step, n // batch_size)
  example = datasets.train[int(epoch_order(seed, epoch, n)[batch * batch_size + i])]
  image = preprocess.resize_and_center_crop(example["image"], datasets.image_size)
  box = preprocess.random_crop_boxes(1, datasets.image_size, crop, np.random.default_rng([seed, step, i]))
  return {"image": preprocess.crop_flip(image[None], crop, *box)[0], "box": np.int32(np.concatenate(box)),
          "label": np.int32(example["label"]), "step": np.int32(step)}


def train_dataset(datasets: Datasets, seed: int, batch_size: int, crop: int, num_steps: int,
                  shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """This process's parts of global training batches 0 .. num_steps - 1: element `step` is batch `step`.

  Args:
    datasets: the data.
    seed: the run's seed.
    batch_size: B, the global batch.
    crop: the model's input side (224 or 56).
    num_steps: the run's length in steps.
    shard: (process index, process count); each process takes its contiguous B / count images.

  Returns:
    A MapDataset of {"image": uint8 [B / count, crop, crop, 3], "box": int32 [B / count, 3] (the
    mean-subtracted crops are `normalize(image, box, mean_image)`), "label": int32 [B / count],
    "step": int32 [B / count]}.
  """
  local = _local(batch_size, shard)
  make = functools.partial(train_example, datasets, seed, batch_size, crop, shard)
  return grain.MapDataset.range(num_steps * local).map(make).batch(local, drop_remainder=True)


def train_batch(datasets: Datasets, mean_image: np.ndarray, seed: int, step: int, batch_size: int, crop: int,
                shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, np.ndarray]:
  """This process's part of global training batch `step`: float32 [B / count, crop, crop, 3], int32 [B / count]."""
  batch = train_dataset(datasets, seed, batch_size, crop, step + 1, shard)[step]
  return np.asarray(normalize(batch["image"], batch["box"], mean_image)), batch["label"]


def eval_example(source: Any, image_size: int, batch_size: int, crop: int, num_crops: int, shard: tuple[int, int],
                 record: int) -> dict[str, np.ndarray]:
  """Record `record` of this process's evaluation images (image 0 stands in for padding past the end).

  Returns:
    {"image": uint8 [num_crops, crop, crop, 3], "box": int32 [num_crops, 3] where (`normalize`),
    "label": int32 [], "mask": bool [] (False on padding)}.
  """
  local = _local(batch_size, shard)
  batch, j = divmod(record, local)
  index = batch * batch_size + shard[0] * local + j
  real = index < len(source)
  example = source[int(index) if real else 0]
  image = preprocess.resize_and_center_crop(example["image"], image_size)
  box = preprocess.ten_crop_boxes(image_size, crop)
  box = box if num_crops == 10 else tuple(b[4:5] for b in box)  # the 5th of the ten is the center crop
  crops = preprocess.crop_flip(np.broadcast_to(image, (num_crops, *image.shape)), crop, *box)
  return {"image": crops, "box": np.int32(np.stack(box, axis=-1)), "label": np.int32(example["label"]),
          "mask": np.bool_(real)}


def eval_dataset(source: Any, image_size: int, batch_size: int, crop: int, num_crops: int,
                 shard: tuple[int, int] = (0, 1)) -> grain.MapDataset:
  """Every image of `source` once, in order, in batches of B (global; the last one padded).

  Args:
    source: the split to evaluate.
    image_size: S.
    batch_size: B images (global) per batch.
    crop: the model's input side.
    num_crops: 1 (center) or 10 (corners + center, with flips; section 3).
    shard: (process index, process count).

  Returns:
    A MapDataset of this process's parts: {"image": uint8 [B / count, num_crops, crop, crop, 3], "box":
    int32 [B / count, num_crops, 3] (`normalize`), "label": int32 [B / count], "mask": bool [B / count]
    (False on padding)}.
  """
  local = _local(batch_size, shard)
  num_batches = -(-len(source) // batch_size)
  make = functools.partial(eval_example, source, image_size, batch_size, crop, num_crops, shard)
  return grain.MapDataset.range(num_batches * local).map(make).batch(local)


def normalize(images: jax.Array, boxes: jax.Array, mean_image: jax.Array) -> jax.Array:
  """The model's inputs from the loader's crops (section 3): each crop minus the mean image's same crop.

  Equals cropping the mean-subtracted image, bit for bit (the same float32 subtractions); jit it to run on
  the device.

  Args:
    images: uint8 [..., crop, crop, 3] crops of S x S images.
    boxes: int [..., 3]: each crop's top row, left column and flip (1: mirrored).
    mean_image: float32 [S, S, 3].

  Returns:
    float32 [..., crop, crop, 3].
  """
  crop, mean_image = images.shape[-2], jnp.asarray(mean_image, jnp.float32)

  def one(image: jax.Array, box: jax.Array) -> jax.Array:
    mean = jax.lax.dynamic_slice(mean_image, (box[0], box[1], 0), (crop, crop, mean_image.shape[-1]))
    return image.astype(jnp.float32) - jnp.where(box[2] != 0, mean[:, ::-1], mean)

  flat = jax.vmap(one)(images.reshape(-1, *images.shape[-3:]), boxes.reshape(-1, 3))
  return flat.reshape(images.shape)


def loader(dataset: grain.MapDataset, config: ml_collections.ConfigDict) -> grain.DatasetIterator:
  """An iterator over `dataset` that reads ahead: `config.grain_workers` worker processes (0: none),
  each with `config.grain_read_threads` threads and `config.grain_prefetch` elements buffered.

  Its `get_state()`/`set_state()` give and take the position (saved in checkpoints).
  """
  read = grain.ReadOptions(num_threads=config.grain_read_threads, prefetch_buffer_size=config.grain_prefetch)
  iterable = dataset.to_iter_dataset(read)
  if config.grain_workers:
    if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags: defaults outside absl.app.run
      flags.FLAGS.mark_as_parsed()
    release_shared_memory()  # what killed trainers' workers left behind
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.grain_workers,
                                                                  per_worker_buffer_size=config.grain_prefetch),
                                    worker_init_fn=functools.partial(_worker_init, os.getpid()))
  return iter(iterable)


# Grain's workers (spawned processes) hand each batch over in a POSIX shared-memory block. In our workers
# those blocks are named /dev/shm/zfjax_<trainer pid>_<random>, so the blocks of a trainer that is gone are
# provably ours to remove (Python's own names, psm_<random>, say nothing of who made them).
SHM_PREFIX = "zfjax_"
SHM_FOLDER = "/dev/shm"
_PARENT_POLL_S = 0.5


def _worker_init(parent: int, worker: int, num_workers: int) -> None:
  """Runs first in each Grain worker: names its shared memory after the trainer `parent`, and starts a thread
  that ends the worker (after removing the trainer's shared memory) as soon as the trainer is gone.

  A thread polling getppid rather than prctl(PR_SET_PDEATHSIG): Linux sends that signal when the *thread*
  that started the worker ends, and Grain starts its workers from a thread pool's threads.
  """
  del worker, num_workers
  shared_memory._make_filename = lambda: f"/{SHM_PREFIX}{parent}_{secrets.token_hex(6)}"
  if os.getppid() != parent:  # the trainer died while this worker started
    release_shared_memory(parent)
    os._exit(1)
  threading.Thread(target=_exit_with_parent, args=(parent,), name="zf_jax-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
  while os.getppid() == parent:
    time.sleep(_PARENT_POLL_S)
  release_shared_memory(parent)
  os._exit(1)


def release_shared_memory(owner: int | None = None) -> list[str]:
  """Removes the shared-memory blocks of our Grain workers (`SHM_PREFIX`): those of trainer `owner`, or
  (None) those of every trainer that no longer runs. Returns the names removed."""
  try:
    entries = os.listdir(SHM_FOLDER)
  except OSError:  # no /dev/shm (not Linux): Python's resource tracker is all there is
    return []
  removed = []
  for name in entries:
    pid = name[len(SHM_PREFIX):].split("_")[0] if name.startswith(SHM_PREFIX) else ""
    if not pid.isdigit() or (int(pid) != owner if owner is not None else pid_alive(int(pid))):
      continue
    try:  # attach, then unlink: also drops the name from this process's resource tracker
      block = shared_memory.SharedMemory(name)
      block.close()
      block.unlink()
      removed.append(name)
    except OSError:  # removed meanwhile (by another worker), or not ours to remove
      pass
  return removed


def load_datasets(config: Any) -> Datasets:
  """The config.train_split and config.val_split of config.dataset (TFDS, prepared in config.data_dir
  on first use from config.manual_dir where the dataset needs local files), at config.image_size."""
  train = data.get_dataset(config.dataset, config.train_split, config.data_dir, config.manual_dir)
  train = data.few_shot.from_config(train, config)  # config.train_per_class images per class (section 5.2); 0 = all
  val = data.get_dataset(config.dataset, config.val_split, config.data_dir, config.manual_dir)
  return Datasets(data.encoded(train.source), data.encoded(val.source), train.num_classes, train.class_names,
                  config.image_size)
