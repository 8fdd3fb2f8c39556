"""Figures and numbers of the paper's analyses (section 4) from any checkpoint.

  python visualize.py SUBCOMMAND --workdir=DIR [--step=N] [--out=DIR] [options]
  python visualize.py SUBCOMMAND --params=FILE.npz [--out=DIR] [options]

SUBCOMMAND:
  topk            Fig. 2: top-9 activations of random maps of layers 1-5, projected, beside their patches
  evolution       Fig. 4: the strongest activation of chosen maps at every checkpoint (needs --workdir)
  invariance      Fig. 5: feature distances and p(true class) under translation, scale and rotation
  filters         Fig. 6: layer-1 filters, dead/dominant filters, frequency coverage (--compare=OTHER1,OTHER2)
  occlusion       Fig. 7: occlusion sensitivity of the top conv map and of the classifier
  correspondence  Table 1 / Fig. 8: consistency of feature changes when the same part is masked
  transfer        Tables 4-5 / Fig. 9: layers 1-7 fixed, a new softmax on fc7 for --target's classes, N images
                  per class (--shots) over --folds folds, beside models trained from scratch (--scratch=W15,W30)
  probes          Table 7: a linear SVM and a softmax on each layer's features of --target (--shots, default 30)
  all             every figure above, its numbers (JSON) and an index.html report linking them (transfer and
                  probes only with --target)
  ablation        Table 3 from several trained workdirs (--workdirs=BASE,W2,...): per variant its change from
                  BASE, parameters, epoch, train top-1 (center crop), val top-1/top-5 (10-crop), the paper's rows
  ensemble        Table 2: the 10-crop softmax averaged over several trained models (--workdirs=W1,W2,...)

ablation and ensemble read --workdirs (each one's latest checkpoint, or --epoch) and write to --out
(default W1/figures/ablation or W1/figures/ensemble) with their own index.html; their evaluations
are cached in each workdir (evaluations.json).

Images come from the checkpoint's dataset (--split, default validation; --dataset/--data_dir to
change it) or from files (--images=a.png,b.jpg: any size, grayscale or RGB). Figures and numbers
go to --out (default WORKDIR/figures), whole or not at all: on bad input the command prints one
line `visualize.py: error: ...`, exits 2 and leaves --out as it was.
"""
import dataclasses
import functools
import os
import shlex
import sys
from typing import Any, Callable

import numpy as np
from absl import app, flags, logging

from zf_jax import checkpoint, data, files, metrics, report
from zf_jax.analysis import probes, transfer  # section 5.2-5.3: transfer, few-shot, per-layer features
from zf_jax.analysis import ablation, correspondence, ensemble, evolution, filters, invariance, occlusion, topk
from zf_jax.data import model_inputs

COMMANDS = ("topk", "evolution", "invariance", "filters", "occlusion", "correspondence", "transfer", "probes")
STUDIES = ("transfer", "probes")  # part of `all` only with --target

WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint, or --step).")
PARAMS = flags.DEFINE_string("params", None, "Instead of --workdir: a .npz from checkpoint.save_params_npz.")
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/figures, or beside --params).")
DATASET = flags.DEFINE_string("dataset", None, "Dataset name or ImageFolder path (default: the checkpoint's).")
SPLIT = flags.DEFINE_string("split", "validation", "The split to scan and take examples from.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the checkpoint's).")
IMAGES = flags.DEFINE_list("images", None, "Image files to use instead of the dataset (PNG/JPEG, any size).")
NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "topk/evolution: the first N images of the split scanned "
                                   "(0 = the whole split; topk streams it in --batch_size batches).")
NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 5, "invariance/occlusion: the first N images of the split (0 = all; "
                                     "invariance plots mean and 25-75 percentile band beyond 8 images).")
LAYERS = flags.DEFINE_list("layers", None, "topk/evolution: layers (default: conv1..conv5); probes: feature layers "
                           "(default: conv1..conv5, fc6, fc7).")
