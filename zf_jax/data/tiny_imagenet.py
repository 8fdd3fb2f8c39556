"""The "tiny_imagenet" TFDS dataset (64x64 ImageNet images, CS231n) and its object boxes.

The builder takes, in this order:
  1. a directory of tar shards in `manual_dir`: `train-*-of-*.tar` holding
     `train/<wnid>/<wnid>_<n>.JPEG`, `val.tar` holding `val/<wnid>/val_<n>.JPEG`, optionally
     `classes.tsv` (`wnid<TAB>names`, label = line index) and `boxes.csv` (e.g. the 100-class copy
     in shared/data/tiny-imagenet-100);
  2. the official `tiny-imagenet-200.zip` in `manual_dir`;
  3. the official zip, downloaded from `URL`.
Every prepared copy is keyed by what it was prepared from (`builder_config`): a local copy by a
fingerprint of its files (names, sizes, modification times), so two different copies never share
prepared data (`<data_dir>/tiny_imagenet/copy-<fingerprint>/`), and a copy that changed is prepared
anew; the download is "download". Without manual_dir, the one copy prepared in data_dir is reused.
Labels index the classes of classes.tsv if present, otherwise the sorted wnids found in the training
images (100 classes for the shared copy, 200 for the official zip). Each example is
{"image": uint8 [64, 64, 3] (grayscale JPEGs decode to RGB), "label": int, "file_name": bytes}, where
file_name is the image's path in the shard layout (`train/<wnid>/<file>` or `val/<wnid>/<file>`,
for the zip too); `boxes` maps the same names (as str) to object boxes. The JPEG bytes are stored as
they are, so preparing needs no image codec, nor TensorFlow.
"""
from __future__ import annotations

import csv
import hashlib
import os
import socket
import tarfile
import urllib.parse
import zipfile
from collections.abc import Iterator

import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import constants

URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
ZIP_NAME = "tiny-imagenet-200.zip"
_VAL_ANNOTATIONS = "tiny-imagenet-200/val/val_annotations.txt"  # val_<n>.JPEG, wnid, x0, y0, x1, y1
SPLITS = {"train": "train", "validation": "val"}  # TFDS split -> directory in file names
Box = tuple[int, int, int, int]


def _is_shard_dir(path: epath.Path) -> bool:
  return any(path.glob("train-*-of-*.tar")) and (path / "val.tar").exists()


def _shard_examples(directory: epath.Path, split: str) -> Iterator[tuple[str, bytes]]:
  """(file_name, JPEG bytes) of `split` in a directory of tar shards."""
  tars = sorted(directory.glob("train-*-of-*.tar")) if split == "train" else [directory / "val.tar"]
  for path in tars:
    with tarfile.open(path, "r|") as tar:
      for member in tar:
        if member.isfile() and member.name.upper().endswith(".JPEG"):
          yield member.name, tar.extractfile(member).read()


def _tsv(archive: zipfile.ZipFile, name: str) -> list[list[str]]:
  """The rows of a tab-separated text file in the official zip."""
  return [line.split("\t") for line in archive.read(name).decode().splitlines() if line]


def _zip_examples(path: epath.Path, split: str) -> Iterator[tuple[str, bytes]]:
  """(file_name, JPEG bytes) of `split` in the official zip, named as in the shard layout."""
  with zipfile.ZipFile(path) as archive:
    val_wnids = {row[0]: row[1] for row in _tsv(archive, _VAL_ANNOTATIONS)}
    for name in archive.namelist():
      parts = name.split("/")  # tiny-imagenet-200/train/<wnid>/images/<file>, .../val/images/<file>
      if not name.upper().endswith(".JPEG"):
        continue
      if split == "train" and len(parts) == 5 and parts[1] == "train" and parts[3] == "images":
        yield f"train/{parts[2]}/{parts[4]}", archive.read(name)
      elif split == "validation" and len(parts) == 4 and parts[1:3] == ["val", "images"]:
        yield f"val/{val_wnids[parts[3]]}/{parts[3]}", archive.read(name)


def _examples(copy: epath.Path, split: str) -> Iterator[tuple[str, bytes]]:
  return _shard_examples(copy, split) if copy.is_dir() else _zip_examples(copy, split)


