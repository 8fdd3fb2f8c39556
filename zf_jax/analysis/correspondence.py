"""Table 1 and Fig. 8: correspondence analysis (section 4.3).

The same part (e.g. the left eye) is masked in each of n images (set to 0 in the mean-subtracted
input: the dataset mean, as the occluder of Fig. 7). For image i and layer l,

  eps_i = x_i - x~_i,

the flattened features of the original minus those of the masked image (post-ReLU; conv layers
pre-pool, see `models.Trace`). The paper's score is

  Delta_l = sum_{i != j} H(sign eps_i, sign eps_j),

H the Hamming distance between the ternary sign vectors (features that do not change have sign 0).
Table 1 reports it normalised; here each pair's distance is divided by the feature length F, and
the table value is the mean over the n(n-1)/2 image pairs, i.e. Delta_l / (n (n-1) F), with the
standard deviation over pairs: 0 when every image's features change the same way, 1 when all
signs disagree. Lower means tighter correspondence between the part in different images.

The control ("random") masks boxes of the same size as each part's box at uniformly random
positions inside each image (seeded), `num_random` draws per part, all pairs of all draws pooled.

Parts files (`read_parts`) name the images and their part boxes, in the photo's own pixels:
  JSON: {"image": {"part": [y0, x0, y1, x1], ...}, ...}
  CSV:  a header `image,part,y0,x0,y1,x1`, then one row per box.
Boxes are half-open (rows y0..y1-1, columns x0..x1-1). An image is a file path (relative to the
parts file's folder, or absolute), "skimage:NAME" (a scikit-image photo) or "tiny:NAME", a Tiny
ImageNet image by its path in the shard layout (e.g. "tiny:val/n02085620/val_2124.JPEG"), read from
`val.tar` (or the `train-*-of-*.tar` shards) of a Tiny ImageNet copy (`tiny_root`, e.g. the
checkpoint's manual_dir). A part need not be in every image, but needs at least two. Right/left are
the subject's own.

  `PARTS_DEMO`: eyes and noses in three skimage photos.
  `PARTS_TINY`: left eye, right eye and nose in 10 frontal animal faces (4 lions, 2 tabby cats,
    4 Chihuahuas) of the Tiny ImageNet(-100) validation split, drawn by eye on the 64-px images.
    A 56-px model sees the center crop (pixels 4..59); `load` moves and clips the boxes onto it
    (all of these boxes lie inside it).

Normalisation: the paper (section 4.3) defines Delta_l = sum_{i != j} H(sign eps_i, sign eps_j) over
its 5 dog images and reports Table 1 as "mean feature sign change" +- std without stating a
normalisation; zf_jax divides each pair's Hamming distance by the feature length F and reports the
mean and std over pairs (`summary`'s "normalisation" and "paper_normalisation").
"""
from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import files, models
from zf_jax.analysis import common
from zf_jax.analysis.occlusion import occlude
from zf_jax.analysis.source import Source
from zf_jax.data import model_inputs
from zf_jax.models import Arch, Params

PARTS_DEMO = os.path.join(os.path.dirname(__file__), "parts_skimage.json")
PARTS_TINY = os.path.join(os.path.dirname(__file__), "parts_tiny_imagenet.json")
TINY_PREFIX = "tiny:"
PAPER_NORMALISATION = ("Delta_l = sum over ordered pairs i != j of the Hamming distance between sign(eps_i) and "
                       "sign(eps_j) (section 4.3, 5 dog images); Table 1 gives mean +- std without stating a "
                       "normalisation. zf_jax: Hamming / F (feature length), mean and std over pairs i < j, i.e. "
                       "Delta_l / (n (n - 1) F) for the mean")
RANDOM = "random"

Box = Sequence[int]


