"""Per-layer features of a trained model, for the linear classifiers of sections 5.2 and 5.3.

The features of layer L are what the paper's Table 7 "retains" of the network up to L:
  * conv1..conv5: the layer's post-ReLU map followed by the pooling and contrast normalization that
    come after it in the arch (conv1 -> pool1 -> norm1; conv3, conv4: the map itself;
    conv5 -> pool5), flattened to [h * w * c];
  * fc6, fc7: the post-ReLU vector (before dropout).
Each image's features for every requested layer come from ONE jitted forward pass per batch
(`models.forward` plus the pooling/normalization re-applied to the recorded conv maps), so a study
that trains many classifiers on many folds computes them once and reuses the arrays.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import layers, models
from zf_jax.analysis import common
from zf_jax.data import few_shot, model_inputs


def feature_layers(arch: models.Arch) -> tuple[str, ...]:
  """The layers with features: every conv and hidden fc layer (conv1..conv5, fc6, fc7), not the classifier."""
  classifier = arch.activation_names[-1]
  return tuple(name for name in arch.activation_names if name != classifier)


def check_layers(arch: models.Arch, names: Sequence[str] | None) -> tuple[str, ...]:
  """`names` (default: all `feature_layers`) as a tuple, or ValueError naming the first unknown one."""
  allowed = feature_layers(arch)
  if names is None:
    return allowed
  names = tuple(names)
  if not names:
    raise ValueError(f"layers is empty; allowed: some of {', '.join(allowed)}")
  for name in names:
    if name not in allowed:
      raise ValueError(f"layer={name!r} has no features in arch {arch.name!r}; allowed: {', '.join(allowed)}")
  return names


def retained(arch: models.Arch, trace: models.Trace, layer: str) -> jax.Array:
  """Layer `layer`'s features [B, D] from a forward pass's trace (see the module docstring)."""
  x = trace.activations[layer]
  names = arch.layer_names
  for following in arch.layers[names.index(layer) + 1:]:
    if isinstance(following, models.Pool):
      x, _ = layers.max_pool(x, following.window, following.stride, following.padding)
    elif isinstance(following, models.Norm):
      x = layers.local_response_norm(x, following.size, following.alpha, following.beta, following.k)
    else:
      break
  return x.reshape(x.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("arch", "names"))
def extract(arch: models.Arch, params: models.Params, images: jax.Array,
            names: tuple[str, ...]) -> dict[str, jax.Array]:
  """{layer: float32 [B, D_layer]} for a batch of float32 [B, S, S, 3] mean-subtracted images, in one pass."""
  _, trace = models.forward(arch, params, images)
  return {name: retained(arch, trace, name) for name in names}


def compute(arch: models.Arch, params: models.Params, inputs: Any, names: Sequence[str] | None = None,
            batch_size: int = 64) -> dict[str, np.ndarray]:
  """Every input's features at every layer of `names`.

  Args:
    arch, params: the trained model (its layers 1-7 are used as they are).
    inputs: float32 [N, S, S, 3] mean-subtracted model inputs, or any random-access array of them
      (`len`, slicing; e.g. `dataset_inputs`).
    names: layers (default: `feature_layers(arch)`).
    batch_size: images per jitted call (every call sees this many; the last batch is padded).

  Returns:
    {layer: float32 [N, D_layer]}.
  """
  names = check_layers(arch, names)
  if not len(inputs):
    raise ValueError("inputs is empty; give at least one image")
  return common.map_chunks(lambda images: extract(arch, params, jnp.asarray(images), names), (inputs,), batch_size)


def dataset_inputs(source: Any, indices: Sequence[int], arch: models.Arch, image_size: int,
                   mean_image: Any) -> model_inputs.DatasetInputs:
  """The examples `indices` of a dataset split as model inputs, decoded on demand: resized to
  image_size, center crop, minus the source model's mean image (as evaluation does, section 3)."""
  return model_inputs.DatasetInputs(few_shot.Subset(source, indices), arch.input_size, image_size, mean_image)
