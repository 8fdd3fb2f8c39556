"""Section 4's claims as numbers (issue 9): Fig. 4 convergence per layer, Fig. 5 invariance summary,
Fig. 6 comparison of several models, Fig. 7 chance baseline and projection-support effect, Table 1's
Tiny ImageNet parts file; and their visualize.py entry points."""
import io
import json
import os
import sys
import tarfile

import jax
import numpy as np
import pytest
from PIL import Image

from zf_jax import checkpoint, models
from zf_jax.analysis import correspondence, evolution, invariance, localization, occlusion, topk
from zf_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import run_visualize, write_synthetic_folder  # noqa: E402

TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 6, "conv2": 8, "conv3": 8, "conv4": 8, "conv5": 8, "fc6": 8, "fc7": 8}, name="tiny")
SHARED_TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                           "tiny-imagenet-100")


def _params(seed, num_classes=10):
  shapes = jax.eval_shape(lambda: models.init_params(TINY, jax.random.key(0), num_classes=num_classes))
  rng = np.random.default_rng(seed)
  return {layer: {"kernel": rng.normal(0, 0.01 if layer == "conv1" else 0.1, p["kernel"].shape).astype(np.float32),
                  "bias": np.full(p["bias"].shape, 0.05, np.float32)} for layer, p in shapes.items()}


def _loaded(step):
  return checkpoint.Loaded(arch=TINY, params=_params(step), mean_image=np.full((64, 64, 3), 100.0, np.float32),
                           num_classes=10, class_names=None, step=step, epoch=float(step), config={})


# Fig. 4 ------------------------------------------------------------------------------------------

def test_convergence_per_layer_skips_dead_maps():
  epochs = np.array([1.0, 2.0, 5.0, 10.0])
  result = {"layers": np.array(["conv1", "conv5"]), "epochs": epochs, "num_images": np.int64(20),
            "conv1/all_images": np.array([[3, 3, 3, 3], [1, 4, 4, 4], [2, 2, 5, 5]]),
            "conv1/all_values": np.ones((3, 4)),
            "conv5/all_images": np.array([[1, 2, 3, 4], [0, 1, 1, 2], [0, 0, 0, 0]]),
            "conv5/all_values": np.array([[1.0] * 4, [1.0] * 4, [0.0] * 4])}  # the last map is dead
  c = evolution.convergence(result)
  assert c["conv1"]["median_settled_epoch"] == 2.0 and c["conv1"]["num_dead"] == 0
  assert c["conv1"]["share_settled_by_epoch"] == {"1": 1 / 3, "2": 2 / 3, "5": 1.0, "10": 1.0}
  assert c["conv5"]["median_settled_epoch"] == 10.0 and c["conv5"]["num_dead"] == 1
  assert c["conv5"]["share_settled_by_epoch"]["5"] == 0.0


def test_evolution_records_every_maps_winner_as_topk():
  examples = np.random.default_rng(7).integers(0, 256, (10, 64, 64, 3), dtype=np.uint8)
  result = evolution.compute([_loaded(1), _loaded(2)], examples, layers=["conv2"], num_maps=2, batch_size=4)
  assert result["conv2/all_images"].shape == (8, 2)
  inputs = evolution._inputs(examples, _loaded(2))
  top = topk.scan(TINY, _params(2), inputs, ["conv2"], k=1, batch_size=4)
  np.testing.assert_array_equal(result["conv2/all_images"][:, 1], top["conv2"]["image"][:, 0])
  np.testing.assert_allclose(result["conv2/all_values"][:, 1], top["conv2"]["value"][:, 0], rtol=1e-6)
  summary = evolution.summary(result)
  assert set(summary["convergence"]["conv2"]) >= {"median_settled_epoch", "share_settled_by_epoch", "num_dead"}


# Fig. 5 ------------------------------------------------------------------------------------------