def read_parts(path: str) -> tuple[list[str], dict[str, list[Box | None]]]:
  """A parts file (JSON or CSV, see the module doc) -> image sources and {part: [box or None] per image}.

  Image sources that are relative paths are made relative to the file's folder.
  """
  if not path.endswith((".json", ".csv")):
    raise ValueError(f"parts={path!r} has an unknown format; allowed: .json or .csv (see correspondence's doc)")
  try:
    with open(path) as f:
      if path.endswith(".json"):
        table = [(image, part, box) for image, parts in json.load(f).items() for part, box in parts.items()]
      else:
        table = [(r["image"], r["part"], [r["y0"], r["x0"], r["y1"], r["x1"]]) for r in csv.DictReader(f)]
    table = [(image, part, [int(v) for v in box]) for image, part, box in table]
  except (OSError, KeyError, TypeError, AttributeError, ValueError) as e:  # ValueError: bad JSON or numbers
    raise ValueError(f"parts={path!r} is not a readable parts file ({type(e).__name__}: {e}); "
                     "see zf_jax.analysis.correspondence for the format") from None
  if any(len(box) != 4 for _, _, box in table) or not table:
    raise ValueError(f"parts={path!r} needs at least one box, each (y0, x0, y1, x1)")
  folder = os.path.dirname(os.path.abspath(path))
  sources = list(dict.fromkeys(image for image, _, _ in table))
  parts: dict[str, list[Box | None]] = {part: [None] * len(sources) for _, part, _ in table}
  for image, part, box in table:
    parts[part][sources.index(image)] = box
  resolved = [s if s.startswith(("skimage:", TINY_PREFIX)) or os.path.isabs(s) else os.path.join(folder, s)
              for s in sources]
  for source in resolved:
    if not source.startswith(("skimage:", TINY_PREFIX)) and (
        not source.lower().endswith(model_inputs.IMAGE_EXTENSIONS) or
        (os.path.exists(source) and not os.path.isfile(source))):  # a missing file: read_image names it
      raise ValueError(f"parts={path!r} names {source!r}, not an image file; allowed: image files "
                       f"({', '.join(model_inputs.IMAGE_EXTENSIONS)}), skimage:NAME or {TINY_PREFIX}NAME")
  return resolved, parts


def read_tiny(names: Sequence[str], root: str | None) -> list[np.ndarray]:
  """Tiny ImageNet images by their shard-layout paths ("val/<wnid>/val_<n>.JPEG", "train/...").

  Args:
    names: paths inside the shards, with or without the "tiny:" prefix.
    root: a Tiny ImageNet shard directory (val.tar, train-*-of-*.tar), e.g. the checkpoint's manual_dir.

  Returns:
    uint8 [H, W, 3] per name.
  """
  import glob
  import io
  import tarfile

  from PIL import Image
  names = [n[len(TINY_PREFIX):] if n.startswith(TINY_PREFIX) else n for n in names]
  if not root or not os.path.isfile(os.path.join(root, "val.tar")):
    raise ValueError(f"parts_root={root!r} is not a Tiny ImageNet copy (no val.tar); pass the folder of val.tar "
                     "and train-*-of-*.tar that tiny: images are read from")
  wanted = set(names)
  found: dict[str, np.ndarray] = {}
  tars = [os.path.join(root, "val.tar")] * any(n.startswith("val/") for n in names)
  tars += sorted(glob.glob(os.path.join(root, "train-*-of-*.tar"))) * any(not n.startswith("val/") for n in names)
  for tar_path in tars:
    with tarfile.open(tar_path) as tar:
      for member in tar:
        if member.name in wanted and member.name not in found:
          with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
            found[member.name] = np.asarray(image.convert("RGB"))
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(f"image {TINY_PREFIX}{missing[0]} is not in the Tiny ImageNet copy {root!r}")
  return [found[n] for n in names]


def load(path: str, input_size: int, image_size: int, mean_image: Any, tiny_root: str | None = None
         ) -> tuple[np.ndarray, dict[str, list[Box | None]], list[str]]:
  """Reads a parts file and its images, ready for `compute`.

  Args:
    path: the parts file (e.g. `PARTS_DEMO`, `PARTS_TINY`).
    input_size, image_size, mean_image: as `model_inputs.prepare_images`.
    tiny_root: the Tiny ImageNet copy that "tiny:" images are read from (see `read_tiny`).

  Returns:
    images float [N, S, S, 3] (mean-subtracted), parts {part: [box or None] per image} with boxes
    moved onto the model input (clipped to it), and the image sources.
  """
  sources, parts = read_parts(path)
  tiny = [s for s in sources if s.startswith(TINY_PREFIX)]
  tiny_photos = dict(zip(tiny, read_tiny(tiny, tiny_root))) if tiny else {}
  photos = [tiny_photos[s] if s in tiny_photos else model_inputs.read_image(s) for s in sources]
  images = model_inputs.prepare_images(photos, input_size, image_size, mean_image)
  moved: dict[str, list[Box | None]] = {}
  for part, boxes in parts.items():
    moved[part] = [None if box is None else
                   model_inputs.input_boxes(box, photo.shape[:2], image_size, input_size)[0].tolist()
                   for box, photo in zip(boxes, photos)]
    for box, source in zip(moved[part], sources):
      if box is not None and (box[2] <= box[0] or box[3] <= box[1]):
        raise ValueError(f"parts: {part!r} of {source!r} falls outside the {input_size}-px center crop")
  return images, moved, sources


