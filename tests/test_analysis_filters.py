"""Layer-1 filter numbers (Fig. 6) on filters with known answers."""
import json

import numpy as np
import pytest

from zf_jax.analysis import filters


def _grating(k, frequency, angle=0.0):
  """A k x k cosine grating of `frequency` cycles per pixel, the same in all colours: [k, k, 3]."""
  y, x = np.mgrid[0:k, 0:k] - (k - 1) / 2
  g = np.cos(2 * np.pi * frequency * (np.cos(angle) * x + np.sin(angle) * y))
  return np.repeat(g[..., None], 3, axis=-1)


def _params(*filters_):
  return {"conv1": {"kernel": np.stack(filters_, axis=-1).astype(np.float32), "bias": np.zeros(len(filters_))}}


@pytest.mark.parametrize("k", [7, 11])
def test_gratings_land_in_their_frequency_band(k):
  # cycles/pixel: 0 (a colour blob), 0.25 and 0.42, i.e. 0, 0.5 and 0.84 of Nyquist.
  result = filters.compute(_params(_grating(k, 0.0), _grating(k, 0.25, 0.5), _grating(k, 0.42, 1.0)))
  np.testing.assert_array_equal(result["peak_band"], [0, 1, 2])
  np.testing.assert_allclose(result["peak_frequency"][1:], [0.5, 0.84], atol=0.02)
  spectra = filters.power_spectra(result["filters"])
  bands = filters.band_of(filters.radial_frequency())
  share = np.array([[s[bands == b].sum() for b in range(3)] for s in spectra])
  np.testing.assert_allclose(share.sum(1), 1.0, rtol=1e-6)
  assert (share.argmax(1) == [0, 1, 2]).all() and (share.max(1) > 0.8).all()
  np.testing.assert_allclose(result["band_power"], share.mean(0), rtol=1e-6)
  np.testing.assert_allclose(result["radial_profile"].sum(), 1.0, rtol=1e-6)
  coverage = filters.summary(result)["frequency"]["filters_peaking_in_band"]
  assert coverage == {"low": 1, "mid": 1, "high": 1}


def test_dead_and_dominant_filters():
  rng = np.random.default_rng(0)
  live = [rng.normal(0, 0.1, (7, 7, 3)) for _ in range(8)]
  rms = [np.sqrt((f ** 2).mean()) for f in live]
  weak = live[0] * 0.15 * np.median(rms) / rms[0]    # under a fifth of the median: dead
  faint = live[1] * 0.25 * np.median(rms) / rms[1]   # over it: alive
  result = filters.compute(_params(*live, weak, faint, np.zeros((7, 7, 3))))
  np.testing.assert_array_equal(np.flatnonzero(result["dead"]), [8, 10])
  summary = filters.summary(result)
  assert summary["dead"]["count"] == 2 and summary["dead"]["indices"] == [8, 10]
  # One filter 50x the others: it holds 50 / (50 + 7) of the summed rms.
  same = [live[0] * (50 if i == 0 else 1) for i in range(8)]
  dominance = filters.summary(filters.compute(_params(*same)))["dominance"]
  assert dominance["top_filter"] == 0
  np.testing.assert_allclose(dominance["top_share"], 50 / 57, rtol=1e-6)
  np.testing.assert_allclose(dominance["max_over_median"], 50, rtol=1e-6)
  json.dumps(summary)


def test_gini_against_mean_absolute_difference():
  values = np.random.default_rng(1).exponential(size=13)
  brute = np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * values.mean())
  np.testing.assert_allclose(filters.gini(values), brute, rtol=1e-12)
  assert filters.gini(np.ones(5)) == 0
  np.testing.assert_allclose(filters.gini([0, 0, 0, 4]), 3 / 4)


def test_grid_is_on_one_common_scale():
  image = filters.grid(np.stack([np.full((3, 3, 3), 2.0), np.full((3, 3, 3), -1.0), np.zeros((3, 3, 3))]))
  assert image.shape == (7, 7, 3)
  np.testing.assert_allclose([image[0, 0, 0], image[0, 4, 0], image[4, 0, 0]], [1.0, 0.25, 0.5])


def test_compare_writes_a_side_by_side_figure(tmp_path):
  rng = np.random.default_rng(2)
  a = _params(*[rng.normal(0, 0.1, (7, 7, 3)) for _ in range(6)])
  b = _params(*[rng.normal(0, 0.1, (11, 11, 3)) for _ in range(6)])
  numbers = filters.compare([a, b], ["ZF 7x7", "AlexNet 11x11"], str(tmp_path / "filters.png"))
  assert set(numbers) == {"ZF 7x7", "AlexNet 11x11"} and numbers["AlexNet 11x11"]["kernel_size"] == 11
  assert (tmp_path / "filters.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="must name each of the 2 models once"):
    filters.compare([a, b], ["x", "x"])
  with pytest.raises(ValueError, match="layer='conv9' is not a conv layer of these params; allowed: conv1"):
    filters.compute(a, layer="conv9")
