"""Figures and numbers of the paper's analyses (sections 4-5) from a shipped model or any checkpoint.

  python visualize.py SUBCOMMAND [--model=NAME | --workdir=DIR [--step=N] | --params=FILE.npz] [--out=DIR] [options]

With no --model, --workdir or --params it uses the shipped zfnet64-tiny-imagenet-100 (zf_jax.pretrained).

SUBCOMMAND:
  topk            Fig. 2: top-9 activations of random maps of layers 1-5, projected, beside their patches
  evolution       Fig. 4: the strongest activation of chosen maps at every checkpoint (needs --workdir)
  invariance      Fig. 5: feature distances and p(true class) under translation, scale and rotation
  filters         Fig. 6: layer-1 filters, dead/dominant filters, frequency coverage (--compare=OTHER1,OTHER2)
  occlusion       Fig. 7: occlusion sensitivity of the top conv map and of the classifier
  localization    Fig. 7 as numbers: p(correct) minimum inside the object box, and the support effect (needs boxes)
  correspondence  Table 1 / Fig. 8: consistency of feature changes when the same part is masked
  transfer        Tables 4-5 / Fig. 9: layers 1-7 fixed, a new softmax on fc7 for --target's classes, N images
                  per class (--shots) over --folds folds, beside models trained from scratch (--scratch=W15,W30)
  probes          Table 7: a linear SVM and a softmax on each layer's features of --target (--shots, default 30)
  all             every figure above that its inputs allow, its numbers (JSON) and an index.html report
  ablation        Table 3 from several trained workdirs (--workdirs=BASE,W2,...): per variant its change from
                  BASE, parameters, epoch, train top-1 (center crop), val top-1/top-5 (10-crop), the paper's rows
  ensemble        Table 2: the 10-crop softmax averaged over several trained models (--workdirs=W1,W2,...)
                  (ablation, ensemble: a run record folder of `python -m zf_jax.run_record` stands for its workdir)
  transfer-seeds  Tables 4-5 / Fig. 9 and Table 7 over several pretrained models: --results=F1,F2,... are the
                  --out folders of `transfer` and `probes` runs, one per model (mean, std and range over models)
  serve           the live explorer: a local page to show the model any image and click any unit (--data adds
                  a dataset's images and their top-9 scan; --export=DIR writes the views as static pages)

Images come from --images (files, any size, grayscale or RGB), else --dataset's --split, else the
model's own dataset when it is on this machine, else scikit-image's bundled sample photos. An
analysis that needs a labelled dataset it cannot find says which flag brings one; `all` skips it
and runs the rest. Figures and numbers go to --out, whole or not at all: on bad input the command
prints one line `visualize.py: error: ...`, exits 2 and leaves --out as it was.
"""
import os
import shlex
import sys
from typing import Any

from absl import app, flags, logging

from zf_jax import analysis, explore, files, pretrained, report
from zf_jax.analysis.source import NeedsDataset, Source
from zf_jax.explore import export as explore_export

MODEL = flags.DEFINE_string("model", None, "A shipped trained model (default, with no --workdir/--params: "
                            f"{pretrained.DEFAULT}); one of: {', '.join(pretrained.available())}.")
WORKDIR = flags.DEFINE_string("workdir", None, "Instead of --model: a training workdir (its latest checkpoint, or "
                              "--step).")
PARAMS = flags.DEFINE_string("params", None, "Instead of --model: a .npz from checkpoint.save_params_npz.")
STEP = flags.DEFINE_integer("step", None, "The checkpoint's step (default: the latest).")
OUT = flags.DEFINE_string("out", None, "Output folder (default: WORKDIR/figures, beside --params, or figures/MODEL).")
DATASET = flags.DEFINE_string("dataset", None, "Dataset name or ImageFolder path (default: the checkpoint's).")
SPLIT = flags.DEFINE_string("split", "validation", "The split to scan and take examples from.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the checkpoint's).")
IMAGES = flags.DEFINE_list("images", None, "Image files to use instead of the dataset (PNG/JPEG, any size).")
NUM_IMAGES = flags.DEFINE_integer("num_images", 500, "topk/evolution: the first N images of the split scanned "
                                   "(0 = the whole split; topk streams it in --batch_size batches).")
