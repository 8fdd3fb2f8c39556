"""Fig. 4: the evolution of features through training, one column per checkpoint (section 4).

For chosen feature maps and every checkpoint of a run: the strongest activation of each map over a
fixed example set (the same images for every checkpoint), projected alone to pixels with the
deconvnet and cropped to its receptive field, as `topk` does with k = 1. "Sudden jumps in
appearance result from a change in the image from which the strongest activation originates": the
numbers record which image wins at every epoch, and the epoch from which it no longer changes.

This is the "batch-analyse checkpoints" use: checkpoints are loaded one at a time, each once
(`checkpoints` is a generator), and the jitted scan and projection compile once for the run's
architecture and are reused for every checkpoint.
"""
from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import checkpoint, files
from zf_jax.analysis import common, topk
from zf_jax.analysis.source import Source
from zf_jax.data import model_inputs


def checkpoints(workdir: str, steps: Sequence[int] | None = None) -> Iterator[checkpoint.Loaded]:
  """The checkpoints of a workdir, loaded lazily in the given order, each once.

  Args:
    workdir: a training workdir.
    steps: the steps to load (default: every checkpoint, ascending); checked before anything loads.

  Returns:
    A generator of `checkpoint.Loaded`, one at a time.
  """
  available = checkpoint.list_steps(workdir)
  if not available:
    raise ValueError(f"workdir={workdir!r} holds no checkpoints")
  steps = available if steps is None else [int(s) for s in steps]
  missing = [s for s in steps if s not in available]
  if missing or not steps:
    raise ValueError(f"steps={','.join(map(str, missing or steps)) or '(none)'} have no checkpoint in "
                     f"{workdir!r}; allowed: {','.join(map(str, available))}")
  return (checkpoint.load_for_analysis(workdir, step) for step in steps)


def _inputs(examples: np.ndarray, loaded: checkpoint.Loaded) -> np.ndarray:
  """uint8 [N, R, R, 3] -> this checkpoint's mean-subtracted center crops float32 [N, S, S, 3]."""
  return model_inputs.eval_inputs(examples, loaded.arch.input_size, loaded.mean_image)


def compute(loaded_models: Iterable[checkpoint.Loaded], examples: Any, layers: Sequence[str] | None = None,
            maps: Sequence[int] | None = None, num_maps: int | None = 4, batch_size: int = 64,
            rule: str = "deconvnet", seed: int = 0, progress: bool = False) -> dict[str, np.ndarray]:
  """Fig. 4: per chosen map and checkpoint, the strongest activation over `examples`, projected.

  Args:
    loaded_models: checkpoints of one run in training order (e.g. `checkpoints(workdir)`), each
      consumed once.
    examples: uint8 [N, R, R, 3], images resized and center-cropped to the run's image size
      (`data.load_batch`); each checkpoint subtracts its own mean and takes the center crop.
    layers: default all conv layers.
    maps: the same map indices in every layer; default `num_maps` at random per layer (fixed for
      all checkpoints).
    num_maps: random maps per layer; None for all.
    batch_size: images per jitted call.
    rule: the deconvnet's ReLU rule.
    seed: for the random choice of maps.
    progress: a progress bar over checkpoints.

  Returns:
    "layers" [L], "steps" [T], "epochs" [T], "num_images", and per layer "L/maps" int [M],
    "L/values" [M, T] (the strongest activation), "L/images" [M, T] (index into examples),
    "L/positions" [M, T, 2] (y, x), "L/projections" [M, T, P, P, 3] in [0, 1], cropped to the
    receptive field (P its largest side), and over ALL maps of the layer (for `convergence`, no
    projections) "L/all_images" int [C, T] and "L/all_values" [C, T].
  """
  from tqdm import tqdm
  examples = np.asarray(examples)
  if examples.ndim != 4 or examples.shape[-1] != 3 or examples.dtype != np.uint8 or not len(examples):
    raise ValueError(f"examples has shape {examples.shape} and dtype {examples.dtype}; allowed: uint8 [N, R, R, 3]")
  columns: dict[str, list[dict[str, np.ndarray]]] = {}
  steps, epochs, chosen, arch = [], [], {}, None
  every: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # per layer and checkpoint: all maps' winners
  for loaded in tqdm(loaded_models, desc="checkpoints", unit="ckpt", disable=not progress, leave=False):
    if arch is None:
      arch, layers = loaded.arch, topk.check_layers(loaded.arch, layers)
      rng = np.random.default_rng(seed)
      shapes = arch.shapes()
      chosen = {layer: topk.choose_maps(shapes[layer][-1], maps, num_maps, rng) for layer in layers}
    elif loaded.arch != arch:
      raise ValueError(f"checkpoint at step {loaded.step} has arch {loaded.arch.name!r}, the first had {arch.name!r}")
    inputs = _inputs(examples, loaded)
    top = topk.scan(arch, loaded.params, inputs, layers, k=1, batch_size=batch_size)
    for layer in layers:
      c = chosen[layer]
      every.setdefault(layer, []).append((top[layer]["image"][:, 0], top[layer]["value"][:, 0]))
      image, y, x = (top[layer][name][c, 0] for name in ("image", "y", "x"))
      pixels = topk.project_units(arch, loaded.params, inputs, layer, image, np.stack([c, y, x], 1), batch_size, rule)
      shown = topk.crops(arch, layer, inputs, image, y, x, pixels, None)
      columns.setdefault(layer, []).append({"values": top[layer]["value"][c, 0], "images": image,
                                            "positions": np.stack([y, x], -1), "projections": shown["projections"]})
    steps.append(loaded.step)
    epochs.append(loaded.epoch)
  if arch is None:
    raise ValueError("no checkpoints to analyse")
  out = {"layers": np.array(layers), "steps": np.array(steps), "epochs": np.array(epochs, np.float64),
         "num_images": np.int64(len(examples))}
  for layer in layers:
    out[f"{layer}/maps"] = chosen[layer]
    out[f"{layer}/all_images"] = np.stack([np.asarray(i) for i, _ in every[layer]], axis=1)
    out[f"{layer}/all_values"] = np.stack([np.asarray(v) for _, v in every[layer]], axis=1)
    for name in ("values", "images", "positions", "projections"):
      out[f"{layer}/{name}"] = np.stack([col[name] for col in columns[layer]], axis=1)
  return out


