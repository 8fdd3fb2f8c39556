"""visualize.py end to end on a tiny checkpointed run, and its one-line errors that leave --out alone."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from zf_jax import checkpoint, files, models
from zf_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import run_visualize, write_synthetic_folder  # noqa: E402

TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 6, "conv2": 8, "conv3": 8, "conv4": 8, "conv5": 8, "fc6": 8, "fc7": 8}, name="tiny")
STEPS = (2, 4, 6)


def _params(seed):
  shapes = jax.eval_shape(lambda: models.init_params(TINY, jax.random.key(0), num_classes=10))
  rng = np.random.default_rng(seed)
  return {layer: {"kernel": rng.normal(0, 0.01 if layer == "conv1" else 0.1, p["kernel"].shape).astype(np.float32),
                  "bias": np.full(p["bias"].shape, 0.05, np.float32)} for layer, p in shapes.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A workdir with 3 checkpoints of a tiny zfnet64 and an ImageFolder of 12 synthetic images."""
  root = tmp_path_factory.mktemp("run")
  folder = root / "images"
  write_synthetic_folder(str(folder), 12)
  manager = checkpoint.Manager(str(root / "workdir"), keep_steps=STEPS)
  params0 = _params(0)
  opt_state = {"momentum": params0}
  for step in STEPS:
    meta = {"step": step, "epoch": step / 2, "arch": checkpoint.arch_to_dict(TINY), "num_classes": 10,
            "class_names": list(synthetic.CLASS_NAMES), "config": {"dataset": str(folder), "data_dir": None}}
    manager.save(step, _params(step), opt_state, {"mean_image": np.full((64, 64, 3), 120, np.float32),
                                                  "rng": np.zeros(2, np.uint32)}, meta)
  manager.close()
  return root




SMALL = ("--num_images=12", "--num_maps=4", "--k=3", "--num_examples=2", "--batch_size=8")


def test_all_writes_every_figure_numbers_and_index(run, capsys):
  out = run / "figures"
  assert run_visualize("all", f"--workdir={run / 'workdir'}", f"--out={out}", "--layers=conv2,conv5", *SMALL) == 0
  files = sorted(os.listdir(out))
  assert files == sorted(["index.html", "topk.json", "topk_conv2.png", "topk_conv5.png", "evolution.json",
                          "evolution.png", "evolution_convergence.png", "invariance.json", "invariance.png",
                          "filters.json", "filters.png",
                          "occlusion.json", "occlusion.png", "correspondence.json", "correspondence.png"])
  page = (out / "index.html").read_text()
  assert set(re.findall(r'<img src="([^"]+)"', page)) == {f for f in files if f.endswith(".png")}
  evolution = json.loads((out / "evolution.json").read_text())
  assert evolution["steps"] == list(STEPS) and evolution["epochs"] == [1, 2, 3]
  topk = json.loads((out / "topk.json").read_text())
  assert topk["num_images"] == 12 and [len(v) for v in topk["conv2"]["top"].values()] == [3] * 4
  assert len(evolution["conv5"]["maps"]) == 1  # a quarter of --num_maps
  assert not [f for f in os.listdir(run) if ".tmp-" in f]
  assert capsys.readouterr().out.split() == [str(out / f) for f in files]


def test_topk_from_image_files_and_a_params_file(run, tmp_path):
  loaded = checkpoint.load_for_analysis(str(run / "workdir"), 4)
  checkpoint.save_params_npz(str(tmp_path / "model.npz"), loaded)
  images = [str(p) for p in sorted((run / "images" / "validation").glob("*/*.png"))[:3]]
  gray = tmp_path / "gray.jpg"
  Image.fromarray(np.arange(100 * 80, dtype=np.uint8).reshape(100, 80)).save(gray)  # any size, grayscale
  assert run_visualize("topk", f"--params={tmp_path / 'model.npz'}", f"--images={','.join(images + [str(gray)])}",
                    "--k=4", "--num_maps=2", "--layers=conv1,conv2") == 0
  assert sorted(os.listdir(tmp_path / "figures")) == ["topk.json", "topk_conv1.png", "topk_conv2.png"]


