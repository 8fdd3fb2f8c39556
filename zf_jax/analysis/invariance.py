"""Fig. 5: feature and classifier invariance to vertical translation, scale and rotation (section 4).

Each image is warped about its center by bilinear interpolation, for every value of a sweep. The
warp acts on the mean-subtracted model input, so pixels brought in from outside the image are 0
there: the dataset mean, the same grey as the occluder of Fig. 7.

  translation t (pixels): the image moves down by t (t < 0: up).
  scale s: the image is magnified by s about its center (s < 1 shrinks it, surrounded by grey).
  rotation a (degrees): counter-clockwise on screen about the center (90 = np.rot90).

For each transformed image x' of an image x the module records, at a low and a high layer (the
paper's layers 1 and 7: "conv1", the post-ReLU pre-pool maps flattened, and "fc7", post-ReLU),

  distance = ||f(x') - f(x)||_2 / ||f(x)||_2,

the Euclidean distance between feature vectors divided by the norm of the untransformed one (the
paper plots unnormalised distances; the division makes layers and images comparable), and
p(true label) = softmax(logits)[label]. All sweeps of all images run as batched, jitted forward
passes with the warp inside the jitted function.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zf_jax import files, models
from zf_jax.analysis import common
from zf_jax.analysis.source import Source
from zf_jax.models import Arch, Params

TRANSFORMS = ("translation", "scale", "rotation")
_AXIS_LABELS = {"translation": "vertical translation (pixels)", "scale": "scale (ratio)",
                "rotation": "rotation (degrees)"}
_EXAMPLES = 5  # transformed copies of each image shown in the figure's first column
_SHOWN = 5  # images shown in the first column
_CURVES = 8  # up to this many images: one curve each; more: the mean with the 25-75 percentile band


def default_sweeps(input_size: int) -> dict[str, np.ndarray]:
  """Fig. 5's ranges for an S-px input: shifts -S/4..S/4 in steps of S/28 (8 px at 224), scales
  0.6..1.4 in steps of 0.05, rotations 0..360 in steps of 15 degrees."""
  step = max(1, input_size // 28)
  reach = input_size // 4 // step * step
  return {"translation": np.arange(-reach, reach + 1, step, dtype=np.float64),
          "scale": np.round(np.linspace(0.6, 1.4, 17), 4),
          "rotation": np.arange(0, 361, 15, dtype=np.float64)}


def matrices(kind: str, values: Sequence[float]) -> np.ndarray:
  """Inverse warps: output pixel p samples the input at A (p - c) + c + d, with c the center.

  Args:
    kind: "translation", "scale" or "rotation".
    values: [T] pixels, ratios or degrees.

  Returns:
    float32 [T, 2, 3]: (A | d) acting on (y, x).
  """
  v = np.asarray(values, np.float64).reshape(-1)
  eye = np.broadcast_to(np.eye(2), (len(v), 2, 2))
  zero = np.zeros((len(v), 2, 1))
  if kind == "translation":
    out = np.concatenate([eye, np.stack([-v, 0 * v], axis=1)[:, :, None]], axis=2)
  elif kind == "scale":
    if (v <= 0).any():
      raise ValueError(f"scale={v.min()} is not allowed; allowed: scale factors > 0")
    out = np.concatenate([eye / v[:, None, None], zero], axis=2)
  elif kind == "rotation":
    a = np.deg2rad(v)
    rot = np.stack([np.stack([np.cos(a), np.sin(a)], 1), np.stack([-np.sin(a), np.cos(a)], 1)], 1)
    out = np.concatenate([rot, zero], axis=2)
  else:
    raise ValueError(f"transform={kind!r} is unknown; allowed: {', '.join(TRANSFORMS)}")
  return out.astype(np.float32)


def warp(images: jax.Array, affine: jax.Array) -> jax.Array:
  """Bilinear inverse warp of each image, 0 (the mean) outside.

  Args:
    images: float [N, S, S, 3], mean-subtracted.
    affine: float [N, 2, 3] from `matrices`.

  Returns:
    float32 [N, S, S, 3].
  """
  s = images.shape[1]
  c = (s - 1) / 2.0
  grid = jnp.stack(jnp.meshgrid(jnp.arange(s), jnp.arange(s), indexing="ij"), axis=-1) - c  # [S, S, 2]

  def one(image, a):
    src = grid @ a[:, :2].T + a[:, 2] + c  # [S, S, 2]
    coords = [jnp.broadcast_to(src[..., i, None], (s, s, 3)) for i in range(2)]
    coords.append(jnp.broadcast_to(jnp.arange(3.0), (s, s, 3)))
    return jax.scipy.ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)

  return jax.vmap(one)(images.astype(jnp.float32), affine)


@functools.partial(jax.jit, static_argnames=("arch", "layers"))
def _features(arch: Arch, params: Params, images: jax.Array, layers: tuple[str, ...]):
  logits, trace = models.forward(arch, params, images)
  return tuple(trace.activations[l].reshape(images.shape[0], -1) for l in layers), jax.nn.softmax(logits)


@functools.partial(jax.jit, static_argnames=("arch", "layers"))
def _sweep(arch: Arch, params: Params, images: jax.Array, refs: tuple[jax.Array, ...], labels: jax.Array,
           index: jax.Array, affine: jax.Array, layers: tuple[str, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Warps images[index] by affine ([N] and [N, 2, 3]) -> distances [N, L], p(label) [N] and top-1 [N]."""
  feats, probs = _features(arch, params, warp(images[index], affine), layers)
  dist = jnp.stack([jnp.linalg.norm(f - r[index], axis=1) for f, r in zip(feats, refs)], axis=1)
  return dist, jnp.take_along_axis(probs, labels[index][:, None], axis=1)[:, 0], jnp.argmax(probs, 1).astype(jnp.int32)


