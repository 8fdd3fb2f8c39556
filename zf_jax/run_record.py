"""A trained model's evaluations, kept in the repository beside its metrics (docs/runs/NAME/), so that the
tables over many runs (Table 3 over seeds, Table 2's ensembles) can be built after the checkpoints are gone:
such a table's runs take more sessions than a machine keeps its workdirs.

  python -m zf_jax.run_record --workdir=$HOME/zf-runs/ablation-seed1-converged \\
      --out=docs/runs/ablation-seed1-converged
  python -m zf_jax.run_record --model=zfnet64-tiny-imagenet-100 --out=docs/runs/reference-rerun

write OUT/evaluation.json (the model's architecture, config, step, epoch, parameter count and SHA-256; its
train top-1/top-5 on the center crop of every training image and its 10-crop val top-1/top-5, what
`visualize.py ablation` measures) and OUT/val_probabilities.npz (the 10-crop softmax of every val image,
float16 [N, C], and the labels, int32 [N]: what `visualize.py ensemble` averages). From a workdir the run's
metrics.jsonl is copied beside them. `visualize.py ablation/ensemble --workdirs=` take such a folder where
they take a workdir (`get`, `read_probabilities`). Every file is written whole or not at all.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import logging

from zf_jax import checkpoint, evaluation, files, metrics, models, pretrained

RECORD_VERSION = 1
RECORD_FILE = "evaluation.json"
PROBABILITIES_FILE = "val_probabilities.npz"
VAL_CROPS = 10
_ALLOWED = f"allowed: a folder written by `python -m zf_jax.run_record` ({RECORD_FILE}, {PROBABILITIES_FILE})"


@dataclasses.dataclass(frozen=True)
class Record:
  """One model's evaluations (from a record folder, or measured on a checkpoint by `evaluate`).

  Attributes:
    path: the record folder, training workdir or .npz it came from.
    arch, num_classes, class_names, step, epoch, config: as `checkpoint.Loaded`.
    num_params: the number of trained parameters.
    params_sha256: `params_digest` of the parameters.
    train: {"top1", "top5", "num_images", "split", "num_crops": 1, "step", "epoch"}: center crops of the
      training images, no augmentation (`evaluation.evaluate_checkpoint`).
    val: the same keys for the validation split, 10 crops.
    probabilities_sha256: the SHA-256 of the record's val_probabilities.npz (None for a Record not read from
      a folder).
  """
  path: str
  arch: models.Arch
  num_classes: int
  class_names: list[str] | None
  step: int
  epoch: float
  config: dict[str, Any]
  num_params: int
  params_sha256: str
  train: dict[str, Any]
  val: dict[str, Any]
  probabilities_sha256: str | None = None


def num_params(params: models.Params) -> int:
  """The number of weights and biases of a model (arrays or their shapes, e.g. from `jax.eval_shape`)."""
  return int(sum(np.prod(leaf.shape) for layer in params.values() for leaf in layer.values()))


def params_digest(params: Mapping[str, Mapping[str, Any]]) -> str:
  """A SHA-256 of a model's parameters (layer names, shapes, dtypes and bytes, in a fixed order)."""
  digest = hashlib.sha256()
  for layer in sorted(params):
    for part in sorted(params[layer]):
      value = np.ascontiguousarray(np.asarray(params[layer][part]))
      digest.update(f"{layer}/{part}:{value.dtype}{value.shape}".encode())
      digest.update(value.tobytes())
  return digest.hexdigest()


def is_record(path: str) -> bool:
  """Whether `path` is a record folder (holds evaluation.json)."""
  return os.path.isfile(os.path.join(path, RECORD_FILE))


def evaluate(model: checkpoint.Loaded, path: str, train_images: int | None = None, batch_size: int = 128,
             data_dir: str | None = None, use_cache: bool = True) -> Record:
  """The Record of a loaded model: its train error (center crops of `train_images` training images evenly
  spaced, default all) and 10-crop val accuracy, cached in `path`'s evaluations.json where `path` is a workdir."""
  options = dict(batch_size=batch_size, data_dir=data_dir, use_cache=use_cache and os.path.isdir(path), model=model)
  train = evaluation.evaluate_checkpoint(path, "train", 1, max_images=train_images, **options)
  val = evaluation.evaluate_checkpoint(path, "val", VAL_CROPS, **options)
  return Record(path=path, arch=model.arch, num_classes=model.num_classes, class_names=model.class_names,
                step=model.step, epoch=model.epoch, config=model.config, num_params=num_params(model.params),
                params_sha256=params_digest(model.params), train=train, val=val)


