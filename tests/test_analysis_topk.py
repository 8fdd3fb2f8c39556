"""Top-k (Fig. 2) against a brute-force sort over every activation of a small dataset."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from zf_jax import deconv, models
from zf_jax.analysis import common, topk

WIDTHS = {"conv1": 8, "conv2": 12, "conv3": 12, "conv4": 12, "conv5": 8, "fc6": 16, "fc7": 16}
BATCH = 8


def _model(dead_map: int | None = 3):
  """A narrow zfnet64 active on random images; conv1 map `dead_map` never fires (all ties at 0)."""
  arch = models.ablate(models.get_arch("zfnet64"), features=WIDTHS, name="zfnet64-narrow")
  return arch, random_params(arch, dead_map)


def random_params(arch, dead_map=None, seed=0):
  """N(0, std^2) weights (numpy: no per-shape compilation), biases 0.05; conv1 std 0.01, others 0.1."""
  shapes = jax.eval_shape(lambda: models.init_params(arch, jax.random.key(0), num_classes=5))
  rng = np.random.default_rng(seed)
  params = {layer: {"kernel": rng.normal(0, 0.01 if layer == "conv1" else 0.1, p["kernel"].shape).astype(np.float32),
                    "bias": np.full(p["bias"].shape, 0.05, np.float32)} for layer, p in shapes.items()}
  if dead_map is not None:
    params["conv1"]["bias"][dead_map] = -1e4
  return params


def _images(n, seed=1):
  return (np.random.default_rng(seed).normal(size=(n, 56, 56, 3)) * 60).astype(np.float32)


def _brute_force(arch, params, images, layer, k, distinct):
  """Every activation of the dataset, stably sorted descending in (image, y, x) order."""
  acts = common.map_chunks(lambda x: models.forward(arch, params, x)[1].activations[layer], (images,), BATCH)
  n, h, w, c = acts.shape
  want = {name: np.zeros((c, k), np.int64) for name in ("image", "y", "x")}
  want["value"] = np.zeros((c, k), np.float32)
  for ch in range(c):
    a = acts[..., ch].reshape(n, h * w)
    if distinct:
      pos = a.argmax(1)
      values, image = a.max(1), np.arange(n)
    else:
      values, image, pos = a.reshape(-1), np.repeat(np.arange(n), h * w), np.tile(np.arange(h * w), n)
    order = np.argsort(-values, kind="stable")[:k]
    want["value"][ch], want["image"][ch] = values[order], image[order]
    want["y"][ch], want["x"][ch] = pos[order] // w, pos[order] % w
  return want


@pytest.mark.parametrize("distinct", [True, False])
def test_scan_equals_brute_force_sort(distinct):
  arch, params = _model()
  images = _images(21)  # 3 batches, the last one partial
  got = topk.scan(arch, params, images, ["conv1", "conv3"], k=9, batch_size=BATCH, distinct=distinct)
  for layer in ("conv1", "conv3"):
    want = _brute_force(arch, params, images, layer, 9, distinct)
    np.testing.assert_array_equal(got[layer]["value"], want["value"])
    for name in ("image", "y", "x"):
      np.testing.assert_array_equal(got[layer][name], want[name], err_msg=f"{layer} {name}")
  if distinct:
    assert len(set(got["conv3"]["image"][0])) == 9
  # The silent map's ties: the first images (distinct) or the first positions of image 0.
  dead = got["conv1"]
  assert (dead["value"][3] == 0).all()
  if distinct:
    np.testing.assert_array_equal(dead["image"][3], np.arange(9))
    assert (dead["y"][3] == 0).all() and (dead["x"][3] == 0).all()
  else:
    assert (dead["image"][3] == 0).all() and (dead["y"][3] == 0).all()
    np.testing.assert_array_equal(dead["x"][3], np.arange(9))


def test_memory_does_not_grow_with_the_dataset():
  arch, params = _model()
  state = topk.init(arch, ("conv2",), k=9)
  sizes = {name: a.shape for name, a in state["conv2"].items()}
  assert sizes == {"value": (12, 9), "image": (12, 9), "pos": (12, 9)}
  topk.scan(arch, params, _images(9), ["conv2"], batch_size=BATCH)
  compiled = topk.update._cache_size()
  big = topk.scan(arch, params, _images(40, seed=2), ["conv2"], batch_size=BATCH)
  assert topk.update._cache_size() == compiled  # fixed-shape steps: no recompilation, O(c * k) state
  assert {name: a.shape for name, a in big["conv2"].items()} == {"value": (12, 9), "image": (12, 9), "y": (12, 9),
                                                                   "x": (12, 9)}


def test_compute_projects_each_winner_with_its_own_image():
  arch, params = _model(dead_map=None)
  images = _images(12)
  mean = np.full((64, 64, 3), 110.0, np.float32)
  result = topk.compute(arch, params, images, layers=["conv2"], maps=[1, 5], k=3, batch_size=BATCH, mean_image=mean)
  assert result["conv2/projections"].shape == (2, 3, 19, 19, 3) == result["conv2/patches"].shape
  for m, c in enumerate((1, 5)):
    for j in range(3):
      i, (y, x) = result["conv2/images"][m, j], result["conv2/positions"][m, j]
      _, trace = models.forward(arch, params, images[i:i + 1])
      np.testing.assert_allclose(result["conv2/values"][m, j], trace.activations["conv2"][0, y, x, c], rtol=1e-5)
      want = np.asarray(deconv.project(arch, params, trace, "conv2", c, y, x))[0]
      box = deconv.receptive_field(arch, "conv2", y, x)
      np.testing.assert_array_equal(result["conv2/boxes"][m, j], box)
      np.testing.assert_allclose(result["conv2/projections"][m, j], topk.crop(common.to_display(want), box, 19),
                                 atol=1e-4)
      photo = np.clip((images[i] + mean[4:60, 4:60]) / 255, 0, 1)
      np.testing.assert_allclose(result["conv2/patches"][m, j], topk.crop(photo, box, 19), atol=1e-6)
  summary = json.loads(json.dumps(topk.summary(result)))
  assert summary["conv2"]["top"]["5"][0][:3] == [int(result["conv2/images"][1, 0]), *result["conv2/positions"][1, 0]]


def test_class_share_counts_the_top_images_classes():
  np.testing.assert_allclose(topk.class_share(np.array([[3, 3, 1, 3], [0, 1, 2, 4], [2, 2, 5, 5]])),
                             [0.75, 0.25, 0.5])
  arch, params = _model(dead_map=None)
  images = _images(12)
  labels = np.arange(12) % 3
  result = topk.compute(arch, params, images, layers=["conv1"], maps=[0], k=3, batch_size=BATCH, labels=labels)
  top_labels = labels[topk.scan(arch, params, images, ["conv1"], k=3, batch_size=BATCH)["conv1"]["image"]]
  np.testing.assert_allclose(result["conv1/class_share"], topk.class_share(top_labels))
  assert 1 / 3 < result["class_share_chance"] < 0.7  # 3 of 12 images in 3 classes: 1/3 only if all differ
  summary = topk.summary(result)
  assert summary["class_share_chance"] == pytest.approx(float(result["class_share_chance"]))
  assert summary["conv1"]["class_share"]["mean"] == pytest.approx(float(result["conv1/class_share"].mean()))
  without = topk.compute(arch, params, images, layers=["conv1"], maps=[0], k=3, batch_size=BATCH)
  np.testing.assert_array_equal(without["conv1/projections"], result["conv1/projections"])
  with pytest.raises(ValueError, match=r"labels has shape \(5,\); allowed: one label per image, \[12\]"):
    topk.compute(arch, params, images, layers=["conv1"], k=3, labels=labels[:5])


def test_crop_keeps_the_units_place_at_the_edges():
  pixels = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
  out = topk.crop(pixels, (0, 2, 3, 7), 5, fill=-1)  # clipped at the top: aligned to the bottom
  np.testing.assert_array_equal(out[2:, :], pixels[0:3, 2:7])
  assert (out[:2] == -1).all()
  out = topk.crop(pixels, (5, 0, 8, 4), 5, fill=-1)  # clipped at the left: aligned to the right
  np.testing.assert_array_equal(out[:3, 1:], pixels[5:8, 0:4])


def test_choose_maps_and_bad_input():
  rng = np.random.default_rng(0)
  chosen = topk.choose_maps(10, None, 4, rng)
  assert len(set(chosen)) == 4 and list(chosen) == sorted(chosen)
  np.testing.assert_array_equal(topk.choose_maps(10, None, None, rng), np.arange(10))
  active = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0], bool)
  np.testing.assert_array_equal(topk.choose_maps(10, None, 3, rng, active), [0, 2, 5])
  chosen = topk.choose_maps(10, None, 5, rng, active)
  assert set(chosen) > {0, 2, 5} and len(set(chosen)) == 5  # silent maps only to fill up
  with pytest.raises(ValueError, match=r"maps=12 is not allowed; allowed: 0..9"):
    topk.choose_maps(10, [12], None, rng)
  arch, params = _model()
  with pytest.raises(ValueError, match="layers=pool1 is not allowed"):
    topk.scan(arch, params, _images(9), ["pool1"])
  with pytest.raises(ValueError, match=r"k=9 is not allowed with 4 images"):
    topk.scan(arch, params, _images(4), ["conv1"])


def test_two_devices_give_the_same_top_k(tmp_path):
  """The batch sharded over 2 (virtual CPU) devices finds what one device finds."""
  arch, params = _model()
  images = _images(20)
  np.save(tmp_path / "images.npy", images)
  want = topk.scan(arch, params, images, ["conv2"], batch_size=BATCH)["conv2"]
  code = f"""
import json, sys, jax, numpy as np
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_analysis_topk import _model
from zf_jax.analysis import topk
assert jax.device_count() == 2
arch, params = _model()
got = topk.scan(arch, params, np.load({str(tmp_path / 'images.npy')!r}), ["conv2"], batch_size={BATCH})["conv2"]
print(json.dumps({{k: v.tolist() for k, v in got.items()}}))
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  got = json.loads(run.stdout.strip().splitlines()[-1])
  for name in ("image", "y", "x"):
    np.testing.assert_array_equal(got[name], want[name])
  np.testing.assert_allclose(got["value"], want["value"], rtol=1e-5)
