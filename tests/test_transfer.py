"""Section 5 transfer, few-shot and per-layer probes (zf_jax.analysis.{features,transfer,probes}), the few-shot
draws shared with training (zf_jax.data.few_shot), and Tiny ImageNet copies that are never confused."""
import dataclasses
import io
import json
import os
import socket
import subprocess
import sys
import tarfile

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from zf_jax import data, models
from zf_jax.analysis import features, probes, transfer, transfer_seeds
from zf_jax.data import few_shot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 6, "conv2": 8, "conv3": 8, "conv4": 8, "conv5": 8, "fc6": 8, "fc7": 8}, name="tiny")


class ListSource:
  """An in-memory random-access source of {"image": uint8 [64, 64, 3], "label": int}."""

  def __init__(self, labels, seed=0):
    rng = np.random.default_rng(seed)
    self.examples = [{"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "label": int(label)}
                     for label in labels]

  def __len__(self):
    return len(self.examples)

  def __getitem__(self, i):
    return self.examples[i]


def _dataset(labels, seed=0, num_classes=None):
  source = ListSource(labels, seed)
  c = num_classes or int(max(labels)) + 1
  return data.Dataset(source, c, [f"class{k}" for k in range(c)], "list", "train")


def _target(train_counts=(7, 9, 6), test_counts=(4, 5, 3)):
  train = _dataset(np.repeat(np.arange(len(train_counts)), train_counts), 0)
  test = _dataset(np.repeat(np.arange(len(test_counts)), test_counts), 1)
  return transfer.Target("list", train, test, False, "--config.dataset=list")


def _params():
  return models.init_params(TINY, jax.random.key(0), num_classes=3, weight_std=0.05, bias=0.05)


# --- the few-shot draws ---------------------------------------------------------------------------------

def test_splits_disjoint_from_test_nested_and_identical_with_the_same_seed():
  labels = np.repeat(np.arange(4), [10, 12, 8, 9])
  rng = np.random.default_rng(0)
  labels = labels[rng.permutation(len(labels))]
  train, test = few_shot.split_per_class(labels, 3, fold=1, seed=7, num_test=4)
  assert not set(train) & set(test)
  assert np.bincount(labels[train]).tolist() == [3] * 4 and np.bincount(labels[test]).tolist() == [4] * 4
  again = few_shot.split_per_class(labels, 3, fold=1, seed=7, num_test=4)
  assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
  other_fold = few_shot.split_per_class(labels, 3, fold=2, seed=7, num_test=4)
  assert not np.array_equal(train, other_fold[0]) and np.array_equal(test, other_fold[1])
  smaller, _ = few_shot.split_per_class(labels, 2, fold=1, seed=7, num_test=4)
  assert set(smaller) < set(train)
  other_seed = few_shot.split_per_class(labels, 3, fold=1, seed=8, num_test=4)
  assert not np.array_equal(test, other_seed[1])


def test_a_class_with_fewer_than_n_images_is_one_error_naming_it():
  labels = np.repeat(np.arange(3), [5, 2, 5])
  with pytest.raises(ValueError, match=r"class 'b' \(label 1\) has 2 images") as error:
    few_shot.split_per_class(labels, 3, class_names=["a", "b", "c"])
  assert "\n" not in str(error.value)


def test_scratch_training_draws_the_images_the_study_uses():
  dataset = _dataset(np.repeat(np.arange(3), [7, 9, 6]))
  config = ml_collections.ConfigDict({"train_per_class": 2, "train_per_class_fold": 3, "train_per_class_seed": 5,
                                      "train_per_class_holdout": 0})
  subset = few_shot.from_config(dataset, config).source
  expected, _ = few_shot.split_per_class(few_shot.labels_of(dataset.source), 2, 3, 5, 0, 3)
  assert np.array_equal(subset.indices, expected) and len(subset) == 6
  assert [subset[i]["label"] for i in range(6)] == [0, 0, 1, 1, 2, 2]
  assert few_shot.from_config(dataset, ml_collections.ConfigDict({"train_per_class": 0})) is dataset


# --- features computed once -------------------------------------------------------------------------------

def test_features_are_computed_once_per_image_not_per_fold(monkeypatch):
  calls = []
  extract = features.extract

  def counting(arch, params, images, names):
    calls.append(images.shape[0])
    return extract(arch, params, images, names)

  monkeypatch.setattr(features, "extract", counting)
  study = transfer.prepare(TINY, _params(), 120.0, 64, _target(), shots=(1, 2, 3), folds=4, seed=0, num_test=50,
                           layers=("conv1", "fc7"), batch_size=4)
  used = len(study.train_index)  # every image some fold trains on, each once
  assert used == len(np.unique(np.concatenate([study.train_index[r].ravel() for r in study.rows.values()])))
  assert len(calls) == -(-used // 4) + -(-12 // 4)  # one jitted batch per 4 images of the train and test sets
  assert study.train_features["conv1"].shape == (used, 14 * 14 * 6)  # after pool1 and norm1, flattened
  assert study.test_features["fc7"].shape == (12, 8)
  assert transfer.compute(study, steps=5)["accuracy"].shape == (3, 4)
  fc7_only = dataclasses.replace(study, train_features={"fc7": study.train_features["fc7"]})
  assert probes.compute(fc7_only, steps=5)["svm"].shape == (1, 3, 4)
  assert len(calls) == -(-used // 4) + -(-12 // 4)  # the 3 x 4 folds and every probe reuse the cached features


def test_retained_conv_features_are_the_pooled_normalized_maps():
  params = _params()
  images = np.asarray(jax.random.normal(jax.random.key(1), (2, 56, 56, 3))) * 50
  _, trace = models.forward(TINY, params, images)
  from zf_jax import layers
  pool, norm = TINY.layer("pool1"), TINY.layer("norm1")
  pooled, _ = layers.max_pool(trace.activations["conv1"], pool.window, pool.stride, pool.padding)
  normed = layers.local_response_norm(pooled, norm.size, norm.alpha, norm.beta, norm.k)
  out = features.compute(TINY, params, images, ["conv1", "conv3", "fc7"], batch_size=2)
  np.testing.assert_allclose(out["conv1"], np.asarray(normed).reshape(2, -1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["conv3"], np.asarray(trace.activations["conv3"]).reshape(2, -1), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["fc7"], np.asarray(trace.activations["fc7"]), rtol=1e-5, atol=1e-5)


# --- the classifiers ---------------------------------------------------------------------------------------

def _study(train_x, train_y, test_x, test_y, shots, folds):
  c = int(train_y.max()) + 1
  rows = {n: np.stack([few_shot.split_per_class(train_y, n, f, 0, 0, c)[0] for f in range(folds)]) for n in shots}
  return transfer.Study("synthetic", tuple(shots), folds, 0, 50, [str(k) for k in range(c)], rows,
                        np.arange(len(train_y)), train_y, {"fc7": train_x}, np.arange(len(test_y)), test_y,
                        {"fc7": test_x}, "", False)


def _separable(rng, per_class, c=10, d=32):
  means = rng.normal(0, 1, (c, d)) * 4
  y = np.repeat(np.arange(c), per_class)
  return (means[y] + rng.normal(0, 1, (len(y), d))).astype(np.float32), y.astype(np.int32)


def test_softmax_and_svm_on_separable_features_reach_about_100_percent():
  rng = np.random.default_rng(0)
  train_x, train_y = _separable(rng, 20)
  test_x, test_y = _separable(np.random.default_rng(0), 10)  # same class means (same seed), new noise
  test_x = test_x + np.random.default_rng(1).normal(0, 1, test_x.shape).astype(np.float32) * 0.1
  study = _study(train_x, train_y, test_x, test_y, (5, 10), 2)
  accuracy = transfer.softmax_accuracy(study, "fc7")
  assert accuracy.shape == (2, 2) and accuracy.min() >= 0.98
  assert probes.svm_accuracy(study, "fc7").min() >= 0.98
  shuffled = _study(train_x, rng.permutation(train_y), test_x, test_y, (10,), 2)  # labels carry no signal
  assert transfer.softmax_accuracy(shuffled, "fc7").max() < 0.5


def _model_folders(tmp_path, models_, seed=0):
  """One folder per model with the transfer.json and probes.json its studies would write (features: noisy
  class means, more noise for a worse model)."""
  folders = []
  for i, noise in enumerate(models_):
    rng = np.random.default_rng(i)
    train_x, train_y = _separable(rng, 12)
    test_x, test_y = _separable(np.random.default_rng(100), 6)
    train_x = train_x + noise * rng.normal(0, 4, train_x.shape).astype(np.float32)
    study = dataclasses.replace(_study(train_x, train_y, test_x, test_y, (2, 6), 3), seed=seed)
    model = {"source": f"model{i}", "arch": "zfnet64", "step": 1, "epoch": 1.0, "params_sha256": f"{i:064x}"}
    folder = tmp_path / f"model{i}"
    folder.mkdir()
    (folder / "transfer.json").write_text(json.dumps({**transfer.summary(transfer.compute(study)), "model": model}))
    (folder / "probes.json").write_text(json.dumps({**probes.summary(probes.compute(study)), "model": model}))
    folders.append(str(folder))
  return folders


def test_transfer_seeds_reports_the_spread_of_the_fold_means_over_models(tmp_path):
  folders = _model_folders(tmp_path, (0.0, 0.5, 1.0))
  result = transfer_seeds.compute(folders)
  tables = [json.loads(open(os.path.join(f, "transfer.json")).read()) for f in folders]
  for i, row in enumerate(result["transfer"]["rows"]):
    means = [t["rows"][i]["pretrained_mean"] for t in tables]
    assert row["pretrained"]["mean"] == pytest.approx(np.mean(means))
    assert row["pretrained"]["std"] == pytest.approx(np.std(means, ddof=1))
    assert (row["pretrained"]["min"], row["pretrained"]["max"]) == (min(means), max(means))
  assert result["transfer"]["rows"][0]["pretrained"]["std"] > 0  # the noisier models are worse
  probes_rows = result["probes"]["rows"]
  assert [(r["layer"], r["images_per_class"]) for r in probes_rows] == [("fc7", 2), ("fc7", 6)]
  assert len(probes_rows[1]["softmax"]["models"]) == 3
  summary = json.loads(json.dumps(transfer_seeds.summary(result)))
  assert summary["transfer"]["table"]["folds"] == 3 and summary["probes"]["paper"]
  transfer_seeds.plot(result, str(tmp_path / "seeds.png"))
  assert (tmp_path / "seeds.png").stat().st_size > 10_000


def test_transfer_seeds_refuses_studies_that_are_not_one(tmp_path):
  folders = _model_folders(tmp_path, (0.0, 0.5))
  with pytest.raises(ValueError, match=r"are of the same model \(one model twice\)"):
    transfer_seeds.compute([folders[0], folders[0]])
  (tmp_path / "other").mkdir()
  other = _model_folders(tmp_path / "other", (0.3,), seed=1)
  with pytest.raises(ValueError, match=r"has seed=1 and .* 0, so they are not one study"):
    transfer_seeds.compute([folders[0], other[0]])
  table = json.loads(open(os.path.join(folders[1], "transfer.json")).read())
  del table["model"]
  with open(os.path.join(folders[1], "transfer.json"), "w") as f:
    json.dump(table, f)
  with pytest.raises(ValueError, match=r"no model \(written before zf_jax recorded the model"):
    transfer_seeds.compute(folders)
  with pytest.raises(ValueError, match=r"holds transfer.json or probes.json"):
    transfer_seeds.compute([str(tmp_path / "other" / "nothing")])


def test_svm_on_span_coordinates_equals_svm_on_the_features():
  """probes.span_coordinates: the same LinearSVC problem in R dimensions instead of D > R."""
  from sklearn.svm import LinearSVC
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 10)
  train = rng.normal(0, 1, (40, 300)) + 0.3 * rng.normal(0, 1, (4, 300))[labels]
  test = rng.normal(0, 1, (25, 300))
  z_train, z_test = probes.span_coordinates(train, test)
  assert z_train.shape == (40, 40) and z_test.shape == (25, 40)
  full = LinearSVC(C=1.0, tol=1e-8, max_iter=100_000).fit(train, labels)
  reduced = LinearSVC(C=1.0, fit_intercept=False, tol=1e-8, max_iter=100_000).fit(z_train, labels)
  np.testing.assert_allclose(reduced.decision_function(z_test), full.decision_function(test), atol=1e-4)
  narrow = probes.span_coordinates(train[:, :20], test[:, :20])[0]  # D + 1 <= R: only the 1 appended
  np.testing.assert_array_equal(narrow, np.hstack([train[:, :20], np.ones((40, 1))]))


def test_per_class_accuracy_weighs_every_class_equally():
  labels = np.array([0] * 8 + [1] * 2)
  predictions = np.array([0] * 8 + [0, 0])
  assert transfer.per_class_accuracy(predictions, labels, 2) == pytest.approx(0.5)


# --- bad input: one error, nothing computed -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    ({"layers": ("conv9",)}, r"layer='conv9' has no features in arch 'tiny'; allowed: conv1, conv2"),
    ({"layers": ("fc8",)}, r"layer='fc8' has no features"),
    ({"shots": (1, 8)}, r"class 'class0' \(label 0\) has 7 images for training"),
    ({"shots": (0,)}, r"shots=0; allowed: distinct integers >= 1"),
    ({"folds": 0}, r"folds=0"),
])
def test_bad_input_is_one_error_before_any_forward_pass(monkeypatch, kwargs, match):
  calls = []
  monkeypatch.setattr(features, "extract", lambda *a: calls.append(1))
  with pytest.raises(ValueError, match=match) as error:
    transfer.prepare(TINY, _params(), 120.0, 64, _target(), **{"shots": (1,), "folds": 2, **kwargs})
  assert "\n" not in str(error.value) and not calls


def test_a_dataset_to_download_without_network_is_one_error(tmp_path, monkeypatch):
  def unreachable(*args, **kwargs):
    raise socket.gaierror("Name or service not known")
  monkeypatch.setattr(socket, "create_connection", unreachable)
  with pytest.raises(ValueError, match="'caltech101' is not prepared .* network is unreachable") as error:
    transfer.load_target("caltech101", str(tmp_path))
  assert "\n" not in str(error.value)


# --- Tiny ImageNet: two local copies are never confused --------------------------------------------------------

def _jpeg(value):
  buffer = io.BytesIO()
  Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(buffer, format="JPEG")
  return buffer.getvalue()


def _copy(root, wnids, per_class=2):
  """A copy in the shared layout (train-00000-of-00001.tar, val.tar, classes.tsv)."""
  root.mkdir()
  for name, split, count in (("train-00000-of-00001.tar", "train", per_class), ("val.tar", "val", 1)):
    with tarfile.open(root / name, "w") as tar:
      for i, wnid in enumerate(wnids):
        for k in range(count):
          jpeg = _jpeg(40 * i + 20)
          info = tarfile.TarInfo(f"{split}/{wnid}/{wnid}_{k}.JPEG" if split == "train" else f"val/{wnid}/val_{i}.JPEG")
          info.size = len(jpeg)
          tar.addfile(info, io.BytesIO(jpeg))
  (root / "classes.tsv").write_text("".join(f"{w}\t{w} name\n" for w in wnids))
  return str(root)


def test_tiny_imagenet_copies_are_keyed_by_what_they_were_prepared_from(tmp_path):
  a = _copy(tmp_path / "a", ["n01", "n02", "n03"])
  b = _copy(tmp_path / "b", ["n07", "n08"])
  tfds_dir = str(tmp_path / "tfds")
  first = data.get_dataset("tiny_imagenet", "train", tfds_dir, manual_dir=a)
  assert first.num_classes == 3 and len(first.source) == 6
  assert data.get_dataset("tiny_imagenet", "validation", tfds_dir).num_classes == 3  # the one prepared copy
  second = data.get_dataset("tiny_imagenet", "train", tfds_dir, manual_dir=b)
  assert second.num_classes == 2 and second.class_names == ["n07 name", "n08 name"] and len(second.source) == 4
  assert data.get_dataset("tiny_imagenet", "train", tfds_dir, manual_dir=a).class_names == ["n01 name", "n02 name",
                                                                                               "n03 name"]
  with pytest.raises(ValueError, match=r"2 copies are prepared .*; pass manual_dir") as error:
    data.get_dataset("tiny_imagenet", "train", tfds_dir)
  assert "\n" not in str(error.value)
  os.remove(os.path.join(a, "classes.tsv"))  # a changed copy is prepared anew (classes from the wnids now)
  changed = data.get_dataset("tiny_imagenet", "train", tfds_dir, manual_dir=a)
  assert changed.class_names == ["n01", "n02", "n03"]
  assert len(os.listdir(os.path.join(tfds_dir, "tiny_imagenet"))) == 3


def test_the_builder_refuses_a_copy_that_is_not_its_config(tmp_path):
  import tensorflow_datasets as tfds

  from zf_jax.data import tiny_imagenet
  a, b = _copy(tmp_path / "a", ["n01", "n02"]), _copy(tmp_path / "b", ["n07", "n08"])
  builder = tiny_imagenet.TinyImagenet(config=tiny_imagenet.builder_config(a), data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="the copy in manual_dir is 'copy-.*', not the config 'copy-"):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=b))


