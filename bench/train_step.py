"""Benchmark 4: one training step (section 3), zf_jax vs the same model in PyTorch, eager and compiled.

The step is the paper's: forward with dropout, softmax cross-entropy, backward, SGD with momentum 0.9
(learning rate 1e-2), then feature scale clipping (conv filters' RMS clipped to 0.1), on a batch of
128 of the 64-px variant (200 classes, Tiny ImageNet) and of 32 of ZF-224 (1000 classes). zf_jax
runs `train_lib.train_step` jitted as `train_lib.train_and_evaluate` does (parameters and optimizer
state donated); PyTorch runs the model from `bench.torch_models` with `torch.optim.SGD`, eager and
under `torch.compile` (the model; the optimizer and clipping stay eager).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import torch.nn.functional as F

from bench import common, torch_models
from zf_jax import train_lib

RADIUS = 0.1
NUM_CLASSES = {"zfnet64": 200, "zfnet": 1000}  # Tiny ImageNet for the 64-px variant, ImageNet for ZF-224


def torch_step(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
               optimizer: torch.optim.Optimizer) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """The paper's step in PyTorch; `forward` is the model itself or its torch.compile'd version."""
  convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(images), labels)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      for w in convs:
        rms = w.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        w.mul_(torch.clamp(RADIUS / rms.clamp_min(1e-12), max=1.0))
    return loss.detach()

  return step


@dataclasses.dataclass
class Setup:
  """One model's step in both frameworks, ready to call; `compiled` only when asked for."""
  zf_jax: Callable[[], jax.Array]
  eager: Callable[[], torch.Tensor]
  compiled: Callable[[], torch.Tensor] | None
  hlo_text: Callable[[], str]  # the compiled step's HLO (compiles it once more: only bench.train_profile asks)
  config: str
  note: str


def setup(name: str, batch: int, compile_torch: bool = False) -> Setup:
  """The step of `name` at `batch` in zf_jax and PyTorch on the same weights, images and labels."""
  num_classes = NUM_CLASSES[name]
  arch, params, images = common.model(name, batch, num_classes=num_classes)
  labels = np.random.default_rng(0).integers(0, num_classes, batch).astype(np.int32)
  config = ml_collections.ConfigDict({"learning_rate": 1e-2, "momentum": 0.9, "weight_decay": 0.0})
  tx = train_lib.make_optimizer(config)
  step = jax.jit(functools.partial(train_lib.train_step, arch, tx, RADIUS), donate_argnums=(0, 1))
  state = {"params": jax.tree.map(jnp.array, params)}
  state["opt"] = tx.init(state["params"])
  jimages, jlabels, key = jnp.asarray(images), jnp.asarray(labels), jax.random.key(0)

  def ours() -> jax.Array:
    state["params"], state["opt"], out = step(state["params"], state["opt"], jimages, jlabels, jnp.int32(0), key)
    return out["loss"]

  model = torch_models.build(arch, params).train()
  timgs, tlabels = torch_models.to_nchw(images), torch.from_numpy(labels).long()
  eager = torch_step(model, model, torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))
  compiled, note = None, ""
  if compile_torch:
    compiled_model = torch_models.build(arch, params).train()
    compiled_step = torch_step(compiled_model, torch.compile(compiled_model),
                               torch.optim.SGD(compiled_model.parameters(), lr=1e-2, momentum=0.9))
    start = time.perf_counter()
    compiled_step(timgs, tlabels)
    note = f"first compiled step {time.perf_counter() - start:.0f} s (inductor's cache may hold earlier runs)"
    compiled = lambda: compiled_step(timgs, tlabels)
  cfg = f"batch {batch}, {arch.input_size} px, {num_classes} classes, SGD momentum 0.9 + filter RMS clipping"
  def hlo_text() -> str:
    return step.lower(state["params"], state["opt"], jimages, jlabels, jnp.int32(0), key).compile().as_text()

  return Setup(ours, lambda: eager(timgs, tlabels), compiled, hlo_text, cfg, note)


def bench_model(name: str, batch: int, repeats: int, compile_torch: bool) -> list[dict[str, Any]]:
  """img/s of one step on `name` at `batch`: zf_jax vs PyTorch eager (and compiled)."""
  s = setup(name, batch, compile_torch)
  fns = {"zf_jax": s.zf_jax, "eager": s.eager} | ({"compiled": s.compiled} if s.compiled else {})
  times = common.timeit(fns, repeats, warmup=2)
  ours_rate = batch / times["zf_jax"]
  rows = [common.row("train_step", name, "img/s", ours_rate, batch / times["eager"], "PyTorch eager", 1.0, s.config)]
  if s.compiled:
    rows.append(common.row("train_step", name, "img/s", ours_rate, batch / times["compiled"],
                           "PyTorch torch.compile (model)", 1.0, s.config, s.note))
  print(f"[train_step] {name}: " + ", ".join(f"{k} {batch / t:.1f} img/s" for k, t in times.items())
        + (f"; {s.note}" if s.note else ""), flush=True)
  return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The 64-px variant at batch 128 and ZF-224 at batch 32 (CPU)."""
  if quick:
    return bench_model("zfnet64", 8, 1, compile_torch=False) + bench_model("zfnet", 2, 1, compile_torch=False)
  return bench_model("zfnet64", 128, 5, compile_torch=True) + bench_model("zfnet", 32, 3, compile_torch=True)