MAPS = flags.DEFINE_list("maps", None, "topk/evolution: map indices (default: --num_maps at random).")
NUM_MAPS = flags.DEFINE_integer("num_maps", 16, "topk: random maps per layer (evolution: a quarter); 0 = all.")
K = flags.DEFINE_integer("k", 9, "topk: activations per map.")
STEPS = flags.DEFINE_list("steps", None, "evolution: checkpoint steps (default: all).")
COMPARE = flags.DEFINE_list("compare", None, "filters: more workdirs or .npz files (comma-separated) shown side "
                            "by side, each labelled with its val top-1 from its metrics.jsonl.")
BOXES = flags.DEFINE_string("boxes", None, "occlusion: a Tiny ImageNet copy with boxes.csv for the localization score "
                            "(default: the checkpoint's manual_dir when its dataset is tiny_imagenet).")
NUM_LOCALIZATION = flags.DEFINE_integer("num_localization", 200, "occlusion: images of the split in the localization "
                                        "score (0 = none).")
PARTS = flags.DEFINE_string("parts", None, "correspondence: a parts file (default: the skimage demo; 'tiny' = the "
                             "committed Tiny ImageNet faces, zf_jax/analysis/parts_tiny_imagenet.json).")
PARTS_ROOT = flags.DEFINE_string("parts_root", None, "correspondence: the Tiny ImageNet copy (val.tar) that tiny: "
                                 "images of --parts are read from (default: the checkpoint's manual_dir).")
RULE = flags.DEFINE_enum("rule", "deconvnet", ["deconvnet", "guided", "saliency"], "How projections reverse ReLUs.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per jitted call.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for the random choice of maps (transfer/probes: of the folds).")
WORKDIRS = flags.DEFINE_list("workdirs", None, "ablation/ensemble: training workdirs (ablation: the first is the base).")
EPOCH = flags.DEFINE_float("epoch", None, "ablation/ensemble: each workdir's checkpoint at this epoch (default: latest).")
TRAIN_IMAGES = flags.DEFINE_integer("train_images", None, "ablation: the train error over this many training images "
                                    "evenly spaced through the split (default: all).")
TARGET = flags.DEFINE_string("target", None, "transfer/probes: the target dataset: a directory of Tiny ImageNet "
                             "tar shards (../shared/data/tiny-imagenet-transfer-50), an ImageFolder directory or a "
                             "TFDS name.")
SHOTS = flags.DEFINE_list("shots", None, "transfer/probes: training images per class (default: transfer "
                          "1,2,3,5,10,15,30,60; probes 30). --seed draws the folds.")
FOLDS = flags.DEFINE_integer("folds", 5, "transfer/probes: random draws of the training images per N.")
TEST_PER_CLASS = flags.DEFINE_integer("test_per_class", 50, "transfer/probes: up to this many test images per class.")
SCRATCH = flags.DEFINE_list("scratch", None, "transfer: workdirs of the same arch trained from scratch on N images "
                            "per class of --target (train.py --config.train_per_class=N ...), evaluated on the test "
                            "images.")
L2 = flags.DEFINE_float("l2", 1e-3, "transfer/probes: L2 penalty of the new softmax.")