def hamming(signs: np.ndarray) -> np.ndarray:
  """Normalised Hamming distances between sign vectors.

  Args:
    signs: [n, F] values in {-1, 0, 1}.

  Returns:
    float64 [n (n - 1) / 2]: for the pairs i < j in order, the share of the F entries that differ.
  """
  signs = np.asarray(signs)
  onehot = np.concatenate([signs == v for v in (-1, 0, 1)], axis=1).astype(np.float64)
  same = onehot @ onehot.T
  i, j = np.triu_indices(len(signs), k=1)
  return 1.0 - same[i, j] / signs.shape[1]


def delta(signs: np.ndarray) -> int:
  """The paper's Delta = sum over i != j of H(sign eps_i, sign eps_j), in raw entry counts."""
  return int(round(2 * hamming(signs).sum() * np.asarray(signs).shape[1]))


@functools.partial(jax.jit, static_argnames=("arch", "layers"))
def _signs(arch: Arch, params: Params, images: jax.Array, index: jax.Array, boxes: jax.Array,
           layers: tuple[str, ...]) -> tuple[jax.Array, ...]:
  """sign(features(images[index]) - features(masked)) per layer, int8 [N, F]; both in one batch."""
  x = images[index]
  _, trace = models.forward(arch, params, jnp.concatenate([x, occlude(x, boxes)]))
  n = index.shape[0]
  return tuple(jnp.sign(trace.activations[l][:n] - trace.activations[l][n:]).reshape(n, -1).astype(jnp.int8)
               for l in layers)


def _check(arch: Arch, images: Any, parts: Mapping[str, Sequence[Box | None]], layers: Sequence[str] | None,
           num_random: int) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
  """Validates the inputs -> layers and {part: int [n, 4] boxes, -1 where an image lacks the part}."""
  models.check_images(arch, images)
  names = arch.activation_names[:-1]
  layers = (arch.conv_names[-1], names[-1]) if layers is None else tuple(layers)  # conv5, fc7
  if not layers or any(l not in names for l in layers):
    raise ValueError(f"layers={layers!r} is not allowed for {arch.name!r}; allowed: {', '.join(names)}")
  if num_random < 0:
    raise ValueError(f"num_random={num_random} must be >= 0")
  n, s = images.shape[0], arch.input_size
  if not parts or RANDOM in parts:
    raise ValueError(f"parts must name at least one part (not {RANDOM!r}), each with a box per image")
  out = {}
  for part, boxes in parts.items():
    if len(boxes) != n:
      raise ValueError(f"parts[{part!r}] has {len(boxes)} entries; allowed: one box or None per image ({n})")
    arr = np.array([[-1] * 4 if b is None else list(b) for b in boxes], np.int64).reshape(n, 4)
    given = arr[:, 0] >= 0
    ok = (arr[given, 0] < arr[given, 2]) & (arr[given, 1] < arr[given, 3]) & (arr[given] >= 0).all(1) \
        & (arr[given, 2:] <= s).all(1)
    if given.sum() < 2 or not ok.all():
      raise ValueError(f"parts[{part!r}] needs boxes (y0, x0, y1, x1) with 0 <= y0 < y1 <= {s} and "
                       f"0 <= x0 < x1 <= {s} in at least two images")
    out[part] = arr.astype(np.int32)
  return layers, out


def _random_boxes(boxes: np.ndarray, input_size: int, draws: int, rng: np.random.Generator) -> np.ndarray:
  """[n, 4] boxes -> [draws, n, 4]: the same sizes at uniformly random positions inside the image."""
  size = boxes[:, 2:] - boxes[:, :2]
  corner = rng.integers(0, input_size - size + 1, size=(draws, *size.shape))
  return np.concatenate([corner, corner + size], axis=-1).astype(np.int32)


