"""Transfer and few-shot learning (section 5.2, Tables 4-5, Fig. 9).

Layers 1-7 of a trained model stay fixed; a new softmax on its fc7 features is trained for the
target's classes. For N images per class (1, 2, 3, 5, 10, 15, 30, 60) and F folds (5), the training
images of each fold are drawn by `data.few_shot.split_per_class` and up to 50 test images per class
are held out once; the score is the mean per-class accuracy on them, reported as mean +- std over
folds. The baseline ("from scratch" rows) is the same arch trained on the same N images per class
(`train.py --config.train_per_class=N ...`, which draws its images with the same function), read
from its workdir and evaluated here on the same test images (center crop, its own mean image).

`prepare` computes each image's features once (`features.compute`: one jitted forward pass per
batch, center crop minus the source model's mean image); `fit_softmax` trains the new softmax on the
cached features with optax (L-BFGS, full batch, L2-regularized; one compilation for every N and
fold), so the whole study takes minutes on 2 CPU cores after the features are computed.
`zf_jax.analysis.probes` (Table 7) runs the same protocol on every layer.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from zf_jax import checkpoint, data, files, models, run_record
from zf_jax.analysis import common, features
from zf_jax.analysis.source import NeedsDataset, Source
from zf_jax.data import few_shot, tiny_imagenet

SHOTS = (1, 2, 3, 5, 10, 15, 30, 60)
FOLDS = 5
TEST_PER_CLASS = 50
L2 = 1e-3
STEPS = 100
# Tables 4 and 5 (arXiv v3): mean per-class accuracy (%) with ImageNet-pretrained layers 1-7 and a new
# softmax, and the same net trained from scratch on the target's images.
PAPER = {
    "caltech101 (Table 4)": {"images_per_class": [15, 30], "pretrained": [83.8, 86.5], "scratch": [22.8, 46.5]},
    "caltech256 (Table 5, Fig. 9)": {"images_per_class": [15, 30, 45, 60], "pretrained": [65.7, 70.6, 72.7, 74.2],
                                     "scratch": [9.0, 22.5, 31.2, 38.8]},
    "note": "Caltech-256: 6 images per class beat the best earlier method's 55.2 % with 60 (section 5.2)",
}


@dataclasses.dataclass(frozen=True)
class Target:
  """A transfer target: its training split (few-shot draws), its test split and how to train on it.

  Attributes:
    name: as given (a TFDS name or a directory).
    train, test: the splits (the same split when the target has one: test images are held out first).
    one_split: True if train and test are one split.
    train_flags: the train.py flags that select this target's training split (the scratch baseline).
  """
  name: str
  train: data.Dataset
  test: data.Dataset
  one_split: bool
  train_flags: str


def load_target(target: str, data_dir: str | None = None) -> Target:
  """A target by name: a directory of Tiny ImageNet tar shards (e.g. shared/data/tiny-imagenet-transfer-50),
  an ImageFolder directory (`<dir>/<split>/<class>/<image>` with splits train and test/validation/val, or one
  split), or a TFDS name (e.g. caltech101: its train and test splits)."""
  path = os.path.expanduser(target)
  if os.path.isdir(path) and tiny_imagenet.find_copy(epath.Path(path)) is not None:
    train, test = (data.get_dataset("tiny_imagenet", split, data_dir, manual_dir=path)
                   for split in ("train", "validation"))
    return Target(target, train, test, False, f"--config.dataset=tiny_imagenet --config.manual_dir={target}")
  if os.path.isdir(path):
    splits = sorted(e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e)))
    test = next((s for s in ("test", "validation", "val") if s in splits), None)
    if "train" in splits and test:
      names = ("train", test)
    elif len(splits) == 1:
      names = (splits[0], splits[0])
    else:
      raise ValueError(f"target={target!r} has splits {splits}; allowed: an ImageFolder with 'train' and one of "
                       "'test', 'validation', 'val', or with exactly one split, or a directory of tar shards")
    train, test = (data.get_dataset(path, s) for s in names)
    return Target(target, train, test, names[0] == names[1], f"--config.dataset={target} "
                  f"--config.train_split={names[0]} --config.val_split={names[1]}")
  train = data.get_dataset(target, "train", data_dir)
  splits = list(train.source.dataset_info.splits)
  test = next((s for s in ("test", "validation") if s in splits), "train")
  return Target(target, train, data.get_dataset(target, test, data_dir) if test != "train" else train,
                test == "train", f"--config.dataset={target} --config.train_split=train --config.val_split={test}")


@dataclasses.dataclass(frozen=True)
class Study:
  """A target's few-shot folds and every image's features, computed once.

  Attributes:
    target: the `Target`'s name.
    shots: N values, K of them.
    folds: F.
    seed: the draw (`few_shot.split_per_class`).
    num_test: up to this many test images per class.
    class_names: C names.
    rows: {N: int [F, C * N]}: rows of train_features/train_labels of each fold's training images.
    train_index: int64 [M]: the training split's indices of those M images (every fold's, each once).
    train_labels: int32 [M].
    train_features: {layer: float32 [M, D]}.
    test_index: int64 [T]: the test split's indices of the test images.
    test_labels: int32 [T].
    test_features: {layer: float32 [T, D]}.
    train_flags: train.py flags selecting the target's training split (see `Target`).
    one_split: the test images were held out of the training split (`Target.one_split`).
  """
  target: str
  shots: tuple[int, ...]
  folds: int
  seed: int
  num_test: int
  class_names: list[str]
  rows: dict[int, np.ndarray]
  train_index: np.ndarray
  train_labels: np.ndarray
  train_features: dict[str, np.ndarray]
  test_index: np.ndarray
  test_labels: np.ndarray
  test_features: dict[str, np.ndarray]
  train_flags: str
  one_split: bool


def check_shots(shots: Sequence[int], folds: int, num_test: int) -> tuple[int, ...]:
  shots = tuple(int(n) for n in shots)
  if not shots or min(shots) < 1 or len(set(shots)) != len(shots):
    raise ValueError(f"shots={','.join(map(str, shots))}; allowed: distinct integers >= 1 (images per class)")
  if folds < 1 or num_test < 1:
    raise ValueError(f"folds={folds}, test_per_class={num_test}; allowed: integers >= 1")
  return tuple(sorted(shots))


def check_l2(l2: float) -> float:
  """l2 as a float; one ValueError unless it is a finite number >= 0 (a negative penalty has no minimum)."""
  if isinstance(l2, bool) or not isinstance(l2, (int, float, np.integer, np.floating)) or not np.isfinite(l2) \
      or l2 < 0:
    raise ValueError(f"l2={l2!r} is not allowed (a negative penalty makes the objective unbounded); allowed: a "
                     f"finite number >= 0 (default {L2:g})")
  return float(l2)


def prepare(arch: models.Arch, params: models.Params, mean_image: Any, image_size: int, target: Target,
            shots: Sequence[int] = SHOTS, folds: int = FOLDS, seed: int = 0, num_test: int = TEST_PER_CLASS,
            layers: Sequence[str] = ("fc7",), batch_size: int = 64) -> Study:
  """Draws every fold and computes the features of every image it uses, once.

  Args:
    arch, params, mean_image: the source model (`checkpoint.load_for_analysis`).
    image_size: the side images are resized and center-cropped to (64 or 256; the mean image's).
    target: from `load_target`.
    shots: N values (images per class for training).
    folds: F random draws per N.
    seed: the draw.
    num_test: up to this many test images per class.
    layers: feature layers (`features.feature_layers`).
    batch_size: images per jitted forward pass.

  Raises:
    ValueError: a class with fewer than N training images (named), an unknown layer, bad shots or
      folds; raised before any forward pass.
  """
  shots = check_shots(shots, folds, num_test)
  layers = features.check_layers(arch, layers)
  names = target.train.class_names
  num_classes = target.train.num_classes
  if num_classes < 2:
    raise ValueError(f"target={target.name!r} has {num_classes} class{'es' * (num_classes != 1)}; every image "
                     "would be classified right; allowed: a target with at least 2 classes")
  train_labels = few_shot.labels_of(target.train.source)
  holdout = num_test if target.one_split else 0
  draws = {(n, f): few_shot.split_per_class(train_labels, n, f, seed, holdout, num_classes, names)[0]
           for n in shots for f in range(folds)}
  test_labels = train_labels if target.one_split else few_shot.labels_of(target.test.source)
  _, test_index = few_shot.split_per_class(test_labels, 0, 0, seed, num_test, num_classes, names)
  train_index = np.unique(np.concatenate(list(draws.values())))
  rows = {n: np.stack([np.searchsorted(train_index, draws[n, f]) for f in range(folds)]) for n in shots}

  def features_of(source: Any, index: np.ndarray) -> dict[str, np.ndarray]:
    return features.compute(arch, params, features.dataset_inputs(source, index, arch, image_size, mean_image),
                            layers, batch_size)

  return Study(target.name, shots, folds, seed, num_test, list(names), rows, train_index,
               train_labels[train_index], features_of(target.train.source, train_index), test_index,
               test_labels[test_index], features_of(target.test.source, test_index), target.train_flags,
               target.one_split)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """The mean, over the classes present in `labels` [T], of each class's accuracy of `predictions` [T]."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  hits = np.bincount(labels[predictions == labels], minlength=num_classes)
  present = counts > 0
  return float((hits[present] / counts[present]).mean())


def normalize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Features [R, D] and [T, D] centred on the training mean and divided by the training rows' mean norm."""
  mean = train.mean(0, keepdims=True)
  scale = float(np.linalg.norm(train - mean, axis=1).mean()) or 1.0
  return (train - mean) / scale, (test - mean) / scale


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_softmax(train: jax.Array, labels: jax.Array, weights: jax.Array, num_classes: int, l2: float = L2,
                steps: int = STEPS) -> tuple[jax.Array, jax.Array]:
  """A softmax classifier on fixed features, full batch: optax L-BFGS on the weighted mean cross-entropy
  plus l2/2 ||W||^2.

  Args:
    train: float32 [R, D] normalized features (`normalize`).
    labels: int [R].
    weights: float32 [R]: 1 for real rows, 0 for padding (so that every N of a study compiles once).
    num_classes: C.
    l2: the weight penalty.
    steps: L-BFGS iterations.

  Returns:
    weights float32 [D, C], bias float32 [C].
  """
  def loss(p):
    ce = optax.softmax_cross_entropy_with_integer_labels(train @ p["w"] + p["b"], labels)
    return jnp.sum(ce * weights) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(p["w"] ** 2)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)
  params = {"w": jnp.zeros((train.shape[-1], num_classes), jnp.float32), "b": jnp.zeros(num_classes, jnp.float32)}

  def step(_, carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
  return params["w"], params["b"]


def softmax_accuracy(study: Study, layer: str, l2: float = L2, steps: int = STEPS) -> np.ndarray:
  """float [K, F]: mean per-class test accuracy of a new softmax on `layer`'s features, per N and fold.

  Every fold's rows are padded to the largest N's C * N (weight 0), so `fit_softmax` compiles once.
  """
  x, y, num_classes = study.train_features[layer], study.train_labels, len(study.class_names)
  size = max(rows.shape[1] for rows in study.rows.values())
  out = np.zeros((len(study.shots), study.folds))
  for i, n in enumerate(study.shots):
    for f, rows in enumerate(study.rows[n]):
      train, test = normalize(x[rows], study.test_features[layer])
      pad = size - len(rows)
      w, b = fit_softmax(jnp.asarray(np.pad(train, ((0, pad), (0, 0)))), jnp.asarray(np.pad(y[rows], (0, pad))),
                         jnp.asarray(np.arange(size) < len(rows), jnp.float32), num_classes, l2, steps)
      out[i, f] = per_class_accuracy(np.argmax(test @ np.asarray(w) + np.asarray(b), -1), study.test_labels,
                                     num_classes)
  return out


def scratch_accuracy(workdir: str, target: Target, study: Study, batch_size: int = 64) -> dict[str, Any]:
  """A model trained from scratch on N images per class of the target, on the study's test images.

  The workdir's config must have drawn its training images as the study does (train_per_class = N,
  train_per_class_seed = the study's seed, the holdout of a one-split target) from the target's classes.

  Returns:
    {"images_per_class": N, "fold": its fold, "accuracy": mean per-class accuracy, "epoch", "workdir"}.
  """
  model = checkpoint.load_for_analysis(workdir)
  config = model.config
  per_class, seed = int(config.get("train_per_class", 0)), int(config.get("train_per_class_seed", 0))
  holdout = int(config.get("train_per_class_holdout", 0))
  want = study.num_test if study.one_split else 0
  if per_class < 1:
    raise ValueError(f"scratch={workdir!r} was trained on every image (train_per_class=0); allowed: a run with "
                     f"--config.train_per_class=N")
  if seed != study.seed or holdout != want:
    raise ValueError(f"scratch={workdir!r} drew its images with train_per_class_seed={seed}, holdout={holdout}; "
                     f"the study uses seed={study.seed}, holdout={want} (pass --seed or retrain)")
  if model.num_classes != len(study.class_names) or (model.class_names and model.class_names != study.class_names):
    raise ValueError(f"scratch={workdir!r} has {model.num_classes} classes, the target {study.target!r} "
                     f"{len(study.class_names)}; allowed: a run on the target's classes")
  inputs = features.dataset_inputs(target.test.source, study.test_index, model.arch,
                                   np.asarray(model.mean_image).shape[0], model.mean_image)
  logits = common.map_chunks(lambda x: models.forward(model.arch, model.params, jnp.asarray(x))[0], (inputs,),
                             batch_size)
  accuracy = per_class_accuracy(np.argmax(logits, -1), study.test_labels, len(study.class_names))
  return {"images_per_class": per_class, "fold": int(config.get("train_per_class_fold", 0)),
          "accuracy": float(accuracy), "epoch": model.epoch, "workdir": workdir}


def compute(study: Study, scratch: Sequence[dict[str, Any]] = (), layer: str = "fc7", l2: float = L2,
            steps: int = STEPS) -> dict[str, Any]:
  """Tables 4-5 / Fig. 9 from a prepared study.

  Args:
    study: from `prepare` (with `layer`'s features).
    scratch: `scratch_accuracy` results (any N, any folds).
    layer: the features the new softmax sees (fc7: layers 1-7 kept, section 5.2).
    l2, steps: see `fit_softmax`.

  Returns:
    {"shots": int [K], "accuracy": float [K, F] (pretrained, per fold), "scratch_shots": int [S],
    "scratch_accuracy": float [S] (one per scratch workdir, in the order given), "layer", "target",
    "num_classes", "num_test", "l2", "seed", "scratch_workdirs", "train_flags"}.
  """
  l2 = check_l2(l2)
  if layer not in study.train_features:
    raise ValueError(f"layer={layer!r} has no features in the study; allowed: {', '.join(study.train_features)}")
  return {"shots": np.array(study.shots), "accuracy": softmax_accuracy(study, layer, l2, steps),
          "scratch_shots": np.array([s["images_per_class"] for s in scratch], np.int64),
          "scratch_accuracy": np.array([s["accuracy"] for s in scratch], np.float64),
          "scratch_workdirs": [s["workdir"] for s in scratch], "layer": layer, "target": study.target,
          "num_classes": len(study.class_names), "num_test": len(study.test_labels), "l2": l2, "seed": study.seed,
          "train_flags": study.train_flags, "one_split": study.one_split, "test_per_class": study.num_test}


def _scratch_rows(result: dict[str, Any]) -> dict[int, list[float]]:
  rows: dict[int, list[float]] = {}
  for n, a in zip(result["scratch_shots"], result["scratch_accuracy"]):
    rows.setdefault(int(n), []).append(float(a))
  return rows


def summary(result: dict[str, Any]) -> dict[str, Any]:
  """Per N: pretrained mean +- std over folds (%), and the scratch runs'; the paper's Tables 4-5 beside them."""
  acc = 100 * np.asarray(result["accuracy"])
  scratch = _scratch_rows(result)
  holdout = f" --config.train_per_class_holdout={result['test_per_class']}" if result["one_split"] else ""
  return {
      "target": files.portable_path(result["target"]), "layer": result["layer"], "num_classes": result["num_classes"],
      "test_images": result["num_test"], "test_per_class": result["test_per_class"], "folds": acc.shape[1],
      "seed": result["seed"], "l2": result["l2"], "metric": "mean per-class accuracy (%), mean +- std over folds",
      "rows": [{"images_per_class": int(n), "pretrained_mean": float(a.mean()), "pretrained_std": float(a.std()),
                "pretrained_folds": a.tolist(),
                **({"scratch_mean": float(np.mean(100 * np.array(scratch[int(n)]))),
                    "scratch_std": float(np.std(100 * np.array(scratch[int(n)]))),
                    "scratch_runs": len(scratch[int(n)])} if int(n) in scratch else {})}
               for n, a in zip(result["shots"], acc)],
      "scratch_workdirs": [files.portable_path(w) for w in result["scratch_workdirs"]],
      "scratch_command": (f"python train.py --config=CONFIG --workdir=W {result['train_flags']} "
                          f"--config.train_per_class=N --config.train_per_class_fold=F "
                          f"--config.train_per_class_seed={result['seed']}{holdout}"),
      "paper": PAPER,
  }


def plot(result: dict[str, Any], path: str) -> None:
  """Fig. 9: mean per-class accuracy vs images per class, pretrained (mean +- std over folds) and from
  scratch, with the paper's Caltech-256 curves in grey."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  acc = 100 * np.asarray(result["accuracy"])
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  ax.errorbar(result["shots"], acc.mean(1), yerr=acc.std(1), marker="o", capsize=3,
              label=f"ours: {result['layer']} features + new softmax")
  scratch = _scratch_rows(result)
  if scratch:
    n = sorted(scratch)
    ax.errorbar(n, [100 * np.mean(scratch[k]) for k in n], yerr=[100 * np.std(scratch[k]) for k in n], marker="s",
                capsize=3, label="ours: trained from scratch")
  paper = PAPER["caltech256 (Table 5, Fig. 9)"]
  for name, style in (("pretrained", "--"), ("scratch", ":")):
    ax.plot(paper["images_per_class"], paper[name], style, color="0.5", marker=".", label=f"paper, Caltech-256: {name}")
  ax.set_xscale("log")
  ticks = sorted({*map(int, result["shots"]), *paper["images_per_class"], *scratch})
  ax.set_xticks(ticks, [str(n) for n in ticks])
  save_accuracy_figure(fig, ax, result, path, "training images per class",
                       f"Fig. 9: {{target}} ({result['num_classes']} classes, {acc.shape[1]} folds)", legend_size=7)


def save_accuracy_figure(fig: Any, ax: Any, result: dict[str, Any], path: str, xlabel: str, title: str,
                         legend_size: int) -> None:
  """The axes of Fig. 9 and Table 7's curves (mean per-class accuracy in %, 0-100), then the PNG at `path`;
  `title` may name {target}, the target's folder or TFDS name."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel("mean per-class accuracy (%)")
  ax.set_ylim(0, 102)
  ax.set_title(title.format(target=os.path.basename(os.path.normpath(result["target"]))), fontsize=9)
  ax.legend(fontsize=legend_size)
  ax.grid(alpha=0.3)
  files.save_figure(fig, path)


def study_for(source: Source, options: Mapping[str, Any], layers: Sequence[str] | None,
              shots: Sequence[int]) -> tuple[Target, Study]:
  """`options["target"]`'s folds and the features of every image they use (each image through the model once)."""
  if not options["target"]:
    raise NeedsDataset("transfer and probes need --target (a TFDS name, an ImageFolder directory or a directory "
                       "of tar shards such as ../shared/data/tiny-imagenet-transfer-50)")
  if source.image_files is not None:
    raise ValueError("transfer and probes read --target's images; drop --images")
  target = load_target(options["target"], options["data_dir"])
  model = source.model
  return target, prepare(model.arch, model.params, model.mean_image, source.image_size, target,
                         options["shots"] or shots, options["folds"], options["seed"], options["test_per_class"],
                         layers, options["batch_size"])


def model_entry(source: Source) -> dict[str, Any]:
  """Which model a study's numbers are of (its JSON's "model"): the source, arch, step, epoch and parameters'
  SHA-256 (`run_record.params_digest`), so that studies over several models can tell them apart."""
  model = source.model
  return {"source": files.portable_path(source.label), "arch": model.arch.name, "step": model.step,
          "epoch": model.epoch, "params_sha256": run_record.params_digest(model.params)}


def run(source: Source, options: Mapping[str, Any], out: str) -> common.Section:
  """`visualize.py transfer`: Tables 4-5 / Fig. 9 on `options["target"]`, written into `out`."""
  target, study = study_for(source, options, ["fc7"], SHOTS)
  scratch = [scratch_accuracy(w, target, study, options["batch_size"]) for w in options["scratch"] or ()]
  result = compute(study, scratch, l2=options["l2"])
  return common.write_section(
      {**summary(result), "model": model_entry(source)}, {"transfer.png": functools.partial(plot, result)}, out,
      "transfer",
      "Tables 4-5 / Fig. 9: transfer and few-shot learning",
      f"Layers 1-7 fixed, a new softmax on fc7 features for the {result['num_classes']} classes of "
      f"{options['target']}: mean per-class accuracy on up to {options['test_per_class']} test images per class vs "
      f"training images per class, mean +- std over {options['folds']} folds; models trained from scratch on the "
      "same images where given; the paper's Caltech-256 curves in grey.")