@dataclasses.dataclass
class Run:
  """The checkpoint and the data of one visualize.py command, each loaded on first use."""
  path: str
  step: int | None

  @functools.cached_property
  def model(self) -> Any:
    return checkpoint.load_for_analysis(self.path, self.step)

  @functools.cached_property
  def image_size(self) -> int:
    mean = np.asarray(self.model.mean_image)
    return mean.shape[0] if mean.ndim == 3 else data.image_size_for(self.model.arch)

  @functools.cached_property
  def dataset(self) -> Any:
    config = self.model.config
    name = DATASET.value or config.get("dataset")
    if not name:
      raise ValueError("the checkpoint names no dataset; pass --dataset (or --images)")
    manual_dir = config.get("manual_dir") if name == config.get("dataset") else None  # the copy it was trained on
    return data.get_dataset(name, SPLIT.value, data_dir=DATA_DIR.value or config.get("data_dir"), manual_dir=manual_dir)

  @functools.cached_property
  def photos(self) -> list[np.ndarray] | None:
    return None if not IMAGES.value else [model_inputs.read_image(path) for path in IMAGES.value]

  def scan_inputs(self) -> Any:
    """Model inputs to scan: the --images, or the first --num_images of the split (decoded on demand)."""
    arch, mean = self.model.arch, self.model.mean_image
    if self.photos is not None:
      return model_inputs.prepare_images(self.photos, arch.input_size, self.image_size, mean)
    return model_inputs.DatasetInputs(self.dataset.source, arch.input_size, self.image_size, mean, NUM_IMAGES.value or None)

  def scan_labels(self) -> np.ndarray | None:
    """int32 labels of `scan_inputs` (None for --images)."""
    if self.photos is not None:
      return None
    labels = data.few_shot.labels_of(self.dataset.source)
    return labels[:NUM_IMAGES.value] if NUM_IMAGES.value else labels

  def examples(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 [n, R, R, 3] images at the run's image size R and their labels (None for --images); n = 0:
    the whole split."""
    if self.photos is not None:
      return np.stack([data.preprocess.resize_and_center_crop(p, self.image_size) for p in self.photos]), None
    if n < 0:
      raise ValueError(f"num_images={n} must be >= 0 (0 = the whole split)")
    count = len(self.dataset.source) if n == 0 else min(n, len(self.dataset.source))
    return data.load_batch(self.dataset.source, range(count), self.image_size)

  def example_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [n, S, S, 3] mean-subtracted center crops and their labels (None for --images)."""
    images, labels = self.examples(n)
    return model_inputs.eval_inputs(images, self.model.arch.input_size, self.model.mean_image), labels


def _ints(name: str, values: list[str] | None) -> list[int] | None:
  try:
    return None if values is None else [int(v) for v in values]
  except ValueError:
    raise ValueError(f"{name}={','.join(values)} is not allowed; allowed: comma-separated integers") from None


def _write(module: Any, result: dict, out: str, name: str, title: str, caption: str,
           figures: dict[str, Callable[[str], None]] | None = None) -> report.Section:
  """Draws the figures and writes module.summary(result) as NAME.json into `out`."""
  figures = figures or {f"{name}.png": functools.partial(module.plot, result)}
  for file_name, draw in figures.items():
    draw(os.path.join(out, file_name))
  files.save_json(module.summary(result), os.path.join(out, f"{name}.json"))
  return report.Section(name, title, tuple(figures), f"{name}.json", caption)


def run_topk(run: Run, out: str) -> report.Section:
  result = topk.compute(run.model.arch, run.model.params, run.scan_inputs(), LAYERS.value, _ints("maps", MAPS.value),
                        NUM_MAPS.value or None, K.value, BATCH_SIZE.value, mean_image=run.model.mean_image,
                        rule=RULE.value, seed=SEED.value, progress=True, labels=run.scan_labels())
  figures = {f"topk_{layer}.png": functools.partial(topk.plot, result, layer=str(layer)) for layer in result["layers"]}
  return _write(topk, result, out, "topk", "Fig. 2: top activations, projected, beside their image patches",
                f"Per layer, feature maps chosen at random; per map the top {K.value} activations over "
                f"{int(result['num_images'])} images, each projected alone to pixels by the deconvnet (left) and "
                "the image patch of its receptive field (right).", figures)


def run_evolution(run: Run, out: str) -> report.Section:
  if run.path.endswith(".npz"):
    raise ValueError("evolution reads the checkpoints of a workdir; pass --workdir instead of --params")
  examples, _ = run.examples(NUM_IMAGES.value)
  result = evolution.compute(evolution.checkpoints(run.path, _ints("steps", STEPS.value)), examples, LAYERS.value,
                             _ints("maps", MAPS.value), max(1, NUM_MAPS.value // 4) if NUM_MAPS.value else None,
                             BATCH_SIZE.value, RULE.value, SEED.value, progress=True)
  return _write(evolution, result, out, "evolution", "Fig. 4: evolution of features through training",
                "Rows: feature maps; columns: checkpoints (epochs). Each cell is the strongest activation of the map "
                f"over {len(examples)} fixed images at that checkpoint, projected to pixels (contrast enhanced). "
                "Second figure: per layer, the share of all its live maps whose top image no longer changes after "
                "each epoch (evolution.json: convergence).",
                {"evolution.png": functools.partial(evolution.plot, result),
                 "evolution_convergence.png": functools.partial(evolution.plot_convergence, result)})


def run_invariance(run: Run, out: str) -> report.Section:
  images, labels = run.example_inputs(NUM_EXAMPLES.value)
  result = invariance.compute(run.model.arch, run.model.params, images, labels, mean_image=run.model.mean_image,
                              batch_size=BATCH_SIZE.value)
  return _write(invariance, result, out, "invariance", "Fig. 5: invariance to translation, scale and rotation",
                "Per transform: the images, the relative distance of low- and high-layer features to those of the "
                "untransformed image, and p(true class).")


def run_filters(run: Run, out: str) -> report.Section:
  models = [(run.path, run.model)] + [(path, checkpoint.load_for_analysis(path)) for path in COMPARE.value or ()]
  accuracy = [_logged_val_top1(path, m.step) for path, m in models]
  labels = [f"{os.path.basename(os.path.normpath(path))} ({m.arch.name}, epoch {m.epoch:g}"
            f"{'' if top1 is None else f', val top-1 {top1:.3f}'})" for (path, m), top1 in zip(models, accuracy)]
  if len(set(labels)) < len(labels):
    labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
  results = {label: filters.compute(m.params) for label, (_, m) in zip(labels, models)}
  filters.plot(results, os.path.join(out, "filters.png"))
  files.save_json({label: {"path": path, "arch": m.arch.name, "epoch": m.epoch, "val_top1": top1,
                            **filters.summary(results[label])}
                    for label, (path, m), top1 in zip(labels, models, accuracy)}, os.path.join(out, "filters.json"))
  return report.Section("filters", "Fig. 6: layer-1 filters", ("filters.png",), "filters.json",
                        "Layer-1 filters on one common scale (grey = 0), their sorted RMS with the dead threshold "
                        f"(RMS < {filters.DEAD_FRACTION:g} x median), and the radial power spectrum (low/mid/high "
                        "bands of the Nyquist frequency) of the live filters.")


def _logged_val_top1(path: str, step: int) -> float | None:
  """The val top-1 that training logged (metrics.jsonl) last at or before `step`; None for a .npz or none logged."""
  if path.endswith(".npz"):
    return None
  top1 = metrics.validation_at(path, step).get("val_top1")
  return None if top1 is None else float(top1)


def run_occlusion(run: Run, out: str) -> report.Section:
  images, labels = run.example_inputs(NUM_EXAMPLES.value)
  result = occlusion.compute(run.model.arch, run.model.params, images, labels, run.model.class_names,
                             mean_image=run.model.mean_image, batch_size=BATCH_SIZE.value)
  section = _write(occlusion, result, out, "occlusion", "Fig. 7: occlusion sensitivity",
                   "A grey square slid over each image: (b) total activity of the strongest top-conv map, "
                   "(c) its projection, (d) p(correct class), (e) the most probable class.")
  boxes_dir = BOXES.value or (run.model.config.get("manual_dir") if run.model.config.get("dataset") == "tiny_imagenet"
                              else None)
  if not boxes_dir or not NUM_LOCALIZATION.value or run.photos is not None:
    return section
  score = _localization(run, boxes_dir)
  files.save_json(score, os.path.join(out, "localization.json"))
  return dataclasses.replace(section, caption=section.caption + (
      f" Localization over {score['num_images']} labelled images: of the {score['num_correct']} classified "
      f"correctly, a share of {score['score']:.3f} have their p(correct) minimum inside the object box "
      f"(chance, a random occluder position: {score['chance']:.3f}); occluding the support of the strongest "
      f"{score['layer']} map's projection leaves that map on average {score['support']['mean_ratio_on_off'] or 0:.3f} "
      "of its activity with the occluder elsewhere (localization.json)."))


def _localization(run: Run, boxes_dir: str) -> dict[str, Any]:
  """Over the first --num_localization images of the split with boxes: the localization score, its
  chance baseline and the activity of the strongest top-conv map with the occluder on vs off the
  support of its projection (section 4.2), from one set of occlusion maps."""
  source, arch = run.dataset.source, run.model.arch
  indices = range(min(NUM_LOCALIZATION.value, len(source)))
  split = "train" if SPLIT.value.startswith("train") else "validation"
  table = data.boxes(boxes_dir, split)
  names = [source[i]["file_name"] for i in indices]
  corners = [table[n.decode() if isinstance(n, bytes) else n] for n in names]
  images, labels = data.load_batch(source, indices, run.image_size)
  inputs = model_inputs.eval_inputs(images, arch.input_size, run.model.mean_image)
  boxes = occlusion.boxes_from_corners(corners, run.image_size, arch.input_size)
  maps = occlusion.occlusion_maps(arch, run.model.params, inputs, labels, batch_size=BATCH_SIZE.value)
  score = occlusion.localization_score(maps, boxes)
  chance = occlusion.chance_localization(boxes, score["correct"], maps["corners"], int(maps["size"]))
  support = occlusion.support_effect(arch, run.model.params, inputs, maps, batch_size=BATCH_SIZE.value)
  return {"score": score["score"], "chance": chance["chance"], "num_correct": score["num_correct"],
          "num_images": score["num_images"], "boxes": boxes_dir, "split": split, "layer": str(maps["layer"]),
          "support": {k: v for k, v in support.items() if k not in ("on", "off", "masks")}}


def run_correspondence(run: Run, out: str) -> report.Section:
  arch = run.model.arch
  parts_file = {None: correspondence.PARTS_DEMO, "tiny": correspondence.PARTS_TINY}.get(PARTS.value, PARTS.value)
  images, parts, _ = correspondence.load(parts_file, arch.input_size, run.image_size, run.model.mean_image,
                                         PARTS_ROOT.value or run.model.config.get("manual_dir"))
  result = correspondence.compute(arch, run.model.params, images, parts, seed=SEED.value,
                                  mean_image=run.model.mean_image, batch_size=BATCH_SIZE.value)
  return _write(correspondence, result, out, "correspondence", "Table 1 / Fig. 8: correspondence analysis",
                "The same part masked in each image; mean +- std normalised Hamming distance between the signs of "
                "the feature changes over image pairs (lower = tighter correspondence), against random boxes.")


def _study(run: Run, layers: list[str] | None, shots: tuple[int, ...]) -> tuple[transfer.Target, transfer.Study]:
  """--target's folds and the features of every image they use (each image through the model once)."""
  if not TARGET.value:
    raise ValueError("transfer and probes need --target (a TFDS name, an ImageFolder directory or a directory of "
                     "tar shards such as ../shared/data/tiny-imagenet-transfer-50)")
  if run.photos is not None:
    raise ValueError("transfer and probes read --target's images; drop --images")
  target = transfer.load_target(TARGET.value, DATA_DIR.value)
  m = run.model
  return target, transfer.prepare(m.arch, m.params, m.mean_image, run.image_size, target,
                                  _ints("shots", SHOTS.value) or shots, FOLDS.value, SEED.value,
                                  TEST_PER_CLASS.value, layers, BATCH_SIZE.value)


def run_transfer(run: Run, out: str) -> report.Section:
  target, study = _study(run, ["fc7"], transfer.SHOTS)
  scratch = [transfer.scratch_accuracy(w, target, study, BATCH_SIZE.value) for w in SCRATCH.value or ()]
  result = transfer.compute(study, scratch, l2=L2.value)
  return _write(transfer, result, out, "transfer", "Tables 4-5 / Fig. 9: transfer and few-shot learning",
                f"Layers 1-7 fixed, a new softmax on fc7 features for the {result['num_classes']} classes of "
                f"{TARGET.value}: mean per-class accuracy on up to {TEST_PER_CLASS.value} test images per class vs "
                f"training images per class, mean +- std over {FOLDS.value} folds; models trained from scratch on "
                "the same images where given; the paper's Caltech-256 curves in grey.")


def run_probes(run: Run, out: str) -> report.Section:
  _, study = _study(run, LAYERS.value, probes.SHOTS)
  result = probes.compute(study, l2=L2.value)
  return _write(probes, result, out, "probes", "Table 7: per-layer features",
                f"A linear SVM (scikit-learn LinearSVC) and a softmax (optax) on each layer's features of "
                f"{TARGET.value} (conv layers after their pooling and normalization, flattened): mean per-class "
                f"accuracy, mean +- std over {FOLDS.value} folds; the paper's Table 7 in grey.")


RUNNERS = {"topk": run_topk, "evolution": run_evolution, "invariance": run_invariance, "filters": run_filters,
           "occlusion": run_occlusion, "correspondence": run_correspondence, "transfer": run_transfer,
           "probes": run_probes}


def run_ablation(workdirs: list[str], out: str) -> report.Section:
  result = ablation.compute(workdirs, EPOCH.value, TRAIN_IMAGES.value, BATCH_SIZE.value, DATA_DIR.value)
  return _write(ablation, result, out, "ablation", "Table 3: ablations",
                "Per trained variant: its change from the first (base) row, parameters, the epoch of the checkpoint, "
                "train top-1 error (center crops of the training images, no augmentation), val top-1/top-5 error "
                "(10 crops), the run's own logged val error (its eval crops), and the paper's row (ImageNet, %).")


def run_ensemble(workdirs: list[str], out: str) -> report.Section:
  result = ensemble.compute(workdirs, EPOCH.value, batch_size=BATCH_SIZE.value, data_dir=DATA_DIR.value)
  return _write(ensemble, result, out, "ensemble", "Table 2: ensemble",
                f"The 10-crop softmax averaged over {len(workdirs)} models: each member's val error and that of the "
                "ensemble of the first k members, beside the paper's 1, 5 and 6 convnets (ImageNet, %).")


MULTI_RUNNERS = {"ablation": run_ablation, "ensemble": run_ensemble}


def _run_multi(command: str) -> list[str]:
  """ablation/ensemble: several workdirs in, one folder of figures, numbers and index.html out."""
  if not WORKDIRS.value or WORKDIRS.value == [""]:
    raise ValueError(f"{command} needs --workdirs=W1,W2,... (training workdirs)")
  if WORKDIR.value or PARAMS.value:
    raise ValueError(f"{command} reads --workdirs=W1,W2,...; drop --workdir/--params")
  out = OUT.value or os.path.join(_default_out(WORKDIRS.value[0]), command)
  with files.staged(out) as stage:
    section = MULTI_RUNNERS[command](WORKDIRS.value, stage)
    report.write_index(stage, [section], f"zf_jax {command}: {len(WORKDIRS.value)} workdirs",
                       f"python {' '.join(shlex.quote(a) for a in sys.argv)}")
    written = sorted(os.listdir(stage))
  return [os.path.join(out, name) for name in written]


def _checkpoint_path() -> str:
  if bool(WORKDIR.value) == bool(PARAMS.value):
    raise ValueError("give exactly one of --workdir (a training workdir) or --params (a .npz file)")
  if PARAMS.value and STEP.value is not None:
    raise ValueError("--step selects a checkpoint of --workdir; --params is one file")
  return WORKDIR.value or PARAMS.value


def _default_out(path: str) -> str:
  return os.path.join(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)), "figures")