def test_magnitudes_and_r_squared():
  np.testing.assert_allclose(invariance.magnitudes("rotation", [0, 15, 180, 350, 360]), [0, 15, 180, 10, 0])
  np.testing.assert_allclose(invariance.magnitudes("scale", [0.5, 1, 2]), [np.log(2), 0, np.log(2)])
  np.testing.assert_allclose(invariance.magnitudes("translation", [-4, 0, 2]), [4, 0, 2])
  assert invariance.r_squared([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(1.0)
  assert invariance.r_squared([0, 1, 2, 3], [0, 1, 0, 1]) < 0.3
  assert invariance.r_squared([0, 1], [0, 1]) is None


def test_aggregate_on_known_curves():
  values = np.array([-4.0, -2.0, 0.0, 2.0, 4.0])
  mag = np.abs(values)
  step = np.where(mag > 0, 1.0, 0.0)  # "layer 1": jumps at once
  linear = mag / 4  # "layer 7": grows linearly
  result = {"layers": np.array(["conv1", "fc7"]), "predicted": np.array([3, 5]),
            "translation/values": values,
            "translation/distance": np.stack([np.stack([step, step]), np.stack([linear, 2 * linear])]),
            "translation/p_true": np.stack([1 - linear, 1 - linear / 2]),
            "translation/top1": np.array([[3, 3, 3, 3, 3], [5, 5, 5, 1, 5]])}
  a = invariance.aggregate(result, "translation")
  assert (a["smallest"], a["largest"]) == (2.0, 4.0)
  assert a["conv1"]["smallest_over_largest"] == pytest.approx(1.0) and a["conv1"]["mean_at_smallest"] == 1.0
  assert a["fc7"]["mean_at_smallest"] == pytest.approx(0.75) and a["fc7"]["mean_at_largest"] == pytest.approx(1.5)
  assert a["fc7"]["linear_r2"] == pytest.approx(1.0) and a["conv1"]["linear_r2"] < 0.9
  assert a["p_true"]["mean_at_identity"] == 1.0 and a["p_true"]["mean_at_largest"] == pytest.approx(0.25)
  assert a["top1_kept_all"] == 0.5 and a["top1_kept_mean"] == pytest.approx(0.9)


def test_invariance_many_images_summary_and_banded_plot(tmp_path):
  images = np.random.default_rng(0).normal(0, 40, (10, 56, 56, 3)).astype(np.float32)
  sweeps = {"translation": [-4, 0, 4], "scale": [0.8, 1.0, 1.25], "rotation": [0, 90, 180]}
  result = invariance.compute(TINY, _params(3), images, sweeps=sweeps, batch_size=16)
  assert result["translation/examples"].shape[0] == 5 and result["translation/top1"].shape == (10, 3)
  np.testing.assert_array_equal(result["translation/top1"][:, 1], result["predicted"])  # identity keeps the class
  s = invariance.summary(result)
  assert s["num_images"] == 10 and set(s["summary"]) == {"translation", "scale", "rotation"}
  assert 0 <= s["summary"]["rotation"]["top1_kept_all"] <= s["summary"]["rotation"]["top1_kept_mean"] <= 1
  json.dumps(s)
  invariance.plot(result, str(tmp_path / "inv.png"))
  assert (tmp_path / "inv.png").stat().st_size > 0


# Fig. 7 ------------------------------------------------------------------------------------------

def test_chance_is_the_score_of_a_uniformly_random_minimum():
  offsets, size = occlusion.corners(56)
  p = len(offsets)
  boxes = np.array([[10, 5, 40, 30], [0, 0, 56, 56], [50, 50, 56, 56]])
  correct = np.array([True, True, False])
  chance = localization.chance_localization(boxes, correct, offsets, size)
  scores = []
  for i in range(p * p):  # the p(correct) minimum at each position in turn
    p_true = np.ones((3, p, p))
    p_true[:, i // p, i % p] = 0.0
    maps = {"p_true": p_true, "corners": offsets, "size": np.array(size), "labels": np.zeros(3, int),
            "predicted": np.where(correct, 0, 1)}
    scores.append(localization.localization_score(maps, boxes)["score"])
  assert chance["chance"] == pytest.approx(np.mean(scores))
  assert chance["share_inside"][1] == 1.0 and chance["share_inside"][2] == 0.0


def test_support_masks_hold_the_mass():
  proj = np.zeros((1, 2, 2, 3))
  proj[0, :, :, 0] = [[4, -3], [2, 1]]
  np.testing.assert_array_equal(localization.support_masks(proj, 0.5)[0], [[True, True], [False, False]])
  np.testing.assert_array_equal(localization.support_masks(proj, 0.4)[0], [[True, False], [False, False]])
  assert not localization.support_masks(np.zeros((1, 2, 2, 3))).any()
  with pytest.raises(ValueError, match="mass=0"):
    localization.support_masks(proj, 0.0)


def test_support_effect_sees_a_drop_only_where_there_is_one():
  offsets, size = occlusion.corners(56, 14, 7)
  proj = np.zeros((2, 56, 56, 3))
  proj[:, 20:30, 30:40] = 1.0
  covered = localization._square_sums(np.abs(proj).sum(-1), offsets, size)
  dropping = 100.0 - covered / covered.max() * 50  # activity falls with the support's share covered
  effect = localization.support_effect_from(dropping, proj, offsets, size)
  assert effect["num_compared"] == 2 and effect["share_on_below_off"] == 1.0
  assert effect["mean_ratio_on_off"] < 0.9 and effect["median_spearman"] == pytest.approx(-1.0)
  flat = localization.support_effect_from(np.full_like(dropping, 5.0), proj, offsets, size)
  assert flat["mean_ratio_on_off"] == 1.0 and flat["share_on_below_off"] == 0.0 and flat["median_spearman"] is None
  with pytest.raises(ValueError, match="activity has shape"):
    localization.support_effect_from(dropping[:, :-1], proj, offsets, size)


def test_support_effect_on_a_model():
  images = np.random.default_rng(1).normal(0, 40, (2, 56, 56, 3)).astype(np.float32)
  maps = occlusion.occlusion_maps(TINY, _params(4), images, size=28, stride=14, batch_size=9)
  effect = localization.support_effect(TINY, _params(4), images, maps, batch_size=2)
  assert effect["masks"].shape == (2, 56, 56) and effect["masks"].any(axis=(1, 2)).all()
  assert effect["num_images"] == 2 and 0 <= effect["mean_on_share"] <= 1


# Table 1 -----------------------------------------------------------------------------------------

def _fake_tiny(root, names):
  """A Tiny ImageNet shard folder whose val.tar holds random 64-px JPEGs under `names`."""
  os.makedirs(root, exist_ok=True)
  with tarfile.open(os.path.join(root, "val.tar"), "w") as tar:
    for i, name in enumerate(names):
      buffer = io.BytesIO()
      Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), np.uint8)).save(buffer, "JPEG")
      info = tarfile.TarInfo(name)
      info.size = buffer.tell()
      buffer.seek(0)
      tar.addfile(info, buffer)