def _invalid(path: str, what: str) -> ValueError:
  return ValueError(f"{path!r} is not a readable run record ({what}); {_ALLOWED}")


def read(path: str) -> Record:
  """The Record in folder `path` (its evaluation.json), checked."""
  try:
    with open(os.path.join(path, RECORD_FILE)) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    raise _invalid(path, f"{RECORD_FILE}: {type(e).__name__}: {e}") from None
  if not isinstance(data, dict) or data.get("record_version") != RECORD_VERSION:
    found = data.get("record_version") if isinstance(data, dict) else type(data).__name__
    raise _invalid(path, f"record_version {found!r}, this zf_jax reads {RECORD_VERSION}")
  try:
    record = Record(path=path, arch=checkpoint.arch_from_dict(data["arch"]), num_classes=int(data["num_classes"]),
                    class_names=data["class_names"], step=int(data["step"]), epoch=float(data["epoch"]),
                    config=dict(data["config"]), num_params=int(data["num_params"]),
                    params_sha256=str(data["params_sha256"]), train=dict(data["train"]), val=dict(data["val"]),
                    probabilities_sha256=str(data["probabilities_sha256"]))
  except (KeyError, TypeError, ValueError) as e:
    raise _invalid(path, f"{RECORD_FILE} is incomplete: {type(e).__name__}: {e}") from None
  for split in ("train", "val"):
    if not {"top1", "top5", "num_images", "num_crops"} <= set(getattr(record, split)):
      raise _invalid(path, f"its {split} evaluation lacks top1/top5/num_images/num_crops")
  return record


def get(path: str, epoch: float | None = None, train_images: int | None = None, batch_size: int = 128,
        data_dir: str | None = None, use_cache: bool = True) -> Record:
  """The Record of a record folder (read) or of a training workdir or .npz (its checkpoint at `epoch`,
  default the latest, evaluated; see `evaluate`).

  A record holds one checkpoint with the train error over all training images: `epoch` must be its epoch
  (or None) and `train_images` None.
  """
  if not is_record(path):
    model = checkpoint.load_for_analysis(path, epoch=None if path.endswith(".npz") else epoch)
    return evaluate(model, path, train_images, batch_size, data_dir, use_cache)
  record = read(path)
  if epoch is not None and epoch != record.epoch:
    raise ValueError(f"epoch={epoch:g} is not allowed for the run record {path!r}; allowed: its epoch "
                     f"{record.epoch:g} (or none)")
  if train_images is not None:
    raise ValueError(f"train_images={train_images} is not allowed with the run record {path!r}, which holds the "
                     "train error over all training images; allowed: none")
  return record