def compute(arch: Arch, params: Params, images: Any, parts: Mapping[str, Sequence[Box | None]],
            layers: Sequence[str] | None = None, num_random: int = 10, seed: int = 0, mean_image: Any = None,
            batch_size: int = 64) -> dict[str, np.ndarray]:
  """Table 1: the consistency of feature changes when the same part is masked (section 4.3).

  Args:
    arch, params: the model.
    images: float [N, S, S, 3], mean-subtracted (`load` reads a parts file and its images).
    parts: {part name: [box (y0, x0, y1, x1) on the model input, or None] per image}.
    layers: default the top conv layer and the last hidden layer ("conv5", "fc7": layers 5 and 7).
    num_random: random-box draws per part for the control row (0: no control).
    seed: for the random boxes.
    mean_image: only to show the photos (see `common.display_images`).
    batch_size: forward passes (each of an original and its masked copy) per jitted call.

  Returns:
    "rows" [R] (the parts, then "random"), "layers" [L], "feature_size" [L], "mean" [R, L],
    "std" [R, L] (normalised Hamming distance over image pairs, see module doc), "delta" [R, L]
    (the paper's Delta in raw counts; for random the mean over all draws), "pairs/<row>" [L, pairs],
    "boxes" [P, N, 4] (-1: part absent), "random_boxes" [P, num_random, N, 4], and for Fig. 8
    "images" [N, S, S, 3], "masked" [P, N, S, S, 3] and "random_masked" [1, N, S, S, 3] (the first
    random draw of the first part; [0, ...] when num_random = 0) for display.
  """
  layers, boxes = _check(arch, images, parts, layers, num_random)
  images = jnp.asarray(images, jnp.float32)
  s = arch.input_size
  rng = np.random.default_rng(seed)
  groups = []  # (row, image indices, boxes [n, 4])
  randoms = []
  for part, arr in boxes.items():
    have = np.flatnonzero(arr[:, 0] >= 0)
    groups.append((part, have, arr[have]))
    draws = _random_boxes(arr[have], s, num_random, rng)
    randoms.append(np.full((num_random, len(arr), 4), -1, np.int32))
    randoms[-1][:, have] = draws
    groups += [(RANDOM, have, d) for d in draws]
  index = np.concatenate([g[1] for g in groups]).astype(np.int32)
  all_boxes = np.concatenate([g[2] for g in groups]).astype(np.int32)
  signs = common.map_chunks(lambda i, b: _signs(arch, params, images, i, b, layers), (index, all_boxes),
                            min(batch_size, len(index)))
  rows = [*boxes, *([RANDOM] if num_random else [])]
  pairs = {row: [[] for _ in layers] for row in rows}
  deltas = {row: [[] for _ in layers] for row in rows}
  start = 0
  for row, have, _ in groups:
    for l, sign in enumerate(signs):
      pairs[row][l].append(hamming(sign[start:start + len(have)]))
      deltas[row][l].append(delta(sign[start:start + len(have)]))
    start += len(have)
  pooled = {row: [np.concatenate(p) for p in pairs[row]] for row in rows}
  shown = np.concatenate([list(boxes.values()), randoms[0][:1]])  # Fig. 8: each part, one random draw
  masked = np.stack([occlude(images, np.where(arr < 0, 0, arr)) for arr in shown])
  display = common.display_images(masked.reshape(-1, s, s, 3), mean_image).reshape(masked.shape)
  return {"rows": np.array(rows), "layers": np.array(layers), "feature_size": np.array([x.shape[1] for x in signs]),
          "mean": np.array([[p.mean() for p in pooled[row]] for row in rows]),
          "std": np.array([[p.std() for p in pooled[row]] for row in rows]),
          "delta": np.array([[np.mean(d) for d in deltas[row]] for row in rows]),
          **{f"pairs/{row}": np.stack(pooled[row]) for row in rows},
          "boxes": np.stack(list(boxes.values())), "random_boxes": np.stack(randoms),
          "images": common.display_images(images, mean_image),
          "masked": display[:len(boxes)], "random_masked": display[len(boxes):]}


