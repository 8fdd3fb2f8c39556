"""Figures and numbers of the paper's analyses (section 4) from any checkpoint.

  python visualize.py SUBCOMMAND --workdir=DIR [--step=N] [--out=DIR] [options]
  python visualize.py SUBCOMMAND --params=FILE.npz [--out=DIR] [options]

SUBCOMMAND:
  topk            Fig. 2: top-9 activations of random maps of layers 1-5, projected, beside their patches
  evolution       Fig. 4: the strongest activation of chosen maps at every checkpoint (needs --workdir)
  invariance      Fig. 5: feature distances and p(true class) under translation, scale and rotation
  filters         Fig. 6: layer-1 filters, dead/dominant filters, frequency coverage (--compare=OTHER)
  occlusion       Fig. 7: occlusion sensitivity of the top conv map and of the classifier
  correspondence  Table 1 / Fig. 8: consistency of feature changes when the same part is masked
  all             every figure above, its numbers (JSON) and an index.html report linking them

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

from zf_jax import checkpoint, data, report
from zf_jax.analysis import common, correspondence, evolution, filters, invariance, occlusion, topk

COMMANDS = ("topk", "evolution", "invariance", "filters", "occlusion", "correspondence")

WORKDIR = flags.DEFINE_string("workdir", None, "A training workdir (its latest checkpoint, or --step).")
PARAMS = flags.DEFINE_string("params", None, "Instead of --workdir: a .npz from checkpoint.save_params_npz.")
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/figures, or beside --params).")
DATASET = flags.DEFINE_string("dataset", None, "Dataset name or ImageFolder path (default: the checkpoint's).")
SPLIT = flags.DEFINE_string("split", "validation", "The split to scan and take examples from.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the checkpoint's).")
IMAGES = flags.DEFINE_list("images", None, "Image files to use instead of the dataset (PNG/JPEG, any size).")
NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "topk/evolution: images of the split scanned.")
NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 5, "invariance/occlusion: the first N images of the split.")
LAYERS = flags.DEFINE_list("layers", None, "topk/evolution: layers (default: conv1..conv5).")
MAPS = flags.DEFINE_list("maps", None, "topk/evolution: map indices (default: --num_maps at random).")
NUM_MAPS = flags.DEFINE_integer("num_maps", 16, "topk: random maps per layer (evolution: a quarter); 0 = all.")
K = flags.DEFINE_integer("k", 9, "topk: activations per map.")
STEPS = flags.DEFINE_list("steps", None, "evolution: checkpoint steps (default: all).")
COMPARE = flags.DEFINE_string("compare", None, "filters: a second workdir or .npz shown side by side.")
BOXES = flags.DEFINE_string("boxes", None, "occlusion: a Tiny ImageNet copy with boxes.csv for the localization score "
                            "(default: the checkpoint's manual_dir when its dataset is tiny_imagenet).")
NUM_LOCALIZATION = flags.DEFINE_integer("num_localization", 200, "occlusion: images of the split in the localization "
                                        "score (0 = none).")
PARTS = flags.DEFINE_string("parts", None, "correspondence: a parts file (default: the skimage demo).")
RULE = flags.DEFINE_enum("rule", "deconvnet", ["deconvnet", "guided", "saliency"], "How projections reverse ReLUs.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per jitted call.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for the random choice of maps.")


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
    return data.get_dataset(name, SPLIT.value, data_dir=DATA_DIR.value or config.get("data_dir"))

  @functools.cached_property
  def photos(self) -> list[np.ndarray] | None:
    return None if not IMAGES.value else [common.read_image(path) for path in IMAGES.value]

  def scan_inputs(self) -> Any:
    """Model inputs to scan: the --images, or the first --num_images of the split (decoded on demand)."""
    arch, mean = self.model.arch, self.model.mean_image
    if self.photos is not None:
      return common.prepare_images(self.photos, arch.input_size, self.image_size, mean)
    return common.DatasetInputs(self.dataset.source, arch.input_size, self.image_size, mean, NUM_IMAGES.value)

  def examples(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 [n, R, R, 3] images at the run's image size R and their labels (None for --images)."""
    if self.photos is not None:
      return np.stack([data.preprocess.resize_and_center_crop(p, self.image_size) for p in self.photos]), None
    if n < 1:
      raise ValueError(f"num_images={n} must be >= 1")
    return data.load_batch(self.dataset.source, range(min(n, len(self.dataset.source))), self.image_size)

  def example_inputs(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [n, S, S, 3] mean-subtracted center crops and their labels (None for --images)."""
    images, labels = self.examples(n)
    size = self.model.arch.input_size
    return data.preprocess.subtract_mean(data.preprocess.center_crop(images, size),
                                         common.mean_for_input(self.model.mean_image, size)), labels


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
  common.save_json(module.summary(result), os.path.join(out, f"{name}.json"))
  return report.Section(name, title, tuple(figures), f"{name}.json", caption)


def run_topk(run: Run, out: str) -> report.Section:
  result = topk.compute(run.model.arch, run.model.params, run.scan_inputs(), LAYERS.value, _ints("maps", MAPS.value),
                        NUM_MAPS.value or None, K.value, BATCH_SIZE.value, mean_image=run.model.mean_image,
                        rule=RULE.value, seed=SEED.value, progress=True)
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
                f"over {len(examples)} fixed images at that checkpoint, projected to pixels (contrast enhanced).")


def run_invariance(run: Run, out: str) -> report.Section:
  images, labels = run.example_inputs(NUM_EXAMPLES.value)
  result = invariance.compute(run.model.arch, run.model.params, images, labels, mean_image=run.model.mean_image,
                              batch_size=BATCH_SIZE.value)
  return _write(invariance, result, out, "invariance", "Fig. 5: invariance to translation, scale and rotation",
                "Per transform: the images, the relative distance of low- and high-layer features to those of the "
                "untransformed image, and p(true class).")


def run_filters(run: Run, out: str) -> report.Section:
  models = [(run.path, run.model)]
  if COMPARE.value:
    models.append((COMPARE.value, checkpoint.load_for_analysis(COMPARE.value)))
  labels = [f"{os.path.basename(os.path.normpath(path))} ({m.arch.name}, epoch {m.epoch:g})" for path, m in models]
  if len(set(labels)) < len(labels):
    labels = [f"{i + 1}: {label}" for i, label in enumerate(labels)]
  results = {label: filters.compute(m.params) for label, (_, m) in zip(labels, models)}
  filters.plot(results, os.path.join(out, "filters.png"))
  common.save_json({label: filters.summary(r) for label, r in results.items()}, os.path.join(out, "filters.json"))
  return report.Section("filters", "Fig. 6: layer-1 filters", ("filters.png",), "filters.json",
                        "Layer-1 filters on one common scale (grey = 0), their sorted RMS with the dead threshold "
                        f"(RMS < {filters.DEAD_FRACTION:g} x median), and the radial power spectrum (low/mid/high "
                        "bands of the Nyquist frequency) of the live filters.")


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
  common.save_json(score, os.path.join(out, "localization.json"))
  return dataclasses.replace(section, caption=section.caption + (
      f" Localization over {score['num_images']} labelled images: of the {score['num_correct']} classified "
      f"correctly, a share of {score['score']:.3f} have their p(correct) minimum inside the object box "
      "(localization.json)."))


def _localization(run: Run, boxes_dir: str) -> dict[str, Any]:
  """occlusion.localization over the first --num_localization images of the split with boxes."""
  source, arch = run.dataset.source, run.model.arch
  indices = range(min(NUM_LOCALIZATION.value, len(source)))
  split = "train" if SPLIT.value.startswith("train") else "validation"
  table = data.boxes(boxes_dir, split)
  names = [source[i]["file_name"] for i in indices]
  corners = [table[n.decode() if isinstance(n, bytes) else n] for n in names]
  images, labels = data.load_batch(source, indices, run.image_size)
  inputs = data.preprocess.subtract_mean(data.preprocess.center_crop(images, arch.input_size),
                                         common.mean_for_input(run.model.mean_image, arch.input_size))
  score = occlusion.localization(arch, run.model.params, inputs, labels,
                                 occlusion.boxes_from_corners(corners, run.image_size, arch.input_size),
                                 batch_size=BATCH_SIZE.value)
  return {"score": score["score"], "num_correct": score["num_correct"], "num_images": score["num_images"],
          "boxes": boxes_dir, "split": split}


def run_correspondence(run: Run, out: str) -> report.Section:
  arch = run.model.arch
  images, parts, _ = correspondence.load(PARTS.value or correspondence.PARTS_DEMO, arch.input_size, run.image_size,
                                         run.model.mean_image)
  result = correspondence.compute(arch, run.model.params, images, parts, seed=SEED.value,
                                  mean_image=run.model.mean_image, batch_size=BATCH_SIZE.value)
  return _write(correspondence, result, out, "correspondence", "Table 1 / Fig. 8: correspondence analysis",
                "The same part masked in each image; mean +- std normalised Hamming distance between the signs of "
                "the feature changes over image pairs (lower = tighter correspondence), against random boxes.")


RUNNERS = {"topk": run_topk, "evolution": run_evolution, "invariance": run_invariance, "filters": run_filters,
           "occlusion": run_occlusion, "correspondence": run_correspondence}


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
  if command not in (*COMMANDS, "all"):
    raise ValueError(f"subcommand {command!r} is unknown; allowed: {', '.join(COMMANDS)}, all")
  path = _checkpoint_path()
  out = OUT.value or _default_out(path)
  run = Run(path, STEP.value)
  names = COMMANDS if command == "all" else (command,)
  if command == "all" and path.endswith(".npz"):
    names = tuple(n for n in names if n != "evolution")
  with report.staged(out) as stage:
    sections = [RUNNERS[name](run, stage) for name in names]
    if command == "all":
      m = run.model
      report.write_index(stage, sections, f"zf_jax analyses: {m.arch.name}, step {m.step} (epoch {m.epoch:g})",
                         f"{path} | python {' '.join(shlex.quote(a) for a in sys.argv)}")
    written = sorted(os.listdir(stage))
  return [os.path.join(out, name) for name in written]


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    print(f"visualize.py: error: give one subcommand ({', '.join(COMMANDS)}, all); got {argv[1:]}", file=sys.stderr)
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
