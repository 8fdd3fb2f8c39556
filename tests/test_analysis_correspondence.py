"""Table 1's correspondence score: Hamming sums by hand, a model whose feature changes are known,
parts files, and bad-input errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from zf_jax import models
from zf_jax.analysis import correspondence
from zf_jax.data import model_inputs

S = 8
# conv1 is the identity on RGB: on positive images, masking a box changes exactly its pixels.
IDENTITY = models.Arch("identity", S, (models.Conv("conv1", 3, 1), models.Dense("fc8", 2, relu=False)))
PARAMS = {"conv1": {"kernel": jnp.eye(3).reshape(1, 1, 3, 3), "bias": jnp.zeros(3)},
          "fc8": {"kernel": jnp.zeros((S * S * 3, 2)), "bias": jnp.zeros(2)}}


def _images(n=3):
  return np.random.default_rng(0).uniform(1, 2, (n, S, S, 3)).astype(np.float32)


def _changed(box):
  """The sign vector masking `box` gives on the identity model: 1 inside, 0 outside."""
  sign = np.zeros((S, S, 3), np.int8)
  y0, x0, y1, x1 = box
  sign[y0:y1, x0:x1] = 1
  return sign.reshape(-1)


def test_hamming_and_delta_by_hand():
  signs = np.array([[1, 0, -1, 1], [1, 1, -1, -1], [0, 0, -1, 1]])
  np.testing.assert_allclose(correspondence.hamming(signs), [2 / 4, 1 / 4, 3 / 4])
  assert correspondence.delta(signs) == 2 * (2 + 1 + 3)
  same = np.tile([[1, -1, 0, 1]], (4, 1))
  assert correspondence.delta(same) == 0 and not correspondence.hamming(same).any()
  opposite = np.array([[1, -1, 1], [-1, 1, -1]])
  np.testing.assert_allclose(correspondence.hamming(opposite), [1.0])


def test_same_change_everywhere_scores_zero_and_random_matches_closed_form():
  images = _images()
  parts = {"eye": [[2, 2, 4, 5]] * 3, "nose": [[0, 0, 2, 2], [4, 4, 6, 6], None]}
  result = correspondence.compute(IDENTITY, PARAMS, images, parts, layers=["conv1"], num_random=4, seed=3,
                                  batch_size=5)
  assert result["rows"].tolist() == ["eye", "nose", "random"]
  assert result["mean"][0, 0] == 0 and result["std"][0, 0] == 0 and result["delta"][0, 0] == 0
  # nose: two disjoint 2x2 boxes differ in 2 * 4 pixels * 3 channels, over F = 8 * 8 * 3.
  assert result["mean"][1, 0] == pytest.approx(24 / 192) and result["delta"][1, 0] == 2 * 24
  # random: each draw keeps each image's box size, inside the image; the score follows from the boxes.
  random = result["random_boxes"]
  assert random.shape == (2, 4, 3, 4)
  np.testing.assert_array_equal(random[1, :, 2], -1)  # the third image has no nose
  want = []
  for p, part in enumerate(parts.values()):
    have = [i for i, box in enumerate(part) if box is not None]
    sizes = np.array([np.subtract(part[i][2:], part[i][:2]) for i in have])
    for draw in random[p]:
      np.testing.assert_array_equal(draw[have, 2:] - draw[have, :2], sizes)
      assert (draw[have] >= 0).all() and (draw[have] <= S).all()
      want.append(correspondence.hamming(np.stack([_changed(draw[i]) for i in have])))
  np.testing.assert_allclose(result["pairs/random"][0], np.concatenate(want))
  np.testing.assert_allclose(result["mean"][2, 0], np.concatenate(want).mean())
  again = correspondence.compute(IDENTITY, PARAMS, images, parts, layers=["conv1"], num_random=4, seed=3)
  np.testing.assert_array_equal(again["random_boxes"], random)


def test_masked_pixels_are_the_mean():
  images = _images()
  result = correspondence.compute(IDENTITY, PARAMS, images, {"eye": [[2, 2, 4, 5]] * 3}, layers=["conv1"],
                                  num_random=1, mean_image=np.full(3, 100.0))
  np.testing.assert_allclose(result["masked"][0, :, 2:4, 2:5], 100 / 255, rtol=1e-6)
  np.testing.assert_allclose(result["masked"][0, :, :2], (images[:, :2] + 100) / 255, rtol=1e-6)


def test_parts_files_json_and_csv(tmp_path):
  photo = np.random.default_rng(1).integers(0, 255, (48, 32), np.uint8)  # grayscale, portrait
  Image.fromarray(photo).save(tmp_path / "a.png")
  Image.fromarray(np.stack([photo] * 3, -1)).save(tmp_path / "b.jpg")
  spec = {"a.png": {"eye": [16, 8, 24, 16], "nose": [20, 4, 28, 12]}, "b.jpg": {"eye": [8, 8, 16, 24]}}
  (tmp_path / "parts.json").write_text(json.dumps(spec))
  rows = ["image,part,y0,x0,y1,x1"]
  rows += [f"{k},{p},{','.join(map(str, b))}" for k, v in spec.items() for p, b in v.items()]
  (tmp_path / "parts.csv").write_text("\n".join(rows) + "\n")
  for name in ("parts.json", "parts.csv"):
    sources, parts = correspondence.read_parts(str(tmp_path / name))
    assert sources == [str(tmp_path / "a.png"), str(tmp_path / "b.jpg")]
    assert parts == {"eye": [[16, 8, 24, 16], [8, 8, 16, 24]], "nose": [[20, 4, 28, 12], None]}
  # 32 px wide -> 16 (x 1/2), 48 -> 24 rows cropped to the center 16 (rows 4..20), then the center 14.
  images, moved, _ = correspondence.load(str(tmp_path / "parts.json"), 14, 16, np.zeros(3))
  assert images.shape == (2, 14, 14, 3) and moved["eye"][0] == [8 - 4 - 1, 4 - 1, 12 - 4 - 1, 8 - 1]
  np.testing.assert_array_equal(images[0, ..., 0], images[0, ..., 2])  # grayscale expanded to RGB


def test_demo_parts_plot_and_summary(tmp_path):
  pytest.importorskip("skimage")
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), num_classes=4, weight_std=0.05, bias=0.05)
  images, parts, sources = correspondence.load(correspondence.PARTS_DEMO, 56, 64, np.full(3, 120.0))
  assert sources == ["skimage:astronaut", "skimage:chelsea", "skimage:camera"]
  assert set(parts) == {"right_eye", "left_eye", "nose"} and parts["left_eye"][2] is None
  result = correspondence.compute(arch, params, images, parts, num_random=2, mean_image=np.full(3, 120.0))
  assert result["layers"].tolist() == ["conv5", "fc7"] and result["mean"].shape == (4, 2)
  assert ((0 < result["mean"]) & (result["mean"] < 1)).all()
  correspondence.plot(result, str(tmp_path / "table1.png"))
  assert (tmp_path / "table1.png").stat().st_size > 10_000
  info = json.loads(json.dumps(correspondence.summary(result)))
  assert info["rows"]["random"]["conv5"]["pairs"] == 2 * (3 + 1 + 3)


@pytest.mark.parametrize("parts, kwargs, message", [
    ({"eye": [[0, 0, 2, 2], None, None]}, {}, r"parts\['eye'\] needs boxes"),
    ({"eye": [[0, 0, 2, 2], [0, 0, 9, 2], [0, 0, 2, 2]]}, {}, r"parts\['eye'\] needs boxes"),
    ({"eye": [[0, 0, 2, 2]] * 2}, {}, r"parts\['eye'\] has 2 entries"),
    ({}, {}, "parts must name at least one part"),
    ({"eye": [[0, 0, 2, 2]] * 3}, {"num_random": -1}, "num_random=-1 must be >= 0"),
    ({"eye": [[0, 0, 2, 2]] * 3}, {"layers": ["fc8"]}, r"layers=\('fc8',\) is not allowed"),
])
def test_bad_input(parts, kwargs, message):
  with pytest.raises(ValueError, match=message):
    correspondence.compute(IDENTITY, PARAMS, _images(), parts, **kwargs)


def test_bad_parts_files(tmp_path):
  (tmp_path / "p.txt").write_text("x")
  with pytest.raises(ValueError, match="unknown format"):
    correspondence.read_parts(str(tmp_path / "p.txt"))
  with pytest.raises(ValueError, match="not a readable parts file"):
    correspondence.read_parts(str(tmp_path / "missing.json"))
  (tmp_path / "p.csv").write_text("image,part,y0\nx,eye,1\n")
  with pytest.raises(ValueError, match="not a readable parts file"):
    correspondence.read_parts(str(tmp_path / "p.csv"))
  (tmp_path / "p.json").write_text(json.dumps({"nothing.png": {"eye": [0, 0, 4, 4]}, "b.png": {"eye": [0, 0, 4, 4]}}))
  with pytest.raises(ValueError, match="is not a readable image file"):
    correspondence.load(str(tmp_path / "p.json"), 14, 16, 0.0)
  with pytest.raises(ValueError, match="skimage photos"):
    model_inputs.read_image("skimage:download_all")
