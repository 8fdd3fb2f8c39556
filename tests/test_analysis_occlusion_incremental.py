"""Incremental occlusion (Krypton-style) against a full forward pass per occluder position: the same
p(correct), strongest-map activity and top class, at 64 and 224 px, with pools, norms and padding at
the maps' edges; the window arithmetic; the approximate mode."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import models
from zf_jax.analysis import incremental, occlusion

STD = {"conv1": 0.01, "conv2": 0.05, "conv3": 0.05, "conv4": 0.05, "conv5": 0.05, "fc6": 0.05, "fc7": 0.05}


def _model(arch, batch=2, key=0):
  """Random weights that keep every layer active; the classifier scaled to logits of std 2."""
  params = models.init_params(arch, jax.random.key(key), num_classes=10, weight_std=STD, bias=0.05)
  images = jax.random.normal(jax.random.key(key + 1), (batch, arch.input_size, arch.input_size, 3)) * 60
  logits, _ = models.forward(arch, params, images)
  classifier = arch.layers[-1].name
  params[classifier] = jax.tree.map(lambda a: a * 2 / float(jnp.std(logits)), params[classifier])
  return params, np.asarray(images)


def _assert_same(arch, params, images, size, stride, batch_size, labels=None):
  exact = occlusion.occlusion_maps(arch, params, images, labels, size, stride, batch_size=batch_size)
  full = occlusion.occlusion_maps(arch, params, images, labels, size, stride, batch_size=batch_size, mode="full")
  np.testing.assert_allclose(exact["p_true"], full["p_true"], rtol=1e-5)
  np.testing.assert_allclose(exact["activity"], full["activity"], rtol=1e-5)
  np.testing.assert_array_equal(exact["top_label"], full["top_label"])
  for key in ("labels", "map"):
    np.testing.assert_array_equal(exact[key], full[key])
  for key in ("p_true_unoccluded", "activity_unoccluded"):  # from batches of other sizes
    np.testing.assert_allclose(exact[key], full[key], rtol=1e-5)
  assert np.ptp(full["p_true"]) > 1e-3 and np.ptp(full["activity"]) > 0  # the occluder does change things
  return exact


def test_exact_equals_full_at_64px():
  arch = models.get_arch("zfnet64")
  params, images = _model(arch)
  # Corners 0, 7, ..., 42: the occluder touches every edge; windows stay partial up to conv2 (Plan below).
  out = _assert_same(arch, params, images, 14, 7, batch_size=20)
  assert out["p_true"].shape == (2, 7, 7)


def test_exact_equals_full_at_224px():
  arch = models.get_arch("zfnet")
  params, images = _model(arch, batch=1)
  # A small occluder at the corners and the center: windows all the way up to conv5 (10 x 10 of 13 x 13).
  assert incremental.plan(arch, 16) == incremental.Plan((11, 7, 7, 6, 4, 4, 6, 8, 10), arch.layer_names.index("pool5"))
  _assert_same(arch, params, images, 16, 104, batch_size=9, labels=[3])


def test_exact_on_odd_layers():
  """Pool with padding on both sides and a 2x2 window, norm after pool, strided conv padded on one
  side, a 1x1 conv, and a layer (conv4) whose window covers its whole map (dense from there)."""
  arch = models.Arch("odd", 32, (
      models.Conv("conv1", 8, 5, 1, ((2, 2), (2, 2))), models.Pool("pool1", 3, 2, ((1, 1), (1, 1))),
      models.Norm("norm1", size=3), models.Conv("conv2", 8, 3, 2, ((1, 0), (1, 0))),
      models.Pool("pool2", 2, 1), models.Conv("conv3", 6, 1), models.Conv("conv4", 6, 3, 1, ((1, 1), (1, 1))),
      models.Dense("fc8", 10, relu=False)))
  params, images = _model(arch)
  windows, dense_from = dataclasses.astuple(incremental.plan(arch, 3))
  # (n + k - 2) // stride + 1 outputs: conv1 (3 + 3) + 1 = 7 of 32; pool1 8 // 2 + 1 = 5 of 16; norm1 5;
  # conv2 6 // 2 + 1 = 4 of 8; pool2 4 + 1 = 5 of 7; conv3 5; conv4 7 of 7: whole maps from there.
  assert windows == (7, 5, 5, 4, 5, 5) and arch.layers[dense_from].name == "conv4"
  for size, stride in ((3, 2), (5, 27)):
    _assert_same(arch, params, images, size, stride, batch_size=7)


def test_plan_and_flops_zfnet64():
  arch = models.get_arch("zfnet64")
  params, _ = _model(arch)
  # conv1 (7x7 s2): (14 + 5) // 2 + 1 = 10; pool1 (3x3 s2): (10 + 1) // 2 + 1 = 6; norm1 6; conv2 (3x3): 8 > 7 ...
  assert incremental.plan(arch, 14) == incremental.Plan((10, 6, 6, 8, 5, 5), 6)
  ours, full = incremental.flops(arch, params, 14)
  conv = lambda name, side: 2 * np.prod(params[name]["kernel"].shape) * side ** 2
  fc = sum(2 * np.prod(params[n]["kernel"].shape) for n in ("fc6", "fc7", "fc8"))
  assert full == pytest.approx(conv("conv1", 28) + conv("conv2", 14) + sum(conv(f"conv{i}", 7) for i in (3, 4, 5)) + fc)
  assert ours == pytest.approx(conv("conv1", 10) + conv("conv2", 8) + sum(conv(f"conv{i}", 7) for i in (3, 4, 5)) + fc)


def test_approximate_mode():
  arch = models.get_arch("zfnet64")
  params, images = _model(arch, batch=1)
  # tau = 1 is the exact plan; a small tau keeps windows small all the way up.
  assert incremental.plan(arch, 14, 1.0) == incremental.plan(arch, 14)
  small = incremental.plan(arch, 14, 0.3)
  assert small.dense_from == arch.layer_names.index("fc6") and max(small.windows) <= 9
  exact = occlusion.occlusion_maps(arch, params, images, size=14, stride=7)
  approx = occlusion.occlusion_maps(arch, params, images, size=14, stride=7, mode="approximate", threshold=0.3)
  assert not np.allclose(approx["p_true"], exact["p_true"], rtol=1e-5)
  error = occlusion.approximation_error(exact, approx)
  assert 0 < error["max_abs_p_true"] < 0.5 and -1 <= error["ssim_p_true"] < 1


def test_bad_mode():
  arch = models.get_arch("zfnet64")
  params, images = _model(arch, batch=1)
  with pytest.raises(ValueError, match="mode='fast' is not allowed"):
    occlusion.occlusion_maps(arch, params, images, mode="fast")
  with pytest.raises(ValueError, match="threshold=0 is not allowed"):
    occlusion.occlusion_maps(arch, params, images, mode="approximate", threshold=0)


def _plane_and_step(index):
  """A synthetic map: activity a plane, p(correct) a plane plus a step at row 10, top class 1 below it."""
  y, x = index[:, 0].astype(float), index[:, 1].astype(float)
  return 3 * y - x, 0.01 * y + 0.02 * x + (y >= 10), (y >= 10).astype(np.int32)


def test_drill_down_refines_only_where_the_map_changes():
  seen = []
  evaluate = lambda index: (seen.append(index), _plane_and_step(index))[1]
  activity, p_true, top, computed = occlusion.drill_down(evaluate, 25, 4, 0.2)
  everything = np.stack(np.meshgrid(np.arange(25), np.arange(25), indexing="ij"), -1).reshape(-1, 2)
  want = [v.reshape(25, 25) for v in _plane_and_step(everything)]
  np.testing.assert_allclose(activity, want[0], atol=1e-12)  # a plane is interpolated exactly
  np.testing.assert_allclose(p_true, want[1], atol=1e-12)  # refined around the step: no interpolated value off
  np.testing.assert_array_equal(top, want[2])
  index = np.concatenate(seen)
  assert len(index) == len(np.unique(index, axis=0)) == computed.sum()  # each position evaluated once
  # Level 0: rows and columns 0, 4, ..., 24 (49). Spacing 2: the cells of rows 8..12 (the step) get rows 8, 10,
  # 12 at even columns (25 new). Spacing 1: the step lies in rows 8..10, all computed (49 new); rows 10..12
  # agree, row 11 is interpolated; so is everything off the step (the plane's spread is below the tolerance).
  assert computed[::4, ::4].all() and computed[8:11].all() and computed[12, ::2].all()
  assert computed.sum() == 49 + 25 + 49 and not computed[11].any() and not computed[1:4].any()


def test_drill_down_tolerance_zero_and_coarse_one_compute_everything():
  for coarse, tolerance in ((4, 0.0), (1, 0.5)):
    activity, p_true, top, computed = occlusion.drill_down(_plane_and_step, 13, coarse, tolerance)
    assert computed.all()


def test_coarse_to_fine_mode():
  arch = models.get_arch("zfnet64")
  params, images = _model(arch, batch=2)
  exact = occlusion.occlusion_maps(arch, params, images, size=8, stride=4, batch_size=32)
  same = occlusion.occlusion_maps(arch, params, images, size=8, stride=4, batch_size=32, mode="coarse_to_fine",
                                  coarse=4, tolerance=0.0)
  assert same["computed"].all() and exact["computed"].all()
  for key in ("activity", "p_true", "p_true_unoccluded"):  # up to rounding: computed in chunks of other sizes
    np.testing.assert_allclose(same[key], exact[key], rtol=1e-5)
  np.testing.assert_array_equal(same["top_label"], exact["top_label"])
  approx = occlusion.occlusion_maps(arch, params, images, size=8, stride=4, batch_size=32, mode="coarse_to_fine",
                                    coarse=4, tolerance=1.0)
  computed = approx["computed"]
  level0 = np.zeros((13, 13), bool)
  level0[np.ix_([0, 4, 8, 12], [0, 4, 8, 12])] = True
  # A cell of level 0 cannot spread more than the whole map: nothing refined, the rest interpolated.
  np.testing.assert_array_equal(computed, np.stack([level0, level0]))
  for key in ("activity", "p_true"):  # the computed ones are the exact ones
    np.testing.assert_allclose(approx[key][computed], exact[key][computed], rtol=1e-5)
  np.testing.assert_array_equal(approx["top_label"][computed], exact["top_label"][computed])
  error = occlusion.approximation_error(exact, approx)
  assert error["max_abs_p_true"] > 0 and error["ssim_p_true"] < 1
  with pytest.raises(ValueError, match="coarse=0, tolerance=0.1 are not allowed"):
    occlusion.occlusion_maps(arch, params, images, mode="coarse_to_fine", coarse=0, tolerance=0.1)
