"""Fig. 7's claims as numbers (section 4.2): does occluding the object hurt the classifier most, and
does occluding the support of the strongest top-layer map's projection make that map drop?

`compute(arch, params, images, labels, boxes)` takes labelled images with object boxes (Tiny
ImageNet's boxes.csv) -> the localization score (the share of correctly classified images whose
p(correct) minimum lies inside the box), its chance baseline (a random occluder position), and the
map's activity with the occluder on vs off the support of its projection; `plot` and `summary` as
every analysis. The occlusion maps themselves come from `occlusion.occlusion_maps`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from zf_jax import data, files
from zf_jax.analysis import common, occlusion, topk
from zf_jax.analysis.source import NeedsDataset, Source
from zf_jax.data import model_inputs
from zf_jax.models import Arch, Params


def localization_score(maps: Mapping[str, np.ndarray], boxes: Any) -> dict[str, Any]:
  """Does occluding the object hurt most? (section 4.2, as a number).

  The occluder's center at the p(correct) minimum is inside a box (y0, x0, y1, x1) when
  y0 <= cy <= y1 and x0 <= cx <= x1 (continuous pixel coordinates: pixel i spans [i, i + 1)).

  Args:
    maps: from `occlusion_maps` (or `compute`): "p_true", "corners", "size", "labels", "predicted".
    boxes: int [B, 4] (y0, x0, y1, x1), half-open, on the model input (`model_inputs.input_boxes` maps
      boxes of the original photos there).

  Returns:
    "score": the share of correctly classified images whose minimum is inside their box (nan
    when none is correct), "num_correct", "num_images", and per image "correct" [B], "inside" [B],
    "minimum" [B, 2] (the occluder center, y, x).
  """
  boxes = np.asarray(boxes)
  batch = len(maps["labels"])
  if boxes.shape != (batch, 4):
    raise ValueError(f"boxes has shape {boxes.shape}; allowed: [{batch}, 4] (y0, x0, y1, x1), one per image")
  center = occlusion.minimum_centers(maps["p_true"], maps["corners"], int(maps["size"]))
  inside = ((boxes[:, :2] <= center) & (center <= boxes[:, 2:])).all(1)
  correct = maps["predicted"] == maps["labels"]
  return {"score": float(inside[correct].mean()) if correct.any() else float("nan"),
          "num_correct": int(correct.sum()), "num_images": batch,
          "correct": correct, "inside": inside, "minimum": center}


def boxes_from_corners(corners: Any, image_size: int, input_size: int) -> np.ndarray:
  """Inclusive (x0, y0, x1, y1) corners on the image_size images (Tiny ImageNet's boxes.csv, as
  `data.tiny_imagenet.boxes` reads them) -> int [B, 4] (y0, x0, y1, x1) half-open on the center
  input_size crop, for `compute`."""
  corners = np.asarray(corners, np.int64).reshape(-1, 4)
  boxes = np.stack([corners[:, 1], corners[:, 0], corners[:, 3] + 1, corners[:, 2] + 1], 1)
  return model_inputs.input_boxes(boxes, (image_size, image_size), image_size, input_size)


def score(arch: Arch, params: Params, images: Any, labels: Any, boxes: Any, size: int | None = None,
          stride: int | None = None, batch_size: int = 64, mode: str = "exact") -> dict[str, Any]:
  """`localization_score` of labelled images (e.g. Tiny ImageNet's boxes.csv), without projections.

  Args:
    arch, params, images, labels, size, stride, batch_size, mode: as `occlusion_maps` (labels required).
    boxes: int [B, 4] (y0, x0, y1, x1) half-open on the model input.
  """
  if labels is None:
    raise ValueError("labels is None; localization needs the correct class of every image")
  maps = occlusion.occlusion_maps(arch, params, images, labels, size, stride, None, batch_size, mode)
  return localization_score(maps, boxes)


SUPPORT_MASS = 0.5


def chance_localization(boxes: Any, correct: Any, offsets: np.ndarray, size: int) -> dict[str, Any]:
  """The localization score's chance baseline: the same score with the p(correct) minimum replaced by
  an occluder position drawn uniformly at random (section 4.2, Fig. 7).

  The expected score is, over the correctly classified images, the mean share of occluder positions
  whose center lies inside the image's box (the same test as `localization_score`: y0 <= cy <= y1
  and x0 <= cx <= x1). A large object box makes a high score easy; this says how easy.

  Args:
    boxes: int [B, 4] (y0, x0, y1, x1) half-open on the model input.
    correct: bool [B], which images are classified correctly (`localization_score`'s "correct").
    offsets, size: the occluder positions on each axis and its side (`corners`).

  Returns:
    "chance": the expected score (nan when none is correct), "share_inside" float [B] per image.
  """
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  correct = np.asarray(correct, bool).reshape(-1)
  if len(correct) != len(boxes):
    raise ValueError(f"correct has {len(correct)} entries; allowed: one per box ({len(boxes)})")
  centers = np.asarray(offsets, np.float64) + size / 2
  share_y = ((boxes[:, :1] <= centers) & (centers <= boxes[:, 2:3])).mean(1)
  share_x = ((boxes[:, 1:2] <= centers) & (centers <= boxes[:, 3:4])).mean(1)
  share = share_y * share_x  # the positions form a grid: inside on both axes
  return {"chance": float(share[correct].mean()) if correct.any() else float("nan"), "share_inside": share}


def _square_sums(values: np.ndarray, offsets: np.ndarray, size: int) -> np.ndarray:
  """[B, S, S] -> [B, P, P]: the sum of each image's values under the occluder at every position."""
  integral = np.pad(np.cumsum(np.cumsum(values, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
  lo, hi = offsets, offsets + size
  return (integral[:, hi][:, :, hi] - integral[:, lo][:, :, hi] - integral[:, hi][:, :, lo]
          + integral[:, lo][:, :, lo])


def support_masks(projections: np.ndarray, mass: float = SUPPORT_MASS) -> np.ndarray:
  """The support of each projection: its fewest pixels that hold `mass` of its |projection| (summed
  over colours). [B, S, S, 3] -> bool [B, S, S] (all False for an all-zero projection)."""
  if not 0 < mass <= 1:
    raise ValueError(f"mass={mass} is not allowed; allowed: 0 < mass <= 1")
  magnitude = np.abs(np.asarray(projections, np.float64)).sum(-1)
  flat = magnitude.reshape(len(magnitude), -1)
  order = np.argsort(-flat, axis=1, kind="stable")
  ranked = np.take_along_axis(flat, order, axis=1)
  total = ranked.sum(1, keepdims=True)
  # Keep a pixel while the mass before it is short of the target (so the pixel crossing it is kept).
  keep = (np.cumsum(ranked, axis=1) - ranked < mass * total) & (ranked > 0)
  masks = np.zeros_like(flat, bool)
  np.put_along_axis(masks, order, keep, axis=1)
  return masks.reshape(magnitude.shape)


def support_effect_from(activity: np.ndarray, projections: np.ndarray, offsets: np.ndarray, size: int,
                        mass: float = SUPPORT_MASS) -> dict[str, Any]:
  """Section 4.2's second observation as numbers: occluding the region the strongest conv5 map's
  projection occupies makes that map's activity drop ("the feature map's strongest activation ...
  drops"; Fig. 7 (b) against (c)).

  A position is "on" the support when the occluder's square overlaps `support_masks(projections,
  mass)`, else "off". Per image the mean activity (Fig. 7 (b): the map's summed activation) over on
  and over off positions; images without positions of both kinds are left out.

  Args:
    activity: [B, P, P] the map's total activation per occluder position (`occlusion_maps`).
    projections: [B, S, S, 3] that map's strongest unit projected to pixels (any positive scale).
    offsets, size: the occluder positions on each axis and its side.
    mass: the share of |projection| mass that defines the support.

  Returns:
    "mass", "num_images", "num_compared" (images with on and off positions), "mean_ratio_on_off" and
    "median_ratio_on_off" (per image mean on / mean off, over compared images with activity off > 0),
    "share_on_below_off" (of compared images, those whose mean on < mean off), "mean_on_share" (share
    of positions on the support), "median_spearman" (over images: Spearman correlation between the
    share of projection mass under the square and the activity; negative: the more of the support is
    covered, the lower the activity), and per image "on" [B], "off" [B] (nan where none), "masks".
  """
  from scipy import stats
  activity = np.asarray(activity, np.float64)
  masks = support_masks(projections, mass)
  offsets = np.asarray(offsets, np.int64)
  if activity.shape != (len(masks), len(offsets), len(offsets)):
    raise ValueError(f"activity has shape {activity.shape}; allowed: [{len(masks)}, {len(offsets)}, {len(offsets)}] "
                     "(images, occluder rows, occluder columns)")
  on = _square_sums(masks.astype(np.float64), offsets, size) > 0
  magnitude = np.abs(np.asarray(projections, np.float64)).sum(-1)
  covered = _square_sums(magnitude, offsets, size)
  mean_on = np.array([a[o].mean() if o.any() else np.nan for a, o in zip(activity, on)])
  mean_off = np.array([a[~o].mean() if (~o).any() else np.nan for a, o in zip(activity, on)])
  compared = ~np.isnan(mean_on) & ~np.isnan(mean_off)
  ratio_ok = compared & (np.nan_to_num(mean_off) > 0)
  ratios = mean_on[ratio_ok] / mean_off[ratio_ok]
  rho = np.array([stats.spearmanr(c.ravel(), a.ravel())[0] if np.ptp(c) > 0 and np.ptp(a) > 0 else np.nan
                  for c, a in zip(covered, activity)])
  finite = ~np.isnan(rho)
  return {"mass": float(mass), "num_images": int(len(activity)), "num_compared": int(compared.sum()),
          "mean_ratio_on_off": float(ratios.mean()) if len(ratios) else None,
          "median_ratio_on_off": float(np.median(ratios)) if len(ratios) else None,
          "share_on_below_off": float((mean_on[compared] < mean_off[compared]).mean()) if compared.any() else None,
          "mean_on_share": float(on.mean()), "median_spearman": float(np.median(rho[finite])) if finite.any() else None,
          "on": mean_on, "off": mean_off, "masks": masks}


def support_effect(arch: Arch, params: Params, images: Any, maps: Mapping[str, np.ndarray],
                   mass: float = SUPPORT_MASS, batch_size: int = 64) -> dict[str, Any]:
  """`support_effect_from` for occlusion maps of `images`: projects each image's strongest unit
  (maps["unit"], at maps["layer"]) with the deconvnet, then compares activity on and off its support.

  Args:
    arch, params: the model.
    images: float [B, S, S, 3], mean-subtracted, as given to `occlusion_maps`.
    maps: `occlusion_maps(arch, params, images, ...)` (or `compute`'s result).
    mass, batch_size: see `support_effect_from`; projections per jitted call.
  """
  images = np.asarray(images, np.float32)
  projections = topk.project_units(arch, params, images, str(maps["layer"]), np.arange(len(images)), maps["unit"],
                                   batch_size)
  return support_effect_from(maps["activity"], projections, maps["corners"], int(maps["size"]), mass)


def compute(arch: Arch, params: Params, images: Any, labels: Any, boxes: Any, batch_size: int = 64) -> dict[str, Any]:
  """Section 4.2's localization score, its chance level and the support effect, from one set of occlusion maps.

  Args:
    arch, params: the model.
    images: float [B, S, S, 3] mean-subtracted inputs.
    labels: int [B] correct classes.
    boxes: int [B, 4] (y0, x0, y1, x1) half-open object boxes on the model input.
    batch_size: images per jitted call.

  Returns:
    "score" (`localization_score`), "chance" (`chance_localization`), "support" (`support_effect`), "layer".
  """
  maps = occlusion.occlusion_maps(arch, params, images, labels, batch_size=batch_size)
  found = localization_score(maps, boxes)
  chance = chance_localization(boxes, found["correct"], maps["corners"], int(maps["size"]))
  return {"score": found, "chance": chance, "layer": str(maps["layer"]),
          "support": support_effect(arch, params, images, maps, batch_size=batch_size)}


def _or_none(value: float) -> float | None:
  """A score, or None where it is undefined (nan: no image classified correctly)."""
  return None if np.isnan(value) else value


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
  """The numbers of `compute` without the per-image arrays."""
  found, support = result["score"], result["support"]
  return {"score": _or_none(found["score"]), "chance": _or_none(result["chance"]["chance"]),
          "num_correct": found["num_correct"],
          "num_images": found["num_images"], "layer": result["layer"],
          "support": {k: v for k, v in support.items() if k not in ("on", "off", "masks")}}


def plot(result: Mapping[str, Any], path: str) -> None:
  """Left: the localization score against its chance level; right: per image, the map's mean activity
  with the occluder on its projection's support against off it (below the diagonal: it drops)."""
  import matplotlib.pyplot as plt
  numbers = summary(result)
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  left.bar(["p(correct) minimum\ninside the box", "chance\n(random position)"],
           [numbers["score"] or 0, numbers["chance"] or 0], color=["tab:blue", "tab:grey"])
  left.set_ylim(0, 1)
  left.set_title(f"{numbers['num_correct']} of {numbers['num_images']} images correct", fontsize=9)
  on, off = result["support"]["on"], result["support"]["off"]
  right.scatter(off, on, s=8)
  top = float(np.nanmax([np.nanmax(on), np.nanmax(off), 1e-6])) if np.isfinite(on).any() else 1.0
  right.plot([0, top], [0, top], color="grey", lw=0.8)
  right.set_xlabel(f"{result['layer']} strongest map: activity, occluder off the support", fontsize=8)
  right.set_ylabel("on the support", fontsize=8)
  files.save_figure(fig, path)


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py localization`: the numbers above over the first `num_localization` images of the
  source's split that have boxes (Tiny ImageNet: boxes.csv of --boxes, default the model's copy)."""
  config = source.model.config
  boxes_dir = options["boxes"] or (config.get("manual_dir") if config.get("dataset") == "tiny_imagenet" else None)
  if not boxes_dir or source.photos is not None:
    raise NeedsDataset("localization needs labelled images with object boxes: pass --boxes=TINY_IMAGENET_COPY (with "
                       "boxes.csv) and --dataset=tiny_imagenet, or a model trained on a Tiny ImageNet copy present "
                       "here")
  dataset, arch = source.dataset, source.model.arch
  indices = range(min(options["num_localization"], len(dataset.source)))
  split = "train" if source.split.startswith("train") else "validation"
  table = data.boxes(boxes_dir, split)
  names = [dataset.source[i]["file_name"] for i in indices]
  corners = [table[n.decode() if isinstance(n, bytes) else n] for n in names]
  images, labels = data.load_batch(dataset.source, indices, source.image_size)
  inputs = model_inputs.eval_inputs(images, arch.input_size, source.model.mean_image)
  boxes = boxes_from_corners(corners, source.image_size, arch.input_size)
  result = compute(arch, source.model.params, inputs, labels, boxes, options["batch_size"])
  numbers = {**summary(result), "boxes": "--boxes" if options["boxes"] else "the model's Tiny ImageNet copy",
             "split": split}
  return common.write_section(
      numbers, {"localization.png": lambda path: plot(result, path)}, out, "localization",
      "Fig. 7 as numbers: localization and the support effect",
      f"Over {numbers['num_images']} labelled images: of the {numbers['num_correct']} classified correctly, a share "
      f"of {numbers['score'] or 0:.3f} have their p(correct) minimum inside the object box (chance, a random occluder "
      f"position: {numbers['chance'] or 0:.3f}); occluding the support of the strongest {numbers['layer']} map's "
      f"projection leaves that map on average {numbers['support']['mean_ratio_on_off'] or 0:.3f} of its activity with "
      "the occluder elsewhere.")
