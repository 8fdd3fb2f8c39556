"""Per-layer features (section 5.3, Table 7): how discriminative is each layer of a trained model?

For every layer 1..7 (`features.feature_layers`: conv1..conv5 as the paper "retains" them, after
their pooling and normalization, flattened; fc6, fc7), a linear SVM (scikit-learn's LinearSVC,
one-vs-rest, C = 1) and a softmax (`transfer.fit_softmax`, optax) are trained on that layer's
features with the protocol of `transfer` (N images per class, F folds, up to 50 test images per
class, mean per-class accuracy +- std over folds). Features are computed once for all layers
(`transfer.prepare`) and normalized per fold as `transfer.normalize` does.
"""
from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from zf_jax import files
from zf_jax.analysis import common, transfer
from zf_jax.analysis.source import Source

SHOTS = (30,)
SVM_C = 1.0
# Table 7 (arXiv v3): mean per-class accuracy (%) of an SVM or softmax on each layer's features of the
# ImageNet-trained model; Caltech-101 with 30 images per class, Caltech-256 with 60.
PAPER = {
    "caltech101, 30/class": {"svm": {"conv1": 44.8, "conv2": 66.2, "conv3": 72.3, "conv4": 76.6, "conv5": 86.2,
                                     "fc7": 85.5}, "softmax": {"conv5": 82.9, "fc7": 85.4}},
    "caltech256, 60/class": {"svm": {"conv1": 24.6, "conv2": 39.6, "conv3": 46.0, "conv4": 51.3, "conv5": 65.6,
                                     "fc7": 71.7}, "softmax": {"conv5": 65.7, "fc7": 72.6}},
}


def svm_accuracy(study: transfer.Study, layer: str, c: float = SVM_C) -> np.ndarray:
  """float [K, F]: mean per-class test accuracy of a LinearSVC on `layer`'s features, per N and fold."""
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.svm import LinearSVC
  x, y = study.train_features[layer], study.train_labels
  out = np.zeros((len(study.shots), study.folds))
  for i, n in enumerate(study.shots):
    for f, rows in enumerate(study.rows[n]):
      train, test = span_coordinates(*transfer.normalize(x[rows], study.test_features[layer]))
      with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        svm = LinearSVC(C=c, fit_intercept=False, max_iter=2000).fit(train, y[rows])
      out[i, f] = transfer.per_class_accuracy(svm.predict(test), study.test_labels, len(study.class_names))
  return out


