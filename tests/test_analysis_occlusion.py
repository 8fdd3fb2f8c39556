"""Fig. 7's occlusion maps on a model whose output is a known function of the image, the
localization score on known answers, and bad-input errors."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import models
from zf_jax.analysis import localization, occlusion

S = 8
REGION = (slice(2, 5), slice(3, 6))  # fc8 looks only at these pixels
W, B = 0.2, 6.1


def _known_model():
  """conv1 (1x1, one map) = relu(r + g + b); logits = (W * sum of conv1 over REGION, B).

  Images are positive, so p(class 0) = sigmoid(W * sum over REGION of the unoccluded pixel sums - B)."""
  arch = models.Arch("known", S, (models.Conv("conv1", 1, 1), models.Dense("fc8", 2, relu=False)))
  region = np.zeros((S, S), np.float32)
  region[REGION] = W
  kernel = np.stack([region.reshape(-1), np.zeros(S * S, np.float32)], 1)
  params = {"conv1": {"kernel": jnp.ones((1, 1, 3, 1)), "bias": jnp.zeros(1)},
            "fc8": {"kernel": jnp.asarray(kernel), "bias": jnp.array([0.0, B])}}
  images = np.random.default_rng(0).uniform(1, 2, (2, S, S, 3)).astype(np.float32)
  return arch, params, images


def _closed_form(image, size, stride):
  corners = np.arange(0, S - size + 1, stride)
  total = image.sum(-1)
  p0 = np.zeros((len(corners), len(corners)))
  activity = np.zeros_like(p0)
  for i, y in enumerate(corners):
    for j, x in enumerate(corners):
      seen = total.copy()
      seen[y:y + size, x:x + size] = 0
      p0[i, j] = 1 / (1 + np.exp(-(W * seen[REGION].sum() - B)))
      activity[i, j] = seen.sum()
  return p0, activity


@pytest.mark.parametrize("size, stride", [(3, 1), (2, 3)])
def test_maps_match_closed_form(size, stride):
  arch, params, images = _known_model()
  result = occlusion.compute(arch, params, images, labels=[0, 1], size=size, stride=stride, class_names=["a", "b"],
                             batch_size=7)
  assert result["corners"].tolist() == list(range(0, S - size + 1, stride))
  for b, label in enumerate((0, 1)):
    p0, activity = _closed_form(images[b], size, stride)
    np.testing.assert_allclose(result["p_true"][b], p0 if label == 0 else 1 - p0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result["activity"][b], activity, rtol=1e-5)
    np.testing.assert_array_equal(result["top_label"][b], np.where(p0 > 0.5, 0, 1))
    unoccluded = 1 / (1 + np.exp(-(W * images[b].sum(-1)[REGION].sum() - B)))
    np.testing.assert_allclose(result["p_true_unoccluded"][b], unoccluded if label == 0 else 1 - unoccluded, rtol=1e-5)
    np.testing.assert_allclose(result["activity_unoccluded"][b], images[b].sum(), rtol=1e-5)
  assert len(np.unique(result["top_label"])) == 2  # the occluder flips the decision somewhere
  # The strongest unit of the only map, and its 1-pixel receptive field.
  y, x = np.unravel_index(images[0].sum(-1).argmax(), (S, S))
  assert result["unit"][0].tolist() == [0, y, x] and result["box"][0].tolist() == [y, x, y + 1, x + 1]


def test_localization_on_known_model():
  arch, params, images = _known_model()
  # Occluding REGION hurts class 0 most: the minimum's center lies in REGION's box.
  region_box = [[REGION[0].start, REGION[1].start, REGION[0].stop, REGION[1].stop]] * 2
  hit = localization.score(arch, params, images, [0, 0], region_box, size=3, stride=1)
  assert hit["num_correct"] == 2 and hit["score"] == 1.0 and hit["inside"].all()
  far = localization.score(arch, params, images, [0, 0], [[6, 0, 8, 2]] * 2, size=3, stride=1)
  assert far["score"] == 0.0


def test_localization_score_known_answers():
  maps = {"corners": np.array([0, 4]), "size": np.array(4), "labels": np.array([0, 1, 2, 3]),
          "predicted": np.array([0, 1, 2, 0]), "p_true": np.ones((4, 2, 2))}
  for b, (i, j) in enumerate([(0, 0), (1, 1), (0, 1), (1, 0)]):
    maps["p_true"][b, i, j] = 0.1  # minima centered at (2, 2), (6, 6), (2, 6), (6, 2)
  boxes = [[0, 0, 3, 3], [0, 0, 3, 3], [2, 6, 8, 8], [0, 0, 8, 8]]
  out = localization.localization_score(maps, boxes)
  np.testing.assert_array_equal(out["minimum"], [[2, 2], [6, 6], [2, 6], [6, 2]])
  assert out["inside"].tolist() == [True, False, True, True]
  assert out["num_correct"] == 3 and out["score"] == pytest.approx(2 / 3)  # image 3 is misclassified
  maps["predicted"] = np.array([1, 2, 3, 0])
  assert np.isnan(localization.localization_score(maps, boxes)["score"])


def test_boxes_from_corners():
  # Tiny ImageNet: inclusive (x0, y0, x1, y1) on 64 px -> half-open (y0, x0, y1, x1) on the center 56.
  np.testing.assert_array_equal(localization.boxes_from_corners([[0, 10, 63, 58], [14, 2, 54, 49]], 64, 56),
                                [[6, 0, 55, 56], [0, 10, 46, 51]])


def test_plot_and_summary(tmp_path):
  arch, params, images = _known_model()
  result = occlusion.compute(arch, params, images, size=3, stride=1, mean_image=np.full(3, 100.0))
  np.testing.assert_array_equal(result["labels"], result["predicted"])  # no labels: top-1
  occlusion.plot(result, str(tmp_path / "fig7.png"))
  assert (tmp_path / "fig7.png").stat().st_size > 10_000
  info = json.loads(json.dumps(occlusion.summary(result)))
  assert info["layer"] == "conv1" and len(info["images"]) == 2
  assert info["images"][0]["p_correct_min"] == pytest.approx(float(result["p_true"][0].min()))


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 9}, "size=9 is not allowed; allowed: 1..8"),
    ({"stride": 0}, "stride=0 is not allowed"),
    ({"layer": "fc8"}, "layer='fc8' is not a conv layer"),
    ({"class_names": ["a"]}, "class_names has 1 names; the model has 2 classes"),
    ({"labels": [0, 2]}, "labels=2 is out of range"),
])
def test_bad_input(kwargs, message):
  arch, params, images = _known_model()
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    occlusion.compute(arch, params, images, **kwargs)


def test_bad_localization_input():
  arch, params, images = _known_model()
  with pytest.raises(ValueError, match=r"boxes has shape \(1, 4\); allowed: \[2, 4\]"):
    localization.score(arch, params, images, [0, 0], [[0, 0, 1, 1]], size=3)
  with pytest.raises(ValueError, match="labels is None"):
    localization.score(arch, params, images, None, [[0, 0, 1, 1]] * 2)
