"""zf_jax.data: the TFDS builders, ImageFolder, batches, the mean image and section 3's crops."""
import collections
import importlib.util
import io
import os
import shutil
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from zf_jax import data, models
from zf_jax.data import preprocess, synthetic, tiny_imagenet

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tiny-imagenet-100")
WNIDS = ("n00000003", "n00000001", "n00000002")  # classes.tsv order, deliberately not sorted


def _value(wnid: str) -> int:
  """Each class's images are filled with its own grey level, so pixels reveal the class."""
  return 60 * int(wnid[-1])


def _jpeg(value: int, gray: bool = False) -> bytes:
  image = Image.new("L", (64, 64), value) if gray else Image.new("RGB", (64, 64), (value, 255 - value, 128))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  """A small copy in the layout of shared/data/tiny-imagenet-100: 2 train shards, val.tar, classes.tsv."""
  root = tmp_path_factory.mktemp("tiny_shards")
  for shard in range(2):
    with tarfile.open(root / f"train-{shard:05d}-of-00002.tar", "w") as tar:
      for wnid in WNIDS:
        for k in (2 * shard, 2 * shard + 1):
          _add(tar, f"train/{wnid}/{wnid}_{k}.JPEG", _jpeg(_value(wnid), gray=(wnid, k) == (WNIDS[0], 0)))
  with tarfile.open(root / "val.tar", "w") as tar:
    for i, wnid in enumerate(WNIDS):
      _add(tar, f"val/{wnid}/val_{i}.JPEG", _jpeg(_value(wnid)))
  (root / "classes.tsv").write_text("".join(f"{w}\tthing {w[-1]}, a synonym\n" for w in WNIDS))
  return root


def _check_labels(dataset: data.Dataset, wnids: list[str], count: int) -> None:
  """Every example's label names the wnid in its file_name, and its pixels are that class's."""
  assert len(dataset.source) == count
  for i in range(count):
    example = dataset.source[i]
    wnid = example["file_name"].decode().split("/")[1]
    assert wnids[example["label"]] == wnid
    assert example["image"].shape == (64, 64, 3) and example["image"].dtype == np.uint8
    assert abs(example["image"][..., 0].astype(float).mean() - _value(wnid)) < 3


def test_tiny_imagenet_from_tar_shards(shard_dir, tmp_path):
  train = data.get_dataset("tiny_imagenet", "train", data_dir=str(tmp_path), manual_dir=str(shard_dir))
  assert train.num_classes == 3 and train.class_names == [f"thing {w[-1]}" for w in WNIDS]
  _check_labels(train, list(WNIDS), 12)
  gray_name = f"train/{WNIDS[0]}/{WNIDS[0]}_0.JPEG".encode()
  gray = [e["image"] for e in train.source if e["file_name"] == gray_name][0]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  val = data.get_dataset("tiny_imagenet", "validation", data_dir=str(tmp_path))  # reuses the prepared data
  _check_labels(val, list(WNIDS), 3)
  images, labels = data.load_batch(val.source, [2, 0], 64)
  assert images.shape == (2, 64, 64, 3) and labels.dtype == np.int32
  assert "tensorflow" not in sys.modules


