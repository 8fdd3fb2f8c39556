"""The shipped models (zf_jax.pretrained): they load, match their cards, classify a bundled photo as
recorded, prepare photos exactly as evaluation does, reproduce their cards' accuracy, and refuse
damaged files in one line."""
import json
import os
import shutil

import numpy as np
import pytest
import skimage.data

from zf_jax import evaluation, models, pretrained
from zf_jax.data import model_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-100")

# The shipped zfnet64's top-5 on skimage's chelsea (a tabby cat, which the interim epoch-6 model misses), as `load` +
# `prepare` + `forward` give them: (WordNet id, probability). Recomputed by hand when the shipped weights change.
CHELSEA_TOP5 = [("n02085620", 0.2663), ("n02099601", 0.2320), ("n02124075", 0.0944), ("n02106662", 0.0610),
                ("n02123045", 0.0546)]


@pytest.fixture(scope="module")
def shipped():
  return pretrained.load(pretrained.DEFAULT)


def test_the_default_model_ships_with_its_card(shipped):
  assert pretrained.DEFAULT in pretrained.available()
  arch, params, card = shipped
  assert arch.name == card.info["arch_name"] == "zfnet64"
  assert card.num_classes == 100 == len(card.words) == models.check_params(arch, params)
  assert all(w.startswith("n") and len(w) == 9 for w in card.wnids)
  path = os.path.join(os.path.dirname(pretrained.__file__), f"{pretrained.DEFAULT}.npz")
  assert pretrained.sha256(path) == card.info["sha256"]
  assert card.mean_image.shape == (card.image_size, card.image_size, 3) == (64, 64, 3)
  for crops in ("val_10crop", "val_center"):
    assert 0 < card.accuracy[crops]["top1"] < card.accuracy[crops]["top5"] <= 1
  assert not any(str(v).startswith("/") for v in card.info["config"].values()), "cards name no machine's paths"
  total = sum(os.path.getsize(os.path.join(os.path.dirname(pretrained.__file__), f"{name}.npz"))
              for name in pretrained.available())
  assert total < 16e6


def test_forward_on_a_bundled_photo_gives_the_recorded_top5(shipped):
  arch, params, card = shipped
  logits, _ = models.forward(arch, params, pretrained.prepare(skimage.data.chelsea(), card))
  (top,) = pretrained.top_classes(logits, card)
  assert [wnid for _, wnid, _ in top] == [wnid for wnid, _ in CHELSEA_TOP5]
  np.testing.assert_allclose([p for *_, p in top], [p for _, p in CHELSEA_TOP5], atol=2e-3)
  assert [words for words, *_ in top] == [card.words[card.wnids.index(w)] for w, _ in CHELSEA_TOP5]


def test_prepare_is_the_validation_pipeline(shipped):
  arch, params, card = shipped
  rng = np.random.default_rng(0)
  photos = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
  source = [{"image": p, "label": 0} for p in photos]
  loaded = pretrained.load_model(pretrained.DEFAULT)
  (batch,) = list(evaluation.batches(loaded, source, num_crops=1, batch_size=2))
  np.testing.assert_allclose(pretrained.prepare(photos, card), np.asarray(batch["image"])[:, 0], atol=1e-4)
  # Any size, grayscale or RGB: resized by the smaller side and center-cropped as the pipeline does.
  gray = skimage.data.camera()
  assert pretrained.prepare(gray, card).shape == (1, arch.input_size, arch.input_size, 3)
  np.testing.assert_array_equal(pretrained.prepare(gray, card), pretrained.prepare(np.dstack([gray] * 3), card))
  np.testing.assert_array_equal(
      pretrained.prepare([skimage.data.astronaut()], card),
      model_inputs.prepare_images([skimage.data.astronaut()], arch.input_size, 64, card.mean_image))


def test_top_classes_checks_its_input(shipped):
  _, _, card = shipped
  with pytest.raises(ValueError, match=r"allowed: \[B, 100\]"):
    pretrained.top_classes(np.zeros((1, 10)), card)


def test_unknown_model_lists_the_available_ones():
  with pytest.raises(ValueError, match=f"not a shipped model; available: .*{pretrained.DEFAULT}"):
    pretrained.load("zfnet-imagenet")


@pytest.fixture
def copy_of_default(tmp_path, monkeypatch):
  """The default model's files in a folder `pretrained` reads instead of its own; returns the .npz path."""
  folder = os.path.dirname(pretrained.__file__)
  for ext in ("npz", "json"):
    shutil.copy(os.path.join(folder, f"{pretrained.DEFAULT}.{ext}"), tmp_path)
  monkeypatch.setattr(pretrained, "_folder", lambda: tmp_path)
  return tmp_path / f"{pretrained.DEFAULT}.npz"


def test_a_damaged_file_is_one_error_line(copy_of_default):
  data = copy_of_default.read_bytes()
  copy_of_default.write_bytes(data[:len(data) // 2])  # truncated
  with pytest.raises(ValueError, match="sha256 .* does not match its card") as e:
    pretrained.load()
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match="corrupt or truncated") as e:
    pretrained.read_arrays(str(copy_of_default))  # no hash to check: the zip itself is refused
  assert "\n" not in str(e.value)


def test_non_finite_weights_are_refused(copy_of_default):
  with np.load(copy_of_default) as arrays:
    contents = dict(arrays)
  contents["params/conv3/kernel"][0, 0, 0, 0] = np.nan
  np.savez_compressed(copy_of_default, **contents)
  card = json.loads((copy_of_default.parent / f"{pretrained.DEFAULT}.json").read_text())
  card["sha256"] = pretrained.sha256(str(copy_of_default))
  (copy_of_default.parent / f"{pretrained.DEFAULT}.json").write_text(json.dumps(card))
  with pytest.raises(ValueError, match=r"params\['conv3'\]\['kernel'\] holds 1 NaN or Inf"):
    pretrained.load()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="needs ../shared/data/tiny-imagenet-100")
@pytest.mark.parametrize("name", pretrained.available())
def test_shipped_weights_reproduce_their_cards_accuracy(name):
  loaded = pretrained.load_model(name)
  loaded = type(loaded)(**{**loaded.__dict__, "config": {**loaded.config, "manual_dir": SHARED}})
  source = evaluation.split_source(loaded, "val")
  card = pretrained.read_card_json(name)
  for crops, n in (("val_10crop", 10), ("val_center", 1)):
    got = evaluation.accuracy(loaded, source, n)
    assert got["num_images"] == card["accuracy"][crops]["num_images"] == 5000
    assert abs(got["top1"] - card["accuracy"][crops]["top1"]) <= 0.002, (crops, got)
    assert abs(got["top5"] - card["accuracy"][crops]["top5"]) <= 0.002, (crops, got)


def test_the_card_says_whether_the_run_had_ended():
  from zf_jax.pretrained import export
  config = {"stop_when_converged": True, "num_epochs": 40}
  assert export.run_status({"config": config, "plateau": {"converged": True}, "epoch": 24.0}) == "converged"
  assert export.run_status({"config": config, "plateau": {"converged": False}, "epoch": 9.0}) == "interim"
  assert export.run_status({"config": {**config, "stop_when_converged": False}, "epoch": 40.0}) == "budget done"