def _check_layers(arch: Arch, layers: Sequence[str] | None) -> tuple[str, ...]:
  names = arch.activation_names
  layers = tuple(layers) if layers is not None else (names[0], names[-2])  # conv1, fc7
  bad = [l for l in layers if l not in names[:-1]]
  if bad or not layers:
    raise ValueError(f"layers={layers!r} is not allowed for {arch.name!r}; allowed: {', '.join(names[:-1])}")
  return layers


def compute(arch: Arch, params: Params, images: Any, labels: Any = None,
            sweeps: Mapping[str, Sequence[float]] | None = None, layers: Sequence[str] | None = None,
            mean_image: Any = None, batch_size: int = 64) -> dict[str, np.ndarray]:
  """Feature distances and p(true label) along each transform sweep (Fig. 5).

  Args:
    arch, params: the model.
    images: float [B, S, S, 3], mean-subtracted (`model_inputs.prepare_images`).
    labels: int [B] true classes; None uses each image's top-1 class (untransformed).
    sweeps: {"translation" | "scale" | "rotation": values}; default `default_sweeps(S)`.
    layers: the two (or more) layers compared; default the first conv and the last hidden layer
      ("conv1" and "fc7", the paper's layers 1 and 7).
    mean_image: only to show the photos (see `common.display_images`).
    batch_size: forward passes per jitted call.

  Returns:
    "images" [B, S, S, 3] for display, "labels" [B], "predicted" [B] (untransformed top-1),
    "layers" [L], "transforms" [K] names, and for each transform k: "k/values" [T], "k/distance"
    [L, B, T] (relative, see module doc), "k/p_true" [B, T], "k/top1" [B, T], "k/examples"
    [min(B, 5), 5, S, S, 3] display images at "k/example_values" [5].
  """
  models.check_images(arch, images)
  layers = _check_layers(arch, layers)
  sweeps = default_sweeps(arch.input_size) if sweeps is None else sweeps
  affines = {kind: matrices(kind, values) for kind, values in sweeps.items()}
  if not affines or any(not len(a) for a in affines.values()):
    raise ValueError(f"sweeps={dict(sweeps)!r} must map at least one of {', '.join(TRANSFORMS)} to values")
  images = jnp.asarray(images, jnp.float32)
  batch = images.shape[0]
  chunk = min(batch_size, batch * max(len(a) for a in affines.values()))
  refs, probs = common.map_chunks(lambda x: _features(arch, params, x, layers), (images,), chunk)
  num_classes = probs.shape[1]
  labels = probs.argmax(1).astype(np.int32) if labels is None else common.check_labels(labels, batch, num_classes)
  norms = [np.linalg.norm(r, axis=1) for r in refs]
  refs = tuple(jnp.asarray(r) for r in refs)
  out = {"images": common.display_images(images[:_SHOWN], mean_image), "labels": labels,
         "predicted": probs.argmax(1).astype(np.int32), "layers": np.array(layers),
         "transforms": np.array(list(affines))}
  for kind, affine in affines.items():
    t = len(affine)
    index = np.repeat(np.arange(batch, dtype=np.int32), t)
    dist, p_true, top1 = common.map_chunks(
        lambda i, a: _sweep(arch, params, images, refs, jnp.asarray(labels), i, a, layers),
        (index, np.tile(affine, (batch, 1, 1))), chunk)
    dist = dist.reshape(batch, t, len(layers)).transpose(2, 0, 1)
    shown = np.unique(np.linspace(0, t - 1, _EXAMPLES).round().astype(int))
    shown_images = images[:_SHOWN]
    examples = warp(jnp.repeat(shown_images, len(shown), axis=0), jnp.tile(affine[shown], (len(shown_images), 1, 1)))
    out |= {f"{kind}/values": np.asarray(sweeps[kind], np.float32).reshape(-1),
            f"{kind}/distance": dist / np.stack([np.where(n > 0, n, 1.0) for n in norms])[:, :, None],
            f"{kind}/p_true": p_true.reshape(batch, t), f"{kind}/top1": top1.reshape(batch, t),
            f"{kind}/examples": common.display_images(examples, mean_image).reshape(
                len(shown_images), len(shown), *images.shape[1:]),
            f"{kind}/example_values": np.asarray(sweeps[kind], np.float32).reshape(-1)[shown]}
  return out


