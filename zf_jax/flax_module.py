"""Every zf_jax architecture as a Flax linen Module, for Flax training loops.

Its parameters are exactly `models.init_params`'s dict under "params" ({"params": {"conv1": {"kernel",
"bias"}, ..., "fc8": {...}}}), so a checkpoint, a converted .npz (`zf_jax.convert`) and a Flax loop
share weights with no conversion, and `apply` is `models.forward` itself: (logits, Trace), the Trace
ready for `deconv.project` (section 2.1).

  module = ConvNet(models.get_arch("zfnet"), num_classes=1000)
  variables = module.init(jax.random.key(0), images)                       # {"params": ...}
  logits, trace = module.apply(variables, images)                          # = models.forward
  logits, trace = module.apply(variables, images, train=True, rngs={"dropout": key})
"""
from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from zf_jax import models


def _init_layer(key: jax.Array, shapes: Mapping[str, tuple[int, ...]], std: float, bias: float) -> dict[str, jax.Array]:
  return {"kernel": std * jax.random.normal(key, shapes["kernel"], jnp.float32),
          "bias": jnp.full(shapes["bias"], bias, jnp.float32)}


def _per_layer(value: float | Mapping[str, float], name: str, default: float) -> float:
  return value.get(name, default) if isinstance(value, Mapping) else value


class ConvNet(nn.Module):
  """A zf_jax `Arch` as a linen Module.

  Attributes:
    arch: the architecture (`models.get_arch(...)`, or a converted model's `loaded.arch`), or its name
      (one of `models.ARCH_NAMES`).
    num_classes: C, the classifier's width.
    weight_std, bias: initialisation as `models.init_params` (N(0, std^2) weights, constant biases;
      one value or a {layer: value} mapping): the paper's 1e-2 and 0 (section 3) by default.
  """
  arch: models.Arch | str
  num_classes: int = 1000
  weight_std: float | Mapping[str, float] = 0.01
  bias: float | Mapping[str, float] = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, models.Trace]:
    """images float [B, S, S, 3], mean-subtracted -> (logits [B, C], Trace), as `models.forward`.

    train=True applies dropout and needs rngs={"dropout": key} in `apply`.
    """
    arch = self.arch if isinstance(self.arch, models.Arch) else models.get_arch(self.arch)
    models.check_init(self.weight_std, self.bias)
    params = {name: self.param(name, _init_layer, shapes, _per_layer(self.weight_std, name, 0.01),
                               _per_layer(self.bias, name, 0.0))
              for name, shapes in models.param_shapes(arch, self.num_classes).items()}
    dropout = train and any(isinstance(layer, models.Dense) and layer.dropout for layer in arch.layers)
    return models.forward(arch, params, images, train=train, rng=self.make_rng("dropout") if dropout else None)