# --- end to end -----------------------------------------------------------------------------------------------

def _image_folder(root, classes=3, per_class=12):
  """One split ("all") of random images whose mean colour depends on the class."""
  rng = np.random.default_rng(0)
  for c in range(classes):
    os.makedirs(root / "all" / f"c{c}")
    for k in range(per_class):
      pixels = np.clip(rng.normal(60 + 60 * c, 30, (72, 80, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(root / "all" / f"c{c}" / f"{k}.png")
  return str(root)


def _cli(*args, check=True):
  result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.mark.slow
def test_transfer_and_probes_end_to_end(tmp_path):
  target = _image_folder(tmp_path / "target")
  source = str(tmp_path / "source")
  _cli("train.py", "--config=configs/smoke.py", f"--workdir={source}")
  scratch = str(tmp_path / "scratch")
  _cli("train.py", "--config=configs/smoke.py", f"--workdir={scratch}", f"--config.dataset={target}",
       "--config.train_split=all", "--config.val_split=all", "--config.train_per_class=4",
       "--config.train_per_class_holdout=4", "--config.batch_size=4", "--config.eval_batch_size=4")
  out = tmp_path / "figures"
  _cli("visualize.py", "transfer", f"--workdir={source}", f"--target={target}", "--shots=1,2,4", "--folds=2",
       "--test_per_class=4", f"--scratch={scratch}", f"--out={out}")
  _cli("visualize.py", "probes", f"--workdir={source}", f"--target={target}", "--shots=4", "--folds=2",
       "--test_per_class=4", f"--out={out}")
  table = json.loads((out / "transfer.json").read_text())
  assert [r["images_per_class"] for r in table["rows"]] == [1, 2, 4]
  assert table["rows"][2]["scratch_runs"] == 1 and table["test_images"] == 12 and "paper" in table
  layers = json.loads((out / "probes.json").read_text())
  assert [r["layer"] for r in layers["rows"]] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
  assert (out / "transfer.png").stat().st_size > 0 and (out / "probes.png").stat().st_size > 0
  bad = _cli("visualize.py", "probes", f"--workdir={source}", f"--target={target}", "--shots=9", "--layers=conv1",
             "--test_per_class=4", f"--out={tmp_path / 'bad'}", check=False)
  assert bad.returncode == 2 and "visualize.py: error: class 'c0' (label 0) has 8 images for training" in bad.stderr
  assert not (tmp_path / "bad").exists()

  # a second pretrained model, the same studies, and both over models (transfer-seeds)
  source2, out2 = str(tmp_path / "source2"), tmp_path / "figures2"
  _cli("train.py", "--config=configs/smoke.py", f"--workdir={source2}", "--config.seed=1")
  for command in ("transfer", "probes"):
    _cli("visualize.py", command, f"--workdir={source2}", f"--target={target}", "--shots=4" if command == "probes"
         else "--shots=1,2,4", "--folds=2", "--test_per_class=4", f"--out={out2}")
  _cli("visualize.py", "transfer-seeds", f"--results={out},{out2}", f"--out={tmp_path / 'seeds'}")
  seeds = json.loads((tmp_path / "seeds" / "transfer_seeds.json").read_text())
  assert [m["source"] for m in seeds["transfer"]["models"]] == [source, source2]
  assert [len(r["pretrained"]["models"]) for r in seeds["transfer"]["rows"]] == [2, 2, 2]
  assert len(seeds["probes"]["rows"]) == 7 and (tmp_path / "seeds" / "transfer_seeds.png").stat().st_size > 0
  bad = _cli("visualize.py", "transfer-seeds", f"--results={out},{out}", f"--out={tmp_path / 'bad'}", check=False)
  assert bad.returncode == 2 and "(one model twice)" in bad.stderr and not (tmp_path / "bad").exists()
