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
Grain's workers hand out uint8 crops, made float32 and mean-subtracted on the device
(`input_pipeline.normalize`). The profile of one worker's pipeline: ms per image of each stage on one
core (read, decode, resize, uint8 crop + flip, what making float32 mean-subtracted crops in the worker
added, batching, the device's `normalize` here on the CPU), the hand-back of uint8 or float32 crops from
one worker to the main process alone (a dataset of ready batches), and Grain in-process on one thread and
with 1 worker, handing out float32 crops made in the worker (as before) or uint8 crops: 1 worker /
in-process is what the hand-back to the main process costs. Each figure is the best of ROUNDS
interleaved rounds (other jobs share the cores).

The extrapolation to a GPU host assumes one worker per core but two (16 cores: 14 workers) at the
measured img/s per worker, against the compute side from FLOPs: ZF-224 takes ~2.3 GFLOP forward per
image, so ~6.9 GFLOP per training image (forward + backward = 3x forward); an H100's dense bf16
peak is ~989 TFLOP/s, of which a convnet step reaches roughly 40% (MFU).
"""
from __future__ import annotations

import collections
import concurrent.futures
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import jax
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
ROUNDS = 3


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


def float_example(datasets: input_pipeline.Datasets, mean_image: np.ndarray, batch_size: int, crop: int,
                  record: int) -> dict[str, np.ndarray]:
  """The training record as it was before `input_pipeline.normalize`: float32 [crop, crop, 3], the image
  mean-subtracted at S, then cropped and flipped (the same values as normalize(train_example(...)))."""
  step, i = divmod(record, batch_size)
  n = len(datasets.train)
  epoch, batch = divmod(step, n // batch_size)
  example = datasets.train[int(input_pipeline.epoch_order(0, epoch, n)[batch * batch_size + i])]
  image = preprocess.subtract_mean(preprocess.resize_and_center_crop(example["image"], datasets.image_size),
                                   mean_image)
  image = preprocess.random_crop_flip(image[None], crop, np.random.default_rng([0, step, i]))[0]
  return {"image": image, "label": np.int32(example["label"]), "step": np.int32(step)}


def float_dataset(datasets: input_pipeline.Datasets, mean_image: np.ndarray, batch_size: int, crop: int,
                  num_steps: int) -> grain.MapDataset:
  """`float_example`s in batches, as `input_pipeline.train_dataset` made them before."""
  make = functools.partial(float_example, datasets, mean_image, batch_size, crop)
  return grain.MapDataset.range(num_steps * batch_size).map(make).batch(batch_size, drop_remainder=True)


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


def _seconds(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def stages(encoded: input_pipeline.Datasets, mean: np.ndarray, crop: int, batch: int, n: int) -> dict[str, float]:
  """ms per image of each stage of a worker's pipeline on one core, over n images."""
  size, rng = encoded.image_size, np.random.default_rng(0)
  jpegs = [encoded.train[i]["image"] for i in range(n)]
  decoded = [preprocess.decode(jpeg, size) for jpeg in jpegs]
  resized = [preprocess.resize_and_center_crop(image, size) for image in decoded]
  crops = [preprocess.random_crop_flip(image[None], crop, rng)[0] for image in resized]
  boxes = np.int32(np.stack([np.concatenate(preprocess.random_crop_boxes(1, size, crop, rng)) for _ in range(batch)]))
  normalize = jax.jit(input_pipeline.normalize)
  normalize(np.stack(crops[:batch]), boxes, mean).block_until_ready()
  seconds = {
      "read": _seconds(lambda: [encoded.train[i] for i in range(n)]),
      "decode": _seconds(lambda: [preprocess.decode(jpeg, size) for jpeg in jpegs]),
      "resize": _seconds(lambda: [preprocess.resize_and_center_crop(image, size) for image in decoded]),
      "crop_flip": _seconds(lambda: [preprocess.random_crop_flip(image[None], crop, rng) for image in resized]),
      "float_crop_flip": _seconds(lambda: [preprocess.random_crop_flip(
          preprocess.subtract_mean(image, mean)[None], crop, rng) for image in resized]),
      "batch": _seconds(lambda: [np.stack(crops[k:k + batch]) for k in range(0, n - batch + 1, batch)]),
      "normalize": _seconds(lambda: [normalize(np.stack(crops[k:k + batch]), boxes, mean).block_until_ready()
                                     for k in range(0, n - batch + 1, batch)]),
  }
  ms = {k: 1e3 * v / n for k, v in seconds.items()}
  ms["float_mean"] = ms.pop("float_crop_flip") - ms["crop_flip"]  # what float32 crops made in the worker add
  return ms


def _same(images: np.ndarray, step: int) -> dict[str, np.ndarray]:
  return {"image": images}


def handback(crop: int, batch: int, dtype: Any, steps: int) -> float:
  """ms per image of handing batches of crops from one Grain worker to the main process, nothing else done."""
  dataset = grain.MapDataset.range(steps + 2).map(functools.partial(_same, np.zeros((batch, crop, crop, 3), dtype)))
  config = ml_collections.ConfigDict({"grain_workers": 1, "grain_read_threads": 1, "grain_prefetch": 2})
  loader = input_pipeline.loader(dataset, config)
  ms = 1e3 / _rate(loader, steps, batch, warmup=2)
  loader.close()
  return ms


def measure(root: str, data_dir: str, image_size: int, crop: int, batch: int, steps: int,
            rounds: int = ROUNDS) -> dict[str, float]:
  """img/s of each pipeline on the benchmark's JPEGs at one size (best of `rounds`), and the stages' ms per image
  (keys "ms_<stage>", fastest of the rounds)."""
  dataset = data.get_dataset("bench_jpegs", "train", data_dir, manual_dir=root)
  decoded = input_pipeline.Datasets(dataset.source, dataset.source, 10, None, image_size)
  encoded = input_pipeline.Datasets(data.encoded(dataset.source), None, 10, None, image_size)
  mean = np.full((image_size, image_size, 3), 128, np.float32)
  num_steps = (steps + 1) * 3
  jpegs = [encoded.train[i]["image"] for i in range(min(len(encoded.train), steps * batch))]
  rates: dict[str, float] = {}
  for _ in range(rounds):
    now = {}
    old = old_prefetch(lambda step: float_dataset(decoded, mean, batch, crop, step + 1)[step], range(steps + 1))
    now["old"] = _rate(old, steps, batch)
    uint8, float32 = (input_pipeline.train_dataset(encoded, 0, batch, crop, num_steps),
                      float_dataset(encoded, mean, batch, crop, num_steps))
    # name: (worker processes, read threads, dataset); the "_1t" ones run in-process on one thread, as a worker.
    for name, (workers, threads, dataset_) in {
        "grain0": (0, 2, uint8), "grain0_1t": (0, 1, uint8), "grain0_float_1t": (0, 1, float32),
        "grain1": (1, 1, uint8), "grain1_float": (1, 1, float32), "grain2": (2, 1, uint8)}.items():
      config = ml_collections.ConfigDict({"grain_workers": workers, "grain_read_threads": threads, "grain_prefetch": 2})
      loader = input_pipeline.loader(dataset_, config)
      now[name] = _rate(loader, steps, batch, warmup=max(1, workers))
      loader.close()
    now["limit"] = len(jpegs) / _seconds(lambda: [preprocess.resize_and_center_crop(jpeg, image_size)
                                                  for jpeg in jpegs])
    now.update({f"ms_{k}": -v for k, v in stages(encoded, mean, crop, batch, len(jpegs)).items()})
    for dtype in (np.uint8, np.float32):
      now[f"ms_handback_{np.dtype(dtype).name}"] = -handback(crop, batch, dtype, 4 * steps)
    rates = {k: max(v, rates.get(k, v)) for k, v in now.items()}
  rates.update({k: -v for k, v in rates.items() if k.startswith("ms_")})
  print(f"[input_pipeline] {crop} px: " + ", ".join(
      f"{k} {v:.2f} ms/img" if k.startswith("ms_") else f"{k} {v:.0f} img/s" for k, v in rates.items()), flush=True)
  return rates


def profile(r: dict[str, float]) -> str:
  """The profile's note: ms per image of each stage, and what handing crops to the main process costs."""
  stages_ = ", ".join(f"{k} {r['ms_' + k]:.2f}" for k in ("read", "decode", "resize", "crop_flip", "batch"))
  return (f"ms/img on 1 core: {stages_}, to the main process {r['ms_handback_uint8']:.2f} (float32 crops: "
          f"{r['ms_handback_float32']:.2f}); float32 + mean in the worker +{r['ms_float_mean']:.2f}, on the device "
          f"(here the CPU) {r['ms_normalize']:.2f}. 1 worker / in-process on 1 thread: uint8 crops "
          f"{r['grain1'] / r['grain0_1t']:.2f}, float32 crops {r['grain1_float'] / r['grain0_float_1t']:.2f}; "
          f"float32 crops from 1 worker: {r['grain1_float'] / r['limit']:.2f}x the limit")


def extrapolate(per_worker: float) -> dict[str, float]:
  """A 16-core GPU host: img/s of the pipeline and of the compute, hours per ImageNet epoch and for 70."""
  feed = per_worker * (HOST_CORES - SPARE_CORES)
  compute = H100_BF16_FLOPS * MFU / (TRAIN_GFLOP * 1e9)
  rate = min(feed, compute)
  return {"feed": feed, "compute": compute, "epoch_hours": IMAGENET_TRAIN_IMAGES / rate / 3600,
          "run_hours": EPOCHS * IMAGENET_TRAIN_IMAGES / rate / 3600}


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The rows: goals at 224 px (and the 64-px figures), the 16-core extrapolation."""
  n, batch, steps, rounds = (32, 4, 3, 1) if quick else (512, 32, 12, ROUNDS)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    root, data_dir = os.path.join(tmp, "jpegs"), os.path.join(tmp, "tfds")
    make_jpegs(root, n)
    for image_size, crop in ((256, 224), (64, 56)):
      r = measure(root, data_dir, image_size, crop, batch, steps, rounds)
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
          common.row("input_pipeline", "train batches", "img/s per worker", r["grain1"], r["grain1_float"],
                     "Grain 1 worker, float32 crops made in the worker", None,
                     cfg + ", Grain 1 worker, uint8 crops (mean subtracted on the device)", profile(r)),
      ]
      x = extrapolate(r["grain1"])
      rows.append(common.row(
          "input_pipeline", "ZF-224 on 16-core host" if crop == 224 else "zfnet64 on 16-core host", "img/s",
          x["feed"], x["compute"], f"H100 bf16 compute at {MFU:.0%} MFU", None,
          f"{HOST_CORES - SPARE_CORES} Grain workers x measured img/s per worker",
          f"{'input' if x['feed'] < x['compute'] else 'compute'}-bound: {x['epoch_hours']:.2g} h per ImageNet epoch, "
          f"{x['run_hours']:.3g} h for {EPOCHS} epochs" + (" (compute side: ZF-224 FLOPs)" if crop != 224 else "")))
  return rows

