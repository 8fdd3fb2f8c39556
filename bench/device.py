"""Benchmark on whatever accelerator is present: the 224-px training step, projection and occlusion in
float32 and bfloat16, with model FLOPs utilisation (MFU).

  bench/gpu.sh                      # = python -m bench.device: ZF-224, batch 128; writes bench/results_device.json
  python -m bench.device --quick    # zfnet64, tiny batches: checks the script on any machine (CPU too)

FLOPs are XLA's own count of each compiled program (`cost_analysis`), so they include the backward
pass and the optimizer; MFU = achieved FLOP/s / the device's dense bfloat16 peak (`PEAK_BF16`, both
dtypes against the same peak; none known for CPUs). bfloat16 runs `train_lib.train_step` with
compute_dtype=bfloat16 (parameters float32), and projection / occlusion with bfloat16 parameters
and images (occlusion in its "full" mode: batched whole forward passes). When PyTorch sees a CUDA
device, the training step is also timed in PyTorch on it (bench.train_step's step, eager and
torch.compile, float32 and bfloat16 autocast, channels-last) as the baseline of four more rows;
without one, nothing needs PyTorch.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bench import common
from zf_jax import deconv, models, train_lib
from zf_jax.analysis import occlusion
from zf_jax.files import save_json

HERE = os.path.dirname(os.path.abspath(__file__))
# Dense bfloat16 peak FLOP/s by device kind (vendor data sheets, without sparsity).
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "TPU v6": 918e12, "TPU v5p": 459e12,
             "TPU v5": 197e12, "TPU v4": 275e12}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def peak_flops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak, or None if unknown (CPUs)."""
  return next((v for k, v in PEAK_BF16.items() if k.lower() in device.device_kind.lower()), None)


def _flops(fn: Callable, *args: Any) -> float:
  """XLA's FLOP count of one call of the jitted `fn` on `args`, from the program compiled for the CPU.

  A GPU's compiled program would leave out what it runs as library calls (cuDNN convolutions), so the
  count is always taken on the CPU backend, from abstract arguments placed there.
  """
  cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), args)
  cost = fn.lower(*specs).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def train_case(name: str, batch: int, dtype: Any) -> tuple[Callable, Callable[[], Any], float]:
  """One training step (donated state) of `name`: (the jitted fn, a call, its FLOPs)."""
  arch, params, images = common.model(name, batch)
  config = ml_collections.ConfigDict({"learning_rate": 1e-2, "momentum": 0.9, "weight_decay": 0.0})
  tx = train_lib.make_optimizer(config)
  step = jax.jit(functools.partial(train_lib.train_step, arch, tx, 0.1, compute_dtype=dtype), donate_argnums=(0, 1))
  state = {"params": jax.tree.map(jnp.array, params)}
  state["opt"] = tx.init(state["params"])
  x, labels, key = jnp.asarray(images), jnp.arange(batch, dtype=jnp.int32) % 1000, jax.random.key(0)
  flops = _flops(step, state["params"], state["opt"], x, labels, jnp.int32(0), key)

  def call() -> jax.Array:
    state["params"], state["opt"], out = step(state["params"], state["opt"], x, labels, jnp.int32(0), key)
    return out["loss"]
  return step, call, flops


def projection_case(name: str, batch: int, dtype: Any) -> tuple[Callable, Callable[[], Any], float]:
  """Forward + deconvnet projection of each image's strongest conv5 unit (section 2.1)."""
  arch, params, images = common.model(name, batch)
  plain = common.without_norm(arch)
  params, x = jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, images))
  _, trace = models.forward(plain, params, x)
  act = trace.activations["conv5"]
  flat = np.asarray(jnp.argmax(act.reshape(batch, -1), axis=-1))
  y, xx, c = np.unravel_index(flat, act.shape[1:])
  units = jnp.asarray(np.stack([c, y, xx], axis=-1)[:, None].astype(np.int32))

  @jax.jit
  def project(p, images, u):
    _, t = models.forward(plain, p, images)
    return deconv.project_many(plain, p, t, "conv5", u)
  return project, lambda: project(params, x, units), _flops(project, params, x, units)


def occlusion_case(name: str, dtype: Any, stride: int) -> tuple[None, Callable[[], Any], float]:
  """Fig. 7's occlusion maps of one image, one whole forward pass per occluder position (mode="full",
  batches of 64 positions: the accelerator's case); FLOPs not counted (several programs)."""
  arch, params, images = common.model(name, 1)
  params, x = jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, images))
  maps = functools.partial(occlusion.occlusion_maps, arch, params, x, stride=stride, batch_size=64, mode="full")
  return None, lambda: maps()["p_true"], 0.0


