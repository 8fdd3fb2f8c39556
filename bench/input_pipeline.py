"""Benchmark 5: can the input pipeline feed an accelerator? Grain workers vs the old thread prefetcher.

  python -m bench.run --only input_pipeline [--quick]

ImageNet-like inputs made here: JPEGs of 500x375 (quality 90; smooth fields plus texture, so they
compress and decode like photos) in an ImageFolder, prepared through TFDS as real data is (the
"bench_jpegs" builder below stores the JPEG bytes in array_record, as imagenet2012 does) and read
with `data.get_dataset`. Measured in img/s of training batches (decode, resize to S, mean
subtraction, random crop and flip):
  * old: the thread prefetcher the pipeline had before Grain (2 threads, 3 batches ahead, images
    decoded at full size by TFDS);
  * Grain with 0 (read threads only), 1 and 2 worker processes (`input_pipeline.loader`);
  * limit: one core decoding and resizing the same JPEGs (draft mode) in a loop, nothing else.
at 224 px (S = 256) and 64 px (S = 64; draft mode decodes these JPEGs at 1/4 scale).

The extrapolation to a GPU host assumes one worker per core but two (16 cores: 14 workers) at the
measured img/s per worker, against the compute side from FLOPs: ZF-224 takes ~2.3 GFLOP forward per
image, so ~6.9 GFLOP per training image (forward + backward = 3x forward); an H100's dense bf16
peak is ~989 TFLOP/s, of which a convnet step reaches roughly 40% (MFU).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from bench import common
from zf_jax import data, input_pipeline
from zf_jax.data import preprocess

IMAGENET_TRAIN_IMAGES = 1_281_167
EPOCHS = 70
TRAIN_GFLOP = 3 * 2.3            # ZF-224 forward ~2.3 GFLOP; forward + backward ~3x
H100_BF16_FLOPS, MFU = 989e12, 0.4
HOST_CORES, SPARE_CORES = 16, 2  # a GPU host; cores left to the training process
BATCH = 128


class BenchJpegs(tfds.core.GeneratorBasedBuilder):
  """The benchmark's ImageFolder (manual_dir/train/<class>/*.JPEG) as TFDS array_record, JPEG bytes as they are."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = "made by bench.input_pipeline.make_jpegs"

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=10), "file_name": tfds.features.Text()}))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    return {"train": self._generate_examples(dl_manager.manual_dir / "train")}

  def _generate_examples(self, root):
    for label, directory in enumerate(sorted(root.iterdir())):
      for path in sorted(directory.iterdir()):
        yield path.name, {"image": path.read_bytes(), "label": label, "file_name": path.name}


