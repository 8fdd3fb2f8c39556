"""Fig. 2: the top 9 activations of feature maps over a dataset, projected, beside their image patches.

One streaming pass over a split keeps, for every feature map of every chosen layer, the k largest
activations (value, image index, y, x) seen so far: each batch's forward pass (jitted) is merged
with the running top-k by `jax.lax.top_k` (jitted), so memory is O(maps * k) whatever the dataset
size. Batches are read through Grain (threads, ahead of the device). With several devices the batch is
sharded across them (a 1-D mesh); the running top-k is replicated. With several processes each scans
its contiguous block of the images and the blocks' top-k are merged. The process's peak memory
still moves by about 10 % between identical runs, whatever the dataset size: glibc's heap keeps freed
batch buffers. `MALLOC_MMAP_THRESHOLD_=131072` makes it flat, at half the forward speed
(bench/RESULTS.md, item 3).

With `distinct=True` (the default, as Fig. 2 shows 9 different images per map) each image offers
only its largest activation per map (its first position in row-major order if tied); with
`distinct=False` every position competes, so one image can fill several slots.

Ties are broken deterministically: equal values are ranked by image index, then y, then x
(ascending), i.e. the order of a stable descending sort of all activations in (image, y, x) order.
This matters for maps that never fire (all zeros): their "top 9" are the first 9 images.

Each winner is then projected alone with the deconvnet (section 2.1), re-running the forward pass on
its own image so the switches are that image's, and cropped, with the image patch, to its receptive
field (`deconv.receptive_field`), padded to the layer's largest field for the grid.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import deconv, files, models
from zf_jax.analysis import common
from zf_jax.analysis.source import Source
from zf_jax.models import Arch, Params

K = 9
State = dict[str, dict[str, jax.Array]]


def check_layers(arch: Arch, layers: Sequence[str] | None) -> tuple[str, ...]:
  """The conv and hidden fc layers asked for; default all conv layers (the paper's layers 1-5)."""
  allowed = arch.activation_names[:-1]
  layers = arch.conv_names if layers is None else tuple(layers)
  bad = [layer for layer in layers if layer not in allowed]
  if bad or not layers:
    raise ValueError(f"layers={','.join(bad or layers) or '(none)'} is not allowed for {arch.name!r}; "
                     f"allowed: {', '.join(allowed)}")
  return layers


def init(arch: Arch, layers: Sequence[str], k: int = K) -> State:
  """The empty running top-k: per layer "value" float32 [c, k] (-inf), "image", "pos" int32 [c, k] (-1).

  "pos" is the row-major position y * w + x in the layer's map (0 for fc layers).
  """
  shapes = arch.shapes()
  state = {}
  for layer in layers:
    c = shapes[layer][-1]
    state[layer] = {"value": jnp.full((c, k), -jnp.inf, jnp.float32),
                    "image": jnp.full((c, k), -1, jnp.int32), "pos": jnp.full((c, k), -1, jnp.int32)}
  return state


def _candidates(act: jax.Array, first: jax.Array, count: jax.Array,
                distinct: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
  """act [B, h, w, c] or [B, c] -> value, image, pos [c, M] in (image, pos) order; padding -inf."""
  b, c = act.shape[0], act.shape[-1]
  flat = act.reshape(b, -1, c)  # [B, h*w, c]
  image = first + jnp.arange(b, dtype=jnp.int32)
  if distinct:
    # The first maximum in row-major order, as two plain reductions (a max, then the least position
    # holding it): jnp.argmax's (value, index) reduce runs 5x slower in XLA:CPU, a third of a forward pass.
    value = jnp.max(flat, axis=1)
    hw = flat.shape[1]
    pos = jnp.min(jnp.where(flat == value[:, None], jnp.arange(hw, dtype=jnp.int32)[:, None], hw), axis=1)
    image = jnp.broadcast_to(image[:, None], (b, c))
  else:
    hw = flat.shape[1]
    value = flat.reshape(b * hw, c)
    pos = jnp.broadcast_to(jnp.tile(jnp.arange(hw, dtype=jnp.int32), b)[:, None], (b * hw, c))
    image = jnp.broadcast_to(jnp.repeat(image, hw)[:, None], (b * hw, c))
  value = jnp.where(image < first + count, value, -jnp.inf)
  return value.T, image.T, pos.T


def _merge(top: dict[str, jax.Array], value: jax.Array, image: jax.Array, pos: jax.Array) -> dict[str, jax.Array]:
  """The k largest of the running top-k followed by the candidates (lax.top_k keeps the first of ties)."""
  values = jnp.concatenate([top["value"], value], axis=1)
  best, index = jax.lax.top_k(values, top["value"].shape[1])
  take = lambda old, new: jnp.take_along_axis(jnp.concatenate([old, new], axis=1), index, axis=1)
  return {"value": best, "image": take(top["image"], image), "pos": take(top["pos"], pos)}


@functools.partial(jax.jit, static_argnames=("arch", "distinct"), donate_argnames=("state",))
def update(arch: Arch, params: Params, state: State, images: jax.Array, first: jax.Array, count: jax.Array,
           distinct: bool = True) -> State:
  """Merges one batch into the running top-k.

  Args:
    arch, params: the model.
    state: from `init` or a previous `update` (donated).
    images: float32 [B, S, S, 3], mean-subtracted; rows count.. are padding and ignored.
    first: int32, the dataset index of images[0].
    count: int32, how many rows are real images.
    distinct: one candidate per image and map (its largest activation) instead of every position.

  Returns:
    The new state, same shapes.
  """
  _, trace = models.forward(arch, params, images)
  return {layer: _merge(top, *_candidates(trace.activations[layer], first, count, distinct))
          for layer, top in state.items()}


def _batch_sharding(batch_size: int) -> tuple[int, Any]:
  """Rounds the batch up to a multiple of this process's device count; a batch sharding when it has several."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return batch_size, None
  batch_size = -(-batch_size // len(devices)) * len(devices)
  mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
  return batch_size, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))


def scan(arch: Arch, params: Params, images: Any, layers: Sequence[str] | None = None, k: int = K,
         batch_size: int = 64, distinct: bool = True, progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
  """One pass over `images` keeping the top-k activations of every map of `layers` (Fig. 2).

  Args:
    arch, params: the model.
    images: N mean-subtracted inputs with random access: a float array [N, S, S, 3] or a
      `model_inputs.DatasetInputs` (`len(images)`, `images[start:stop]`).
    layers: conv or hidden fc layers; default all conv layers.
    k: activations kept per map.
    batch_size: images per forward pass (rounded up to a multiple of the device count).
    distinct: at most one activation per image and map (see the module doc).
    progress: show a progress bar.

  With several processes (`jax.distributed`), each reads and scans its contiguous block of `images`
  on its own devices, and every process returns the merged top-k of all.

  Returns:
    {layer: {"value": float32 [c, k] descending, "image": int [c, k] index into `images`,
    "y", "x": int [c, k] position in the map (0 for fc layers)}}.
  """
  from tqdm import tqdm
  layers = check_layers(arch, layers)
  n = len(images)
  most = n if distinct else n * min(int(np.prod(arch.shapes()[layer][:-1])) for layer in layers)
  if not 1 <= k <= most:
    raise ValueError(f"k={k} is not allowed with {n} images; allowed: 1..{most}")
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size} must be >= 1")
  # Each process scans its contiguous block of the images on its own devices; the blocks' top-k are
  # then merged in process order, which keeps the ties' order (lower image index first).
  index, count = jax.process_index(), jax.process_count()
  lo, hi = n * index // count, n * (index + 1) // count
  batch_size, sharding = _batch_sharding(max(1, min(batch_size, hi - lo)))
  state = init(arch, layers, k)

  def load(start: int) -> dict[str, np.ndarray]:
    batch = np.asarray(images[start:min(start + batch_size, hi)], np.float32)
    models.check_images(arch, batch)
    pad = batch_size - len(batch)
    batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), np.float32)]) if pad else batch
    return {"images": batch, "start": np.int32(start), "count": np.int32(batch_size - pad)}

  batches = grain.MapDataset.range(lo, hi, batch_size).map(load).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))  # batches load on threads ahead of the device
  with tqdm(total=hi - lo, desc="top-k scan", unit="img", disable=not progress, leave=False) as bar:
    for batch in batches:
      images_ = jax.device_put(batch["images"], sharding) if sharding is not None else batch["images"]
      state = update(arch, params, state, images_, jnp.int32(batch["start"]), jnp.int32(batch["count"]), distinct)
      # Wait for each step (the next batches still load): batches queued without waiting would grow
      # memory with the dataset.
      state = jax.block_until_ready(state)
      bar.update(int(batch["count"]))
  if count > 1:
    from jax.experimental import multihost_utils
    blocks = multihost_utils.process_allgather(jax.tree.map(np.asarray, state))  # [processes, c, k] leaves
    for layer, block in blocks.items():
      state[layer] = jax.tree.map(lambda a: a[0], block)
      for p in range(1, count):
        state[layer] = _merge(state[layer], block["value"][p], block["image"][p], block["pos"][p])
  shapes = arch.shapes()
  out = {}
  for layer, top in state.items():
    width = shapes[layer][1] if len(shapes[layer]) == 3 else 1
    pos = np.asarray(top["pos"])
    out[layer] = {"value": np.asarray(top["value"]), "image": np.asarray(top["image"]),
                  "y": pos // width, "x": pos % width}
  return out


@functools.partial(jax.jit, static_argnames=("arch", "layer", "rule", "windowed"))
def _forward_project(arch: Arch, params: Params, images: jax.Array, units: jax.Array, layer: str,
                     rule: str, windowed: bool = True) -> jax.Array:
  _, trace = models.forward(arch, params, images)
  return deconv.project_many(arch, params, trace, layer, units[:, None], rule, windowed)[:, 0]


def project_units(arch: Arch, params: Params, images: Any, layer: str, image: Any, units: Any,
                  batch_size: int = 64, rule: str = "deconvnet", windowed: bool = True) -> np.ndarray:
  """Projects one unit of each of several images, each with its own image's switches (section 2.1).

  Args:
    arch, params: the model.
    images: the inputs (see `scan`).
    layer: a conv or fc layer.
    image: int [N] indices into `images`.
    units: int [N, 3] (channel, y, x), one unit per listed image.
    batch_size: images per jitted forward + projection.
    rule: "deconvnet", "guided" or "saliency".
    windowed: as `deconv.project_many` (False: whole maps all the way down, for comparison).

  Returns:
    float32 [N, S, S, 3] pixels, each scaled by its unit's activation.
  """
  image = np.asarray(image, np.int64).reshape(-1)
  units = np.asarray(units, np.int32).reshape(-1, 3)
  if not len(image):
    return np.zeros((0, arch.input_size, arch.input_size, 3), np.float32)
  fn = lambda i, u: _forward_project(arch, params, jnp.asarray(images[i], jnp.float32), jnp.asarray(u), layer, rule,
                                     windowed)
  return common.map_chunks(fn, (image, units), min(batch_size, len(image)))


def patch_size(arch: Arch, layer: str) -> int:
  """The side of the largest receptive field of a unit of `layer` (clipped to the image)."""
  shape = arch.shapes()[layer]
  h, w = shape[:2] if len(shape) == 3 else (1, 1)
  boxes = np.array([deconv.receptive_field(arch, layer, y, x) for y in range(h) for x in range(w)])
  return int(max((boxes[:, 2] - boxes[:, 0]).max(), (boxes[:, 3] - boxes[:, 1]).max()))


def crop(pixels: np.ndarray, box: Sequence[int], size: int, fill: float = 0.5) -> np.ndarray:
  """pixels [S, S, 3] cut to box (y0, x0, y1, x1) on a size x size canvas of `fill`.

  A box clipped by the image's top (left) edge is aligned to the canvas's bottom (right), so the
  unit's position keeps its place in the patch.
  """
  y0, x0, y1, x1 = (int(v) for v in box)
  out = np.full((size, size, pixels.shape[-1]), fill, np.float32)
  oy = size - (y1 - y0) if y0 == 0 else 0
  ox = size - (x1 - x0) if x0 == 0 else 0
  out[oy:oy + y1 - y0, ox:ox + x1 - x0] = pixels[y0:y1, x0:x1]
  return out


def choose_maps(num_channels: int, maps: Sequence[int] | None, num_maps: int | None, rng: np.random.Generator,
                active: np.ndarray | None = None) -> np.ndarray:
  """Feature maps to show: `maps` if given, else `num_maps` at random (sorted), or all if None.

  With `active` (bool [c]), the random choice takes maps that are active first, and silent ones
  only when there are too few active maps.
  """
  if maps is not None:
    maps = np.asarray(maps, np.int64).reshape(-1)
    if not len(maps) or maps.min() < 0 or maps.max() >= num_channels:
      raise ValueError(f"maps={','.join(map(str, maps))} is not allowed; allowed: 0..{num_channels - 1}")
    return maps
  if num_maps is None or num_maps >= num_channels:
    return np.arange(num_channels)
  if num_maps < 1:
    raise ValueError(f"num_maps={num_maps} must be >= 1")
  active = np.ones(num_channels, bool) if active is None else np.asarray(active, bool)
  order = np.concatenate([rng.permutation(np.flatnonzero(active)), rng.permutation(np.flatnonzero(~active))])
  return np.sort(order[:num_maps])


def crops(arch: Arch, layer: str, images: Any, image: np.ndarray, y: np.ndarray, x: np.ndarray, projections: np.ndarray,
          mean_image: Any) -> dict[str, np.ndarray]:
  """Receptive-field crops of N winners: "boxes" int [N, 4], "projections" and "patches" [N, P, P, 3] in [0, 1].

  Projections are scaled each by its own largest magnitude about grey (`common.to_display`);
  patches are the photos (mean added back when `mean_image` is given).
  """
  size = patch_size(arch, layer)
  boxes = np.array([deconv.receptive_field(arch, layer, int(i), int(j)) for i, j in zip(y, x)], np.int32)
  photos = common.display_images(images[np.asarray(image)], mean_image)
  shown = common.to_display(projections)
  return {"boxes": boxes, "projections": np.stack([crop(p, b, size) for p, b in zip(shown, boxes)]),
          "patches": np.stack([crop(p, b, size) for p, b in zip(photos, boxes)])}


def compute(arch: Arch, params: Params, images: Any, layers: Sequence[str] | None = None,
            maps: Sequence[int] | None = None, num_maps: int | None = 16, k: int = K, batch_size: int = 64,
            distinct: bool = True, mean_image: Any = None, rule: str = "deconvnet", seed: int = 0,
            progress: bool = False, labels: Any = None) -> dict[str, np.ndarray]:
  """Fig. 2: the top-k activations of chosen maps over a split, projected and beside their patches.

  Args:
    arch, params: the model.
    images: the split as mean-subtracted inputs (see `scan`).
    layers: default all conv layers (the paper's layers 1-5).
    maps: the same map indices in every layer; default `num_maps` chosen at random per layer
      among the maps active somewhere in the split (silent ones only if too few are active).
    num_maps: how many random maps per layer; None for all.
    k: activations per map (9 in the paper).
    batch_size: images per jitted call.
    distinct: one activation per image and map (see the module doc).
    mean_image: to show the patches as photos (see `model_inputs.mean_for_input`).
    rule: the deconvnet's ReLU rule ("deconvnet", "guided", "saliency").
    seed: for the random choice of maps.
    progress: progress bar on the scan.
    labels: int [N], the images' classes (optional): then how class-specific each map's top k is.

  Returns:
    "layers" [L], "num_images" (N scanned), "k", and for each layer: "L/maps" int [M],
    "L/max_activation" [c] (every map's largest activation over the split), and for the shown maps
    "L/values" [M, k], "L/images" [M, k] (indices into `images`), "L/positions" [M, k, 2] (y, x),
    "L/boxes" [M, k, 4] (receptive fields, y0 x0 y1 x1 half-open), "L/projections" and
    "L/patches" [M, k, P, P, 3] in [0, 1], P the layer's largest receptive field.
    With `labels`: "L/class_share" [c], per map the largest share of its top k images that belong to one
    class, and "class_share_chance", its expected value for k images drawn at random from the split.
  """
  layers = check_layers(arch, layers)
  rng = np.random.default_rng(seed)
  for layer in layers if maps is not None else ():  # before the scan: fail fast
    choose_maps(arch.shapes()[layer][-1], maps, None, rng)
  if labels is not None:
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
      raise ValueError(f"labels has shape {labels.shape}; allowed: one label per image, [{len(images)}]")
  top = scan(arch, params, images, layers, k, batch_size, distinct, progress)
  out = {"layers": np.array(layers), "num_images": np.int64(len(images)), "k": np.int64(k)}
  if labels is not None:
    draws = np.random.default_rng([seed, 1])
    random_top = np.stack([draws.choice(len(labels), k, replace=False) for _ in range(CHANCE_DRAWS)])
    out["class_share_chance"] = np.float64(class_share(labels[random_top]).mean())
  for layer in layers:
    t = top[layer]
    chosen = choose_maps(t["value"].shape[0], maps, num_maps, rng, active=t["value"][:, 0] > 0)
    image, y, x = (t[name][chosen].reshape(-1) for name in ("image", "y", "x"))
    units = np.stack([np.repeat(chosen, k), y, x], axis=1)
    pixels = project_units(arch, params, images, layer, image, units, batch_size, rule)
    shown = crops(arch, layer, images, image, y, x, pixels, mean_image)
    m = len(chosen)
    out |= {f"{layer}/maps": chosen, f"{layer}/max_activation": t["value"][:, 0],
            f"{layer}/values": t["value"][chosen], f"{layer}/images": t["image"][chosen],
            f"{layer}/positions": np.stack([t["y"][chosen], t["x"][chosen]], axis=-1),
            **{f"{layer}/{name}": a.reshape(m, k, *a.shape[1:]) for name, a in shown.items()}}
    if labels is not None:
      out[f"{layer}/class_share"] = class_share(labels[t["image"]])
  return out


CHANCE_DRAWS = 2000  # random top-k draws behind class_share_chance


def class_share(labels: np.ndarray) -> np.ndarray:
  """int [M, k] classes of each map's top k images -> float [M]: the largest share held by one class."""
  counts = (labels[:, :, None] == labels[:, None, :]).sum(-1)
  return counts.max(-1) / labels.shape[1]


def mosaic(tiles: np.ndarray, columns: int, gap: int = 1, fill: float = 1.0) -> np.ndarray:
  """[N, H, W, 3] -> one image of the tiles in rows of `columns`, `gap` pixels of `fill` between."""
  n, h, w = tiles.shape[:3]
  rows = -(-n // columns)
  out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, 3), fill, np.float32)
  for i, tile in enumerate(tiles):
    r, c = divmod(i, columns)
    out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
  return out


def plot(result: Mapping[str, np.ndarray], path: str, layer: str) -> None:
  """Fig. 2 for one layer: a grid of maps, each its k projections (left) beside their patches (right)."""
  import matplotlib.pyplot as plt
  projections, patches = result[f"{layer}/projections"], result[f"{layer}/patches"]
  m, k, p = projections.shape[:3]
  side = int(np.ceil(np.sqrt(k)))
  height = -(-k // side) * (p + 1) - 1  # the rows mosaic() makes of k tiles
  blocks = np.stack([np.concatenate([mosaic(a, side), np.ones((height, max(2, p // 4), 3)),
                                     mosaic(b, side)], axis=1) for a, b in zip(projections, patches)])
  columns, gap = max(1, int(np.ceil(np.sqrt(m / 2)))), max(4, p // 2)
  grid = np.pad(mosaic(blocks, columns, gap), ((gap, 0), (0, 0), (0, 0)), constant_values=1.0)
  scale = max(1, int(np.ceil(40 / p)))  # small fields (layer 1) drawn at >= 40 screen pixels
  fig, ax = plt.subplots(figsize=(grid.shape[1] * scale / 100 + 0.2, grid.shape[0] * scale / 100 + 0.5))
  ax.imshow(grid, interpolation="nearest")
  for i, c in enumerate(result[f"{layer}/maps"]):
    r, col = divmod(i, columns)
    ax.text(col * (blocks.shape[2] + gap), gap + r * (blocks.shape[1] + gap) - 0.5, f"map {c}", fontsize=7,
            va="bottom")
  ax.set_axis_off()
  ax.set_title(f"{layer}: top {k} activations of {m} maps over {int(result['num_images'])} images "
               "(projections left, image patches right)", fontsize=9)
  files.save_figure(fig, path)


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able numbers: per layer the maps never active over the split, each shown map's top k
  as [image, y, x, activation], and with labels how class-specific the top k are (mean and median
  over the layer's live maps of `class_share`, beside `class_share_chance`)."""
  out: dict[str, Any] = {"num_images": int(result["num_images"]), "k": int(result["k"])}
  if "class_share_chance" in result:
    out["class_share_chance"] = float(result["class_share_chance"])
  for layer in result["layers"]:
    layer = str(layer)
    best = result[f"{layer}/max_activation"]
    out[layer] = {
        "num_maps": len(best), "silent_maps": int((best <= 0).sum()),
        "max_activation": {"median": float(np.median(best)), "max": float(best.max())},
        **({"class_share": {"mean": float(result[f"{layer}/class_share"][best > 0].mean()),
                            "median": float(np.median(result[f"{layer}/class_share"][best > 0]))}}
           if f"{layer}/class_share" in result and (best > 0).any() else {}),
        "top": {int(c): [[int(i), int(y), int(x), round(float(v), 6)] for i, (y, x), v in zip(im, pos, val)]
                for c, im, pos, val in zip(result[f"{layer}/maps"], result[f"{layer}/images"],
                                           result[f"{layer}/positions"], result[f"{layer}/values"])}}
  return out


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py topk`: Fig. 2 for the source's model over its images, written into `out`."""
  model = source.model
  result = compute(model.arch, model.params, source.scan_inputs(), options["layers"], options["maps"],
                   options["num_maps"] or None, options["k"], options["batch_size"], mean_image=model.mean_image,
                   rule=options["rule"], seed=options["seed"], progress=True, labels=source.scan_labels())
  figures = {f"topk_{layer}.png": functools.partial(plot, result, layer=str(layer)) for layer in result["layers"]}
  return common.write_section(
      summary(result), figures, out, "topk", "Fig. 2: top activations, projected, beside their image patches",
      f"Per layer, feature maps chosen at random; per map the top {options['k']} activations over "
      f"{int(result['num_images'])} images, each projected alone to pixels by the deconvnet (left) and the image "
      "patch of its receptive field (right).")
