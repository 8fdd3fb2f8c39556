"""Single conv units are projected on windows that follow their receptive fields, as far as a FLOP
count says that saves work: the same numbers as the deconvnet on whole maps (`deconv.project_signal`),
for every conv layer, at corners, edges and centre, with all three rules; and one compilation for
any units of a given count.

The equality is checked in float64, where the two paths agree to 1e-12 of each projection's largest
pixel: in float32 their different summation orders alone differ by up to 7e-7 (zfnet64) and 1.8e-6
(VGG16's conv13), which a 1e-6 float32 tolerance could not tell from a wrong window."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zf_jax import deconv, models

# VGG16's 13 layers in float64 at 224 px took over 17 min on 2 cores. At 112 px its maps are a quarter of the
# size; units of conv1-conv10 still run on windows all the way down, and conv11-conv13 switch to whole maps part
# way (at 224 px they too run windowed all the way, a path zfnet's and alexnet's layers test).
INPUT_SIZE = {"vgg16": 112}


def _conv_stack(name: str) -> models.Arch:
  """The named arch without its fc layers (projections from conv units never reach them), at INPUT_SIZE."""
  arch = models.get_arch(name)
  return models.Arch(name, INPUT_SIZE.get(name, arch.input_size),
                     tuple(s for s in arch.layers if not isinstance(s, models.Dense)))


def _model(name: str, dtype=jnp.float32):
  arch = _conv_stack(name)
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.02)
  params = jax.tree.map(lambda a: a.astype(dtype), params)
  images = jax.random.normal(jax.random.key(1), (1, arch.input_size, arch.input_size, 3), dtype) * 60
  _, trace = models.forward(arch, params, images)
  return arch, params, trace


def _units(trace, layer: str, edges: bool = True) -> np.ndarray:
  """int32 [N, 3]: the corners, the middles of the edges (if `edges`), a unit next to a corner and the
  centre of `layer`'s map, each in its position's strongest channel (so that it is active)."""
  act = np.asarray(trace.activations[layer][0])
  h, w, _ = act.shape
  positions = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (min(1, h - 1), min(1, w - 1)), (h // 2, w // 2)}
  if edges:
    positions |= {(0, w // 2), (h // 2, 0), (h - 1, w // 2), (h // 2, w - 1)}
  positions = sorted(positions)
  return np.array([[int(act[y, x].argmax()), y, x] for y, x in positions], np.int32)


def _whole_maps(arch, params, trace, layer, units, rule):
  """[B, N, S, S, 3] through project_signal on maps that are zero but for each unit."""
  act = trace.activations[layer]

  def one(unit):
    signal = jnp.zeros_like(act).at[:, unit[1], unit[2], unit[0]].set(act[:, unit[1], unit[2], unit[0]])
    return deconv.project_signal(arch, params, trace, layer, signal, rule)

  return jax.jit(jax.vmap(one, out_axes=1))(jnp.asarray(units))


@pytest.mark.parametrize("name", ["zfnet64", "alexnet64", pytest.param("zfnet", marks=pytest.mark.slow),
                                  pytest.param("alexnet", marks=pytest.mark.slow),
                                  pytest.param("vgg16", marks=pytest.mark.slow)])
def test_windowed_projection_equals_whole_maps(name):
  with jax.enable_x64(True):
    arch, params, trace = _model(name, jnp.float64)
    for layer in arch.conv_names:
      units = _units(trace, layer, edges=name != "vgg16")  # VGG16: corners and centre (CPU time)
      for rule in deconv.RULES:
        got = np.asarray(deconv.project_many(arch, params, trace, layer, units, rule=rule))
        want = np.asarray(_whole_maps(arch, params, trace, layer, units, rule))
        assert got.dtype == np.float64
        scale = np.abs(want).max(axis=(2, 3, 4))  # [B, N]: each projection against its own largest pixel
        assert (scale > 0).all(), (layer, rule)
        error = np.abs(got - want).max(axis=(2, 3, 4)) / scale
        assert error.max() <= 1e-12, f"{name} {layer} {rule}: relative error {error.max():.1e}"


def test_flops_choose_windows_only_where_they_save_work():
  zfnet = models.zfnet()
  # conv1 of ZF-224 (7x7/2, 3 -> 96 maps of 110x110): one output position against all of them.
  assert deconv.flops(zfnet, "conv1") == (2.0 * 7 * 7 * 3 * 96, 2.0 * 110 * 110 * 7 * 7 * 3 * 96)
  for name in ("zfnet", "zfnet64", "alexnet", "alexnet64", "vgg16"):
    arch = models.get_arch(name)
    for layer in arch.conv_names:
      windowed, dense = deconv.flops(arch, layer)
      assert 0 < windowed <= dense, (name, layer)
      index = arch.layer_names.index(layer)
      uses_windows = deconv._plan(arch, layer)[1] != index
      assert uses_windows == (windowed < dense), (name, layer)
      up_to = models.Arch(name, arch.input_size, arch.layers[:index + 1])  # what lies above plays no part
      assert deconv.flops(up_to, layer) == (windowed, dense), (name, layer)
  # At 64 px AlexNet's conv3-conv5 maps are 3x3: one unit's window below covers them, so whole maps.
  alexnet64 = models.alexnet64()
  assert [deconv.flops(alexnet64, f"conv{i}")[0] < deconv.flops(alexnet64, f"conv{i}")[1] for i in range(1, 6)] == [
      True, True, False, False, False]
  with pytest.raises(ValueError, match="not a conv layer"):
    deconv.flops(zfnet, "fc6")


def test_many_units_compile_once_whatever_their_positions(monkeypatch):
  """All positions of a layer (corners, whose windows hang over the map, and inside) are one compiled
  call, traced once; other units of the same count reuse it."""
  arch, params, trace = _model("zfnet64")
  traced = []
  windowed = deconv._project_windowed
  monkeypatch.setattr(deconv, "_project_windowed", lambda *args: traced.append(1) or windowed(*args))
  h, w, c = trace.activations["conv3"].shape[1:]
  every = np.array([[(y * w + x) % c, y, x] for y in range(h) for x in range(w)], np.int32)  # 196 units
  deconv._project_units.clear_cache()
  first = deconv.project_many(arch, params, trace, "conv3", every)
  again = deconv.project_many(arch, params, trace, "conv3", every[::-1].copy())
  np.testing.assert_allclose(np.asarray(again)[:, ::-1], np.asarray(first), rtol=1e-5, atol=1e-6)
  assert deconv._project_units._cache_size() == 1 and len(traced) == 1
  deconv.project_many(arch, params, trace, "conv3", every[:5])  # another count: one more compilation
  assert deconv._project_units._cache_size() == 2 and len(traced) == 2
