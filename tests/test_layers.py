"""Layer functions: switches, unpooling as the max-pool gradient, the transposed filter, LRN."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from zf_jax import layers

POOLS = [((0, 0), (0, 0)), ((0, 1), (0, 1)), ((1, 1), (1, 1))]


def _jax_max_pool(x, padding):
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), *padding, (0, 0)))


@pytest.mark.parametrize("padding", POOLS)
def test_max_pool_matches_reduce_window(padding):
  x = jax.random.normal(jax.random.key(0), (2, 11, 11, 4))
  pooled, switches = jax.jit(layers.max_pool, static_argnums=(1, 2, 3))(x, 3, 2, padding)
  np.testing.assert_array_equal(pooled, _jax_max_pool(x, padding))
  rows, cols = layers.switch_positions(switches, 3, 2, padding)
  b, _, _, c = np.indices(pooled.shape)
  np.testing.assert_array_equal(np.asarray(x)[b, rows, cols, c], pooled)


@pytest.mark.parametrize("padding", POOLS)
def test_unpool_is_the_vjp_of_max_pool(padding):
  # A permutation gives a tie-free input; 3x3 windows at stride 2 overlap, so some inputs are the
  # maximum of two windows and must receive both contributions.
  x = jax.random.permutation(jax.random.key(1), 2 * 13 * 13 * 3).reshape(2, 13, 13, 3).astype(jnp.float32)
  pooled, switches = layers.max_pool(x, 3, 2, padding)
  g = jax.random.normal(jax.random.key(2), pooled.shape)
  _, vjp = jax.vjp(lambda v: _jax_max_pool(v, padding), x)
  unpool = jax.jit(layers.unpool, static_argnums=(2, 3, 4, 5))
  got = unpool(g, switches, 3, 2, padding, (13, 13))
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-6, atol=1e-6)
  rows, cols = layers.switch_positions(switches, 3, 2, padding)
  flat = np.asarray(((rows * 13 + cols) * 3 + np.arange(3)) + np.arange(2)[:, None, None, None] * 13 * 13 * 3)
  assert len(np.unique(flat)) < flat.size, "no input was shared by two windows: overlap untested"


@pytest.mark.parametrize("stride,padding,k,size", [(1, ((1, 1), (1, 1)), 3, 9), (2, ((1, 1), (1, 1)), 7, 20),
                                                   (2, ((0, 0), (0, 0)), 5, 15), (4, ((2, 2), (2, 2)), 11, 30)])
def test_conv_transpose_is_the_adjoint_of_conv(stride, padding, k, size):
  x = jax.random.normal(jax.random.key(3), (2, size, size, 3))
  kernel = jax.random.normal(jax.random.key(4), (k, k, 3, 5))
  y, vjp = jax.vjp(lambda v: layers.conv2d(v, kernel, jnp.zeros(5), stride, padding), x)
  g = jax.random.normal(jax.random.key(5), y.shape)
  got = jax.jit(layers.conv2d_transpose, static_argnums=(2, 3, 4))(g, kernel, stride, padding, (size, size))
  np.testing.assert_allclose(got, vjp(g)[0], rtol=1e-4, atol=1e-4)


def test_local_response_norm_matches_the_formula():
  x = jax.random.normal(jax.random.key(6), (1, 2, 2, 7)) * 30
  got = jax.jit(layers.local_response_norm)(x)
  a = np.asarray(x, np.float64)
  want = np.empty_like(a)
  for c in range(7):
    window = a[..., max(0, c - 2):c + 3]
    want[..., c] = a[..., c] / (2.0 + 1e-4 * (window ** 2).sum(-1)) ** 0.75
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("size,window,stride,pad", [(110, 3, 2, 0), (13, 3, 2, 0), (26, 3, 2, 0), (5, 2, 2, 1),
                                                     (8, 2, 4, 0), (27, 3, 2, 1)])
def test_ceil_mode_padding_gives_ceil_mode_window_counts(size, window, stride, pad):
  """PyTorch's ceil_mode count: ceil((size + 2 pad - window) / stride) + 1, less one if the last window
  would start in the high padding (tests/test_convert.py compares values and switches with torch)."""
  lo, hi = layers.ceil_mode_padding(size, window, stride, pad)
  count = int(np.ceil((size + 2 * pad - window) / stride)) + 1
  count -= (count - 1) * stride >= size + pad
  assert lo == pad and hi >= 0
  x = jnp.arange(size * size, dtype=jnp.float32).reshape(1, size, size, 1)
  pooled, _ = layers.max_pool(x, window, stride, ((lo, hi), (lo, hi)))
  assert pooled.shape[1:3] == (count, count)
  assert jnp.isfinite(pooled).all()  # every window holds at least one real input