def test_tiny_sources_load_and_boxes_move_onto_the_center_crop(tmp_path):
  names = ["val/n1/val_1.JPEG", "val/n2/val_2.JPEG"]
  _fake_tiny(str(tmp_path / "tiny"), names)
  spec = {f"tiny:{n}": {"eye": [10, 2, 20, 12], "nose": [30, 30, 40, 40]} for n in names}
  (tmp_path / "parts.json").write_text(json.dumps(spec))
  images, moved, sources = correspondence.load(str(tmp_path / "parts.json"), 56, 64, np.zeros(3),
                                               str(tmp_path / "tiny"))
  assert images.shape == (2, 56, 56, 3) and sources == [f"tiny:{n}" for n in names]
  assert moved["eye"][0] == [6, 0, 16, 8] and moved["nose"][1] == [26, 26, 36, 36]  # -4, clipped at 0
  with pytest.raises(ValueError, match="no val.tar"):
    correspondence.load(str(tmp_path / "parts.json"), 56, 64, np.zeros(3), str(tmp_path))
  (tmp_path / "missing.json").write_text(json.dumps({"tiny:val/n3/val_3.JPEG": {"eye": [0, 0, 9, 9]}}))
  with pytest.raises(ValueError, match="val_3.JPEG is not in"):
    correspondence.load(str(tmp_path / "missing.json"), 56, 64, np.zeros(3), str(tmp_path / "tiny"))


