"""Architectures, initialisation, the forward pass and its bad-input errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import models

EXPECTED = {
    # Fig. 3: 110, 55, 26, 13, 13, 13, 13, 6.
    "zfnet": {"conv1": (110, 110, 96), "pool1": (55, 55, 96), "conv2": (26, 26, 256), "pool2": (13, 13, 256),
              "conv3": (13, 13, 384), "conv4": (13, 13, 384), "conv5": (13, 13, 256), "pool5": (6, 6, 256)},
    "alexnet": {"conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256), "pool2": (13, 13, 256),
                "conv3": (13, 13, 384), "conv4": (13, 13, 384), "conv5": (13, 13, 256), "pool5": (6, 6, 256)},
    "zfnet64": {"conv1": (28, 28, 48), "pool1": (14, 14, 48), "conv2": (14, 14, 96), "pool2": (7, 7, 96),
                "conv3": (7, 7, 192), "conv4": (7, 7, 192), "conv5": (7, 7, 128), "pool5": (3, 3, 128)},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_activation_and_switch_shapes(name):
  arch = models.get_arch(name)
  params = models.init_params(arch, jax.random.key(0), num_classes=10)
  images = jnp.zeros((1, arch.input_size, arch.input_size, 3))
  logits, trace = models.forward(arch, params, images)
  assert logits.shape == (1, 10)
  for layer, shape in EXPECTED[name].items():
    got = trace.activations[layer] if layer.startswith("conv") else trace.switches[layer]
    assert got.shape == (1, *shape), layer
  assert trace.switches["pool1"].dtype == jnp.int32
  assert trace.activations["fc6"].shape == (1, 4096 if name != "zfnet64" else 512)
  assert params["fc6"]["kernel"].shape[0] == np.prod(EXPECTED[name]["pool5"])


def test_init_follows_the_paper_and_can_be_overridden():
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), num_classes=100)
  assert set(params) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"}
  assert params["conv1"]["kernel"].shape == (7, 7, 3, 48)
  assert params["fc8"]["kernel"].shape == (512, 100)
  np.testing.assert_allclose(np.std(params["conv3"]["kernel"]), 0.01, rtol=0.02)
  assert not np.any(params["conv3"]["bias"])
  custom = models.init_params(arch, jax.random.key(0), 100, weight_std={"conv1": 0.1}, bias={"fc6": 1.0})
  np.testing.assert_allclose(np.std(custom["conv1"]["kernel"]), 0.1, rtol=0.05)
  np.testing.assert_allclose(np.std(custom["conv2"]["kernel"]), 0.01, rtol=0.05)
  np.testing.assert_array_equal(custom["fc6"]["bias"], 1.0)


def test_ablations_follow_table_3():
  wide = models.get_arch("zfnet-wide-conv345-fc-double")
  assert [wide.layer(n).features for n in ("conv3", "conv4", "conv5", "fc6", "fc7")] == [512, 1024, 512, 8192, 8192]
  small = models.get_arch("zfnet64-no-conv34-fc67")
  assert small.activation_names == ("conv1", "conv2", "conv5", "fc8")
  params = models.init_params(small, jax.random.key(0), num_classes=5)
  assert params["conv5"]["kernel"].shape == (3, 3, 96, 128)
  logits, _ = models.forward(small, params, jnp.zeros((2, 56, 56, 3)))
  assert logits.shape == (2, 5)


def test_dropout_only_in_training():
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), num_classes=10, bias=0.1)
  images = jax.random.normal(jax.random.key(1), (2, 56, 56, 3)) * 50
  eval_a, _ = models.forward(arch, params, images)
  eval_b, _ = models.forward(arch, params, images)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a, _ = models.forward(arch, params, images, train=True, rng=jax.random.key(2))
  train_b, _ = models.forward(arch, params, images, train=True, rng=jax.random.key(3))
  assert not np.allclose(train_a, train_b)


@pytest.mark.parametrize("images,match", [
    (jnp.zeros((56, 56, 3)), "shape"),
    (jnp.zeros((1, 64, 64, 3)), "shape"),
    (jnp.zeros((1, 56, 56, 1)), "shape"),
    (np.zeros((1, 56, 56, 3), np.uint8), "dtype"),
    ([[1.0]], "must be an array"),
])
def test_bad_images_raise_one_value_error(images, match):
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), num_classes=10)
  with pytest.raises(ValueError, match=match):
    models.forward(arch, params, images)


def test_bad_names_raise_value_error():
  with pytest.raises(ValueError, match="arch='vgg' is unknown; allowed: zfnet"):
    models.get_arch("vgg")
  with pytest.raises(ValueError, match="allowed: conv1"):
    models.get_arch("zfnet").layer("conv9")
  with pytest.raises(ValueError, match="rng"):
    arch = models.get_arch("zfnet64")
    models.forward(arch, models.init_params(arch, jax.random.key(0), 2), jnp.zeros((1, 56, 56, 3)), train=True)


def test_vgg16_is_configuration_d():
  arch = models.get_arch("vgg16")
  shapes = arch.shapes()
  assert [shapes[f"pool{i}"] for i in range(1, 6)] == [(112, 112, 64), (56, 56, 128), (28, 28, 256), (14, 14, 512),
                                                        (7, 7, 512)]
  assert len(arch.conv_names) == 13 and shapes["conv13"] == (14, 14, 512)
  params = jax.eval_shape(lambda key: models.init_params(arch, key), jax.random.key(0))
  assert params["fc6"]["kernel"].shape == (25088, 4096)
  assert sum(np.prod(p.shape) for p in jax.tree.leaves(params)) == 138_357_544  # torchvision's vgg16 count
  assert "vgg16" in models.ARCH_NAMES and not any(n.startswith("vgg16-") for n in models.ARCH_NAMES)


def test_forward_inside_jit_with_closed_over_images():
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), num_classes=3)
  images = jax.random.normal(jax.random.key(1), (2, arch.input_size, arch.input_size, 3))
  eager, _ = models.forward(arch, params, images)
  closed, _ = jax.jit(lambda p: models.forward(arch, p, images))(params)
  np.testing.assert_allclose(closed, eager, rtol=1e-5, atol=1e-6)
  bad = images.at[1, 0, 0, 0].set(jnp.nan)
  with pytest.raises(ValueError, match="NaN or Inf"):
    jax.jit(lambda p: models.forward(arch, p, bad))(params)
