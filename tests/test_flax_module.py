"""zf_jax architectures as Flax linen Modules: the same parameters and the same forward as `models`."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from zf_jax import deconv, flax_module, models, train_lib
from zf_jax.data import preprocess, synthetic


@pytest.mark.parametrize("name", models.ARCH_NAMES)
def test_init_gives_the_tree_and_shapes_of_init_params(name):
  arch = models.get_arch(name)
  module = flax_module.ConvNet(arch, num_classes=10)
  images = jax.ShapeDtypeStruct((1, arch.input_size, arch.input_size, 3), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), images)  # shapes only: VGG16 is 138M weights
  expected = jax.eval_shape(lambda key: models.init_params(arch, key, num_classes=10), jax.random.key(0))
  assert set(variables) == {"params"}
  assert jax.tree.structure(variables["params"]) == jax.tree.structure(expected)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), variables["params"]) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), expected)


def test_init_draws_as_init_params_asks():
  arch = models.get_arch("zfnet64")
  images = jnp.zeros((1, 56, 56, 3))
  params = flax_module.ConvNet(arch, 10, weight_std={"conv1": 0.5}, bias=0.25).init(jax.random.key(0), images)["params"]
  assert abs(float(jnp.std(params["conv1"]["kernel"])) - 0.5) < 0.05
  assert abs(float(jnp.std(params["conv2"]["kernel"])) - 0.01) < 0.001
  assert float(jnp.min(params["fc8"]["bias"])) == float(jnp.max(params["fc8"]["bias"])) == 0.25


def _images(arch, n=4, seed=1):
  return jax.random.normal(jax.random.key(seed), (n, arch.input_size, arch.input_size, 3)) * 60


@pytest.mark.parametrize("name", ["zfnet64", "alexnet64", "zfnet64-no-conv34"])
def test_apply_is_forward_bit_for_bit_and_projects(name):
  arch = models.get_arch(name)
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.01)
  images = _images(arch)
  logits, trace = flax_module.ConvNet(arch, num_classes=10).apply({"params": params}, images)
  want_logits, want_trace = models.forward(arch, params, images)
  np.testing.assert_array_equal(logits, want_logits)
  assert jax.tree.structure(trace) == jax.tree.structure(want_trace)
  for ours, theirs in zip(jax.tree.leaves(trace), jax.tree.leaves(want_trace)):
    np.testing.assert_array_equal(ours, theirs)
  act = np.asarray(trace.activations["conv5"])
  y, x, c = np.unravel_index(np.argmax(act.reshape(len(act), -1), axis=1), act.shape[1:])  # each image's strongest
  pixels = deconv.project(arch, params, trace, "conv5", c, y, x)  # the Module's trace drives the deconvnet
  np.testing.assert_array_equal(pixels, deconv.project(arch, params, want_trace, "conv5", c, y, x))
  assert pixels.shape == (4, arch.input_size, arch.input_size, 3) and float(jnp.abs(pixels).max()) > 0


def test_train_applies_dropout_from_the_dropout_rng():
  arch = models.get_arch("zfnet64")
  module = flax_module.ConvNet(arch, num_classes=10)
  images = _images(arch)
  variables = module.init(jax.random.key(0), images)
  with pytest.raises(Exception, match="dropout"):
    module.apply(variables, images, train=True)
  a, _ = module.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
  b, _ = module.apply(variables, images, train=True, rngs={"dropout": jax.random.key(1)})
  c, _ = module.apply(variables, images, train=False)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_a_train_state_step_on_the_demo_data_lowers_the_loss():
  """A plain Flax loop (TrainState, optax) on 32 images of the demo's synthetic dataset."""
  arch = models.get_arch("zfnet64")
  drawn = [synthetic.draw(0, "train", i) for i in range(32)]
  photos = np.stack([image for image, _ in drawn]).astype(np.float32)
  labels = jnp.asarray([label for _, label in drawn])
  images = jnp.asarray(preprocess.center_crop(photos - photos.mean(axis=0), arch.input_size))
  std = train_lib.paper_gain_std(arch, models.get_arch("zfnet"))
  module = flax_module.ConvNet(arch, num_classes=10, weight_std=std)
  state = train_state.TrainState.create(apply_fn=module.apply, params=module.init(jax.random.key(0), images)["params"],
                                        tx=optax.sgd(1e-2, momentum=0.9))

  def loss_fn(params, images, labels, dropout_key):
    logits, _ = state.apply_fn({"params": params}, images, train=True, rngs={"dropout": dropout_key})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(state, images, labels, key):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, images, labels, key)
    return state.apply_gradients(grads=grads), loss

  def eval_loss(params):
    logits, _ = module.apply({"params": params}, images)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())

  before = eval_loss(state.params)
  for i in range(10):
    state, _ = step(state, images, labels, jax.random.key(i))
  assert np.isfinite(before) and eval_loss(state.params) < before - 0.01  # 2.302 -> 2.275 measured