def _classes(copy: epath.Path) -> list[tuple[str, str]]:
  """The (wnid, description) of every class, in label order."""
  if copy.is_dir():
    tsv = copy / "classes.tsv"
    if tsv.exists():
      rows = [line.split("\t") for line in tsv.read_text().splitlines() if line]
      return [(row[0], row[-1]) for row in rows]
    wnids = set()
    for path in copy.glob("train-*-of-*.tar"):
      with tarfile.open(path) as tar:
        wnids |= {name.split("/")[1] for name in tar.getnames() if name.upper().endswith(".JPEG")}
    return [(wnid, wnid) for wnid in sorted(wnids)]
  with zipfile.ZipFile(copy) as archive:
    wnids = sorted({name.split("/")[2] for name in archive.namelist()
                    if name.startswith("tiny-imagenet-200/train/") and name.upper().endswith(".JPEG")})
    words = {row[0]: row[1] for row in _tsv(archive, "tiny-imagenet-200/words.txt")}
  return [(wnid, words.get(wnid, wnid)) for wnid in wnids]


def classes(manual_dir: str) -> list[tuple[str, str]]:
  """(WordNet id, description) of every class of the local copy in `manual_dir`, in label order."""
  copy = find_copy(epath.Path(manual_dir))
  if copy is None:
    raise ValueError(f"manual_dir={manual_dir!r} holds no Tiny ImageNet copy; allowed: a folder of tar shards "
                     f"(train-*-of-*.tar, val.tar) or one with {ZIP_NAME}")
  return _classes(copy)


def _local_copy(dl_manager: tfds.download.DownloadManager) -> epath.Path | None:
  """The shard directory or zip in manual_dir, or None."""
  try:
    manual_dir = dl_manager.manual_dir
  except AssertionError:  # no manual_dir, or an empty one
    return None
  return find_copy(manual_dir)


def _source_files(copy: epath.Path) -> list[epath.Path]:
  """The files of a local copy that the builder reads."""
  if not copy.is_dir():
    return [copy]
  return sorted([*copy.glob("train-*-of-*.tar"), copy / "val.tar", *copy.glob("classes.tsv")])