def span_coordinates(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Features [R, D], [T, D] -> [R, M], [T, M]: a constant 1 appended (the intercept, regularized as
  LinearSVC's intercept_scaling=1 does), then coordinates in an orthonormal basis of the training rows'
  span (M = min(R, D + 1)).

  An L2-regularized linear SVM's weights lie in the span of its training rows, and an orthonormal basis
  keeps inner products and norms, so LinearSVC(fit_intercept=False) on these coordinates solves the
  same problem as LinearSVC on the features: at conv1 (D = 9408 at 64 px) with 1500 rows, each
  iteration then costs R x R instead of R x D.
  """
  train = np.hstack([train, np.ones((len(train), 1), train.dtype)])
  test = np.hstack([test, np.ones((len(test), 1), test.dtype)])
  if train.shape[1] <= train.shape[0]:
    return train, test
  basis, _ = np.linalg.qr(train.T)  # [D + 1, R], orthonormal columns spanning the training rows
  return train @ basis, test @ basis


def compute(study: transfer.Study, l2: float = transfer.L2, steps: int = transfer.STEPS,
            svm_c: float = SVM_C) -> dict[str, Any]:
  """Table 7 from a prepared study (`transfer.prepare` with the layers to probe).

  Returns:
    {"layers": [L] names, "shots": int [K], "svm": float [L, K, F], "softmax": float [L, K, F] (mean per-class
    accuracy per layer, N and fold), "dims": int [L] feature sizes, "target", "num_classes", "num_test", "l2",
    "svm_c", "seed"}.
  """
  l2 = transfer.check_l2(l2)
  if isinstance(svm_c, bool) or not isinstance(svm_c, (int, float)) or not np.isfinite(svm_c) or svm_c <= 0:
    raise ValueError(f"svm_c={svm_c!r} is not allowed; allowed: a finite number > 0 (default {SVM_C:g})")
  layers = list(study.train_features)
  return {"layers": layers, "shots": np.array(study.shots),
          "svm": np.stack([svm_accuracy(study, layer, svm_c) for layer in layers]),
          "softmax": np.stack([transfer.softmax_accuracy(study, layer, l2, steps) for layer in layers]),
          "dims": np.array([study.train_features[layer].shape[1] for layer in layers]), "target": study.target,
          "num_classes": len(study.class_names), "num_test": len(study.test_labels), "l2": l2, "svm_c": svm_c,
          "seed": study.seed}


def summary(result: dict[str, Any]) -> dict[str, Any]:
  """Per layer and N: SVM and softmax accuracy (%), mean +- std over folds; the paper's Table 7 beside them."""
  rows = []
  for i, layer in enumerate(result["layers"]):
    for k, n in enumerate(result["shots"]):
      svm, soft = 100 * np.asarray(result["svm"][i, k]), 100 * np.asarray(result["softmax"][i, k])
      rows.append({"layer": layer, "images_per_class": int(n), "dims": int(result["dims"][i]),
                   "svm_mean": float(svm.mean()), "svm_std": float(svm.std()),
                   "softmax_mean": float(soft.mean()), "softmax_std": float(soft.std())})
  return {"target": files.portable_path(result["target"]), "num_classes": result["num_classes"],
          "test_images": result["num_test"],
          "folds": int(np.asarray(result["svm"]).shape[-1]), "seed": result["seed"], "l2": result["l2"],
          "svm": f"sklearn.svm.LinearSVC(C={result['svm_c']}), one-vs-rest", "softmax": "optax L-BFGS, L2-regularized",
          "metric": "mean per-class accuracy (%), mean +- std over folds", "rows": rows, "paper": PAPER}


def plot(result: dict[str, Any], path: str) -> None:
  """Table 7 as curves: accuracy vs layer for the SVM and the softmax (one pair per N), the paper's in grey."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  layers = list(result["layers"])
  x = np.arange(len(layers))
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for k, n in enumerate(result["shots"]):
    for name, marker in (("svm", "o"), ("softmax", "s")):
      acc = 100 * np.asarray(result[name])[:, k]
      ax.errorbar(x, acc.mean(-1), yerr=acc.std(-1), marker=marker, capsize=3, label=f"ours: {name}, {int(n)}/class")
  for (dataset, table), style in zip(PAPER.items(), ("--", ":")):
    for name in ("svm", "softmax"):
      known = [(i, table[name][layer]) for i, layer in enumerate(layers) if layer in table[name]]
      if known:
        ax.plot(*zip(*known), style, color="0.5" if name == "svm" else "0.7", marker=".",
                label=f"paper, {dataset}: {name}")
  ax.set_xticks(x, layers)
  transfer.save_accuracy_figure(fig, ax, result, path, "layer",
                                f"Table 7: per-layer features, {{target}} ({result['num_classes']} classes)",
                                legend_size=6)


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py probes`: Table 7 on `options["target"]`, written into `out`."""
  _, study = transfer.study_for(source, options, options["layers"], SHOTS)
  result = compute(study, l2=options["l2"])
  return common.write_section(
      {**summary(result), "model": transfer.model_entry(source)}, {"probes.png": functools.partial(plot, result)},
      out, "probes", "Table 7: per-layer features",
      f"A linear SVM (scikit-learn LinearSVC) and a softmax (optax) on each layer's features of {options['target']} "
      "(conv layers after their pooling and normalization, flattened): mean per-class accuracy, mean +- std over "
      f"{options['folds']} folds; the paper's Table 7 in grey.")
