"""Fig. 5's invariance analysis: the warps against numpy, known distances, and bad-input errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import models
from zf_jax.analysis import invariance

TINY = models.Arch("tiny", 16, (
    models.Conv("conv1", 4, 3, 2, ((1, 1), (1, 1))), models.Pool("pool1"),
    models.Dense("fc7", 8), models.Dense("fc8", 3, relu=False)))


def _model(arch=TINY, batch=2):
  params = models.init_params(arch, jax.random.key(0), num_classes=3, weight_std=0.3, bias=0.1)
  images = np.asarray(jax.random.normal(jax.random.key(1), (batch, arch.input_size, arch.input_size, 3))) * 50
  return params, images


def test_warps_match_numpy():
  image = np.arange(8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3)
  down = invariance.warp(image, invariance.matrices("translation", [2]))[0]
  want = np.zeros_like(image[0])
  want[2:] = image[0, :-2]
  np.testing.assert_array_equal(down, want)
  rot90 = invariance.warp(image, invariance.matrices("rotation", [90]))[0]
  np.testing.assert_allclose(rot90, np.rot90(image[0]), atol=1e-4)  # counter-clockwise on screen
  np.testing.assert_array_equal(invariance.warp(image, invariance.matrices("scale", [1.0]))[0], image[0])
  np.testing.assert_allclose(invariance.warp(image, invariance.matrices("rotation", [360]))[0], image[0], atol=1e-4)
  # The image is linear in (y, x), so bilinear sampling is exact: magnified 2x about the center
  # c = 3.5, output pixel p shows input pixel c + (p - c) / 2.
  up = invariance.warp(image, invariance.matrices("scale", [2.0]))[0]
  src = 3.5 + (np.arange(8) - 3.5) / 2
  want = (src[:, None, None] * 8 + src[None, :, None]) * 3 + np.arange(3)
  np.testing.assert_allclose(up, want, atol=1e-4)


def test_identity_and_full_turn_give_zero_distance_and_the_same_output():
  params, images = _model()
  sweeps = {"translation": [0, 3], "scale": [1.0, 0.5], "rotation": [0, 45, 360]}
  result = invariance.compute(TINY, params, images, labels=[2, 1], sweeps=sweeps)
  probs = np.asarray(jax.nn.softmax(models.forward(TINY, params, jnp.asarray(images))[0]))
  for kind, zero in (("translation", 0), ("scale", 0), ("rotation", 0), ("rotation", 2)):
    np.testing.assert_allclose(result[f"{kind}/distance"][:, :, zero], 0.0, atol=1e-5)
    np.testing.assert_allclose(result[f"{kind}/p_true"][:, zero], probs[[0, 1], [2, 1]], rtol=1e-4)
  assert (result["translation/distance"][:, :, 1] > 1e-3).all()
  assert result["layers"].tolist() == ["conv1", "fc7"]
  assert result["translation/examples"].shape == (2, 2, 16, 16, 3)


def test_distance_is_relative_euclidean():
  params, images = _model()
  result = invariance.compute(TINY, params, images, sweeps={"rotation": [30]}, batch_size=1)
  warped = invariance.warp(jnp.asarray(images), invariance.matrices("rotation", [30, 30]))
  for layer_index, layer in enumerate(("conv1", "fc7")):
    f = np.asarray(models.forward(TINY, params, jnp.asarray(images[:1]))[1].activations[layer]).reshape(1, -1)
    g = np.asarray(models.forward(TINY, params, warped[:1])[1].activations[layer]).reshape(1, -1)
    want = np.linalg.norm(g - f) / np.linalg.norm(f)
    np.testing.assert_allclose(result["rotation/distance"][layer_index, 0, 0], want, rtol=1e-4)
  # No labels: the untransformed image's top-1 class.
  logits = models.forward(TINY, params, jnp.asarray(images))[0]
  np.testing.assert_array_equal(result["labels"], np.argmax(logits, 1))


def test_shift_by_conv1_stride_shifts_conv1_maps():
  params, images = _model()
  stride = TINY.layer("conv1").stride
  moved = invariance.warp(jnp.asarray(images), invariance.matrices("translation", [stride, stride]))
  a = np.asarray(models.forward(TINY, params, jnp.asarray(images))[1].activations["conv1"])
  b = np.asarray(models.forward(TINY, params, moved)[1].activations["conv1"])
  # One map row down; the rows brought in are the mean (0), as conv1's zero padding was.
  np.testing.assert_allclose(b[:, 1:], a[:, :-1], rtol=1e-5, atol=1e-4)
  assert not np.allclose(a, b, atol=1e-2)


def test_default_sweeps_plot_and_summary(tmp_path):
  sweeps = invariance.default_sweeps(224)
  assert sweeps["translation"][[0, -1]].tolist() == [-56, 56] and np.diff(sweeps["translation"])[0] == 8
  assert 1.0 in sweeps["scale"] and sweeps["rotation"][[0, -1]].tolist() == [0, 360]
  params, images = _model()
  sweeps = {k: v[::4] for k, v in invariance.default_sweeps(16).items()}
  result = invariance.compute(TINY, params, images, sweeps=sweeps, mean_image=np.full(3, 120.0))
  invariance.plot(result, str(tmp_path / "fig5.png"))
  assert (tmp_path / "fig5.png").stat().st_size > 10_000
  info = json.loads(json.dumps(invariance.summary(result)))
  assert len(info["rotation"]["fc7"]) == 2 and len(info["rotation"]["fc7"][0]) == len(info["rotation"]["values"])


@pytest.mark.parametrize("kwargs, message", [
    ({"sweeps": {"shear": [1]}}, "transform='shear' is unknown"),
    ({"sweeps": {"scale": [0.0]}}, "scale=0.0 is not allowed"),
    ({"sweeps": {}}, "sweeps="),
    ({"layers": ["pool1"]}, "layers=('pool1',) is not allowed"),
    ({"labels": [0]}, "labels has shape (1,)"),
    ({"labels": [0, 3]}, "labels=3 is out of range"),
])
def test_bad_input(kwargs, message):
  params, images = _model()
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
    invariance.compute(TINY, params, images, **kwargs)