def fingerprint(copy: epath.Path) -> str:
  """12 hex digits of SHA-256 over (name, size, modification time in ns) of every file read from a copy."""
  stats = [(path.name, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in _source_files(copy)]
  return hashlib.sha256(repr(stats).encode()).hexdigest()[:12]


def _config_name(copy: epath.Path | None) -> str:
  return "download" if copy is None else f"copy-{fingerprint(copy)}"


def find_copy(manual_dir: epath.Path) -> epath.Path | None:
  """The local copy in manual_dir: the directory itself if it holds tar shards, else its official zip, else None."""
  if _is_shard_dir(manual_dir):
    return manual_dir
  return manual_dir / ZIP_NAME if (manual_dir / ZIP_NAME).exists() else None


def builder_config(manual_dir: str | None, data_dir: str | None = None) -> tfds.core.BuilderConfig:
  """The builder config that keys a prepared copy by what it is prepared from.

  Args:
    manual_dir: a local copy (tar shards or the official zip), or None.
    data_dir: where TFDS prepares datasets (default: TFDS's).

  Returns:
    "copy-<fingerprint>" for a local copy in manual_dir; without manual_dir, the one copy already
    prepared in data_dir, or "download" (the official zip) if none is.

  Raises:
    ValueError: no manual_dir and several prepared copies to choose from.
  """
  if manual_dir is not None:
    copy = find_copy(epath.Path(manual_dir)) if os.path.isdir(manual_dir) else None
    return tfds.core.BuilderConfig(name=_config_name(copy), description=f"prepared from {manual_dir}")
  root = epath.Path(data_dir or constants.get_default_data_dir()) / "tiny_imagenet"
  prepared = sorted(path.parent.parent.name for path in root.glob(f"*/{TinyImagenet.VERSION}/dataset_info.json"))
  if len(prepared) > 1:
    raise ValueError(f"tiny_imagenet: {len(prepared)} copies are prepared in {root} ({', '.join(prepared)}); "
                     "pass manual_dir to say which")
  return tfds.core.BuilderConfig(name=prepared[0] if prepared else "download", description="tiny_imagenet")


def _download(dl_manager: tfds.download.DownloadManager) -> epath.Path:
  """The official zip from URL; fails within seconds when the host cannot be reached."""
  try:
    socket.create_connection((urllib.parse.urlparse(URL).hostname, 80), timeout=10).close()
    return dl_manager.download(URL)
  except OSError as e:
    raise ValueError(f"tiny_imagenet: no local copy in manual_dir (want train-*-of-*.tar + val.tar, or "
                     f"{ZIP_NAME}) and downloading {URL} failed ({type(e).__name__}); pass manual_dir") from None


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of Tiny ImageNet (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Tar shards, the official zip or its download; classes from the data."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Either a directory of tar shards (train-*-of-*.tar with train/<wnid>/<file>.JPEG, val.tar with "
      f"val/<wnid>/<file>.JPEG, optional classes.tsv), or the official {ZIP_NAME} from {URL}.")

  def __init__(self, *, file_format: str = "array_record", **kwargs):
    """Stores array_record by default: random access through `tfds.data_source`, no TensorFlow."""
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Tiny ImageNet: 64x64 ImageNet images, 500 training and 50 validation per class.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(),  # names come from the data
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://cs231n.stanford.edu/",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
    copy = _local_copy(dl_manager)
    config = self.builder_config.name if self.builder_config else None
    if config != _config_name(copy):
      raise ValueError(f"tiny_imagenet: the copy in manual_dir is {_config_name(copy)!r}, not the config "
                       f"{config!r} being prepared; build through zf_jax.data.get_dataset (which passes "
                       "tiny_imagenet.builder_config(manual_dir))")
    copy = copy or _download(dl_manager)
    classes = _classes(copy)
    self.info.features["label"].names = [wnid for wnid, _ in classes]
    self.info.metadata["class_names"] = [description.split(",")[0] for _, description in classes]
    labels = {wnid: label for label, (wnid, _) in enumerate(classes)}
    return {split: self._generate_examples(copy, split, labels) for split in SPLITS}

  def _generate_examples(self, copy: epath.Path, split: str, labels: dict[str, int]):
    for name, jpeg in _examples(copy, split):
      yield name, {"image": jpeg, "label": labels[name.split("/")[1]], "file_name": name}


def boxes(manual_dir: str, split: str) -> dict[str, Box]:
  """The object box of every image of a split, from the local copy the builder was given.

  Reads `boxes.csv` (split,path,wnid,x0,y0,x1,y1) of a shard directory, or the official zip's
  `<wnid>_boxes.txt` / `val_annotations.txt`.

  Args:
    manual_dir: the directory holding the shards + boxes.csv, or tiny-imagenet-200.zip.
    split: "train" or "validation".

  Returns:
    {file_name: (x0, y0, x1, y1)}: keys are the examples' "file_name" feature, decoded (the box of
    `example` is `boxes[example["file_name"].decode()]`); corners are inclusive pixel coordinates in
    the 64x64 image (x = column, y = row), as in the original annotations.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} has no Tiny ImageNet boxes; allowed: {', '.join(SPLITS)}")
  directory = epath.Path(manual_dir)
  if (directory / "boxes.csv").exists():
    with (directory / "boxes.csv").open() as f:
      return {row["path"]: tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1"))
              for row in csv.DictReader(f) if row["split"] == SPLITS[split]}
  if (directory / ZIP_NAME).exists():
    return _zip_boxes(directory / ZIP_NAME, split)
  raise ValueError(f"manual_dir={manual_dir!r} has neither boxes.csv nor {ZIP_NAME}")


def _zip_boxes(path: epath.Path, split: str) -> dict[str, Box]:
  """boxes() from the official zip."""
  with zipfile.ZipFile(path) as archive:
    if split == "validation":
      rows = [(f"val/{row[1]}/{row[0]}", row[2:]) for row in _tsv(archive, _VAL_ANNOTATIONS)]
    else:
      rows = [(f"train/{row[0].split('_')[0]}/{row[0]}", row[1:]) for name in archive.namelist()
              if name.endswith("_boxes.txt") for row in _tsv(archive, name)]
  return {name: tuple(int(c) for c in corners) for name, corners in rows}