NUM_EXAMPLES = flags.DEFINE_integer("num_examples", 5, "invariance/occlusion: the first N images of the split (0 = "
                                    "all; "
                                     "invariance plots mean and 25-75 percentile band beyond 8 images).")
LAYERS = flags.DEFINE_list("layers", None, "topk/evolution: layers (default: conv1..conv5); probes: feature layers "
                           "(default: conv1..conv5, fc6, fc7).")
MAPS = flags.DEFINE_list("maps", None, "topk/evolution: map indices (default: --num_maps at random).")
NUM_MAPS = flags.DEFINE_integer("num_maps", 16, "topk: random maps per layer (evolution: a quarter); 0 = all.")
K = flags.DEFINE_integer("k", 9, "topk: activations per map.")
STEPS = flags.DEFINE_list("steps", None, "evolution: checkpoint steps (default: all).")
COMPARE = flags.DEFINE_list("compare", None, "filters: more workdirs or .npz files (comma-separated) shown side "
                            "by side, each labelled with its val top-1 from its metrics.jsonl.")
BOXES = flags.DEFINE_string("boxes", None, "localization: a Tiny ImageNet copy with boxes.csv for the localization "
                            "score "
                            "(default: the checkpoint's manual_dir when its dataset is tiny_imagenet).")
NUM_LOCALIZATION = flags.DEFINE_integer("num_localization", 200, "localization: images of the split in the score.")
PARTS = flags.DEFINE_string("parts", None, "correspondence: a parts file (default: the skimage demo; 'tiny' = the "
                             "committed Tiny ImageNet faces, zf_jax/analysis/parts_tiny_imagenet.json).")
PARTS_ROOT = flags.DEFINE_string("parts_root", None, "correspondence: the Tiny ImageNet copy (val.tar) that tiny: "
                                 "images of --parts are read from (default: the checkpoint's manual_dir).")
RULE = flags.DEFINE_enum("rule", "deconvnet", ["deconvnet", "guided", "saliency"], "How projections reverse ReLUs.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Images per jitted call.")
SEED = flags.DEFINE_integer("seed", 0, "Seed for the random choice of maps (transfer/probes: of the folds).")
WORKDIRS = flags.DEFINE_list("workdirs", None, "ablation/ensemble: training workdirs, or run record folders "
                             "(python -m zf_jax.run_record) in their place (ablation: the first is the base).")
flags.DEFINE_list("results", None, "transfer-seeds: the --out folders of visualize.py transfer/probes runs, "
                  "one per pretrained model, with the same --target, --seed, --folds and --shots.")
EPOCH = flags.DEFINE_float("epoch", None, "ablation/ensemble: each workdir's checkpoint at this epoch (default: "
                           "latest).")
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
DATA = flags.DEFINE_string("data", None, "serve: a dataset name or ImageFolder path whose --split images the page "
                           "offers, with each map's top-9 over them (scanned once, cached).")
HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: the address to bind (anything but loopback: no "
                           "authentication).")
PORT = flags.DEFINE_integer("port", 8000, "serve: the port (0: a free one).")
EXPORT = flags.DEFINE_string("export", None, "serve: write the views of the sample photos as static pages into this "
                             "folder instead of serving.")
SCAN_IMAGES = flags.DEFINE_integer("scan_images", None, "serve: scan only the first N images of --data.")
L2 = flags.DEFINE_float("l2", 1e-3, "transfer/probes: L2 penalty of the new softmax.")


def _ints(name: str, values: list[str] | None) -> list[int] | None:
  try:
    return None if values is None else [int(v) for v in values]
  except ValueError:
    raise ValueError(f"{name}={','.join(values)} is not allowed; allowed: comma-separated integers") from None


def options() -> dict[str, Any]:
  """The analyses' options (`zf_jax.analysis`): every flag by name, integer lists parsed."""
  values = {name: flags.FLAGS[name].value for name in (
      "layers", "num_maps", "k", "compare", "boxes", "num_localization", "parts", "parts_root", "rule", "batch_size",
      "seed", "epoch", "train_images", "target", "folds", "test_per_class", "scratch", "l2", "num_examples",
      "data_dir")}
  return values | {name: _ints(name, flags.FLAGS[name].value) for name in ("maps", "steps", "shots")}


