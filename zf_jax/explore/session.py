"""The explorer's model work, without a server: every view of one image as a PNG and the JSON of its numbers.

A `Session` holds one model (`checkpoint.Loaded`) and, optionally, a dataset split. Images are referred
to by ids the session made ("sample:chelsea", "data:12", "upload:<token>"), never by a path. It answers

  layer_grid   every feature map of a layer for the image, on one scale (the toolbox's view)
  project      one unit's deconvnet / guided / saliency projection (section 2.1) with its receptive field
  occlusion    Fig. 7's maps of one class and of the strongest top-conv map, exact incremental mode
  top9         a map's top-9 dataset patches and their projections (Fig. 2), from one cached scan
  filters      the layer-1 filters (Fig. 6)

Device work is serialised by `self.device` (a re-entrant lock), so concurrent requests cannot stack up
device memory. Occlusion maps (hundreds of occluder positions) run under a lock of their own,
`self.occluding`, beside the short requests: a click never waits behind a whole map, and at most one
occlusion, one short request and the top-9 scan compute at once. A unit is data (an int32 array) to the
jitted projection: a new unit never recompiles.
Bad input raises `Rejected` with an HTTP status and one line saying what is allowed.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import secrets
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from zf_jax import checkpoint, deconv, files, models
from zf_jax.analysis import common, filters, occlusion, topk
from zf_jax.data import datasets, model_inputs, preprocess

SAMPLES = model_inputs.SKIMAGE_PHOTOS
MAX_UPLOAD_BYTES = 8 << 20
UPLOAD_FORMATS = ("PNG", "JPEG")
MAX_UPLOADS = 64  # uploads kept (oldest dropped first)
NUM_STRONGEST = 5  # maps marked in the layer grid
PERCENTILE = 99.0  # robust contrast stretch of projections


class Rejected(ValueError):
  """Bad input: `status` is the HTTP status (400, 404, 409, 413, 415), the message one line saying what is allowed."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class View:
  """One view: `png` (encoded image bytes) and `data` (its numbers, JSON-able)."""
  png: bytes
  data: dict[str, Any]


def png_bytes(pixels: np.ndarray) -> bytes:
  """float [H, W, 3] in [0, 1] (or [H, W]) -> PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(buffer, format="PNG")
  return buffer.getvalue()


def stretch(pixels: Any, shared: bool = False, percentile: float = PERCENTILE) -> np.ndarray:
  """Projections [N, H, W, 3] -> [0, 1] as the paper shows them: 0 at mid-grey, each contrast-stretched on its own.

  The scale is the `percentile` of the non-zero magnitudes (robust: a few extreme pixels do not leave the
  rest faint grey), of each projection, or of all of them with `shared` (one scale across a grid); values
  beyond it are clipped.
  """
  pixels = np.asarray(pixels, np.float32)
  magnitude = np.abs(pixels).reshape(1 if shared else len(pixels), -1)
  scales = np.array([np.percentile(m[m > 0], percentile) if (m > 0).any() else 1.0 for m in magnitude], np.float32)
  return np.clip(0.5 + 0.5 * pixels / scales[:, None, None, None], 0.0, 1.0)


def colormap(values: np.ndarray) -> np.ndarray:
  """[H, W] -> viridis [H, W, 3] in [0, 1], scaled from the map's min to its max."""
  from matplotlib import colormaps
  lo, hi = float(values.min()), float(values.max())
  return colormaps["viridis"]((values - lo) / (hi - lo if hi > lo else 1.0))[..., :3]


def _int(name: str, value: Any, size: int) -> int:
  """value (an int or its string) in 0..size-1, else Rejected(400)."""
  try:
    number = int(str(value), 10)
  except ValueError:
    number = None
  if number is None or not 0 <= number < size:
    raise Rejected(400, f"{name}={value!r} is not allowed; allowed: an int in 0..{size - 1}")
  return number


