"""Fig. 6 (a)-(c): layer-1 filters as an image grid, and numbers for what the paper sees in them.

Section 3: without feature scale clipping "a few of them dominate" (Fig. 6(a)); section 4.1:
Krizhevsky's 11x11 stride-4 filters are "a mix of extremely high and low frequency information,
with little coverage of the mid frequencies" and have more "dead" features than the 7x7 stride-2
ones (Fig. 6(b), (c)). For each filter w [k, k, 3] (one output channel of conv1):

  rms       sqrt(mean(w^2)), the quantity feature scale clipping bounds at 0.1 (section 3).
  dead      rms < DEAD_FRACTION * median rms. A fifth of the median: such a filter's responses are
            at least 5x weaker than a typical filter's on the same image, and a filter left at its
            N(0, 0.01^2) initialisation among filters grown to the clipping radius sits at 1/10.
            Relative to the median, so the threshold needs no knowledge of the training recipe and
            one dominant filter does not move it.
  dominance the largest filter's share of the summed rms (1/c when all are equal), the largest
            rms over the median, and the Gini coefficient of the rms values (0: all equal,
            -> 1: one filter holds everything).
  spectrum  the power |FFT|^2 of the filter, zero-padded to FFT_SIZE x FFT_SIZE (so 7x7 and 11x11
            filters are sampled on the same frequency grid) and summed over colour channels, as a
            share of the filter's total power. Radial frequency r is in cycles per pixel over the
            Nyquist frequency 0.5, so r in [0, sqrt(2)]. Bands: low r < 1/3 (including the
            mean colour, r = 0), mid 1/3 <= r < 2/3, high r >= 2/3.
  coverage  over the live filters: the mean share of power in each band, and how many filters
            have their peak power (the r of the largest |FFT|^2) in each band.

The grid shows every filter on one common scale (grey = 0, the largest |weight| of the layer at
black or white), so a dominant filter stands out and dead filters are flat grey, as in Fig. 6(a).
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import checkpoint, files, metrics
from zf_jax.analysis import common, topk
from zf_jax.analysis.source import Source
from zf_jax.models import Params

DEAD_FRACTION = 0.2
FFT_SIZE = 64
BANDS = ("low", "mid", "high")
BAND_EDGES = (1 / 3, 2 / 3)  # in units of the Nyquist frequency
RADIAL_BINS = 24


def layer1_filters(params: Params, layer: str = "conv1") -> np.ndarray:
  """params[layer]["kernel"] HWIO [k, k, 3, c] -> float32 [c, k, k, 3], one filter per output map."""
  if layer not in params or "kernel" not in params[layer] or np.ndim(params[layer]["kernel"]) != 4:
    raise ValueError(f"layer={layer!r} is not a conv layer of these params; allowed: "
                     f"{', '.join(name for name, p in params.items() if np.ndim(p.get('kernel')) == 4)}")
  return np.asarray(params[layer]["kernel"], np.float32).transpose(3, 0, 1, 2)


def radial_frequency(size: int = FFT_SIZE) -> np.ndarray:
  """float [size, size]: |(fy, fx)| of each FFT bin in units of the Nyquist frequency (0..sqrt(2))."""
  f = np.fft.fftfreq(size) / 0.5
  return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def power_spectra(filters: np.ndarray) -> np.ndarray:
  """[c, k, k, 3] -> [c, FFT_SIZE, FFT_SIZE], each filter's power over colours as a share of its total (0 if none)."""
  power = (np.abs(np.fft.fft2(np.asarray(filters, np.float64), s=(FFT_SIZE, FFT_SIZE), axes=(1, 2))) ** 2).sum(-1)
  total = power.sum(axis=(1, 2), keepdims=True)
  return np.where(total > 0, power / np.where(total > 0, total, 1.0), 0.0)


def band_of(r: np.ndarray) -> np.ndarray:
  """Band index 0 (low), 1 (mid), 2 (high) of radial frequencies r (units of Nyquist)."""
  return np.digitize(r, BAND_EDGES)


def gini(values: np.ndarray) -> float:
  """Gini coefficient of non-negative values: 0 when all equal, (n - 1) / n when one holds all."""
  v = np.sort(np.asarray(values, np.float64))
  n, total = len(v), v.sum()
  if total == 0:
    return 0.0
  return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * total))