def test_committed_tiny_parts_file():
  sources, parts = correspondence.read_parts(correspondence.PARTS_TINY)
  assert len(sources) >= 8 and all(s.startswith("tiny:val/") for s in sources)
  assert set(parts) == {"left_eye", "right_eye", "nose"}
  for part, boxes in parts.items():
    for box in boxes:  # every part in every face, inside the 56-px center crop (4..60) of the 64-px image
      assert box is not None and 4 <= box[0] < box[2] <= 60 and 4 <= box[1] < box[3] <= 60, (part, box)
  for le, re_ in zip(parts["left_eye"], parts["right_eye"]):
    assert re_[3] <= le[1]  # the subject's right eye is on the viewer's left
  if not os.path.isfile(os.path.join(SHARED_TINY, "val.tar")):
    pytest.skip("no Tiny ImageNet-100 copy")
  with tarfile.open(os.path.join(SHARED_TINY, "val.tar")) as tar:
    members = set(tar.getnames())
  assert all(s[len("tiny:"):] in members for s in sources)


def test_correspondence_summary_states_normalisation_and_comparison():
  images = np.random.default_rng(2).normal(0, 40, (3, 56, 56, 3)).astype(np.float32)
  parts = {"eye": [[10, 10, 20, 20]] * 3}
  result = correspondence.compute(TINY, _params(5), images, parts, layers=["conv5", "fc7"], num_random=2)
  s = correspondence.summary(result)
  assert "section 4.3" in s["paper_normalisation"]
  for layer in ("conv5", "fc7"):
    below = s["parts_below_random"][layer]
    assert below["parts"]["eye"] == (s["rows"]["eye"][layer]["mean"] < s["rows"]["random"][layer]["mean"])


# visualize.py --------------------------------------------------------------------------------------



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two workdirs (one checkpoint each, val top-1 logged) and an ImageFolder of 6 synthetic images."""
  root = tmp_path_factory.mktemp("claims")
  folder = root / "images"
  write_synthetic_folder(str(folder), 6)
  for seed, (name, top1) in enumerate((("a", 0.25), ("b", 0.5))):
    manager = checkpoint.Manager(str(root / name), keep_steps=(2,))
    meta = {"step": 2, "epoch": 1.0, "arch": checkpoint.arch_to_dict(TINY), "num_classes": 10,
            "class_names": list(synthetic.CLASS_NAMES), "config": {"dataset": str(folder), "data_dir": None}}
    manager.save(2, _params(seed + 1), {"momentum": _params(0)},
                 {"mean_image": np.full((64, 64, 3), 120, np.float32), "rng": np.zeros(2, np.uint32)}, meta)
    manager.close()
    (root / name / "metrics.jsonl").write_text(json.dumps({"step": 2, "val_top1": top1}) + "\n")
  return root


def test_filters_compares_several_models_with_their_accuracy(runs, tmp_path):
  checkpoint.save_params_npz(str(tmp_path / "c.npz"), checkpoint.load_for_analysis(str(runs / "b")))
  out = tmp_path / "out"
  assert run_visualize("filters", f"--workdir={runs / 'a'}", f"--compare={runs / 'b'},{tmp_path / 'c.npz'}",
                    f"--out={out}") == 0
  numbers = json.loads((out / "filters.json").read_text())
  assert [v["val_top1"] for v in numbers.values()] == [0.25, 0.5, None]
  assert all("val top-1 0.250" in k for k in list(numbers)[:1]) and all("dead" in v for v in numbers.values())


def test_num_images_zero_scans_the_whole_split(runs, tmp_path):
  out = tmp_path / "out"
  assert run_visualize("topk", f"--workdir={runs / 'a'}", "--num_images=0", "--num_maps=2", "--k=2",
                    "--layers=conv1", f"--out={out}") == 0
  assert json.loads((out / "topk.json").read_text())["num_images"] == 6


def test_correspondence_reads_tiny_parts_from_parts_root(runs, tmp_path):
  names = ["val/n1/val_1.JPEG", "val/n2/val_2.JPEG", "val/n3/val_3.JPEG"]
  _fake_tiny(str(tmp_path / "tiny"), names)
  (tmp_path / "parts.json").write_text(json.dumps({f"tiny:{n}": {"eye": [10, 10, 20, 20]} for n in names}))
  out = tmp_path / "out"
  assert run_visualize("correspondence", f"--workdir={runs / 'a'}", f"--parts={tmp_path / 'parts.json'}",
                    f"--parts_root={tmp_path / 'tiny'}", f"--out={out}") == 0
  numbers = json.loads((out / "correspondence.json").read_text())
  assert numbers["rows"]["eye"]["conv5"]["pairs"] == 3 and "paper_normalisation" in numbers
