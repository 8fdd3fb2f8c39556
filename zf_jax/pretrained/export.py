"""Writes a shipped model (NAME.npz + NAME.json card) from a trained Tiny ImageNet workdir.

  python -m zf_jax.pretrained.export --workdir=$HOME/zf-runs/reference --name=zfnet64-tiny-imagenet-100 \\
      --manual_dir=../shared/data/tiny-imagenet-100 --command="python train.py --config=configs/reference.py ..."

The weights are stored as float32 in a compressed .npz (no pickle); the card holds the classes, the
preprocessing, the training config (paths as `files.portable_path` writes them), the commit, the
command, the 10-crop and center-crop val top-1/top-5 measured here on the weights as written, and the
file's sha256. Both files are written whole or not at all.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
from typing import Any

import numpy as np
from absl import logging

from zf_jax import checkpoint, evaluation, files, pretrained, run_record
from zf_jax.data import tiny_imagenet


def npz_bytes(params: Any, mean_image: np.ndarray) -> bytes:
  """The compressed .npz of float32 params {layer: {"kernel", "bias"}} and the mean image."""
  arrays = {key: value.astype(np.float32) for key, value in checkpoint.params_to_arrays(params).items()}
  buffer = io.BytesIO()
  np.savez_compressed(buffer, mean_image=np.asarray(mean_image, np.float32), **arrays)
  return buffer.getvalue()


def run_status(meta: dict[str, Any]) -> str:
  """Whether the checkpoint ends its run: "converged" (the plateau rule stopped it), "budget done"
  (all config.num_epochs), or "interim" (the run had more to train)."""
  config, plateau = meta["config"], meta.get("plateau") or {}
  if config.get("stop_when_converged") and plateau.get("converged"):
    return "converged"
  return "budget done" if meta["epoch"] >= config["num_epochs"] else "interim"


def export(workdir: str, name: str, manual_dir: str, out: str, commit: str, command: str | None,
           step: int | None = None, batch_size: int = 128) -> tuple[str, str]:
  """Writes out/NAME.npz and out/NAME.json; returns their paths.

  The accuracy in the card is measured on the validation split of `manual_dir`'s copy with the
  weights exactly as written (float32), 10 crops and the center crop (`evaluation.accuracy`).
  """
  loaded = checkpoint.load_for_analysis(workdir, step)
  if loaded.config.get("dataset") != "tiny_imagenet":
    raise ValueError(f"{workdir!r} was trained on {loaded.config.get('dataset')!r}; export takes tiny_imagenet runs")
  classes = tiny_imagenet.classes(manual_dir)
  words = [description.split(",")[0] for _, description in classes]
  if words != loaded.class_names:
    raise ValueError(f"the classes of manual_dir={manual_dir!r} are not those {workdir!r} was trained on")
  blob = npz_bytes(loaded.params, loaded.mean_image)
  config = {key: files.portable_path(value) for key, value in loaded.config.items()}
  evaluated = checkpoint.Loaded(**{**loaded.__dict__, "config": {**loaded.config, "manual_dir": manual_dir}})
  source = evaluation.split_source(evaluated, "val")
  accuracy = {f"val_{crops}": evaluation.accuracy(evaluated, source, n, batch_size)
              for crops, n in (("10crop", 10), ("center", 1))}
  card = pretrained.card_for(
      loaded.arch, loaded.mean_image, list(zip((wnid for wnid, _ in classes), words)), name=name,
      dataset={"name": "tiny_imagenet", "copy": files.portable_path(manual_dir),
               "val_images": accuracy["val_10crop"]["num_images"]},
      accuracy={**accuracy, "measured_with": "zf_jax.evaluation.accuracy on the validation split (softmax averaged "
                                             "over the crops)"},
      trained={"step": loaded.step, "epoch": loaded.epoch, "commit": commit, "command": command,
               "status": run_status(checkpoint.read_meta(workdir, loaded.step))},
      config=config, file=f"{name}.npz", sha256=hashlib.sha256(blob).hexdigest(),
      parameters=run_record.num_params(loaded.params))
  os.makedirs(out, exist_ok=True)
  npz_path, card_path = os.path.join(out, f"{name}.npz"), os.path.join(out, f"{name}.json")
  with files.atomic_path(npz_path) as tmp, open(tmp, "wb") as f:
    f.write(blob)
  files.save_json(card, card_path)
  return npz_path, card_path


def _git_head() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m zf_jax.pretrained.export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="The training workdir (its latest checkpoint, or --step).")
  parser.add_argument("--name", required=True, help="The model's name, e.g. zfnet64-tiny-imagenet-100.")
  parser.add_argument("--manual_dir", required=True, help="The Tiny ImageNet copy it was trained on.")
  parser.add_argument("--step", type=int, help="The checkpoint's step (default: the latest).")
  parser.add_argument("--out", help="Output folder (default: the zf_jax/pretrained package folder).")
  parser.add_argument("--commit", help="The commit it was trained from (default: git rev-parse HEAD).")
  parser.add_argument("--command", help="The training command, recorded in the card.")
  parser.add_argument("--batch_size", type=int, default=128, help="Images per evaluation batch.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  out = args.out or os.path.dirname(os.path.abspath(pretrained.__file__))
  try:
    paths = export(args.workdir, args.name, args.manual_dir, out, args.commit or _git_head(), args.command, args.step,
                   args.batch_size)
  except (ValueError, OSError) as e:
    print(f"export: error: {e}", file=sys.stderr)
    sys.exit(2)
  print("\n".join(paths))


if __name__ == "__main__":
  main()