def plot(result: Mapping[str, np.ndarray], path: str) -> None:
  """Fig. 8 over Table 1: each part masked in each image (one row per part, the first random draw
  last), then the table of mean +- std normalised Hamming distances per layer."""
  import matplotlib.pyplot as plt
  from matplotlib.patches import Rectangle
  parts = [str(r) for r in result["rows"] if r != RANDOM]
  shown = [(part, result["masked"][p], result["boxes"][p]) for p, part in enumerate(parts)]
  if RANDOM in result["rows"]:
    shown.append((f"{RANDOM}\n({parts[0]} size)", result["random_masked"][0], result["random_boxes"][0, 0]))
  n = result["images"].shape[0]
  rows = len(shown)
  table_height = 0.3 * (len(result["rows"]) + 1)
  fig = plt.figure(figsize=(max(2.0 * n, 6.5), 2.0 * rows + table_height + 0.6))
  grid = fig.add_gridspec(rows + 1, n, height_ratios=[2.0] * rows + [table_height], hspace=0.25)
  for r, (name, pictures, boxes) in enumerate(shown):
    for i in range(n):
      ax = fig.add_subplot(grid[r, i])
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(name, fontsize=9)
      if boxes[i][0] < 0:
        ax.set_frame_on(False)
        continue
      ax.imshow(pictures[i])
      y0, x0, y1, x1 = boxes[i]
      ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="r", lw=1))
  table = fig.add_subplot(grid[rows, :])
  table.axis("off")
  cells = [[f"{m:.3f} ± {d:.3f}" for m, d in zip(mean, std)] for mean, std in zip(result["mean"], result["std"])]
  widget = table.table(cellText=cells, rowLabels=[str(r) for r in result["rows"]],
                       colLabels=[f"{l} (F = {f})" for l, f in zip(result["layers"], result["feature_size"])],
                       bbox=(0.12, 0.0, 0.88, 1.0), cellLoc="center")
  widget.set_fontsize(9)
  table.set_title("Mean feature sign change: Hamming(sign ε_i, sign ε_j) / F over image pairs (Table 1)", fontsize=9)
  files.save_figure(fig, path)


def _below_random(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Per layer: which parts score below the random boxes (the paper: all at layer 5, not at layer 7)."""
  rows = [str(r) for r in result["rows"]]
  if RANDOM not in rows:
    return {}
  random = result["mean"][rows.index(RANDOM)]
  return {str(layer): {"parts": {row: bool(result["mean"][r, l] < random[l]) for r, row in enumerate(rows)
                                 if row != RANDOM},
                       "mean_parts_minus_random": float(np.mean([result["mean"][r, l] for r, row in enumerate(rows)
                                                                 if row != RANDOM]) - random[l])}
          for l, layer in enumerate(result["layers"])}


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able Table 1: per row and layer the mean and std over pairs, the number of pairs and Delta."""
  layers = [str(l) for l in result["layers"]]
  return {"layers": layers, "feature_size": result["feature_size"].tolist(),
          "normalisation": "Hamming(sign eps_i, sign eps_j) / F, mean and std over image pairs i < j",
          "paper_normalisation": PAPER_NORMALISATION, "parts_below_random": _below_random(result),
          "rows": {str(row): {layer: {"mean": float(result["mean"][r, l]), "std": float(result["std"][r, l]),
                                      "pairs": int(result[f"pairs/{row}"].shape[1]),
                                      "delta": float(result["delta"][r, l])}
                              for l, layer in enumerate(layers)}
                   for r, row in enumerate(result["rows"])}}


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py correspondence`: Table 1 / Fig. 8 on a parts file, written into `out`."""
  model = source.model
  parts_file = {None: PARTS_DEMO, "tiny": PARTS_TINY}.get(options["parts"], options["parts"])
  images, parts, _ = load(parts_file, model.arch.input_size, source.image_size, model.mean_image,
                          options["parts_root"] or model.config.get("manual_dir"))
  result = compute(model.arch, model.params, images, parts, seed=options["seed"], mean_image=model.mean_image,
                   batch_size=options["batch_size"])
  return common.write_section(
      summary(result), {"correspondence.png": functools.partial(plot, result)}, out, "correspondence",
      "Table 1 / Fig. 8: correspondence analysis",
      "The same part masked in each image; mean +- std normalised Hamming distance between the signs of the "
      "feature changes over image pairs (lower = tighter correspondence), against random boxes.")
