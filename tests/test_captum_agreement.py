"""zf_jax's projections against Captum's on the same random weights (skipped without torch/captum).

On a path without contrast normalization (Captum does not skip LRN on the way down), Captum's
NeuronDeconvolution, NeuronGuidedBackprop and NeuronGradient compute what `deconv.project` computes
with rule "deconvnet", "guided" and "saliency", except that they start from 1 where zf_jax starts
from the unit's activation.
"""
import dataclasses

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from bench import torch_models  # noqa: E402  (needs torch)
from zf_jax import deconv, models  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU")

CAPTUM = {"deconvnet": captum_attr.NeuronDeconvolution, "guided": captum_attr.NeuronGuidedBackprop,
          "saliency": captum_attr.NeuronGradient}


def _no_norm(name):
  base = models.get_arch(name)
  return dataclasses.replace(base, name=f"{name}-no-norm",
                             layers=tuple(l for l in base.layers if not isinstance(l, models.Norm)))


CASES = [("zfnet64", layer, rule) for layer in ("conv2", "conv5", "fc7") for rule in deconv.RULES]


@pytest.mark.parametrize("name,layer,rule", CASES + [("zfnet", "conv5", "deconvnet")])
def test_projection_equals_captum(name, layer, rule):
  arch = _no_norm(name)
  params = models.init_params(arch, jax.random.key(0), num_classes=10, weight_std=0.05, bias=0.01)
  size = arch.input_size
  images = np.asarray(jax.random.normal(jax.random.key(1), (3 if size < 100 else 1, size, size, 3)) * 60)
  _, trace = models.forward(arch, params, images)
  act = np.asarray(trace.activations[layer])
  flat = act.reshape(len(act), -1)
  top = np.argmax(flat, axis=1)  # each image's strongest unit
  if act.ndim == 4:
    y, x, c = np.unravel_index(top, act.shape[1:])
    index = (c, y, x)  # NCHW order in torch
  else:
    y = x = np.zeros_like(top)
    c = top
    index = (c,)
  start = flat[np.arange(len(act)), top]
  assert (start > 0).all()
  ours = np.asarray(deconv.project(arch, params, trace, layer, c, y, x, rule=rule)) / start[:, None, None, None]

  model = torch_models.build(arch, params)
  rows = torch.arange(len(images))
  selected = [torch.as_tensor(i) for i in index]
  method = CAPTUM[rule](model, getattr(model, f"{layer}_relu"))
  inputs = torch_models.to_nchw(images).requires_grad_()
  theirs = torch_models.to_nhwc(method.attribute(inputs, lambda out: out[(rows, *selected)]))

  scale = np.abs(theirs).max()
  assert scale > 0
  assert np.abs(ours - theirs).max() / scale < 1e-5