def compute(params: Params, layer: str = "conv1", dead_fraction: float = DEAD_FRACTION) -> dict[str, np.ndarray]:
  """Filters and their numbers (see the module doc) for one model.

  Args:
    params: the model's params (`checkpoint.Loaded.params`).
    layer: the first conv layer ("conv1").
    dead_fraction: dead when rms < dead_fraction * median rms.

  Returns:
    "filters" [c, k, k, 3] (weights), "rms" [c], "dead" bool [c], "band_power" [3] (mean share of
    power of the live filters in low/mid/high), "peak_band" int [c] (band of each filter's peak
    power), "radial_profile" [RADIAL_BINS] (mean share of power of the live filters per radial bin,
    edges "radial_edges" [RADIAL_BINS + 1]), "dead_fraction".
  """
  filters = layer1_filters(params, layer)
  rms = np.sqrt((filters.astype(np.float64) ** 2).mean(axis=(1, 2, 3)))
  dead = rms < dead_fraction * np.median(rms)
  spectra = power_spectra(filters)
  r = radial_frequency()
  live = spectra[~dead] if (~dead).any() else spectra
  bands = band_of(r)
  edges = np.linspace(0, np.sqrt(2) + 1e-9, RADIAL_BINS + 1)
  bins = np.digitize(r, edges) - 1
  peak = r.reshape(-1)[spectra.reshape(len(filters), -1).argmax(axis=1)]
  return {"filters": filters, "rms": rms, "dead": dead, "dead_fraction": np.float64(dead_fraction),
          "band_power": np.array([live[:, bands == b].sum(axis=1).mean() for b in range(len(BANDS))]),
          "peak_band": band_of(peak), "peak_frequency": peak,
          "radial_profile": np.array([live[:, bins == b].sum(axis=1).mean() for b in range(RADIAL_BINS)]),
          "radial_edges": edges}


