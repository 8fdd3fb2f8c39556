"""The zf_jax architectures in PyTorch, with zf_jax's own weights copied in (benchmarks and tests only).

`build(arch, params)` returns an `nn.Sequential` that computes what `zf_jax.models.forward` computes:
  * NCHW activations and OIHW kernels (zf_jax is NHWC/HWIO): kernels are transposed on the copy;
  * every ReLU is its own `nn.ReLU` module, named "<layer>_relu", so Captum's Deconvolution and
    GuidedBackprop hooks find them, and a neuron layer is `model.<layer>_relu` (post-ReLU, as
    `trace.activations`);
  * asymmetric pooling padding (zfnet's ((0, 1), (0, 1))) by padding with -inf before `max_pool2d`,
    whose own padding is symmetric only; ties go to the first maximum in row-major order, as
    `zf_jax.layers.max_pool`;
  * contrast normalization by `nn.LocalResponseNorm`, which divides alpha by size: it gets
    alpha * size;
  * the flatten before fc6 in NHWC order, so fc6's [in, out] kernel copies as it is.
"""
from __future__ import annotations

import collections

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zf_jax import models


class Pad(nn.Module):
  """Constant padding of an NCHW map: ((top, bottom), (left, right))."""

  def __init__(self, padding: tuple[tuple[int, int], tuple[int, int]], value: float = 0.0):
    super().__init__()
    (top, bottom), (left, right) = padding
    self.pad = (left, right, top, bottom)
    self.value = value

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, self.pad, value=self.value)


class MaxPool(nn.Module):
  """Max pooling with zf_jax's ((top, bottom), (left, right)) padding, filled with -inf."""

  def __init__(self, spec: models.Pool):
    super().__init__()
    self.pad = Pad(spec.padding, -float("inf"))
    self.window, self.stride = spec.window, spec.stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(self.pad(x), self.window, self.stride)


class FlattenNHWC(nn.Module):
  """[B, C, H, W] -> [B, H * W * C] in zf_jax's (NHWC) order."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).flatten(1)


def _symmetric(padding: tuple[tuple[int, int], tuple[int, int]]) -> bool:
  return all(lo == hi for lo, hi in padding)


def build(arch: models.Arch, params: models.Params, dropout: bool = True) -> nn.Sequential:
  """An `nn.Sequential` equal to `models.forward(arch, params, ...)`, holding copies of `params`.

  Args:
    arch: a zf_jax architecture.
    params: its zf_jax params (HWIO conv kernels, [in, out] fc kernels).
    dropout: include the hidden fc layers' dropout (active in `train()` mode only).

  Returns:
    The model (float32, NCHW input, eval mode): children named after zf_jax's layers, with
    "<conv or fc>_relu" ReLUs, "<conv>_pad" for asymmetric conv padding, "flatten" and
    "<fc>_dropout".
  """
  children: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
  channels = 3
  flat = False
  for spec in arch.layers:
    kernel = np.asarray(params[spec.name]["kernel"]) if spec.name in params else None
    bias = np.asarray(params[spec.name]["bias"]) if spec.name in params else None
    if isinstance(spec, models.Conv):
      if not _symmetric(spec.padding):
        children[f"{spec.name}_pad"] = Pad(spec.padding)
      pad = (spec.padding[0][0], spec.padding[1][0]) if _symmetric(spec.padding) else 0
      conv = nn.Conv2d(channels, spec.features, spec.kernel, spec.stride, pad)
      conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
      conv.bias.data = torch.from_numpy(bias.copy())
      children[spec.name] = conv
      children[f"{spec.name}_relu"] = nn.ReLU()
      channels = spec.features
    elif isinstance(spec, models.Pool):
      children[spec.name] = MaxPool(spec)
    elif isinstance(spec, models.Norm):
      children[spec.name] = nn.LocalResponseNorm(spec.size, spec.alpha * spec.size, spec.beta, spec.k)
    else:
      if not flat:
        children["flatten"] = FlattenNHWC()
        flat = True
      linear = nn.Linear(kernel.shape[0], kernel.shape[1])
      linear.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.T))
      linear.bias.data = torch.from_numpy(bias.copy())
      children[spec.name] = linear
      if spec.relu:
        children[f"{spec.name}_relu"] = nn.ReLU()
      if spec.dropout and dropout:
        children[f"{spec.name}_dropout"] = nn.Dropout(spec.dropout)
  return nn.Sequential(children).eval()


def to_nchw(images: np.ndarray) -> torch.Tensor:
  """zf_jax images float [B, H, W, 3] -> a contiguous float32 torch [B, 3, H, W]."""
  return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))


def to_nhwc(x: torch.Tensor) -> np.ndarray:
  """torch [B, C, H, W] -> numpy [B, H, W, C]."""
  return x.detach().permute(0, 2, 3, 1).numpy()
