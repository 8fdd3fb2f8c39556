"""Pure layer functions of the convnet and of its attached deconvnet (paper section 2, Fig. 1).

Arrays are NHWC float32; kernels are HWIO. Every function here is jit- and vmap-able.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

Padding = tuple[tuple[int, int], tuple[int, int]]

_DIMS = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """Convolution (cross-correlation, as every framework computes it) plus bias.

  Args:
    x: [B, H, W, I] input maps.
    kernel: [k, k, I, O] filters (HWIO).
    bias: [O].
    stride: the same in y and x.
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    [B, Ho, Wo, O] with Ho = (H + top + bottom - k) // stride + 1.

  A convolution with no padding at all runs with one zero row and column of high padding, cropped
  away again: the same numbers, but XLA:CPU runs unpadded convolutions about 4x slower per FLOP
  (measured on ZF-224's conv2 and on VGG16's and zfnet's occlusion windows, `bench.occlusion.layer_times`).
  """
  if all(p == 0 for side in padding for p in side):
    ho, wo = ((n - kernel.shape[0]) // stride + 1 for n in x.shape[1:3])
    y = lax.conv_general_dilated(x, kernel, (stride, stride), ((0, 1), (0, 1)), dimension_numbers=_DIMS)
    return y[:, :ho, :wo] + bias
  y = lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DIMS)
  return y + bias


def conv2d_transpose(y: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                     input_hw: tuple[int, int]) -> jax.Array:
  """The deconvnet's filtering step: the transposed filters applied to maps above (section 2.1).

  Each filter is flipped vertically and horizontally and its input/output channels swapped;
  the maps above are dilated by the stride. This is the exact adjoint of `conv2d` (no bias).

  Args:
    y: [B, Ho, Wo, O] maps at the conv's output.
    kernel: [k, k, I, O] the conv's own filters.
    stride: the conv's stride.
    padding: the conv's padding.
    input_hw: (H, W) of the conv's input, which the stride alone does not determine.

  Returns:
    [B, H, W, I].
  """
  k = kernel.shape[0]
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)
  pads = []
  for size_in, size_out, (lo, _) in zip(input_hw, y.shape[1:3], padding):
    dilated = (size_out - 1) * stride + 1
    pads.append((k - 1 - lo, size_in - dilated + lo))
  return lax.conv_general_dilated(y, flipped, (1, 1), pads, lhs_dilation=(stride, stride),
                                  dimension_numbers=_DIMS)


def _window_views(x: jax.Array, window: int, stride: int, padding: Padding) -> list[jax.Array]:
  """The window*window strided views [B, Ho, Wo, C] of the -inf padded input, row-major in the window."""
  xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
  ho = (xp.shape[1] - window) // stride + 1
  wo = (xp.shape[2] - window) // stride + 1
  return [xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
          for dy in range(window) for dx in range(window)]


def max_pool(x: jax.Array, window: int, stride: int, padding: Padding) -> tuple[jax.Array, jax.Array]:
  """Max pooling that records its switches (Fig. 1, bottom).

  Padding is filled with -inf, so a maximum always comes from a real input.

  Args:
    x: [B, H, W, C].
    window: pooling region side (3 in the paper).
    stride: 2 in the paper: regions overlap.
    padding: ((top, bottom), (left, right)).

  Returns:
    pooled: [B, Ho, Wo, C].
    switches: int32 [B, Ho, Wo, C], the position of each maximum inside its window, row-major
      (dy * window + dx); the input row is oy * stride - top + dy. The first maximum wins ties.
  """
  # A running maximum over the strided views: elementwise ops that XLA fuses into one pass, where
  # stacking the views and taking max and argmax would write the input nine times over.
  views = _window_views(x, window, stride, padding)
  pooled, switches = views[0], jnp.zeros(views[0].shape, jnp.int32)
  for position, view in enumerate(views[1:], start=1):
    better = view > pooled
    pooled = jnp.where(better, view, pooled)
    switches = jnp.where(better, position, switches)
  return pooled, switches


def ceil_mode_padding(size: int, window: int, stride: int, pad: int = 0) -> tuple[int, int]:
  """The (low, high) padding of one axis that gives `max_pool` the windows of PyTorch's
  `MaxPool2d(window, stride, pad, ceil_mode=True)` (pytorchcv's ZFNet and AlexNet pool this way).

  Ceil mode adds a last, partial window when the input does not end on one, unless it would start
  in the high padding; that window becomes extra -inf padding at the high end, so switches stay exact.

  Args:
    size: the input's side on this axis.
    window, stride, pad: the pool's (pad on both ends).

  Returns:
    (pad, high) with high >= 0: `max_pool` then gives ceil((size + 2 pad - window) / stride) + 1
    windows (one fewer where the last would start past size + pad), as PyTorch does.
  """
  count = -(-(size + 2 * pad - window) // stride) + 1
  if (count - 1) * stride >= size + pad:
    count -= 1
  return pad, max(0, (count - 1) * stride + window - size - pad)


def switch_positions(switches: jax.Array, window: int, stride: int,
                     padding: Padding) -> tuple[jax.Array, jax.Array]:
  """Absolute (row, column) in the pooling input of every recorded maximum, each [B, Ho, Wo, C]."""
  oy = jnp.arange(switches.shape[1])[None, :, None, None]
  ox = jnp.arange(switches.shape[2])[None, None, :, None]
  return (oy * stride - padding[0][0] + switches // window,
          ox * stride - padding[1][0] + switches % window)


def unpool(y: jax.Array, switches: jax.Array, window: int, stride: int, padding: Padding,
           input_hw: tuple[int, int]) -> jax.Array:
  """The deconvnet's unpooling: each value goes back to where its switch says the maximum was.

  Overlapping regions (3x3 windows, stride 2) can point at the same input: contributions add,
  exactly as the gradient of max pooling.

  Args:
    y: [B, Ho, Wo, C] maps at the pool's output.
    switches: int32 [B, Ho, Wo, C] from `max_pool`.
    window, stride, padding: the pool's own.
    input_hw: (H, W) of the pool's input.

  Returns:
    [B, H, W, C], zero everywhere no switch points.
  """
  # Each window position's values are spread to their inputs by an interior (strided) zero padding
  # and summed: elementwise ops that XLA fuses into one pass, where strided .at[].add scatters do not.
  (top, bottom), (left, right) = padding
  _, ho, wo, _ = y.shape
  height, width = input_hw[0] + top + bottom, input_hw[1] + left + right
  zero = jnp.zeros((), y.dtype)

  def spread(dy: int, dx: int) -> jax.Array:
    here = jnp.where(switches == dy * window + dx, y, zero)
    return lax.pad(here, zero, ((0, 0, 0), (dy, height - dy - stride * (ho - 1) - 1, stride - 1),
                                (dx, width - dx - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))

  out = sum(spread(dy, dx) for dy in range(window) for dx in range(window))
  return out[:, top:top + input_hw[0], left:left + input_hw[1]]


def local_response_norm(x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 2.0) -> jax.Array:
  """Contrast normalization across feature maps (Krizhevsky et al. 2012, section 3.3).

  b_c = a_c / (k + alpha * sum_{c' within size/2 of c} a_c'^2) ** beta.

  Args:
    x: [B, H, W, C].

  Returns:
    [B, H, W, C].
  """
  half = size // 2
  sq = jnp.pad(jnp.square(x), ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
  summed = lax.reduce_window(sq, 0.0, lax.add, (1, 1, 1, size), (1, 1, 1, 1), "VALID")
  return x / (k + alpha * summed) ** beta