def decode_upload(content: bytes) -> np.ndarray:
  """An uploaded PNG/JPEG -> uint8 [H, W, 3]; Rejected for too many bytes (413), pixels (413) or another type (415).

  The pixel count comes from the header, so a decompression bomb is refused before it is decoded.
  """
  if len(content) > MAX_UPLOAD_BYTES:
    raise Rejected(413, f"the upload has {len(content)} bytes; allowed: at most {MAX_UPLOAD_BYTES}")
  try:
    with preprocess.open_image(io.BytesIO(content), "upload") as image:  # the cap of every image zf_jax reads
      if image.format not in UPLOAD_FORMATS:
        raise Rejected(415, f"the upload is {image.format or 'not an image'}; allowed: {', '.join(UPLOAD_FORMATS)}")
      return preprocess.pil_to_rgb(image)
  except preprocess.TooManyPixels as e:
    raise Rejected(413, str(e)) from None
  except (OSError, ValueError) as e:
    if isinstance(e, Rejected):
      raise
    raise Rejected(415, f"the upload is not a readable image ({type(e).__name__}); allowed: a complete "
                        f"{' or '.join(UPLOAD_FORMATS)} file") from None


class Session:
  """One model (and optional dataset) and the views of its images.

  Args:
    loaded: the model (`checkpoint.load_for_analysis`, `pretrained.load_model`).
    data: a dataset split (`data.get_dataset`) to pick images from and to scan for top-9; None: none.
    cache_dir: where the top-9 scan is cached (default ~/.cache/zf_jax/explore).
    scan_images: scan only the first N images of `data` (None: all).
    batch_size: images per forward pass of the scan, occluder positions per call.
  """

  def __init__(self, loaded: checkpoint.Loaded, data: datasets.Dataset | None = None, cache_dir: str | None = None,
               scan_images: int | None = None, batch_size: int = 64):
    self.loaded, self.data = loaded, data
    self.arch, self.params = loaded.arch, loaded.params
    mean = np.asarray(loaded.mean_image)
    self.image_size = mean.shape[0] if mean.ndim == 3 else datasets.image_size_for(self.arch)
    self.mean = model_inputs.mean_for_input(mean, self.arch.input_size)
    self.class_names = list(loaded.class_names or [str(c) for c in range(loaded.num_classes)])
    self.layers = self.arch.activation_names[:-1]  # conv1..conv5, fc6, fc7: not the logits
    self.device = threading.RLock()
    self.occluding = threading.RLock()
    self.batch_size = batch_size
    self.cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "zf_jax", "explore")
    self.scan_images = scan_images
    self._uploads: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    self._traces: collections.OrderedDict[str, tuple[np.ndarray, models.Trace, np.ndarray]] = collections.OrderedDict()
    self._scan: dict[str, Any] = {"state": "idle" if data is not None else "none", "done": 0, "total": 0}
    self._scan_lock = threading.Lock()
    self.compiling: dict[str, Any] = {"rules": [], "state": "done", "seconds": None}

  def lock_for(self, view: str) -> threading.RLock:
    """The lock a view's computation runs under: `occluding` for occlusion maps, else `device`."""
    return self.occluding if view == "occlusion" else self.device

  # --- images

  def upload(self, content: bytes) -> str:
    """Keeps an uploaded PNG/JPEG (see `decode_upload`) and returns its id."""
    photo = preprocess.resize_and_center_crop(decode_upload(content), self.image_size)
    image_id = f"upload:{secrets.token_hex(8)}"
    with self.device:
      self._uploads[image_id] = photo
      while len(self._uploads) > MAX_UPLOADS:
        self._uploads.popitem(last=False)
    return image_id

  def photo(self, image_id: str) -> np.ndarray:
    """uint8 [R, R, 3]: the image resized and center-cropped to the stored size R (section 3)."""
    kind, _, name = str(image_id).partition(":")
    if kind == "sample" and name in SAMPLES:
      return preprocess.resize_and_center_crop(model_inputs.read_image(f"skimage:{name}"), self.image_size)
    if kind == "data" and self.data is not None:
      index = _int("data image", name, len(self.data.source))
      return datasets.load_batch(self.data.source, [index], self.image_size)[0][0]
    if kind == "upload" and image_id in self._uploads:
      return self._uploads[image_id]
    allowed = [f"sample:{s}" for s in SAMPLES] + ([f"data:0..{len(self.data.source) - 1}"] if self.data else [])
    raise Rejected(404, f"image={image_id!r} is unknown (or an expired upload); allowed: {', '.join(allowed)} "
                        "or the id an upload returned")

  def _forward(self, image_id: str) -> tuple[np.ndarray, models.Trace, np.ndarray]:
    """(softmax [C], the trace (batch 1), the model input float32 [S, S, 3]) of an image; the last 8 kept.

    The input is the validation preprocessing of the photo (`model_inputs.eval_inputs`).
    """
    with self.device:
      if image_id not in self._traces:
        x = model_inputs.eval_inputs(self.photo(image_id)[None], self.arch.input_size, self.mean)
        logits, trace = models.forward(self.arch, self.params, jnp.asarray(x))
        self._traces[image_id] = (np.asarray(jax.nn.softmax(logits[0])), trace, x[0])
        while len(self._traces) > 8:
          self._traces.popitem(last=False)
      self._traces.move_to_end(image_id)
      return self._traces[image_id]

  def image(self, image_id: str) -> View:
    """The model input as the model sees it (the center crop, mean added back), and the top-5 classes."""
    probs, _, x = self._forward(image_id)
    top = np.argsort(-probs)[:5]
    shown = common.display_images(x[None], self.mean)[0]
    return View(png_bytes(shown), {"image": image_id, "size": self.arch.input_size, "top5": [
        {"class": int(c), "name": self.class_names[c], "p": float(probs[c])} for c in top]})

  # --- views of one image

  def _layer(self, layer: str) -> str:
    if layer not in self.layers:
      raise Rejected(400, f"layer={layer!r} is not allowed; allowed: {', '.join(self.layers)}")
    return layer

  def _maps(self, image_id: str, layer: str) -> np.ndarray:
    """[h, w, c] activations of the image (fc layers as [1, 1, f])."""
    _, trace, _ = self._forward(image_id)
    act = np.asarray(trace.activations[self._layer(layer)][0])
    return act if act.ndim == 3 else act[None, None]

  def layer_grid(self, image_id: str, layer: str) -> View:
    """Every feature map of `layer` for the image, on the layer's one scale (black 0, white its largest value).

    Maps are tiles [h, w] in rows of `columns`, `gap` pixels apart (fc units: 1x1 tiles, no gap); the
    JSON gives the layout (to map a click to (channel, y, x)), each map's largest value and where it is,
    and the `NUM_STRONGEST` strongest maps.
    """
    maps = self._maps(image_id, layer)
    h, w, c = maps.shape
    columns, gap = int(np.ceil(np.sqrt(c))), 1 if h > 1 else 0
    scale = float(maps.max()) or 1.0
    tiles = np.repeat((maps / scale).transpose(2, 0, 1)[..., None], 3, axis=-1)
    grid = topk.mosaic(tiles, columns, gap, fill=0.25)
    flat = maps.reshape(-1, c)
    where = flat.argmax(axis=0)
    return View(png_bytes(grid), {
        "image": image_id, "layer": layer, "shape": [h, w, c], "columns": columns, "gap": gap, "scale": scale,
        "max": flat.max(axis=0), "argmax": np.stack([where // w, where % w], 1),
        "strongest": np.argsort(-flat.max(axis=0), kind="stable")[:NUM_STRONGEST]})

  def project(self, image_id: str, layer: str, channel: Any, y: Any = None, x: Any = None,
              rule: str = "deconvnet") -> View:
    """The projection (section 2.1) of one unit of the image: (channel, y, x), or the map's strongest unit
    when y and x are None; its receptive field `box` (y0, x0, y1, x1, half-open, on the S x S input) and
    its activation. Contrast-stretched on its own (`stretch`)."""
    maps = self._maps(image_id, layer)
    h, w, c = maps.shape
    if rule not in deconv.RULES:
      raise Rejected(400, f"rule={rule!r} is not allowed; allowed: {', '.join(deconv.RULES)}")
    channel = _int("channel", channel, c)
    if (y is None) != (x is None):
      raise Rejected(400, "give both y and x (one unit) or neither (the map's strongest unit)")
    if y is None:
      y, x = divmod(int(maps[..., channel].argmax()), w)
    y, x = _int("y", y, h), _int("x", x, w)
    _, trace, _ = self._forward(image_id)
    with self.device:
      pixels = np.asarray(deconv.project_many(self.arch, self.params, trace, layer,
                                              np.array([[[channel, y, x]]], np.int32), rule)[0, 0])
    box = deconv.receptive_field(self.arch, layer, y, x)
    return View(png_bytes(stretch(pixels[None])[0]), {
        "image": image_id, "layer": layer, "unit": [channel, y, x], "rule": rule,
        "activation": float(maps[y, x, channel]), "box": list(box), "size": self.arch.input_size})

  def occlusion(self, image_id: str, label: Any = None) -> View:
    """Fig. 7 for the image, exact incremental mode: the strongest top-conv map's total activation (b) and
    p(label) (d) at every occluder position, side by side; label None: the predicted class."""
    probs, _, x = self._forward(image_id)
    label = int(probs.argmax()) if label is None else _int("class", label, len(self.class_names))
    with self.occluding:
      out = occlusion.occlusion_maps(self.arch, self.params, x[None], np.array([label]),
                                     batch_size=self.batch_size, mode="exact")
    activity, p_true = out["activity"][0], out["p_true"][0]
    side = self.arch.input_size
    panels = [np.asarray(Image.fromarray(np.uint8(colormap(m) * 255)).resize((side, side), Image.NEAREST)) / 255.0
              for m in (activity, p_true)]
    gap = np.ones((side, 2, 3))
    return View(png_bytes(np.concatenate([panels[0], gap, panels[1]], axis=1)), {
        "image": image_id, "class": label, "name": self.class_names[label], "layer": str(out["layer"]),
        "map": int(out["map"][0]), "unit": out["unit"][0], "corners": out["corners"], "size": int(out["size"]),
        "activity": activity, "activity_unoccluded": float(out["activity_unoccluded"][0]),
        "p_true": p_true, "p_true_unoccluded": float(out["p_true_unoccluded"][0]),
        "top_label": out["top_label"][0]})

  def filters(self) -> View:
    """The layer-1 filters (Fig. 6), on one common scale, and their numbers (`analysis.filters.summary`)."""
    result = filters.compute(self.params, self.arch.conv_names[0])
    return View(png_bytes(filters.grid(result["filters"])), filters.summary(result))

  # --- the top-9 scan (Fig. 2)

  def scan_status(self) -> dict[str, Any]:
    """{"state": "none" (no data) | "idle" | "running" | "done" | "failed", "done", "total", "error"?}."""
    return dict(self._scan)

  def _cache_path(self, inputs: Any) -> str:
    """The scan's cache file, keyed by the params, mean, architecture, dataset and images scanned."""
    digest = hashlib.sha256()
    digest.update(json.dumps([checkpoint.arch_to_dict(self.arch), self.data.name, self.data.split, len(inputs),
                              self.image_size, topk.K, self.layers]).encode())
    for layer in sorted(self.params):
      for part in ("kernel", "bias"):
        digest.update(np.asarray(self.params[layer][part]).tobytes())
    digest.update(self.mean.tobytes())
    return os.path.join(self.cache_dir, f"topk-{digest.hexdigest()[:24]}.npz")

  def start_scan(self) -> None:
    """Starts the top-9 scan of the dataset in a background thread (once; loaded from the cache if there)."""
    if self.data is None:
      raise Rejected(404, "top-9 needs a dataset; allowed: start the explorer with --data")
    with self._scan_lock:
      if self._scan["state"] in ("running", "done"):
        return
      self._scan = {"state": "running", "done": 0, "total": 0}
    self._scan_thread = threading.Thread(target=self._run_scan, daemon=True, name="zf_jax-explore-scan")
    self._scan_thread.start()

  def _run_scan(self) -> None:
    try:
      inputs = model_inputs.DatasetInputs(self.data.source, self.arch.input_size, self.image_size, self.mean,
                                          self.scan_images)
      path = self._cache_path(inputs)
      self._scan["total"] = len(inputs)
      if not os.path.exists(path):
        result = topk.scan(self.arch, self.params, _Counted(inputs, self._scan), self.layers,
                           batch_size=self.batch_size)
        with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
          np.savez(f, **{f"{layer}/{key}": value for layer, part in result.items() for key, value in part.items()})
      with np.load(path) as saved:
        self._top = {layer: {key: saved[f"{layer}/{key}"] for key in ("value", "image", "y", "x")}
                     for layer in self.layers}
      self._inputs = inputs
      self._scan.update(state="done", done=len(inputs))
    except Exception as e:  # a damaged dataset or cache: reported in the page, the server goes on
      self._scan.update(state="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

  def top9(self, layer: str, channel: Any, rule: str = "deconvnet", shared: bool = False) -> View:
    """Fig. 2 for one map: its top-9 dataset patches (left) and their projections (right), each cropped to its
    receptive field; projections stretched each on its own, or on one shared scale."""
    if self._scan["state"] != "done":
      self.start_scan()
      status = self.scan_status()
      raise Rejected(409, f"the top-9 scan is {status['state']} ({status['done']}/{status['total']} images); "
                          "allowed: ask again when GET api/scan says done")
    layer = self._layer(layer)
    if rule not in deconv.RULES:
      raise Rejected(400, f"rule={rule!r} is not allowed; allowed: {', '.join(deconv.RULES)}")
    top = self._top[layer]
    channel = _int("channel", channel, top["value"].shape[0])
    image, y, x = top["image"][channel], top["y"][channel], top["x"][channel]
    units = np.stack([np.full_like(y, channel), y, x], 1)
    with self.device:
      projections = topk.project_units(self.arch, self.params, self._inputs, layer, image, units,
                                       batch_size=len(image), rule=rule)
    size = topk.patch_size(self.arch, layer)
    boxes = [deconv.receptive_field(self.arch, layer, int(i), int(j)) for i, j in zip(y, x)]
    photos = common.display_images(self._inputs[image], self.mean)
    patches = np.stack([topk.crop(p, b, size) for p, b in zip(photos, boxes)])
    shown = np.stack([topk.crop(p, b, size) for p, b in zip(stretch(projections, shared), boxes)])
    columns = int(np.ceil(np.sqrt(len(image))))
    halves = [topk.mosaic(t, columns) for t in (patches, shown)]
    grid = np.concatenate([halves[0], np.ones((halves[0].shape[0], 3, 3)), halves[1]], axis=1)
    labels = [int(self.data.source[int(i)]["label"]) for i in image]
    return View(png_bytes(grid), {
        "layer": layer, "channel": channel, "rule": rule, "shared_scale": shared, "value": top["value"][channel],
        "images": [f"data:{int(i)}" for i in image], "y": y, "x": x, "boxes": boxes,
        "classes": [self.class_names[c] if c < len(self.class_names) else str(c) for c in labels]})

  def warm_up(self, rules: tuple[str, ...] = ("deconvnet",), occlusion: bool = True) -> float:
    """Compiles the jitted functions for this model's shapes on a blank image: the forward pass, every
    layer's projection with each of `rules`, and (with `occlusion`) the occlusion map; returns the seconds."""
    start = time.perf_counter()
    blank = f"upload:{secrets.token_hex(8)}"
    with self.device:
      self._uploads[blank] = np.zeros((self.image_size, self.image_size, 3), np.uint8)
    try:
      self.image(blank)
      for rule in rules:
        for layer in self.layers:
          self.project(blank, layer, 0, rule=rule)
      if occlusion:
        self.occlusion(blank)
    finally:
      with self.device:
        self._uploads.pop(blank, None)
        self._traces.pop(blank, None)
    return time.perf_counter() - start

  def warm_up_in_background(self, rules: tuple[str, ...] = ("guided", "saliency")) -> threading.Thread:
    """Compiles the projections of `rules` in a daemon thread, so their first click does not wait for XLA;
    requests in the meantime are served between its compilations (each holds the device lock alone).
    `self.compiling` says how far it is: {"rules", "state": "compiling" | "done" | "failed", "seconds"}."""
    self.compiling = {"rules": list(rules), "state": "compiling", "seconds": None}

    def run() -> None:
      try:
        self.compiling.update(state="done", seconds=round(self.warm_up(rules, False), 1))
      except Exception as e:  # reported by api/info; each rule then compiles on its first click
        self.compiling.update(state="failed", error=f"{type(e).__name__}: {e}")

    thread = threading.Thread(target=run, daemon=True, name="zf_jax-explore-warm-up")
    thread.start()
    return thread


class _Counted:
  """Random-access model inputs that count the images read into `progress["done"]` (the scan's progress)."""

  def __init__(self, inputs: Any, progress: dict[str, Any]):
    self._inputs, self._progress = inputs, progress

  def __len__(self) -> int:
    return len(self._inputs)

  def __getitem__(self, indices: Any) -> np.ndarray:
    batch = self._inputs[indices]
    self._progress["done"] = min(self._progress["done"] + len(batch), len(self._inputs))
    return batch