def run_command(command: str) -> list[str]:
  """Runs one subcommand (or all) and returns the files written to --out."""
  if command in MULTI_RUNNERS:
    return _run_multi(command)
  if command not in (*COMMANDS, "all"):
    raise ValueError(f"subcommand {command!r} is unknown; allowed: {', '.join((*COMMANDS, 'all', *MULTI_RUNNERS))}")
  path = _checkpoint_path()
  out = OUT.value or _default_out(path)
  run = Run(path, STEP.value)
  names = COMMANDS if command == "all" else (command,)
  if command == "all" and path.endswith(".npz"):
    names = tuple(n for n in names if n != "evolution")
  if command == "all" and not TARGET.value:
    names = tuple(n for n in names if n not in STUDIES)
  with files.staged(out) as stage:
    sections = [RUNNERS[name](run, stage) for name in names]
    if command == "all":
      m = run.model
      report.write_index(stage, sections, f"zf_jax analyses: {m.arch.name}, step {m.step} (epoch {m.epoch:g})",
                         f"{path} | python {' '.join(shlex.quote(a) for a in sys.argv)}")
    written = sorted(os.listdir(stage))
  return [os.path.join(out, name) for name in written]


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    print(f"visualize.py: error: give one subcommand ({', '.join((*COMMANDS, 'all', *MULTI_RUNNERS))}); "
          f"got {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    files = run_command(argv[1])
  except (ValueError, OSError) as e:
    print(f"visualize.py: error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(files))


if __name__ == "__main__":
  app.run(main)