def summary(result: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """JSON-able numbers of one model: dead filters, dominance, frequency coverage."""
  rms, dead = result["rms"], result["dead"]
  live_peaks = result["peak_band"][~dead]
  return {
      "num_filters": len(rms), "kernel_size": int(result["filters"].shape[1]),
      "rms": {"median": float(np.median(rms)), "max": float(rms.max()), "min": float(rms.min())},
      "dead": {"count": int(dead.sum()), "indices": np.flatnonzero(dead).tolist(),
               "rule": f"rms < {float(result['dead_fraction']):g} * median rms"},
      "dominance": {"top_share": float(rms.max() / rms.sum()) if rms.sum() else 0.0,
                    "max_over_median": float(rms.max() / np.median(rms)) if np.median(rms) else None,
                    "gini": gini(rms), "top_filter": int(rms.argmax())},
      "frequency": {"bands_nyquist": {"low": [0, BAND_EDGES[0]], "mid": list(BAND_EDGES),
                                      "high": [BAND_EDGES[1], 2 ** 0.5]},
                    "band_power": dict(zip(BANDS, np.round(result["band_power"], 6).tolist())),
                    "filters_peaking_in_band": {b: int((live_peaks == i).sum()) for i, b in enumerate(BANDS)}}}


def grid(filters: np.ndarray) -> np.ndarray:
  """[c, k, k, 3] -> one image [rows*(k+1)-1, cols*(k+1)-1, 3] in [0, 1], all on one common scale."""
  scale = np.abs(filters).max()
  shown = 0.5 + 0.5 * filters / (scale if scale > 0 else 1.0)
  return topk.mosaic(shown, int(np.ceil(np.sqrt(len(filters)))))


def plot(results: Mapping[str, Mapping[str, np.ndarray]], path: str) -> None:
  """Fig. 6 (a)-(c), side by side for each model given ({label: compute(...)}, e.g. clipping on/off
  or ZF vs AlexNet): the filter grid, the sorted rms with the dead threshold, and the radial power
  spectra of all models on one plot."""
  import matplotlib.pyplot as plt
  n = len(results)
  fig, axes = plt.subplots(2, n + 1, figsize=(4.2 * (n + 1), 7.5), squeeze=False,
                           gridspec_kw={"height_ratios": [3, 1.6]})
  for i, (label, result) in enumerate(results.items()):
    rms, dead = result["rms"], result["dead"]
    s = summary(result)
    axes[0, i].imshow(grid(result["filters"]), interpolation="nearest")
    axes[0, i].set_title(f"({'abcdefgh'[i]}) {label}\n{len(rms)} filters {result['filters'].shape[1]}x"
                         f"{result['filters'].shape[2]}, {int(dead.sum())} dead, top share "
                         f"{s['dominance']['top_share']:.2f}", fontsize=9)
    axes[0, i].set_axis_off()
    order = np.argsort(-rms)
    axes[1, i].bar(np.arange(len(rms)), rms[order], color=np.where(dead[order], "tab:red", "tab:blue"), width=1.0)
    axes[1, i].axhline(float(result["dead_fraction"]) * np.median(rms), color="tab:red", lw=1, ls="--",
                       label="dead threshold")
    axes[1, i].set_xlabel("filter (sorted)", fontsize=8)
    axes[1, i].set_ylabel("rms", fontsize=8)
    axes[1, i].legend(fontsize=7)
    axes[1, i].tick_params(labelsize=7)
    edges = result["radial_edges"]
    axes[0, n].plot((edges[1:] + edges[:-1]) / 2, result["radial_profile"], "-o", ms=3, label=label)
  for edge in BAND_EDGES:
    axes[0, n].axvline(edge, color="0.6", lw=0.8, ls=":")
  axes[0, n].set_xlabel("radial frequency / Nyquist (bands: low | mid | high)", fontsize=8)
  axes[0, n].set_ylabel("mean share of power (live filters)", fontsize=8)
  axes[0, n].set_title("frequency coverage", fontsize=9)
  axes[0, n].legend(fontsize=7)
  width = 0.8 / n
  for i, (label, result) in enumerate(results.items()):
    axes[1, n].bar(np.arange(len(BANDS)) + (i - (n - 1) / 2) * width, result["band_power"], width, label=label)
  axes[1, n].set_xticks(np.arange(len(BANDS)), BANDS)
  axes[1, n].set_ylabel("share of power", fontsize=8)
  axes[1, n].tick_params(labelsize=7)
  fig.tight_layout()
  files.save_figure(fig, path)


def compare(params: Sequence[Params], labels: Sequence[str], path: str | None = None,
            dead_fraction: float = DEAD_FRACTION) -> dict[str, Any]:
  """Side by side numbers (and figure, if `path`) of several models' layer-1 filters (Fig. 6).

  Args:
    params: each model's params.
    labels: a name for each (e.g. "ZF, clipping", "ZF, no clipping", "AlexNet").
    path: where to write the PNG, or None.
    dead_fraction: see `compute`.

  Returns:
    {label: summary(...)}.
  """
  if len(params) != len(labels) or len(set(labels)) != len(labels):
    raise ValueError(f"labels={list(labels)!r} must name each of the {len(params)} models once")
  results = {label: compute(p, dead_fraction=dead_fraction) for label, p in zip(labels, params)}
  if path is not None:
    plot(results, path)
  return {label: summary(r) for label, r in results.items()}


def _logged_top1(source: str, model: checkpoint.Loaded) -> float | None:
  """The val top-1 a workdir's training logged at or before the model's step (None for a file or a shipped model)."""
  top1 = metrics.validation_at(source, model.step).get("val_top1") if os.path.isdir(source) else None
  return None if top1 is None else float(top1)


def _label(source: str, model: checkpoint.Loaded) -> str:
  """A model's name in the figure: its folder or file, arch, epoch and the val top-1 its training logged."""
  top1 = _logged_top1(source, model)
  return (f"{os.path.basename(os.path.normpath(source))} ({model.arch.name}, epoch {model.epoch:g}"
          f"{'' if top1 is None else f', val top-1 {top1:.3f}'})")


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py filters`: Fig. 6 for the source's model, beside the `compare` workdirs or .npz files."""
  loaded = [(source.path or source.model_name, source.model)]
  loaded += [(path, checkpoint.load_for_analysis(path)) for path in options["compare"] or ()]
  labels = [_label(path, model) for path, model in loaded]
  if len(set(labels)) < len(labels):
    labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
  results = {label: compute(model.params) for label, (_, model) in zip(labels, loaded)}
  numbers = {label: {"model": os.path.basename(os.path.normpath(path)), "arch": model.arch.name,
                     "epoch": model.epoch, "val_top1": _logged_top1(path, model), **summary(results[label])}
             for label, (path, model) in zip(labels, loaded)}
  return common.write_section(
      numbers, {"filters.png": functools.partial(plot, results)}, out, "filters", "Fig. 6: layer-1 filters",
      "Layer-1 filters on one common scale (grey = 0), their sorted RMS with the dead threshold "
      f"(RMS < {DEAD_FRACTION:g} x median), and the radial power spectrum (low/mid/high bands of the Nyquist "
      "frequency) of the live filters.")
