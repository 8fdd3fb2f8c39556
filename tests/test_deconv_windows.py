"""Single conv units are projected on windows that follow their receptive fields: the same numbers as
the deconvnet on whole maps (`deconv.project_signal`), at every position, edges included."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import deconv, models


def _whole_maps(arch, params, trace, layer, units, rule):
  """[B, N, S, S, 3] through project_signal on maps that are zero but for each unit."""
  act = trace.activations[layer]

  def one(unit):
    signal = jnp.zeros_like(act).at[:, unit[1], unit[2], unit[0]].set(act[:, unit[1], unit[2], unit[0]])
    return deconv.project_signal(arch, params, trace, layer, signal, rule)

  return jax.jit(jax.vmap(one, out_axes=1))(jnp.asarray(units))


@pytest.mark.parametrize("name,layers", [
    ("zfnet64", ("conv1", "conv2", "conv3", "conv4", "conv5")),
    ("alexnet64", ("conv1", "conv2", "conv5")),
    ("zfnet", ("conv2", "conv5")),
])
def test_windowed_projection_equals_whole_maps(name, layers):
  arch = models.get_arch(name)
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.02)
  images = jax.random.normal(jax.random.key(1), (2, arch.input_size, arch.input_size, 3)) * 60
  _, trace = models.forward(arch, params, images)
  for layer in layers:
    h, w, c = trace.activations[layer].shape[1:]
    ys = range(h) if h <= 7 else (0, 1, 2, h // 2, h - 2, h - 1)  # edges, middle; all of small maps
    units = np.array([[(3 * y + x) % c, y, x] for y in ys for x in ys], np.int32)
    for rule in ("deconvnet", "guided"):
      got = deconv.project_many(arch, params, trace, layer, units, rule=rule)
      want = _whole_maps(arch, params, trace, layer, units, rule)
      scale = float(jnp.abs(want).max())
      assert scale > 0, (layer, rule)
      np.testing.assert_allclose(got / scale, want / scale, atol=1e-5, err_msg=f"{layer} {rule}")
