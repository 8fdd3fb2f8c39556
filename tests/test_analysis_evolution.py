"""Evolution (Fig. 4): each checkpoint read once, jitted functions reused, columns equal top-1."""
import json

import jax
import numpy as np
import pytest

from zf_jax import checkpoint, models
from zf_jax.analysis import evolution, topk

WIDTHS = {"conv1": 8, "conv2": 12, "conv3": 12, "conv4": 12, "conv5": 8, "fc6": 16, "fc7": 16}
ARCH = models.ablate(models.get_arch("zfnet64"), features=WIDTHS, name="zfnet64-narrow")
MEAN = np.full((64, 64, 3), 100.0, np.float32)


def _params(seed):
  shapes = jax.eval_shape(lambda: models.init_params(ARCH, jax.random.key(0), num_classes=5))
  rng = np.random.default_rng(seed)
  return {layer: {"kernel": rng.normal(0, 0.01 if layer == "conv1" else 0.1, p["kernel"].shape).astype(np.float32),
                  "bias": np.full(p["bias"].shape, 0.05, np.float32)} for layer, p in shapes.items()}


def _loaded(step, arch=ARCH):
  return checkpoint.Loaded(arch=arch, params=_params(step), mean_image=MEAN, num_classes=5, class_names=None,
                           step=step, epoch=step / 10, config={})


def _examples(n=12):
  return np.random.default_rng(7).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)


@pytest.fixture
def workdir(monkeypatch):
  """A fake workdir of checkpoints at steps 10, 20, 50 that counts every load."""
  loads = []
  monkeypatch.setattr(checkpoint, "list_steps", lambda workdir: [10, 20, 50])

  def load(workdir, step=None, epoch=None):
    loads.append(step)
    return _loaded(step)
  monkeypatch.setattr(checkpoint, "load_for_analysis", load)
  return loads


def test_reads_each_checkpoint_once_and_compiles_once(workdir):
  layers, maps = ["conv1", "conv3"], [0, 5]
  evolution.compute([_loaded(10)], _examples(), layers, maps, batch_size=8)  # compile for this shape
  sizes = topk.update._cache_size(), topk._forward_project._cache_size()
  result = evolution.compute(evolution.checkpoints("wd"), _examples(), layers, maps, batch_size=8)
  assert workdir == [10, 20, 50]
  assert (topk.update._cache_size(), topk._forward_project._cache_size()) == sizes
  np.testing.assert_array_equal(result["steps"], [10, 20, 50])
  np.testing.assert_allclose(result["epochs"], [1, 2, 5])
  assert result["conv3/projections"].shape == (2, 3, 43, 43, 3)
  # Each column: the strongest activation of the map over all examples, for that checkpoint's params.
  for t, step in enumerate((10, 20, 50)):
    inputs = evolution._inputs(_examples(), _loaded(step))
    acts = models.forward(ARCH, _params(step), inputs)[1].activations["conv3"]
    np.testing.assert_allclose(result["conv3/values"][:, t], np.asarray(acts).max(axis=(0, 1, 2))[maps], rtol=1e-5)
  summary = json.loads(json.dumps(evolution.summary(result)))
  assert summary["conv1"]["maps"]["5"]["images"] == result["conv1/images"][1].tolist()


def test_one_checkpoint_equals_topk_top1():
  loaded = _loaded(10)
  examples = _examples()
  result = evolution.compute([loaded], examples, ["conv2"], maps=[1, 3, 4], batch_size=8)
  want = topk.compute(ARCH, loaded.params, evolution._inputs(examples, loaded), ["conv2"], maps=[1, 3, 4], k=1,
                      batch_size=8)
  for name in ("values", "images", "positions", "projections"):
    np.testing.assert_array_equal(result[f"conv2/{name}"], want[f"conv2/{name}"], err_msg=name)


def test_settled_epochs():
  images = np.array([[1, 1, 2, 2], [3, 3, 3, 3], [1, 2, 1, 2]])
  np.testing.assert_array_equal(evolution.settled_epochs(images, np.array([1, 2, 5, 10])), [5, 1, 10])


def test_bad_input(workdir):
  with pytest.raises(ValueError, match=r"steps=99 have no checkpoint in 'wd'; allowed: 10,20,50"):
    evolution.checkpoints("wd", [10, 99])
  assert workdir == []  # nothing loaded before the steps are checked
  other = models.ablate(ARCH, remove=("conv4",), name="other")
  with pytest.raises(ValueError, match="has arch 'other', the first had 'zfnet64-narrow'"):
    evolution.compute([_loaded(10), _loaded(20, other)], _examples(), ["conv1"], [0], batch_size=8)
  with pytest.raises(ValueError, match=r"allowed: uint8 \[N, R, R, 3\]"):
    evolution.compute([_loaded(10)], _examples().astype(np.float32), ["conv1"], [0])