def test_tiny_imagenet_classes_from_wnids_without_tsv(shard_dir, tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(shard_dir, copy, ignore=shutil.ignore_patterns("classes.tsv"))
  train = data.get_dataset("tiny_imagenet", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(copy))
  assert train.class_names == sorted(WNIDS)
  _check_labels(train, sorted(WNIDS), 12)


def _official_zip(path) -> None:
  """A two-class miniature of tiny-imagenet-200.zip, directory entries and test images included."""
  root = "tiny-imagenet-200/"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(root + "wnids.txt", "n00000002\nn00000001\n")
    z.writestr(root + "words.txt", "n00000001\tone, uno\nn00000002\ttwo\nn00000009\tnine\n")
    for wnid in ("n00000002", "n00000001"):
      z.writestr(f"{root}train/{wnid}/images/", "")
      boxes = "".join(f"{wnid}_{n}.JPEG\t1\t2\t{30 + n}\t40\n" for n in (0, 1))
      z.writestr(f"{root}train/{wnid}/{wnid}_boxes.txt", boxes)
      for n in (0, 1):
        z.writestr(f"{root}train/{wnid}/images/{wnid}_{n}.JPEG", _jpeg(_value(wnid)))
    z.writestr(root + "val/images/", "")
    z.writestr(root + "val/val_annotations.txt",
               "val_0.JPEG\tn00000002\t0\t1\t2\t3\nval_1.JPEG\tn00000001\t4\t5\t6\t7\n")
    z.writestr(root + "val/images/val_0.JPEG", _jpeg(_value("n00000002")))
    z.writestr(root + "val/images/val_1.JPEG", _jpeg(_value("n00000001")))
    z.writestr(root + "test/images/test_0.JPEG", _jpeg(0))


def test_tiny_imagenet_from_official_zip(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _official_zip(manual / tiny_imagenet.ZIP_NAME)
  train = data.get_dataset("tiny_imagenet", "train", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  assert train.class_names == ["one", "two"]
  _check_labels(train, ["n00000001", "n00000002"], 4)
  val = data.get_dataset("tiny_imagenet", "validation", data_dir=str(tmp_path / "tfds"))
  _check_labels(val, ["n00000001", "n00000002"], 2)
  assert tiny_imagenet.boxes(str(manual), "validation") == {
      "val/n00000002/val_0.JPEG": (0, 1, 2, 3), "val/n00000001/val_1.JPEG": (4, 5, 6, 7)}
  train_boxes = tiny_imagenet.boxes(str(manual), "train")
  assert set(train_boxes) == {e["file_name"].decode() for e in train.source}
  assert train_boxes["train/n00000001/n00000001_1.JPEG"] == (1, 2, 31, 40)


def test_tiny_imagenet_without_copy_or_network_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(tiny_imagenet, "URL", "http://host.invalid/tiny-imagenet-200.zip")
  with pytest.raises(ValueError, match="no local copy in manual_dir") as error:
    data.get_dataset("tiny_imagenet", "train", data_dir=str(tmp_path))
  assert "\n" not in str(error.value)


def test_synthetic_is_deterministic_and_balanced(tmp_path):
  config = synthetic.SyntheticConfig(name="small", seed=3, num_train=30, num_validation=10)
  builder = synthetic.Synthetic(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  source = builder.as_data_source("train")
  labels = collections.Counter(int(e["label"]) for e in source)
  assert labels == {label: 3 for label in range(10)}
  for example in source:
    index = int(example["file_name"].decode().split("/")[-1].split(".")[0])
    image, label = synthetic.draw(3, "train", index)
    np.testing.assert_array_equal(example["image"], image)  # PNG is lossless: the stored image is draw's
    assert example["label"] == label == index % 10
  assert len(builder.as_data_source("validation")) == 10
  assert not np.array_equal(synthetic.draw(3, "train", 0)[0], synthetic.draw(4, "train", 0)[0])
  assert not np.array_equal(synthetic.draw(3, "train", 0)[0], synthetic.draw(3, "validation", 0)[0])


def test_synthetic_objects_stand_out_from_the_background():
  for index in range(20):
    image, _ = synthetic.draw(0, "train", index)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
    distance = np.linalg.norm(image.astype(float) - border.mean(axis=0), axis=-1)
    assert 0.03 < (distance > 80).mean() < 0.6  # an object covering part of the image, not all


def test_image_folder(tmp_path):
  for split, classes in (("train", ("dog", "cat")), ("validation", ("cat", "eel"))):
    for label, name in enumerate(classes):
      os.makedirs(tmp_path / split / name)
      for n in range(2):
        Image.new("L" if n else "RGB", (40 + n, 30), 10 * label).save(tmp_path / split / name / f"{n}.png")
  (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
  train = data.get_dataset(str(tmp_path), "train")
  assert train.class_names == ["cat", "dog", "eel"] and train.num_classes == 3
  assert [e["label"] for e in train.source] == [0, 0, 1, 1]
  assert train.source[1]["image"].shape == (30, 41, 3)
  val = data.get_dataset(str(tmp_path), "validation")
  assert [e["label"] for e in val.source] == [0, 0, 2, 2]
  with pytest.raises(ValueError, match="split='test'"):
    data.get_dataset(str(tmp_path), "test")


@pytest.mark.parametrize("name", ["no_such_dataset", "/no/such/directory"])
def test_get_dataset_unknown_name(name):
  with pytest.raises(ValueError, match="allowed: 'synthetic', 'tiny_imagenet'") as error:
    data.get_dataset(name, "train")
  assert "\n" not in str(error.value) and repr(name) in str(error.value)


def test_get_dataset_unknown_config_is_one_line():
  with pytest.raises(ValueError, match="dataset='synthetic/nope'.*BuilderConfig nope not found") as error:
    data.get_dataset("synthetic/nope", "train")
  assert "\n" not in str(error.value)


class NumpyImages(tfds.core.GeneratorBasedBuilder):
  """Stores numpy images, which TFDS encodes with TensorFlow (as cifar10 and mnist do)."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    yield 0, {"image": np.zeros((8, 8, 3), np.uint8), "label": 0}


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_builder_that_needs_tensorflow_is_one_clear_error(tmp_path):
  with pytest.raises(ValueError, match="dataset='numpy_images': its TFDS builder needs TensorFlow") as error:
    data.get_dataset("numpy_images", "train", data_dir=str(tmp_path))
  assert "\n" not in str(error.value)


def test_get_dataset_unknown_split(shard_dir, tmp_path):
  with pytest.raises(ValueError, match="allowed: train, validation"):
    data.get_dataset("tiny_imagenet", "test", data_dir=str(tmp_path), manual_dir=str(shard_dir))


def _random_source(n: int) -> list[dict]:
  rng = np.random.default_rng(0)
  shapes = [(20, 30, 3), (40, 24), (24, 24, 1), (33, 50, 4)]
  return [{"image": rng.integers(0, 256, shapes[i % 4], dtype=np.uint8), "label": i % 3} for i in range(n)]


def test_mean_image_equals_numpy_mean():
  source = _random_source(10)
  crops = np.stack([preprocess.resize_and_center_crop(e["image"], 16) for e in source]).astype(np.float64)
  mean = data.compute_mean_image(source, 16, batch_size=3)
  assert mean.shape == (16, 16, 3) and mean.dtype == np.float32
  np.testing.assert_allclose(mean, crops.mean(axis=0), rtol=1e-6)
  subset = data.compute_mean_image(source, 16, max_images=4)  # evenly spaced: images 0, 3, 6, 9
  np.testing.assert_allclose(subset, crops[[0, 3, 6, 9]].mean(axis=0), rtol=1e-6)
  with pytest.raises(ValueError, match="max_images=0"):
    data.compute_mean_image(source, 16, max_images=0)


def test_load_batch_shapes():
  source = _random_source(6)
  images, labels = data.load_batch(source, np.array([5, 1, 2]), 12)
  assert images.shape == (3, 12, 12, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, [2, 1, 2])
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(images[0], preprocess.resize_and_center_crop(source[5]["image"], 12))


def test_image_size_for():
  assert data.image_size_for("zfnet") == data.image_size_for(models.get_arch("alexnet")) == 256
  assert data.image_size_for("zfnet64") == data.image_size_for("alexnet64-no-fc67") == 64


@pytest.mark.skipif(not os.path.exists(os.path.join(SHARED, "boxes.csv")), reason="shared Tiny ImageNet absent")
def test_boxes_of_the_shared_copy():
  with tarfile.open(os.path.join(SHARED, "val.tar")) as tar:
    names = tar.getnames()
  val = data.boxes(SHARED, "validation")
  assert set(val) == {n for n in names if n.endswith(".JPEG")} and len(val) == 5000
  train = data.boxes(SHARED, "train")
  assert len(train) == 50000 and all(k.startswith("train/") for k in train)
  corners = np.array(list(train.values()) + list(val.values()))
  assert corners.min() >= 0 and corners.max() <= 63
  assert (corners[:, 0] <= corners[:, 2]).all() and (corners[:, 1] <= corners[:, 3]).all()
  with pytest.raises(ValueError, match="allowed: train, validation"):
    data.boxes(SHARED, "val")


# Section 3 preprocessing (preprocess.py).

def test_resize_and_center_crop():
  image = np.arange(64 * 128 * 3, dtype=np.uint32).reshape(64, 128, 3).astype(np.uint8)
  np.testing.assert_array_equal(preprocess.resize_and_center_crop(image, 64), image[:, 32:96])  # no resizing
  tall = np.random.default_rng(0).integers(0, 256, (90, 45), dtype=np.uint8)
  out = preprocess.resize_and_center_crop(tall, 30)
  assert out.shape == (30, 30, 3) and out.dtype == np.uint8
  assert (out[..., 0] == out[..., 2]).all()  # grayscale -> RGB
  flat = np.full((50, 70, 3), 77, np.uint8)
  np.testing.assert_array_equal(preprocess.resize_and_center_crop(flat, 20), np.full((20, 20, 3), 77))


def test_to_rgb():
  assert preprocess.to_rgb(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
  rgba = np.random.default_rng(1).integers(0, 256, (4, 4, 4), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.to_rgb(rgba), rgba[..., :3])
  with pytest.raises(ValueError, match="allowed"):
    preprocess.to_rgb(np.zeros((4, 4, 2), np.uint8))


def test_ten_crops_are_corners_center_and_mirrors():
  images = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype(np.float32)
  crops = preprocess.ten_crops(images, 6)
  assert crops.shape == (2, 10, 6, 6, 3)
  expected = [images[:, :6, :6], images[:, :6, 3:], images[:, 3:, :6], images[:, 3:, 3:], images[:, 1:7, 1:7]]
  for k, crop in enumerate(expected):
    np.testing.assert_array_equal(crops[:, k], crop)
    np.testing.assert_array_equal(crops[:, k + 5], crop[:, :, ::-1])
  np.testing.assert_array_equal(crops[:, 4], preprocess.center_crop(images, 6))


def test_random_crop_flip_is_seeded_and_returns_crops():
  images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
  a = preprocess.random_crop_flip(images, 5, np.random.default_rng(7))
  np.testing.assert_array_equal(a, preprocess.random_crop_flip(images, 5, np.random.default_rng(7)))
  assert a.shape == (16, 5, 5, 3) and a.dtype == np.uint8
  flipped = 0
  for image, crop in zip(images, a):
    windows = [image[y:y + 5, x:x + 5] for y in range(4) for x in range(4)]
    plain = any(np.array_equal(crop, w) for w in windows)
    mirror = any(np.array_equal(crop, w[:, ::-1]) for w in windows)
    assert plain or mirror
    flipped += mirror and not plain
  assert 0 < flipped < 16  # both flipped and unflipped crops occur


def test_subtract_mean():
  images = np.full((2, 4, 4, 3), 10, np.uint8)
  out = preprocess.subtract_mean(images, np.full((4, 4, 3), 2.5))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(out, np.full((2, 4, 4, 3), 7.5))