def _run_multi(command: str) -> list[str]:
  """ablation/ensemble/transfer-seeds: several workdirs (or result folders) in, one folder of figures, numbers and
  index.html out."""
  flag = analysis.MULTI_INPUTS[command]
  inputs = flags.FLAGS[flag].value
  if not inputs or inputs == [""]:
    what = "training workdirs or run record folders" if flag == "workdirs" else \
        "output folders of visualize.py transfer/probes, one per model"
    raise ValueError(f"{command} needs --{flag}=F1,F2,... ({what})")
  if WORKDIR.value or PARAMS.value or MODEL.value:
    raise ValueError(f"{command} reads --{flag}=F1,F2,...; drop --model/--workdir/--params")
  out = OUT.value or os.path.join(inputs[0], "figures", command)
  with files.staged(out) as stage:
    section = analysis.MULTI_COMMANDS[command](inputs, options(), stage)
    report.write_index(stage, [section], f"zf_jax {command}: {len(inputs)} {flag}", _command_line())
    written = sorted(os.listdir(stage))
  return [os.path.join(out, name) for name in written]


def _command_line() -> str:
  return f"python {' '.join(shlex.quote(a) for a in sys.argv)}"


def _default_out(source: Source) -> str:
  if source.workdir:
    return os.path.join(source.workdir, "figures")
  if source.params_file:
    return os.path.join(os.path.dirname(os.path.abspath(source.params_file)), "figures")
  return os.path.join("figures", source.model_name)


def _serve() -> list[str]:
  """The explorer (`zf_jax.explore`) of the model: served until Ctrl-C, or its views exported with --export."""
  source = Source(MODEL.value, WORKDIR.value, PARAMS.value, STEP.value, DATA.value, SPLIT.value, DATA_DIR.value)
  dataset = source.dataset if DATA.value else None
  if EXPORT.value:
    return explore_export.export(explore.Session(source.model, dataset, scan_images=SCAN_IMAGES.value), EXPORT.value)
  explore.serve(source.model, dataset, HOST.value, PORT.value, background=False, scan_images=SCAN_IMAGES.value)
  return []


def run_command(command: str) -> list[str]:
  """Runs one subcommand (or all) and returns the files written to --out (or --export)."""
  if command in analysis.MULTI_COMMANDS:
    return _run_multi(command)
  if command == "serve":
    return _serve()
  allowed = (*analysis.COMMANDS, "all", *analysis.MULTI_COMMANDS, "serve")
  if command not in allowed:
    raise ValueError(f"subcommand {command!r} is unknown; allowed: {', '.join(allowed)}")
  source = Source(MODEL.value, WORKDIR.value, PARAMS.value, STEP.value, DATASET.value, SPLIT.value, DATA_DIR.value,
                  IMAGES.value, NUM_IMAGES.value)
  names = list(analysis.COMMANDS) if command == "all" else [command]
  if command == "all":
    names = [n for n in names if (n != "evolution" or source.workdir) and (n not in analysis.STUDIES or TARGET.value)]
  out, values = OUT.value or _default_out(source), options()
  with files.staged(out) as stage:
    sections = []
    for name in names:
      try:
        sections.append(analysis.COMMANDS[name](source, values, stage))
      except NeedsDataset as e:
        if command != "all":
          raise
        print(f"visualize.py: skipped {name}: {e}", file=sys.stderr)
    if command == "all":
      m = source.model
      report.write_index(stage, sections, f"zf_jax analyses: {m.arch.name}, step {m.step} (epoch {m.epoch:g})",
                         f"{source.label} | {_command_line()}")
    written = sorted(os.listdir(stage))
  return [os.path.join(out, name) for name in written]


def main(argv: list[str]) -> None:
  commands = ", ".join((*analysis.COMMANDS, "all", *analysis.MULTI_COMMANDS, "serve"))
  if len(argv) != 2:
    print(f"visualize.py: error: give one subcommand ({commands}); got {argv[1:]}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    written = run_command(argv[1])
  except (ValueError, OSError) as e:
    print(f"visualize.py: error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(written))


if __name__ == "__main__":
  app.run(main)