def make_jpegs(root: str, n: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> None:
  """n photo-like JPEGs in root/train/<class>/ (10 classes): low-frequency colour fields plus fine texture."""
  rng = np.random.default_rng(0)
  w, h = size
  for i in range(n):
    directory = os.path.join(root, "train", f"class_{i % 10}")
    os.makedirs(directory, exist_ok=True)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(field, np.float32) + rng.normal(0, 12, (h, w, 1))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(os.path.join(directory, f"{i:05d}.JPEG"),
                                                                   quality=quality)


def old_prefetch(make: Callable[[Any], Any], args: Sequence[Any], depth: int = 3, workers: int = 2) -> Iterator[Any]:
  """The pipeline before Grain (input_pipeline.prefetch): make(a) on `workers` threads, `depth` ahead."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending: collections.deque = collections.deque()
    for arg in args:
      pending.append(pool.submit(make, arg))
      if len(pending) >= depth:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def _rate(batches: Iterator[Any], count: int, batch: int, warmup: int = 1) -> float:
  """img/s over `count` batches after `warmup` (worker start-up is not counted)."""
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(count):
    next(batches)
  return count * batch / (time.perf_counter() - start)


def measure(root: str, data_dir: str, image_size: int, crop: int, batch: int, steps: int) -> dict[str, float]:
  """img/s of each pipeline on the benchmark's JPEGs at one size."""
  dataset = data.get_dataset("bench_jpegs", "train", data_dir, manual_dir=root)
  decoded = input_pipeline.Datasets(dataset.source, dataset.source, 10, None, image_size)
  encoded = input_pipeline.Datasets(data.encoded(dataset.source), None, 10, None, image_size)
  mean = np.full((image_size, image_size, 3), 128, np.float32)
  rates = {}
  old = old_prefetch(lambda step: input_pipeline.train_batch(decoded, mean, 0, step, batch, crop), range(steps + 1))
  rates["old"] = _rate(old, steps, batch)
  num_steps = (steps + 1) * 3
  for workers in (0, 1, 2):
    config = ml_collections.ConfigDict({"grain_workers": workers, "grain_read_threads": 2 if workers == 0 else 1,
                                        "grain_prefetch": 2})
    loader = input_pipeline.loader(
        input_pipeline.train_dataset(encoded, mean, 0, batch, crop, num_steps), config)
    rates[f"grain{workers}"] = _rate(loader, steps, batch, warmup=max(1, workers))
    loader.close()
  jpegs = [encoded.train[i]["image"] for i in range(min(len(encoded.train), steps * batch))]
  start = time.perf_counter()
  for jpeg in jpegs:
    preprocess.resize_and_center_crop(jpeg, image_size)
  rates["limit"] = len(jpegs) / (time.perf_counter() - start)
  print(f"[input_pipeline] {crop} px: " + ", ".join(f"{k} {v:.0f} img/s" for k, v in rates.items()), flush=True)
  return rates


def extrapolate(per_worker: float) -> dict[str, float]:
  """A 16-core GPU host: img/s of the pipeline and of the compute, hours per ImageNet epoch and for 70."""
  feed = per_worker * (HOST_CORES - SPARE_CORES)
  compute = H100_BF16_FLOPS * MFU / (TRAIN_GFLOP * 1e9)
  rate = min(feed, compute)
  return {"feed": feed, "compute": compute, "epoch_hours": IMAGENET_TRAIN_IMAGES / rate / 3600,
          "run_hours": EPOCHS * IMAGENET_TRAIN_IMAGES / rate / 3600}


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The rows: goals at 224 px (and the 64-px figures), the 16-core extrapolation."""
  n, batch, steps = (32, 4, 3) if quick else (512, 32, 12)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root, data_dir = os.path.join(tmp, "jpegs"), os.path.join(tmp, "tfds")
    make_jpegs(root, n)
    for image_size, crop in ((256, 224), (64, 56)):
      r = measure(root, data_dir, image_size, crop, batch, steps)
      cfg = f"{crop} px (S={image_size}), 500x375 JPEGs q90, batch {batch}, {os.cpu_count()} cores"
      rows += [
          common.row("input_pipeline", "train batches", "img/s", r["grain2"], r["old"], "old thread prefetcher",
                     2.0 if crop == 224 else None, cfg + ", Grain 2 workers"),
          common.row("input_pipeline", "train batches", "img/s", r["grain0"], r["old"], "old thread prefetcher",
                     None, cfg + ", Grain 0 workers (read threads)"),
          common.row("input_pipeline", "train batches", "img/s per worker", r["grain1"], r["limit"],
                     "1-core decode+resize limit", 0.8 if crop == 224 else None, cfg + ", Grain 1 worker"),
          common.row("input_pipeline", "train batches", "img/s", r["grain2"], r["grain1"], "Grain 1 worker",
                     1.8 if crop == 224 else None, cfg + ", 2 workers vs 1 (linear: 2)"),
      ]
      x = extrapolate(r["grain1"])
      rows.append(common.row(
          "input_pipeline", "ZF-224 on 16-core host" if crop == 224 else "zfnet64 on 16-core host", "img/s",
          x["feed"], x["compute"], f"H100 bf16 compute at {MFU:.0%} MFU", None,
          f"{HOST_CORES - SPARE_CORES} Grain workers x measured img/s per worker",
          f"{'input' if x['feed'] < x['compute'] else 'compute'}-bound: {x['epoch_hours']:.2g} h per ImageNet epoch, "
          f"{x['run_hours']:.3g} h for {EPOCHS} epochs" + (" (compute side: ZF-224 FLOPs)" if crop != 224 else "")))
  return rows