def plot(result: Mapping[str, np.ndarray], path: str) -> None:
  """Fig. 5's layout: one row per transform; columns: the first 5 images at 5 sweep values, the
  distance at the low layer, at the high layer, and p(true label): one curve per image for up to
  8 images, else the mean over images with the band between the 25th and 75th percentiles."""
  import matplotlib.pyplot as plt
  kinds = [str(k) for k in result["transforms"]]
  layers = [str(l) for l in result["layers"]]
  ncols = 2 + len(layers)
  fig, axes = plt.subplots(len(kinds), ncols, figsize=(3.3 * ncols, 3.0 * len(kinds)), squeeze=False,
                           gridspec_kw={"width_ratios": [1.3] + [1] * (ncols - 1)})
  colors = plt.cm.tab10(np.arange(len(result["labels"])) % 10)
  for letter, row, kind in zip("abc", axes, kinds):
    examples = result[f"{kind}/examples"]
    b, k, s = examples.shape[:3]
    row[0].imshow(examples.transpose(0, 2, 1, 3, 4).reshape(b * s, k * s, 3))
    row[0].set_xticks((np.arange(k) + 0.5) * s, [f"{v:g}" for v in result[f"{kind}/example_values"]], fontsize=7)
    row[0].set_yticks((np.arange(b) + 0.5) * s, [str(i + 1) for i in range(b)], fontsize=7)
    row[0].set_ylabel(f"({letter}) {kind}: image")
    row[0].set_xlabel(_AXIS_LABELS[kind], fontsize=8)
    values = result[f"{kind}/values"]
    curves = [(f"{layer}: relative distance", result[f"{kind}/distance"][i]) for i, layer in enumerate(layers)]
    curves.append(("p(true label)", result[f"{kind}/p_true"]))
    for ax, (title, ys) in zip(row[1:], curves):
      if len(ys) <= _CURVES:
        for i, y in enumerate(ys):
          ax.plot(values, y, "-o", ms=2.5, lw=1, color=colors[i], label=f"image {i + 1}")
      else:
        low, high = np.percentile(ys, [25, 75], axis=0)
        ax.fill_between(values, low, high, color="tab:blue", alpha=0.25, lw=0, label="25-75 percentile")
        ax.plot(values, ys.mean(0), "-o", ms=2.5, lw=1.2, color="tab:blue", label=f"mean of {len(ys)} images")
      ax.set_title(title, fontsize=9)
      ax.set_xlabel(_AXIS_LABELS[kind], fontsize=8)
      ax.tick_params(labelsize=7)
      ax.grid(alpha=0.3)
    row[-1].set_ylim(-0.02, 1.02)
  axes[0, -1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  files.save_figure(fig, path)


def magnitudes(kind: str, values: Sequence[float]) -> np.ndarray:
  """How far each sweep value is from the identity: |t| pixels, |ln s|, or the angle to the nearest
  multiple of 360 degrees. float64 [T]."""
  v = np.asarray(values, np.float64)
  if kind == "translation":
    return np.abs(v)
  if kind == "scale":
    return np.abs(np.log(v))
  if kind == "rotation":
    a = np.mod(v, 360.0)
    return np.minimum(a, 360.0 - a)
  raise ValueError(f"transform={kind!r} is unknown; allowed: {', '.join(TRANSFORMS)}")


def r_squared(x: np.ndarray, y: np.ndarray) -> float | None:
  """R^2 of the least-squares line y ~ a x + b (None with fewer than 3 distinct x or constant y)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(np.unique(x)) < 3 or np.ptp(y) == 0:
    return None
  residual = y - np.polyval(np.polyfit(x, y, 1), x)
  return float(1.0 - (residual ** 2).sum() / ((y - y.mean()) ** 2).sum())


def aggregate(result: Mapping[str, np.ndarray], kind: str) -> dict[str, Any]:
  """Fig. 5's claims over all images for one transform.

  Sweep values are grouped by their magnitude (`magnitudes`; e.g. -t and t). Per layer: the mean
  distance (over images and the values of a group) at the smallest non-zero and at the largest
  magnitude, their ratio (near 1: the distance jumps at once, as the paper's layer 1; small: it
  grows gradually), and "linear_r2", the R^2 of a line fitted to the mean distance against the
  magnitude (the paper: the top layer changes "quasi-linearly" for translation and scale). For the
  classifier: mean p(true label) at magnitude 0, at the smallest and at the largest; "top1_kept_all",
  the share of images whose top-1 class is the untransformed one at every value of the sweep;
  "top1_kept_mean", the share of (image, value) pairs that keep it (the paper: the output is not
  rotation-invariant, except for rotationally symmetric objects).
  """
  values = result[f"{kind}/values"]
  mag = np.round(magnitudes(kind, values), 6)
  groups = np.unique(mag)
  nonzero = groups[groups > 0]
  if not len(nonzero):
    return {"note": f"the {kind} sweep has no value other than the identity"}
  small, large = nonzero[0], nonzero[-1]

  def at(curves: np.ndarray, m: float) -> float:
    return float(curves[:, mag == m].mean())

  out: dict[str, Any] = {"magnitude": {"translation": "|t| pixels", "scale": "|ln s|",
                                       "rotation": "degrees to the nearest multiple of 360"}[kind],
                         "smallest": float(small), "largest": float(large)}
  for i, layer in enumerate(result["layers"]):
    d = result[f"{kind}/distance"][i]
    mean_curve = np.array([d[:, mag == m].mean() for m in groups])
    out[str(layer)] = {"mean_at_smallest": at(d, small), "mean_at_largest": at(d, large),
                       "smallest_over_largest": at(d, small) / at(d, large) if at(d, large) > 0 else None,
                       "linear_r2": r_squared(groups, mean_curve)}
  p, top1 = result[f"{kind}/p_true"], result[f"{kind}/top1"]
  kept = top1 == result["predicted"][:, None]
  out["p_true"] = {"mean_at_identity": at(p, 0.0) if (mag == 0).any() else None,
                   "mean_at_smallest": at(p, small), "mean_at_largest": at(p, large)}
  out["top1_kept_all"] = float(kept.all(axis=1).mean())
  out["top1_kept_mean"] = float(kept.mean())
  return out


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able numbers: per transform the sweep, per-image distances per layer and p(true label),
  and under "summary" the claims over all images (`aggregate`)."""
  out: dict[str, Any] = {"labels": result["labels"].tolist(), "layers": [str(l) for l in result["layers"]],
                         "num_images": len(result["labels"]), "distance": "||f(x') - f(x)|| / ||f(x)||",
                         "summary": {str(kind): aggregate(result, str(kind)) for kind in result["transforms"]}}
  for kind in result["transforms"]:
    kind = str(kind)
    out[kind] = {"values": result[f"{kind}/values"].tolist(),
                 "p_true": np.round(result[f"{kind}/p_true"], 6).tolist(),
                 **{str(l): np.round(result[f"{kind}/distance"][i], 6).tolist()
                    for i, l in enumerate(result["layers"])}}
  return out


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py invariance`: Fig. 5 on the source's first `num_examples` images, written into `out`."""
  images, labels = source.example_inputs(options["num_examples"])
  result = compute(source.model.arch, source.model.params, images, labels, mean_image=source.model.mean_image,
                   batch_size=options["batch_size"])
  return common.write_section(
      summary(result), {"invariance.png": functools.partial(plot, result)}, out, "invariance",
      "Fig. 5: invariance to translation, scale and rotation",
      "Per transform: the images, the relative distance of low- and high-layer features to those of the "
      "untransformed image, and p(true class) (p(top-1 class) for photos without labels).")