@pytest.mark.parametrize("args, message", [
    (("topk", "--workdir={empty}"), "holds no checkpoints"),
    (("topk", "--workdir={workdir}", "--step=5"), "step=5 has no checkpoint"),
    (("topk", "--workdir={workdir}", "--layers=conv9"), "layers=conv9 is not allowed for 'tiny'"),
    (("topk", "--workdir={workdir}", "--images={missing}"), "is not a readable image file"),
    (("evolution", "--workdir={workdir}", "--steps=2,3"), "steps=3 have no checkpoint"),
    (("frobnicate", "--workdir={workdir}"), "subcommand 'frobnicate' is unknown"),
])
def test_bad_input_is_one_line_and_leaves_out_alone(run, tmp_path, capsys, args, message):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("old")
  (tmp_path / "empty").mkdir()
  args = [a.format(empty=tmp_path / "empty", workdir=run / "workdir", missing=tmp_path / "no.png") for a in args]
  assert run_visualize(*args, f"--out={out}", *SMALL) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("visualize.py: error: ") and message in err[0], err
  assert os.listdir(out) == ["keep.txt"] and sorted(os.listdir(tmp_path)) == ["empty", "out"]  # no staging left


def test_command_line_exit_code(tmp_path):
  run = subprocess.run([sys.executable, os.path.join(ROOT, "visualize.py"), "filters", f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 2
  assert run.stderr.strip().splitlines()[-1].startswith("visualize.py: error: ")


def test_report_needs_every_listed_file_and_stages_atomically(tmp_path):
  from zf_jax import report
  (tmp_path / "a.json").write_text("{}")
  with pytest.raises(ValueError, match="'a.png' of section 'a' is not in"):
    report.write_index(str(tmp_path), [report.Section("a", "A", ("a.png",), "a.json")], "title")
  with pytest.raises(RuntimeError):
    with files.staged(str(tmp_path / "out")) as stage:
      open(os.path.join(stage, "half.png"), "w").close()
      raise RuntimeError("failed midway")
  assert sorted(os.listdir(tmp_path)) == ["a.json"]


def test_all_with_no_source_runs_on_the_shipped_model(tmp_path, capsys):
  out = tmp_path / "figures"
  assert run_visualize("all", f"--out={out}", "--num_images=16", "--num_maps=2", "--k=3", "--num_examples=1",
                       "--num_localization=8", "--batch_size=16", "--layers=conv1,conv5") == 0
  written = set(os.listdir(out))
  assert {"index.html", "topk_conv1.png", "filters.png", "occlusion.png", "invariance.png",
          "correspondence.png"} <= written
  assert "evolution.png" not in written  # a shipped model has no checkpoints to follow
  page = (out / "index.html").read_text()
  assert "shipped model zfnet64-tiny-imagenet-100" in page
  shared = os.path.join(ROOT, "..", "shared", "data", "tiny-imagenet-100")
  if os.path.isdir(shared):  # the model's own dataset is here: Tiny ImageNet images with labels and boxes
    assert json.loads((out / "topk.json").read_text())["num_images"] == 16
    assert json.loads((out / "localization.json").read_text())["num_images"] == 8
  else:
    assert "visualize.py: skipped localization:" in capsys.readouterr().err


def test_without_its_dataset_a_model_shows_the_sample_photos(monkeypatch):
  from zf_jax import pretrained
  from zf_jax.analysis import source
  loaded = pretrained.load_model()
  moved = type(loaded)(**{**loaded.__dict__, "config": {**loaded.config, "manual_dir": "/nonexistent/copy"}})
  monkeypatch.setattr(pretrained, "load_model", lambda name: moved)
  src = source.Source()
  assert src.model_name == pretrained.DEFAULT and len(src.photos) == len(source.SAMPLE_PHOTOS)
  assert src.scan_inputs().shape == (len(source.SAMPLE_PHOTOS), 56, 56, 3) and src.scan_labels() is None
  with pytest.raises(source.NeedsDataset, match="pass --dataset"):
    _ = src.dataset


@pytest.mark.parametrize("args, message", [
    (("topk", "--model=zfnet-imagenet"), "not a shipped model; available: "),
    (("topk", "--model=zfnet64-tiny-imagenet-100", "--workdir=w"), "give one of --model, --workdir or --params"),
    (("topk", "--step=3"), "--step selects a checkpoint of --workdir"),
    (("localization", "--images=skimage:chelsea"), "localization needs labelled images with object boxes"),
    (("probes",), "need --target"),
])
def test_model_source_errors_are_one_line(tmp_path, capsys, args, message):
  assert run_visualize(*args, f"--out={tmp_path / 'out'}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("visualize.py: error: ") and message in err[0], err
  assert not os.path.exists(tmp_path / "out")