def read_probabilities(path: str, record: Record | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The record's 10-crop val softmax, float32 [N, C], and labels, int32 [N], checked against its
  evaluation.json (N val images, C classes)."""
  record = record or read(path)
  file = os.path.join(path, PROBABILITIES_FILE)
  try:
    with open(file, "rb") as f:
      blob = f.read()
  except OSError as e:
    raise _invalid(path, f"{PROBABILITIES_FILE}: {type(e).__name__}: {e}") from None
  if hashlib.sha256(blob).hexdigest() != record.probabilities_sha256:
    raise _invalid(path, f"{PROBABILITIES_FILE} is not the file its {RECORD_FILE} was written with (its sha256)")
  try:
    with np.load(io.BytesIO(blob)) as data:
      probs, labels = data["probabilities"], data["labels"]
  except Exception as e:  # zipfile, pickle and key errors of a foreign file
    raise _invalid(path, f"{PROBABILITIES_FILE}: {type(e).__name__}: {e}") from None
  expected = (int(record.val["num_images"]), record.num_classes)
  if probs.shape != expected or labels.shape != expected[:1] or not np.issubdtype(labels.dtype, np.integer):
    raise _invalid(path, f"{PROBABILITIES_FILE} holds probabilities {probs.shape} and labels {labels.shape} "
                         f"{labels.dtype}; its {RECORD_FILE} says {expected[0]} images of {expected[1]} classes")
  return probs.astype(np.float32), labels.astype(np.int32)


def _check_metrics(out: str, model: checkpoint.Loaded, workdir: str | None) -> None:
  """Refuses to write a record beside the metrics.jsonl of another run: from a workdir, the folder's must be the
  start of the workdir's; from a shipped model, it must have the model's step."""
  if not os.path.isfile(os.path.join(out, metrics.METRICS_FILE)):
    return
  kept = metrics.read(out)
  if workdir is not None:
    run = metrics.read(workdir)
    if kept != run[:len(kept)]:
      raise ValueError(f"{out!r} holds the metrics.jsonl of another run than {workdir!r}'s; allowed: the record "
                       "folder of this run, or a new folder")
  elif model.step not in {r["step"] for r in kept}:
    raise ValueError(f"{out!r} holds the metrics.jsonl of a run without step {model.step} (this model's); allowed: "
                     "the folder of the run this model comes from, or a new folder")


def write(model: checkpoint.Loaded, out: str, workdir: str | None = None, batch_size: int = 128,
          data_dir: str | None = None) -> list[str]:
  """Evaluates `model` and writes its record into `out` (and `workdir`'s metrics.jsonl, where given);
  returns the paths written."""
  _check_metrics(out, model, workdir)
  record = evaluate(model, workdir or out, batch_size=batch_size, data_dir=data_dir, use_cache=workdir is not None)
  source = evaluation.split_source(model, "val", data_dir)
  probs, labels = evaluation.probabilities(model, source, VAL_CROPS, batch_size)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, probabilities=probs.astype(np.float16), labels=labels.astype(np.int32))
  data = {"record_version": RECORD_VERSION, "arch": checkpoint.arch_to_dict(record.arch),
          "num_classes": record.num_classes, "class_names": record.class_names, "step": record.step,
          "epoch": record.epoch, "config": {key: files.portable_path(v) for key, v in record.config.items()},
          "num_params": record.num_params, "params_sha256": record.params_sha256, "train": record.train,
          "val": record.val, "probabilities_sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
  written = [os.path.join(out, PROBABILITIES_FILE), os.path.join(out, RECORD_FILE)]
  os.makedirs(out, exist_ok=True)
  with files.atomic_path(written[0]) as tmp, open(tmp, "wb") as f:
    f.write(buffer.getvalue())
  if workdir is not None:
    written.append(os.path.join(out, metrics.METRICS_FILE))
    with files.atomic_path(written[-1]) as tmp:
      shutil.copyfile(os.path.join(workdir, metrics.METRICS_FILE), tmp)
  files.save_json(data, written[1])
  return written


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m zf_jax.run_record", description=__doc__.split("\n")[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="A training workdir (its latest checkpoint, or --epoch).")
  source.add_argument("--model", help=f"A shipped model: {', '.join(pretrained.available())}.")
  parser.add_argument("--out", required=True, help="The record folder, e.g. docs/runs/NAME.")
  parser.add_argument("--epoch", type=float, help="--workdir's checkpoint at this epoch (default: the latest).")
  parser.add_argument("--data_dir", help="Where the TFDS dataset is prepared (default: the model's config's).")
  parser.add_argument("--batch_size", type=int, default=128, help="Images per evaluation batch.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  try:
    if args.model and args.epoch is not None:
      raise ValueError("--epoch selects a checkpoint of --workdir; a shipped --model has one")
    model = pretrained.load_model(args.model) if args.model else \
        checkpoint.load_for_analysis(args.workdir, epoch=args.epoch)
    paths = write(model, args.out, args.workdir, args.batch_size, args.data_dir)
  except (ValueError, OSError) as e:
    print(f"run_record: error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(paths))


if __name__ == "__main__":
  main()