def settled_epochs(images: np.ndarray, epochs: np.ndarray) -> np.ndarray:
  """Per map, the first epoch from which the winning image no longer changes.

  Args:
    images: int [M, T], the winning image of each map at each checkpoint.
    epochs: [T].

  Returns:
    float [M].
  """
  same = images == images[:, -1:]
  first = same.shape[1] - np.argmin(same[:, ::-1], axis=1)  # after the last column that differs
  first = np.where(same.all(axis=1), 0, first)
  return np.asarray(epochs, np.float64)[first]


def convergence(result: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
  """Fig. 4's claim as a number per layer: "the lower layers of the model can be seen to converge
  within a few epochs. However, the upper layers only develop after a considerable number of epochs".

  For every map of the layer, its settled epoch (`settled_epochs`: the last kept epoch at which the
  map's top image over the fixed example set still changes; the first kept epoch if it never does).
  Maps that are dead at the last checkpoint (top activation 0) are left out: their "top image" is a
  tie among all images and says nothing about learning.

  Returns:
    {layer: {"median_settled_epoch", "mean_settled_epoch" over live maps, "num_maps", "num_dead",
    "share_settled_by_epoch": {epoch: share of live maps settled at or before it}}}.
  """
  epochs = np.asarray(result["epochs"], np.float64)
  out = {}
  for layer in result["layers"]:
    layer = str(layer)
    images, values = result[f"{layer}/all_images"], result[f"{layer}/all_values"]
    live = values[:, -1] > 0
    settled = settled_epochs(images[live], epochs)
    out[layer] = {"median_settled_epoch": float(np.median(settled)) if live.any() else None,
                  "mean_settled_epoch": float(settled.mean()) if live.any() else None,
                  "num_maps": int(len(images)), "num_dead": int((~live).sum()),
                  "share_settled_by_epoch": {f"{e:g}": float((settled <= e).mean()) if live.any() else None
                                             for e in epochs}}
  return out


def plot_convergence(result: Mapping[str, np.ndarray], path: str) -> None:
  """Per layer, the share of its (live) maps whose top image no longer changes after each epoch."""
  import matplotlib.pyplot as plt
  numbers = convergence(result)
  fig, ax = plt.subplots(figsize=(5.5, 3.6))
  for layer, c in numbers.items():
    shares = [np.nan if v is None else v for v in c["share_settled_by_epoch"].values()]
    ax.plot(result["epochs"], shares, "-o", ms=3, label=f"{layer} (median {c['median_settled_epoch']})")
  ax.set_xlabel("epoch (kept checkpoints)", fontsize=8)
  ax.set_ylabel("share of maps settled", fontsize=8)
  ax.set_ylim(-0.02, 1.02)
  ax.set_title(f"Top image over {int(result['num_images'])} fixed images no longer changes", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  files.save_figure(fig, path)


def _label(epoch: float) -> str:
  return f"{epoch:.3g}"


def plot(result: Mapping[str, np.ndarray], path: str) -> None:
  """Fig. 4's layout: one block per layer, rows = maps, columns = epochs."""
  import matplotlib.pyplot as plt
  layers = [str(l) for l in result["layers"]]
  epochs = result["epochs"]
  fig, axes = plt.subplots(len(layers), 1, figsize=(0.8 * len(epochs) + 1.2, 0.8 * sum(
      len(result[f"{l}/maps"]) for l in layers) + 0.6 * len(layers)), squeeze=False)
  for ax, layer in zip(axes[:, 0], layers):
    tiles = result[f"{layer}/projections"]
    m, t, p = tiles.shape[:3]
    ax.imshow(topk.mosaic(tiles.reshape(m * t, p, p, 3), t), interpolation="nearest")
    ax.set_xticks((p + 1) * np.arange(t) + (p - 1) / 2, [_label(e) for e in epochs], fontsize=7)
    ax.set_yticks((p + 1) * np.arange(m) + (p - 1) / 2, [str(c) for c in result[f"{layer}/maps"]], fontsize=7)
    ax.set_ylabel(f"{layer} map", fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
      side.set_visible(False)
  axes[-1, 0].set_xlabel("epoch", fontsize=8)
  axes[0, 0].set_title(f"Strongest activation over {int(result['num_images'])} images, projected", fontsize=9)
  fig.tight_layout()
  files.save_figure(fig, path)


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able numbers: per layer and map the winning image and activation at every epoch, how
  often the winning image changes, and the epoch from which it stays the same; "convergence": the
  same over all maps of each layer (see `convergence`)."""
  epochs = result["epochs"]
  out: dict[str, Any] = {"steps": result["steps"].tolist(), "epochs": epochs.tolist(),
                         "num_images": int(result["num_images"]), "convergence": convergence(result)}
  for layer in result["layers"]:
    layer = str(layer)
    images = result[f"{layer}/images"]
    settled = settled_epochs(images, epochs)
    out[layer] = {"median_settled_epoch": float(np.median(settled)), "maps": {
        int(c): {"images": images[i].tolist(), "values": np.round(result[f"{layer}/values"][i], 6).tolist(),
                 "image_changes": int((images[i, 1:] != images[i, :-1]).sum()), "settled_epoch": float(settled[i])}
        for i, c in enumerate(result[f"{layer}/maps"])}}
  return out


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py evolution`: Fig. 4 over the checkpoints of the source's workdir, written into `out`."""
  if not source.workdir:
    raise ValueError("evolution reads the checkpoints of a training workdir; pass --workdir")
  examples, _ = source.examples(source.num_images, "num_images")
  num_maps = options["num_maps"]
  result = compute(checkpoints(source.workdir, options["steps"]), examples, options["layers"], options["maps"],
                   max(1, num_maps // 4) if num_maps else None, options["batch_size"], options["rule"],
                   options["seed"], progress=True)
  figures = {"evolution.png": functools.partial(plot, result),
             "evolution_convergence.png": functools.partial(plot_convergence, result)}
  return common.write_section(
      summary(result), figures, out, "evolution", "Fig. 4: evolution of features through training",
      "Rows: feature maps; columns: checkpoints (epochs). Each cell is the strongest activation of the map over "
      f"{len(examples)} fixed images at that checkpoint, projected to pixels (contrast enhanced). Second figure: per "
      "layer, the share of all its live maps whose top image no longer changes after each epoch (evolution.json: "
      "convergence).")
