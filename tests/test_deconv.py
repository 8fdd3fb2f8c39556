"""The deconvnet (section 2.1) against independent references, and its bad-input errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zf_jax import deconv, models


def _model(name="zfnet64", bias=0.05, key=0):
  arch = models.get_arch(name)
  # A larger conv1 std and a small positive bias keep every layer active on random images.
  params = models.init_params(arch, jax.random.key(key), num_classes=10, weight_std={"conv1": 0.01, "conv2": 0.05,
                              "conv3": 0.05, "conv4": 0.05, "conv5": 0.05, "fc6": 0.05, "fc7": 0.05}, bias=bias)
  images = jax.random.normal(jax.random.key(key + 1), (2, arch.input_size, arch.input_size, 3)) * 60
  _, trace = models.forward(arch, params, images)
  return arch, params, images, trace


def _strongest(trace, layer, b):
  act = np.asarray(trace.activations[layer][b])
  return np.unravel_index(np.argmax(act), act.shape)  # (y, x, c)


def test_conv1_projection_is_activation_times_filter():
  arch, params, _, trace = _model()
  y, x = 5, 0  # x = 0: the filter is clipped by the padding on the left
  channels = np.argmax(trace.activations["conv1"][:, y, x], axis=-1)  # one per image
  px = deconv.project(arch, params, trace, "conv1", channel=channels, y=y, x=x)
  for b, c in enumerate(channels):
    a = float(trace.activations["conv1"][b, y, x, c])
    assert a > 0
    want = np.zeros((56, 56, 3), np.float32)
    for dy in range(7):
      for dx in range(7):
        iy, ix = 2 * y - 3 + dy, 2 * x - 3 + dx
        if 0 <= iy < 56 and 0 <= ix < 56:
          want[iy, ix] = a * np.asarray(params["conv1"]["kernel"][dy, dx, :, c])
    np.testing.assert_allclose(px[b], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["zfnet64", "alexnet64"])
def test_projection_lies_inside_receptive_field(name):
  arch, params, _, trace = _model(name)
  for layer in arch.conv_names:
    y, x, c = _strongest(trace, layer, 0)
    px = np.asarray(deconv.project(arch, params, trace, layer, channel=c, y=y, x=x)[0])
    y0, x0, y1, x1 = deconv.receptive_field(arch, layer, y, x)
    support = np.abs(px).sum(-1) > 0
    assert support.any(), layer
    outside = support.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any(), (layer, (y0, x0, y1, x1))


def test_receptive_field_of_zfnet():
  arch = models.get_arch("zfnet")
  assert deconv.receptive_field(arch, "conv1", 0, 0) == (0, 0, 6, 6)  # 7x7 minus one row of padding
  assert deconv.receptive_field(arch, "conv1", 50, 60) == (99, 119, 106, 126)
  y0, x0, y1, x1 = deconv.receptive_field(arch, "conv5", 6, 6)
  assert (y1 - y0, x1 - x0) == (139, 139)
  assert deconv.receptive_field(arch, "fc6", 0, 0) == (0, 0, 224, 224)


def test_zfnet224_projection_inside_receptive_field():
  arch = models.get_arch("zfnet")
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.05)
  images = jax.random.normal(jax.random.key(1), (1, 224, 224, 3)) * 60
  _, trace = models.forward(arch, params, images)
  y, x, c = _strongest(trace, "conv5", 0)
  px = np.asarray(deconv.project(arch, params, trace, "conv5", c, y, x)[0])
  y0, x0, y1, x1 = deconv.receptive_field(arch, "conv5", y, x)
  support = np.argwhere(np.abs(px).sum(-1) > 0)
  assert len(support) and support.min(0).tolist() >= [y0, x0] and support.max(0).tolist() < [y1, x1]


# --- A reference written independently of zf_jax.deconv: jax.vjp through the forward pass with JAX's
# own max-pool, where the ReLU's backward is replaced per rule by a custom_vjp. -------------------------

def _relu_with_backward(rule):
  @jax.custom_vjp
  def relu(v):
    return jnp.maximum(v, 0.0)

  def fwd(v):
    return relu(v), v

  def bwd(v, g):
    if rule == "deconvnet":
      return (jnp.maximum(g, 0.0),)
    if rule == "guided":
      return (jnp.maximum(g, 0.0) * (v > 0),)
    return (g * (v > 0),)

  relu.defvjp(fwd, bwd)
  return relu


def _reference_forward(arch, params, images, upto, rule):
  relu = _relu_with_backward(rule)
  x = images
  for spec in arch.layers:
    if isinstance(spec, models.Conv):
      x = lax.conv_general_dilated(x, params[spec.name]["kernel"], (spec.stride,) * 2, spec.padding,
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
      x = relu(x + params[spec.name]["bias"])
    elif isinstance(spec, models.Pool):
      x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), *spec.padding, (0, 0)))
    elif isinstance(spec, models.Dense):
      x = x.reshape(x.shape[0], -1) @ params[spec.name]["kernel"] + params[spec.name]["bias"]
      x = relu(x) if spec.relu else x
    if spec.name == upto:
      return x
  raise AssertionError(upto)


@pytest.mark.parametrize("rule", deconv.RULES)
@pytest.mark.parametrize("layer", ["conv2", "conv5", "fc7"])
def test_projection_equals_vjp_with_replaced_relu_backward(rule, layer):
  base = models.get_arch("zfnet64")
  arch = dataclasses.replace(base, name="zfnet64-no-norm",
                             layers=tuple(l for l in base.layers if not isinstance(l, models.Norm)))
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.01)
  images = jax.random.normal(jax.random.key(1), (2, 56, 56, 3)) * 60
  _, trace = models.forward(arch, params, images)
  act = trace.activations[layer]
  if act.ndim == 4:
    y, x, c = _strongest(trace, layer, 0)
    unit = dict(channel=c, y=y, x=x)
    cotangent = jnp.zeros_like(act).at[:, y, x, c].set(act[:, y, x, c])
  else:
    c = int(np.argmax(act[0]))
    unit = dict(channel=c, y=0, x=0)
    cotangent = jnp.zeros_like(act).at[:, c].set(act[:, c])
  assert float(jnp.abs(cotangent).max()) > 0
  out, vjp = jax.vjp(lambda v: _reference_forward(arch, params, v, layer, rule), images)
  np.testing.assert_allclose(out, act, rtol=1e-4, atol=1e-4)
  want = vjp(cotangent)[0]
  got = deconv.project(arch, params, trace, layer, rule=rule, **unit)
  scale = float(jnp.abs(want).max())
  assert scale > 0
  np.testing.assert_allclose(got / scale, want / scale, atol=2e-5)


def test_rules_differ():
  arch, params, _, trace = _model()
  y, x, c = _strongest(trace, "conv5", 0)
  outs = [deconv.project(arch, params, trace, "conv5", c, y, x, rule=r) for r in deconv.RULES]
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_batched_projection_equals_loop_and_compiles_once():
  arch, params, _, trace = _model()
  act = np.asarray(trace.activations["conv4"])
  rng = np.random.default_rng(0)
  units = np.stack([rng.integers(0, 192, 6), rng.integers(0, 7, 6), rng.integers(0, 7, 6)], axis=-1)
  units[:, 0] = [int(np.argmax(act[0, y, x])) for _, y, x in units]  # active channels
  deconv._project_units.clear_cache()
  many = deconv.project_many(arch, params, trace, "conv4", units)
  assert many.shape == (2, 6, 56, 56, 3)
  assert deconv._project_units._cache_size() == 1
  for n, (c, y, x) in enumerate(units):
    one = deconv.project_many(arch, params, trace, "conv4", units[n:n + 1])
    np.testing.assert_allclose(many[:, n], one[:, 0], rtol=1e-5, atol=1e-6)
    single = deconv.project(arch, params, trace, "conv4", int(c), int(y), int(x))
    np.testing.assert_allclose(many[:, n], single, rtol=1e-5, atol=1e-6)
  assert deconv._project_units._cache_size() == 2  # N=6 and N=1: once per shape, not once per unit
  assert float(jnp.abs(many).max()) > 0


def test_per_image_units_and_whole_maps():
  arch, params, _, trace = _model()
  per_image = np.array([[[3, 1, 2]], [[5, 4, 4]]])
  got = deconv.project_many(arch, params, trace, "conv3", per_image)
  np.testing.assert_allclose(got[0, 0], deconv.project(arch, params, trace, "conv3", 3, 1, 2)[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[1, 0], deconv.project(arch, params, trace, "conv3", 5, 4, 4)[1], rtol=1e-5, atol=1e-6)
  # From conv1 (one rectification, of non-negative activations) the deconvnet is linear: a whole
  # map is the sum of its units. Higher up, the rectification at each layer makes it non-linear.
  c = _strongest(trace, "conv1", 0)[2]
  whole = deconv.project(arch, params, trace, "conv1", c)
  units = np.array([[c, y, x] for y in range(28) for x in range(28)])
  summed = deconv.project_many(arch, params, trace, "conv1", units).sum(1)
  np.testing.assert_allclose(whole, summed, rtol=1e-4, atol=1e-4 * float(jnp.abs(whole).max()))


def test_projection_under_user_jit():
  arch, params, _, trace = _model()
  f = jax.jit(lambda t, c: deconv.project(arch, params, t, "conv2", c, 3, 3))
  np.testing.assert_allclose(f(trace, 4), deconv.project(arch, params, trace, "conv2", 4, 3, 3), rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer="conv9", channel=0, y=0, x=0), "layer='conv9'.*allowed: conv1"),
    (dict(layer="pool1", channel=0, y=0, x=0), "layer='pool1'"),
    (dict(layer="conv5", channel=128, y=0, x=0), r"channel=128 is out of range; allowed: 0\.\.127"),
    (dict(layer="conv5", channel=0, y=7, x=0), r"y=7 is out of range; allowed: 0\.\.6"),
    (dict(layer="conv5", channel=0, y=0, x=-1), r"x=-1 is out of range"),
    (dict(layer="conv5", channel=0, y=0), "both y and x"),
    (dict(layer="conv5", channel=0, y=0, x=0, rule="lrp"), "rule='lrp' is unknown"),
])
def test_bad_projection_arguments(kwargs, match):
  arch, params, _, trace = _model()
  with pytest.raises(ValueError, match=match):
    deconv.project(arch, params, trace, **kwargs)


def test_bad_units_and_receptive_field_arguments():
  arch, params, _, trace = _model()
  with pytest.raises(ValueError, match="units has shape"):
    deconv.project_many(arch, params, trace, "conv5", np.zeros((4, 2), np.int32))
  with pytest.raises(ValueError, match="units has shape"):
    deconv.project_many(arch, params, trace, "conv5", np.zeros((4, 3), np.float32))
  with pytest.raises(ValueError, match=r"y=9 is out of range for 'conv5'"):
    deconv.receptive_field(arch, "conv5", 9, 0)
  with pytest.raises(ValueError, match="layer='conv6'"):
    deconv.receptive_field(arch, "conv6", 0, 0)
