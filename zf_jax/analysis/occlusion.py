"""Fig. 7: occlusion sensitivity (section 4.2), and a localization score over labelled boxes.

A grey square of side `size` is slid over the image with step `stride` (top-left corners 0,
stride, ... <= S - size on both axes). Grey is the dataset mean: in the mean-subtracted inputs the
library uses, the occluded pixels are set to 0 (with the per-pixel mean image, each occluded pixel
becomes that pixel of the mean). For every position the module records

  (b) the total activation (summed over space) of one top-conv-layer ("conv5") feature map: the
      strongest one in the unoccluded image, i.e. the map with the largest single activation;
  (d) p(correct class) = softmax(logits)[label];
  (e) the most probable class;

and (c) the deconvnet projection (section 2.1) of that map's strongest unit in the unoccluded image,
with the unit's receptive field. By default (mode="exact") the positions run by incremental inference
(`zf_jax.analysis.incremental`, after Krypton, Nakandala et al. 2019): each position recomputes only
the windows of the maps that the square reaches, from the unoccluded image's maps, batched over
positions; the results equal a full forward pass per position up to float rounding. mode="full"
runs those full forward passes (batched, jitted, the occluded copies made inside the jitted
function). Two approximations (Krypton's), faster and not exact (`approximation_error`):
mode="approximate" caps the windows at a share of each map (the projective-field threshold);
mode="coarse_to_fine" computes a coarse grid of positions exactly (incrementally), then, level by
level, the finer positions only inside the cells whose corners differ by more than a tolerance, and
interpolates the rest (`drill_down`).

`localization` asks whether the classifier looks at the object: among correctly classified images,
the share whose p(correct) minimum (the occluder's center there) lies inside the object's box.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import deconv, files, models
from zf_jax.analysis import common, incremental
from zf_jax.analysis.source import Source
from zf_jax.models import Arch, Params

MODES = ("exact", "full", "approximate", "coarse_to_fine")


def corners(input_size: int, size: int | None = None, stride: int | None = None) -> tuple[np.ndarray, int]:
  """Occluder top-left offsets on each axis, and the occluder side.

  Args:
    input_size: S.
    size: the square's side; default S/4 (56 px at 224, 14 at 56).
    stride: the step between positions; default S/28 (8 px at 224, 2 at 56).

  Returns:
    int32 [P] offsets 0, stride, ... <= S - size, and the side.
  """
  size = input_size // 4 if size is None else size
  stride = max(1, input_size // 28) if stride is None else stride
  if not 1 <= size <= input_size:
    raise ValueError(f"size={size} is not allowed; allowed: 1..{input_size} (the input side)")
  if stride < 1:
    raise ValueError(f"stride={stride} is not allowed; allowed: >= 1")
  return np.arange(0, input_size - size + 1, stride, dtype=np.int32), size


def occlude(images: jax.Array, boxes: jax.Array) -> jax.Array:
  """Greys out one box per image: pixels inside become 0, the mean (section 4.2, Fig. 7 and 8).

  Args:
    images: float [N, S, S, 3], mean-subtracted.
    boxes: int [N, 4] (y0, x0, y1, x1), half-open; an empty box leaves the image as it is.

  Returns:
    float [N, S, S, 3].
  """
  r = jnp.arange(images.shape[1])
  rows = (r >= boxes[:, 0:1]) & (r < boxes[:, 2:3])
  cols = (r >= boxes[:, 1:2]) & (r < boxes[:, 3:4])
  return jnp.where((rows[:, :, None] & cols[:, None, :])[..., None], 0.0, images)


@functools.partial(jax.jit, static_argnames=("arch", "layer"))
def _occluded(arch: Arch, params: Params, images: jax.Array, labels: jax.Array, channels: jax.Array,
              index: jax.Array, boxes: jax.Array, layer: str):
  """images[index] occluded by boxes ([N], [N, 4]) -> total activation of map channels[index] [N],
  p(labels[index]) [N], top-1 class [N]."""
  logits, trace = models.forward(arch, params, occlude(images[index], boxes))
  totals = trace.activations[layer].sum(axis=(1, 2))
  activity = jnp.take_along_axis(totals, channels[index][:, None], axis=1)[:, 0]
  p_true = jnp.take_along_axis(jax.nn.softmax(logits), labels[index][:, None], axis=1)[:, 0]
  return activity, p_true, jnp.argmax(logits, axis=1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("arch", "layer"))
def _strongest(arch: Arch, params: Params, images: jax.Array, layer: str):
  """Unoccluded images [N, S, S, 3] -> the strongest unit of layer (the largest activation: int32
  [N, 3] channel, y, x) and the top-1 class [N]."""
  logits, trace = models.forward(arch, params, images)
  act = trace.activations[layer]
  n, h, w, c = act.shape
  flat = act.reshape(n, -1).argmax(axis=1)
  units = jnp.stack([flat % c, flat // c // w, flat // c % w], axis=1).astype(jnp.int32)
  return units, jnp.argmax(logits, axis=1).astype(jnp.int32)


def _num_classes(arch: Arch, params: Params) -> int:
  return int(params[arch.layers[-1].name]["kernel"].shape[1])


def _check_layer(arch: Arch, layer: str | None) -> str:
  layer = arch.conv_names[-1] if layer is None else layer
  if layer not in arch.conv_names:
    raise ValueError(f"layer={layer!r} is not a conv layer of {arch.name!r}; allowed: {', '.join(arch.conv_names)}")
  return layer


def _axis(p: int, spacing: int) -> np.ndarray:
  """Position indices 0, spacing, ... on one axis of P positions, and the last one, P - 1."""
  return np.unique(np.r_[np.arange(0, p, spacing), p - 1])


def _in_chunks(fn: Any, rows: np.ndarray, batch_size: int) -> Any:
  """`common.map_chunks(fn, (rows,), batch_size)`, its last partial chunk run at the next power of two
  instead (the drill-down's levels leave small remainders: fewer padded rows, a few more compilations)."""
  whole = len(rows) - len(rows) % batch_size
  tail = len(rows) - whole
  parts = [common.map_chunks(fn, (rows[:whole],), batch_size)] if whole else []
  if tail:
    parts.append(common.map_chunks(fn, (rows[whole:],), min(batch_size, 1 << (tail - 1).bit_length())))
  return jax.tree.map(lambda *o: np.concatenate(o), *parts)


def drill_down(evaluate: Any, p: int, coarse: int,
               tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Coarse-to-fine occlusion maps of one image (Krypton's adaptive drill-down), on a P x P grid of positions.

  Level 0 computes the positions at every `coarse`-th index of both axes (and the last index). Each
  level then halves the spacing: a cell of the current grid (four computed corners) is refined, its
  positions at the new spacing computed, when the spread (max - min) of its corners' p(correct)
  exceeds `tolerance` times that map's spread over level 0's positions (tolerance 0 refines every
  cell: all positions computed). The positions inside a cell that is not refined are interpolated
  bilinearly from its corners (p(correct) and the activity); their top class is the nearest corner's.

  Args:
    evaluate: int [K, 2] (row, column) position indices -> (activity [K], p(correct) [K], top class [K]).
    p: positions on each axis.
    coarse: level 0's spacing (>= 1; 1 computes everything).
    tolerance: >= 0, the share of the map's spread that a cell's corners may differ by unrefined.

  Returns:
    activity [P, P], p_true [P, P], top_label int32 [P, P], and computed bool [P, P] (False: interpolated).
  """
  values = np.zeros((3, p, p))
  computed = np.zeros((p, p), bool)

  def compute(new: np.ndarray) -> None:  # all positions of one level in one call
    index = np.argwhere(new & ~computed)
    if len(index):
      values[:, index[:, 0], index[:, 1]] = np.stack([np.asarray(v, np.float64) for v in evaluate(index)])
      computed[index[:, 0], index[:, 1]] = True

  spacing, axis = coarse, _axis(p, coarse)
  compute(np.isin(np.arange(p), axis)[:, None] & np.isin(np.arange(p), axis)[None, :])
  spread = np.ptp(values[1][computed])
  while spacing > 1:
    spacing = max(1, spacing // 2)
    finer = _axis(p, spacing)
    refine, smooth = np.zeros((p, p), bool), []
    for (y0, y1) in zip(axis[:-1], axis[1:]):
      for (x0, x1) in zip(axis[:-1], axis[1:]):
        corners = np.ix_((y0, y1), (x0, x1))
        if not computed[corners].all():
          continue  # inside a cell interpolated at a coarser level
        if tolerance == 0 or np.ptp(values[1][corners]) > tolerance * spread:
          refine[np.ix_(finer[(finer >= y0) & (finer <= y1)], finer[(finer >= x0) & (finer <= x1)])] = True
        else:
          smooth.append((y0, y1, x0, x1))
    compute(refine)
    for y0, y1, x0, x1 in smooth:  # bilinear from the corners; the top class of the nearest corner
      (a, b), (c, d) = values[:, [y0, y1]][:, :, [x0, x1]].transpose(1, 2, 0)
      t = np.linspace(0, 1, y1 - y0 + 1)[:, None, None]
      u = np.linspace(0, 1, x1 - x0 + 1)[None, :, None]
      block = (1 - t) * ((1 - u) * a + u * b) + t * ((1 - u) * c + u * d)
      block[..., 2] = np.where(t < 0.5, np.where(u < 0.5, a, b), np.where(u < 0.5, c, d))[..., 2]
      inside = ~computed[y0:y1 + 1, x0:x1 + 1]
      values[:, y0:y1 + 1, x0:x1 + 1][:, inside] = block[inside].T
    axis = finer
  return values[0], values[1], values[2].astype(np.int32), computed


def occlusion_maps(arch: Arch, params: Params, images: Any, labels: Any = None, size: int | None = None,
                   stride: int | None = None, layer: str | None = None, batch_size: int = 64,
                   mode: str = "exact", threshold: float = 0.5, coarse: int = 4,
                   tolerance: float = 0.2) -> dict[str, np.ndarray]:
  """The maps of Fig. 7 (b), (d), (e), without the projection (c).

  Args:
    arch, params: the model.
    images: float [B, S, S, 3], mean-subtracted.
    labels: int [B] correct classes; None uses each image's top-1 class (unoccluded).
    size, stride: the occluder (see `corners`).
    layer: the conv layer of (b); default the top one ("conv5").
    batch_size: occluder positions per jitted call.
    mode: "exact" (default): incremental inference (`incremental`): per position only the part of
      each map the occluder reaches is recomputed, from the unoccluded image's maps; equal to "full"
      up to float rounding. "full": one whole forward pass per position. "approximate": incremental
      with each window capped at `threshold` times its map's side (Krypton's projective-field
      threshold; changes outside the cap are dropped: see `approximation_error`). "coarse_to_fine":
      exact incremental positions on a coarse grid, finer ones only where the map changes, the rest
      interpolated (`drill_down`; Krypton's adaptive drill-down).
    threshold: tau in (0, 1] of mode="approximate".
    coarse, tolerance: mode="coarse_to_fine"'s first spacing (in positions, >= 1) and the share of the
      map's spread (>= 0) by which a cell's corners may differ without computing inside it (0: exact).
      The defaults (4, 0.2) gave an SSIM of p(correct) of 0.90 against exact, 61% of the positions
      computed, on a trained zfnet64 (8-px occluder, stride 2, 4 validation images).

  Returns:
    "labels" [B], "predicted" [B] (unoccluded top-1), "corners" [P], "size" (), "layer" (),
    "map" [B] (the strongest map's channel), "unit" [B, 3] (its strongest unit: channel, y, x),
    "activity" [B, P, P], "activity_unoccluded" [B], "p_true" [B, P, P], "p_true_unoccluded" [B],
    "top_label" [B, P, P], "computed" bool [B, P, P] (False where mode="coarse_to_fine" interpolated);
    map axes are (occluder row, occluder column).
  """
  models.check_images(arch, images)
  layer = _check_layer(arch, layer)
  if mode not in MODES:
    raise ValueError(f"mode={mode!r} is not allowed; allowed: {', '.join(MODES)}")
  if mode == "approximate" and not 0 < threshold <= 1:
    raise ValueError(f"threshold={threshold} is not allowed; allowed: 0 < threshold <= 1")
  if mode == "coarse_to_fine" and (coarse < 1 or tolerance < 0):
    raise ValueError(f"coarse={coarse}, tolerance={tolerance} are not allowed; allowed: coarse >= 1, tolerance >= 0")
  offsets, size = corners(arch.input_size, size, stride)
  images = jnp.asarray(images, jnp.float32)
  batch, p = images.shape[0], len(offsets)
  units, predicted = common.map_chunks(lambda x: _strongest(arch, params, x, layer), (images,), min(batch_size, batch))
  channels = units[:, 0]
  labels = predicted if labels is None else common.check_labels(labels, batch, _num_classes(arch, params))
  grid = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
  # Each image's positions, then an empty box: the unoccluded reference, at the same batch size.
  boxes = np.concatenate([np.tile(np.concatenate([grid, grid + size], 1), (batch, 1)), np.zeros((batch, 4))])
  index = np.concatenate([np.repeat(np.arange(batch), len(grid)), np.arange(batch)])
  computed = np.ones((batch, p, p), bool)
  if mode != "full":  # incremental: each image's positions from its unoccluded maps, then those as references
    tau = threshold if mode == "approximate" else None
    parts, references = [], []
    for b in range(batch):
      cache, logits = incremental.unoccluded(arch, params, images[b])
      label, channel = jnp.asarray(labels[b]), jnp.asarray(channels[b])

      def run(c, cache=cache, label=label, channel=channel):  # corners int [K, 2] -> activity, p(correct), top [K]
        return incremental.positions(arch, params, cache, label, channel, c, size, layer, tau)

      if mode == "coarse_to_fine":
        *maps, computed[b] = drill_down(lambda index, run=run: _in_chunks(run, offsets[index].astype(np.int32),
                                                                            batch_size),
                                        p, coarse, tolerance)
        parts.append([m.reshape(-1).astype(np.int32 if j == 2 else np.float32) for j, m in enumerate(maps)])
      else:
        parts.append(common.map_chunks(run, (grid.astype(np.int32),), min(batch_size, len(grid))))
      total = cache[arch.layer_names.index(layer) + 1][..., channels[b]].sum()
      references.append((total, jax.nn.softmax(logits)[labels[b]], jnp.argmax(logits)))
    activity, p_true, top = (np.concatenate([*(part[j] for part in parts), np.array([r[j] for r in references])])
                             for j in range(3))
  else:
    activity, p_true, top = common.map_chunks(
        lambda i, c: _occluded(arch, params, images, jnp.asarray(labels), jnp.asarray(channels), i, c, layer),
        (index.astype(np.int32), boxes.astype(np.int32)), min(batch_size, len(index)))
  n = batch * p * p
  return {"labels": labels, "predicted": predicted, "corners": offsets, "size": np.array(size),
          "layer": np.array(layer), "map": channels, "unit": units,
          "activity": activity[:n].reshape(batch, p, p), "activity_unoccluded": activity[n:],
          "p_true": p_true[:n].reshape(batch, p, p), "p_true_unoccluded": p_true[n:],
          "top_label": top[:n].reshape(batch, p, p), "computed": computed}


def approximation_error(exact: Mapping[str, np.ndarray], approx: Mapping[str, np.ndarray]) -> dict[str, float]:
  """How far mode="approximate"'s maps are from the exact ones (both from `occlusion_maps`).

  Returns:
    "max_abs_p_true": max |p(correct) difference| over all positions; "ssim_p_true" and
    "ssim_activity": the mean over images of scikit-image's structural_similarity of the [P, P]
    maps (data range: the exact map's; window: 7 or the largest odd side that fits, at least 3);
    "top_label_agreement": the share of positions with the same top class.
  """
  from skimage.metrics import structural_similarity
  side = exact["p_true"].shape[-1]
  window = min(7, side if side % 2 else side - 1)
  if window < 3:
    raise ValueError(f"the maps are {side}x{side}; SSIM needs at least 3x3 occluder positions")

  def ssim(key: str) -> float:
    return float(np.mean([structural_similarity(e, a, win_size=window, data_range=max(float(np.ptp(e)), 1e-12))
                          for e, a in zip(exact[key].astype(np.float64), approx[key].astype(np.float64))]))

  return {"max_abs_p_true": float(np.abs(exact["p_true"] - approx["p_true"]).max()),
          "ssim_p_true": ssim("p_true"), "ssim_activity": ssim("activity"),
          "top_label_agreement": float((exact["top_label"] == approx["top_label"]).mean())}


def compute(arch: Arch, params: Params, images: Any, labels: Any = None, class_names: Sequence[str] | None = None,
            size: int | None = None, stride: int | None = None, layer: str | None = None,
            mean_image: Any = None, batch_size: int = 64, mode: str = "exact",
            threshold: float = 0.5, coarse: int = 4, tolerance: float = 0.2) -> dict[str, np.ndarray]:
  """Everything Fig. 7 shows, one row per image.

  Args:
    arch, params, images, labels, size, stride, layer, batch_size, mode, threshold, coarse, tolerance: as
      `occlusion_maps` (mode "exact" by default: incremental inference, equal to a full forward pass per
      position).
    class_names: [C] names for the legend of (e); default the class indices.
    mean_image: only to show the photos (see `common.display_images`).

  Returns:
    `occlusion_maps`'s arrays, plus "images" [B, S, S, 3] and "projection" [B, S, S, 3] (the
    strongest unit's deconvnet projection, both for display in [0, 1]), "box" [B, 4] (that unit's
    receptive field, y0, x0, y1, x1 half-open) and "class_names" [C].
  """
  num_classes = _num_classes(arch, params)
  names = [str(c) for c in range(num_classes)] if class_names is None else [str(c) for c in class_names]
  if len(names) != num_classes:
    raise ValueError(f"class_names has {len(names)} names; the model has {num_classes} classes")
  out = occlusion_maps(arch, params, images, labels, size, stride, layer, batch_size, mode, threshold, coarse,
                       tolerance)
  layer = str(out["layer"])
  _, trace = models.forward(arch, params, jnp.asarray(images, jnp.float32))
  channel, y, x = out["unit"].T
  projection = deconv.project(arch, params, trace, layer, channel=channel, y=y, x=x)
  return out | {"images": common.display_images(images, mean_image),
                "projection": common.to_display(np.asarray(projection)),
                "box": np.array([deconv.receptive_field(arch, layer, int(i), int(j)) for i, j in zip(y, x)], np.int32),
                "class_names": np.array(names)}


def minimum_centers(maps: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
  """[B, P, P] -> float [B, 2] (y, x) center of the occluder where each map is smallest (first if tied)."""
  flat = maps.reshape(len(maps), -1).argmin(1)
  iy, ix = np.unravel_index(flat, maps.shape[1:])
  return np.stack([offsets[iy], offsets[ix]], 1) + size / 2


def _extent(offsets: np.ndarray, size: int) -> tuple[float, float, float, float]:
  """imshow extent placing each map cell on its occluder's center, in input pixels."""
  step = offsets[1] - offsets[0] if len(offsets) > 1 else size
  lo, hi = offsets[0] + size / 2 - step / 2, offsets[-1] + size / 2 + step / 2
  return lo - 0.5, hi - 0.5, hi - 0.5, lo - 0.5


def _heatmap(ax: Any, fig: Any, values: np.ndarray, offsets: np.ndarray, size: int, s: int, title: str,
             **kwargs: Any) -> None:
  im = ax.imshow(values, cmap="jet", extent=_extent(offsets, size), interpolation="nearest", **kwargs)
  ax.set_xlim(-0.5, s - 0.5)
  ax.set_ylim(s - 0.5, -0.5)
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
  ax.set_title(title, fontsize=9)


def plot(result: Mapping[str, np.ndarray], path: str) -> None:
  """Fig. 7's layout: one row per image; columns (a) the image with the grey square where
  p(correct) is lowest, (b) total activity of the strongest map, (c) its projection with the
  unit's receptive field (black square), (d) p(correct class), (e) the most probable class."""
  import matplotlib.pyplot as plt
  from matplotlib.patches import Patch, Rectangle
  images, offsets, size = result["images"], result["corners"], int(result["size"])
  names = result["class_names"]
  batch, s = images.shape[:2]
  fig, axes = plt.subplots(batch, 5, figsize=(19, 3.4 * batch), squeeze=False)
  minima = minimum_centers(result["p_true"], offsets, size) - size / 2
  for b, row in enumerate(axes):
    label = int(result["labels"][b])
    row[0].imshow(images[b])
    row[0].add_patch(Rectangle(minima[b][::-1] - 0.5, size, size, color="0.5"))
    row[0].set_title(f"(a) {names[label][:28]}\np(correct) = {result['p_true_unoccluded'][b]:.3f}", fontsize=9)
    _heatmap(row[1], fig, result["activity"][b], offsets, size, s,
             f"(b) {result['layer']} map {result['map'][b]}: total activation")
    row[2].imshow(result["projection"][b])
    y0, x0, y1, x1 = result["box"][b]
    row[2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="k", lw=1.5))
    row[2].set_title(f"(c) projection of map {result['map'][b]}", fontsize=9)
    _heatmap(row[3], fig, result["p_true"][b], offsets, size, s, "(d) p(correct class)", vmin=0)
    top = result["top_label"][b]
    classes, inverse, counts = np.unique(top, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")  # the most frequent class first
    rank = np.argsort(order)
    palette = plt.cm.tab20(np.arange(len(classes)) % 20)
    row[4].imshow(palette[rank[inverse.reshape(top.shape)], :3], extent=_extent(offsets, size), interpolation="nearest")
    row[4].set_xlim(-0.5, s - 0.5)
    row[4].set_ylim(s - 0.5, -0.5)
    row[4].set_title("(e) most probable class (* = correct)", fontsize=9)
    handles = [Patch(color=palette[j], label=("* " if classes[i] == label else "") + names[classes[i]][:24])
               for j, i in enumerate(order[:10])]
    row[4].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    for ax in row:
      ax.set_xticks([])
      ax.set_yticks([])
  fig.tight_layout()
  files.save_figure(fig, path)


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able numbers per image: classes, the strongest map, and where the occluder hurts most."""
  size, offsets = int(result["size"]), result["corners"]
  names = result["class_names"]
  p_min = minimum_centers(result["p_true"], offsets, size)
  a_min = minimum_centers(result["activity"], offsets, size)
  images = []
  for b, label in enumerate(result["labels"]):
    classes, counts = np.unique(result["top_label"][b], return_counts=True)
    images.append({
        "label": int(label), "class": str(names[label]), "predicted": int(result["predicted"][b]),
        "p_correct_unoccluded": float(result["p_true_unoccluded"][b]),
        "p_correct_min": float(result["p_true"][b].min()), "p_correct_min_at": p_min[b].tolist(),
        "map": int(result["map"][b]), "unit": result["unit"][b].tolist(), "receptive_field": result["box"][b].tolist(),
        "activity_unoccluded": float(result["activity_unoccluded"][b]),
        "activity_min": float(result["activity"][b].min()), "activity_min_at": a_min[b].tolist(),
        "share_positions_correct": float((result["top_label"][b] == label).mean()),
        "top_labels": {str(names[c]): int(n) for c, n in zip(classes, counts)}})
  return {"layer": str(result["layer"]), "size": size, "corners": offsets.tolist(), "images": images}


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py occlusion`: Fig. 7 on the source's first `num_examples` images, written into `out`."""
  images, labels = source.example_inputs(options["num_examples"])
  model = source.model
  result = compute(model.arch, model.params, images, labels, model.class_names, mean_image=model.mean_image,
                   batch_size=options["batch_size"])
  return common.write_section(
      summary(result), {"occlusion.png": functools.partial(plot, result)}, out, "occlusion",
      "Fig. 7: occlusion sensitivity", "A grey square slid over each image: (b) total activity of the strongest "
      "top-conv map, (c) its projection, (d) p(correct class) (p(top-1 class) for photos without labels), (e) the "
      "most probable class.")
