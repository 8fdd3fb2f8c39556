"""Tables 4-5 / Fig. 9 and Table 7 over several pretrained models, e.g. the base's three seeds (section 5.2).

Each model's studies come from `visualize.py transfer` and `visualize.py probes` (the same --target, --seed,
--folds, --test_per_class, --l2 and --shots: the same training draws and test images for every model),
one output folder per model holding transfer.json and/or probes.json. This reads them and reports, per
images-per-class N (and per layer for Table 7), the mean over models of each model's mean over folds, the
standard deviation over models (ddof=1; 0 for one model) and the range. The spread over models is the
seed noise of the pretrained net; the spread over folds (in each model's file) is that of the training draws.

  python visualize.py transfer-seeds --results=F0,F1,F2 --out=docs/figures/transfer-seeds
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zf_jax import files
from zf_jax.analysis import common, probes, transfer

STUDIES = {"transfer": "transfer.json", "probes": "probes.json"}
# What must agree between the models' files for their numbers to be of one study.
SAME_STUDY = ("target", "num_classes", "test_images", "folds", "seed", "l2")
_ALLOWED = ("allowed: output folders of `visualize.py transfer` / `probes` (one per model, run with the same "
            "--target, --seed, --folds, --test_per_class, --l2 and --shots)")


def _read(folder: str, file: str) -> dict[str, Any] | None:
  path = os.path.join(folder, file)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{path!r} cannot be read ({type(e).__name__}: {e}); {_ALLOWED}") from None
  if not isinstance(data, dict) or "rows" not in data or "model" not in data:
    raise ValueError(f"{path!r} has no rows or no model (written before zf_jax recorded the model; run its command "
                     f"again); {_ALLOWED}")
  return data


def _key(row: Mapping[str, Any]) -> tuple:
  return (row.get("layer"), row["images_per_class"])


def _check_one_study(name: str, folders: Sequence[str], tables: Sequence[Mapping[str, Any]]) -> None:
  first = tables[0]
  for folder, table in zip(folders[1:], tables[1:]):
    for key in SAME_STUDY:
      if table.get(key) != first.get(key):
        raise ValueError(f"{name}: {folder!r} has {key}={table.get(key)!r} and {folders[0]!r} {first.get(key)!r}, "
                         f"so they are not one study; {_ALLOWED}")
    if [_key(r) for r in table["rows"]] != [_key(r) for r in first["rows"]]:
      raise ValueError(f"{name}: {folder!r} and {folders[0]!r} have other layers or images per class; {_ALLOWED}")
  seen: dict[str, str] = {}
  for folder, table in zip(folders, tables):
    digest = table["model"]["params_sha256"]
    if digest in seen:
      raise ValueError(f"{name}: {seen[digest]!r} and {folder!r} are of the same model (one model twice); allowed: "
                       "one folder per model")
    seen[digest] = folder


def _spread(values: Sequence[float]) -> dict[str, Any]:
  values = np.asarray(values, np.float64)
  return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
          "min": float(values.min()), "max": float(values.max()), "models": values.tolist()}


def compute(folders: Sequence[str]) -> dict[str, Any]:
  """Each study's numbers over the models of `folders`.

  Args:
    folders: M output folders of `visualize.py transfer` and/or `probes`, one per model.

  Returns:
    {"folders": [M] str; per study found ("transfer", "probes"): {"folders": the folders that have it,
     "models": their model entries, "table": the first file's settings (target, folds, ...), "rows": per
     row of the files (N, or layer and N) its "images_per_class" (and "layer") and, per measure
     ("pretrained" for transfer; "svm", "softmax" for probes), `_spread` over models of the fold means (%)}}.
  """
  if not folders:
    raise ValueError(f"results is empty; {_ALLOWED}")
  out: dict[str, Any] = {"folders": list(folders)}
  for name, file in STUDIES.items():
    found = [(folder, table) for folder in folders if (table := _read(folder, file)) is not None]
    if not found:
      continue
    names, tables = [f for f, _ in found], [t for _, t in found]
    _check_one_study(name, names, tables)
    measures = ("pretrained",) if name == "transfer" else ("svm", "softmax")
    rows = []
    for i, row in enumerate(tables[0]["rows"]):
      entry = {key: row[key] for key in ("layer", "images_per_class", "dims") if key in row}
      for measure in measures:
        entry[measure] = _spread([t["rows"][i][f"{measure}_mean"] for t in tables])
      rows.append(entry)
    out[name] = {"folders": names, "models": [t["model"] for t in tables],
                 "table": {key: tables[0].get(key) for key in (*SAME_STUDY, "metric")}, "rows": rows}
  if "transfer" not in out and "probes" not in out:
    raise ValueError(f"none of results={','.join(folders)} holds transfer.json or probes.json; {_ALLOWED}")
  return out


def summary(result: Mapping[str, Any]) -> dict[str, Any]:
  """The result as JSON: per study its models, settings and rows (mean, std, range over models, in %)."""
  out = {"tables": "Tables 4-5 / Fig. 9 (transfer) and Table 7 (probes) over pretrained models",
         "spread": "per row: the mean over models of each model's mean over folds; std over models (ddof=1); range",
         "folders": [files.portable_path(f) for f in result["folders"]]}
  for name in STUDIES:
    if name in result:
      study = result[name]
      out[name] = {**study, "folders": [files.portable_path(f) for f in study["folders"]],
                   "paper": transfer.PAPER if name == "transfer" else probes.PAPER}
  return out


def plot(result: Mapping[str, Any], path: str) -> None:
  """Fig. 9 (accuracy vs images per class) and Table 7 (accuracy vs layer, per N) as the mean over models with
  the models' range as error bars, each model's value as a dot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = [name for name in STUDIES if name in result]
  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
  for ax, name in zip(axes[0], panels):
    study = result[name]
    if name == "transfer":
      groups = {"pretrained": ("pretrained", study["rows"])}
      x_of = [r["images_per_class"] for r in study["rows"]]
      ax.set_xscale("log")
      ax.set_xticks(x_of, [str(n) for n in x_of])
      ax.set_xlabel("training images per class")
    else:
      layers = list(dict.fromkeys(r["layer"] for r in study["rows"]))
      groups = {f"{m}, {n}/class": (m, [r for r in study["rows"] if r["images_per_class"] == n])
                for n in dict.fromkeys(r["images_per_class"] for r in study["rows"]) for m in ("svm", "softmax")}
      ax.set_xticks(range(len(layers)), layers)
      ax.set_xlabel("layer")
    for label, (measure, rows) in groups.items():
      x = [r["images_per_class"] for r in rows] if name == "transfer" else [layers.index(r["layer"]) for r in rows]
      spread = [r[measure] for r in rows]
      mean = np.array([s["mean"] for s in spread])
      ax.errorbar(x, mean, yerr=[mean - [s["min"] for s in spread], [s["max"] for s in spread] - mean], marker="o",
                  capsize=3, label=f"{label}: mean of {len(study['models'])} models, range")
      for xi, s in zip(x, spread):
        ax.plot([xi] * len(s["models"]), s["models"], ".", color="0.3", ms=3)
    ax.set_ylabel("mean per-class accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{'Fig. 9' if name == 'transfer' else 'Table 7'}: "
                 f"{os.path.basename(os.path.normpath(str(study['table']['target'])))}, "
                 f"{len(study['models'])} pretrained models", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
  fig.tight_layout()
  files.save_figure(fig, path)


def run(folders: Sequence[str], options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py transfer-seeds`: the studies of `folders` over their models, written into `out`."""
  result = compute(folders)
  return common.write_section(
      summary(result), {"transfer_seeds.png": functools.partial(plot, result)}, out, "transfer_seeds",
      "Tables 4-5 / Fig. 9 and Table 7 over pretrained models",
      f"The transfer and per-layer studies of {len(folders)} folders (one per pretrained model, the same folds and "
      "test images): per row the mean over models of each model's mean over folds, the range over models as bars "
      "and each model's value as a dot.")