def torch_cuda_available() -> bool:
  """True when PyTorch is installed and sees a CUDA device (the PyTorch baseline rows run)."""
  if importlib.util.find_spec("torch") is None:
    return False
  import torch
  return torch.cuda.is_available()


def torch_train_case(name: str, batch: int, dtype_name: str, compiled: bool) -> Callable[[], Any]:
  """One PyTorch training step of `name` (bench.train_step.torch_step: SGD momentum + filter RMS clipping) on
  the CUDA device, float32 or bfloat16 autocast, eager or with the model under torch.compile, synchronised:
  the baseline of `train_case`."""
  import torch

  from bench import torch_models
  from bench.train_step import torch_step
  arch, params, images = common.model(name, batch)
  model = torch_models.build(arch, params).train().cuda().to(memory_format=torch.channels_last)
  x = torch_models.to_nchw(images).cuda().contiguous(memory_format=torch.channels_last)
  labels = (torch.arange(batch) % 1000).cuda()
  step = torch_step(model, torch.compile(model) if compiled else model,
                    torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9))

  def call() -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype_name == "bfloat16"):
      step(x, labels)
    torch.cuda.synchronize()
  return call


def torch_rows(name: str, batch: int, repeats: int, jax_rates: dict[str, float]) -> list[dict[str, Any]]:
  """zf_jax's training step (img/s from `run`) against PyTorch eager and torch.compile on the same GPU, per dtype."""
  rows = []
  for mode, dtype_name in itertools.product(("eager", "torch.compile"), DTYPES):
    call = torch_train_case(name, batch, dtype_name, compiled=mode == "torch.compile")
    seconds = common.timeit({"call": call}, repeats, warmup=2)["call"]
    print(f"[device] train_step PyTorch {mode} {dtype_name}: {batch / seconds:.1f} img/s", flush=True)
    rows.append(common.row("device_train_step", name, "img/s", jax_rates[dtype_name], batch / seconds,
                           f"PyTorch {mode} (CUDA, {dtype_name})", 1.0,
                           f"{jax.devices()[0].device_kind}, batch {batch}, {dtype_name}, "
                           "the step of bench.train_step"))
  return rows


def run(quick: bool = False) -> list[dict[str, Any]]:
  """Rows: bf16 vs f32 img/s (or calls/s) of each benchmark, with MFU in the note."""
  name, batch, repeats, stride = ("zfnet64", 2, 1, 16) if quick else ("zfnet", 128, 10, 8)
  device = jax.devices()[0]
  peak = peak_flops(device)
  cases = {"train_step": lambda d: train_case(name, batch, d), "projection": lambda d: projection_case(name, batch, d),
           "occlusion": lambda d: occlusion_case(name, d, stride)}
  rows, torch_baseline = [], []
  for bench_name, make in cases.items():
    rates, notes = {}, []
    for dtype_name, dtype in DTYPES.items():
      _, call, flops = make(dtype)
      seconds = common.timeit({"call": call}, repeats, warmup=1)["call"]
      images = 1 if bench_name == "occlusion" else batch
      rates[dtype_name] = images / seconds
      if flops:
        achieved = flops / seconds
        mfu = f", MFU {achieved / peak:.1%}" if peak else ""
        notes.append(f"{dtype_name} {achieved / 1e12:.3g} TFLOP/s{mfu}")
      print(f"[device] {bench_name} {dtype_name}: {rates[dtype_name]:.1f} img/s"
            + (f", {flops / seconds / 1e12:.3g} TFLOP/s" if flops else ""), flush=True)
    peak_note = f" (of {device.device_kind}'s {peak / 1e12:.0f} TFLOP/s bf16 peak)" if peak else " (no peak known)"
    rows.append(common.row(f"device_{bench_name}", name, "img/s", rates["bfloat16"], rates["float32"], "float32",
                           None, f"{device.device_kind}, batch {1 if bench_name == 'occlusion' else batch}, bfloat16",
                           "; ".join(notes) + (peak_note if notes else "")))
    if bench_name == "train_step" and torch_cuda_available():
      torch_baseline = torch_rows(name, batch, repeats, rates)
  return rows + torch_baseline


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="zfnet64 at tiny sizes; print only, write nothing")
  args = parser.parse_args()
  env = common.environment()
  rows = run(args.quick)
  for row in rows:
    print(f"| {row['benchmark']} | {row['model']} | {row['config']} | {row['zf_jax']:.4g} img/s | "
          f"{row['baseline_name']} {row['baseline']:.4g} img/s | x{row['ratio']:.2f} | {row['note']} |")
  if not args.quick:
    save_json({"environment": env, "results": rows}, os.path.join(HERE, "results_device.json"))


if __name__ == "__main__":
  if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(HERE))
  main()
