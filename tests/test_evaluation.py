"""Evaluating trained checkpoints (zf_jax.evaluation) and the tables built on it: Table 3 (analysis.ablation)
and Table 2 (analysis.ensemble), on two seconds-long runs of configs/smoke.py."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from zf_jax import checkpoint, evaluation, metrics, models, run_record, train_lib
from zf_jax.analysis import ablation, ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import smoke  # noqa: E402

# configs/smoke.py's widths, and the same with conv3, conv4 removed.
BASE_PARAMS = (7 * 7 * 3 * 8 + 8) + 4 * (3 * 3 * 8 * 8 + 8) + (3 * 3 * 8 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)
NO_CONV34_PARAMS = BASE_PARAMS - 2 * (3 * 3 * 8 * 8 + 8)


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """Two smoke runs (2 epochs of 4 steps, 10-crop validation on 16 images): the base and one without conv3, conv4."""
  root = tmp_path_factory.mktemp("runs")
  base = smoke.get_config()
  ablated = smoke.get_config()
  ablated.arch = "zfnet64-no-conv34"
  ablated.arch_features = {k: v for k, v in ablated.arch_features.items() if k not in ("conv3", "conv4")}
  ablated.seed = 1
  for name, config in (("base", base), ("no-conv34", ablated)):
    train_lib.train_and_evaluate(config, str(root / name))
  return str(root / "base"), str(root / "no-conv34")


def _last_val(workdir, step=None):
  return [r for r in metrics.read(workdir) if "val_top1" in r and (step is None or r["step"] == step)][-1]


def test_accuracy_equals_the_runs_own_10_crop_validation(workdirs):
  for workdir in workdirs:
    result = evaluation.evaluate_checkpoint(workdir, "val", 10, use_cache=False)
    logged = _last_val(workdir)
    assert (result["top1"], result["top5"], result["num_images"]) == (logged["val_top1"], logged["val_top5"], 16)


def test_ablation_table_reads_each_workdirs_metrics_and_checkpoint(workdirs):
  result = ablation.compute(workdirs, use_cache=False)
  assert result["arch"] == ["zfnet64-custom", "zfnet64-no-conv34-custom"]
  assert result["change"] == ["(base)", "removed conv3,conv4, seed 0→1"]
  assert result["variant"] == ["(base)", "removed conv3,conv4"] and list(result["seed"]) == [0, 1]
  assert list(result["num_params"]) == [BASE_PARAMS, NO_CONV34_PARAMS]
  assert list(result["epoch"]) == [2.0, 2.0] and list(result["step"]) == [8, 8]
  for i, workdir in enumerate(workdirs):
    logged = _last_val(workdir)
    assert (result["metrics_val_top1"][i], result["metrics_val_top5"][i]) == (logged["val_top1"], logged["val_top5"])
    assert (result["val_top1"][i], result["val_top5"][i]) == (logged["val_top1"], logged["val_top5"])
  assert list(result["train_images"]) == [64, 64] and list(result["val_images"]) == [16, 16]
  assert np.isnan(result["paper_val_top1_error"]).all()  # "-custom" widths: no paper row
  rows = json.loads(json.dumps(ablation.summary(result)))["rows"]
  assert rows[1]["val_top1_error"] == pytest.approx(100 * (1 - result["val_top1"][1]))
  at_epoch_1 = ablation.compute(workdirs[:1], epoch=1, train_images=10, use_cache=False)
  assert list(at_epoch_1["step"]) == [4] and list(at_epoch_1["train_images"]) == [10]
  assert at_epoch_1["metrics_val_top1"][0] == _last_val(workdirs[0], step=4)["val_top1"]


def test_train_accuracy_is_the_center_crop_of_training_images(workdirs):
  model = checkpoint.load_for_analysis(workdirs[0])
  source = evaluation.split_source(model, "train")
  probs, labels = evaluation.probabilities(model, source, num_crops=1, batch_size=16)
  result = evaluation.evaluate_checkpoint(workdirs[0], "train", 1, use_cache=False)
  assert result["top1"] == evaluation.topk_accuracy(probs, labels, 1) and result["num_images"] == 64


def test_evaluations_are_cached_in_the_workdir(workdirs, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(workdirs[0], workdir)
  first = evaluation.evaluate_checkpoint(workdir, "val", 10)
  key = evaluation.cache_key(8, "validation[:16]", 10, None)
  assert evaluation.read_cache(workdir) == {key: first}
  with open(os.path.join(workdir, evaluation.CACHE_FILE), "w") as f:  # a cached value is returned as it is
    json.dump({key: {**first, "top1": 0.5}}, f)
  assert evaluation.evaluate_checkpoint(workdir, "val", 10)["top1"] == 0.5
  assert evaluation.evaluate_checkpoint(workdir, "val", 1)["num_crops"] == 1
  assert len(evaluation.read_cache(workdir)) == 2
  assert not [f for f in os.listdir(workdir) if f.startswith(".tmp-")]


def test_describe_change_and_paper_rows():
  base = models.get_arch("zfnet64")
  assert ablation.describe_change(base, models.get_arch("zfnet64-fc-double")) == "fc6,fc7 512→1024"
  assert ablation.describe_change(base, models.get_arch("zfnet64-no-fc67")) == "removed fc6,fc7"
  assert (ablation.describe_change(base, models.get_arch("zfnet64-wide-conv345"))
          == "conv3,conv4,conv5 192/192/128→256/512/256")
  assert (ablation.describe_change(base, models.get_arch("alexnet64"))
          == "conv1 7×7/2→11×11/4, conv2 3×3/1→5×5/1")
  assert ablation.describe_change(base, base, {"filter_rms_radius": 0.1}, {"filter_rms_radius": 0.0}) == \
      "filter_rms_radius 0.1→0.0"
  assert ablation.describe_change(base, base, {"seed": 0}, {"seed": 0}) == "none"
  assert ablation.paper_row("zfnet64")[1:] == (38.4, 16.5)
  assert ablation.paper_row("zfnet64-fc-half")[1:] == (40.2, 17.6)
  assert ablation.paper_row("zfnet64-no-conv34")[0].startswith("Krizhevsky")  # the paper removed them there only
  assert ablation.paper_row("alexnet64-no-fc7")[1:] == (40.0, 18.4)
  assert ablation.paper_row("zfnet64", {"filter_rms_radius": 0.0}) is None
  assert ablation.paper_row("zfnet64-custom") is None


def _seeded_result(val_top1):
  """A compute() result of runs named by variant: {variant: [val top-1 accuracy per seed]} (base first)."""
  rows = [(variant, seed, acc) for variant, accs in val_top1.items() for seed, acc in enumerate(accs)]
  n = len(rows)
  return {"workdirs": [f"/runs/{v}-{s}" for v, s, _ in rows], "arch": [f"zfnet64-{v}" for v, _, _ in rows],
          "change": ["(base)"] + [v for v, _, _ in rows[1:]], "variant": [v for v, _, _ in rows],
          "seed": np.array([s for _, s, _ in rows]), "epoch": np.full(n, 24.0),
          "val_top1": np.array([a for _, _, a in rows]), "val_top5": np.array([a + 0.3 for _, _, a in rows]),
          "train_top1": np.array([a + 0.05 for _, _, a in rows])}


def test_seeds_of_a_variant_are_grouped_and_judged_against_the_seed_noise():
  from scipy import stats
  result = _seeded_result({"(base)": [0.45, 0.44, 0.46], "removed fc6,fc7": [0.48, 0.47, 0.49],
                           "removed conv3,conv4": [0.452, 0.43, 0.47], "one seed": [0.40]})
  groups = ablation.variants(result)
  assert [g["variant"] for g in groups] == ["(base)", "removed fc6,fc7", "removed conv3,conv4", "one seed"]
  assert [g["n"] for g in groups] == [3, 3, 3, 1] and groups[1]["seeds"] == [0, 1, 2]
  base_errors = np.array([55.0, 56.0, 54.0])
  np.testing.assert_allclose(groups[0]["val_top1_error"]["mean"], 55.0)
  np.testing.assert_allclose(groups[0]["val_top1_error"]["std"], base_errors.std(ddof=1))
  assert (groups[0]["val_top1_error"]["min"], groups[0]["val_top1_error"]["max"]) == pytest.approx((54.0, 56.0))
  assert "vs_base" not in groups[0]
  clear, noisy, single = (g["vs_base"]["val_top1_error"] for g in groups[1:])
  assert clear["difference"] == pytest.approx(-3.0) and clear["beyond_seed_noise"] is True
  # Welch's t by hand: difference of means over the root of the summed variances of the means.
  a, b = np.array([52.0, 53.0, 51.0]), base_errors
  t = (a.mean() - b.mean()) / np.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
  assert clear["welch_t"] == pytest.approx(t) and clear["p_value"] == pytest.approx(
      stats.ttest_ind(a, b, equal_var=False).pvalue)
  assert clear["pooled_std"] == pytest.approx(1.0)
  assert noisy["beyond_seed_noise"] is False and noisy["p_value"] > 0.05  # 0.9 points against a 2-point spread
  assert single["difference"] == pytest.approx(5.0) and single["p_value"] is None  # one seed: no test
  assert single["beyond_seed_noise"] is None and groups[3]["val_top1_error"]["std"] == 0.0
  # Variants with seeds are also judged against each other (not the base again; not a one-seed variant).
  assert "vs_variants" not in groups[1] and "vs_variants" not in groups[3]
  between = groups[2]["vs_variants"]
  assert list(between) == ["removed fc6,fc7"]
  c = np.array([54.8, 57.0, 53.0])
  assert between["removed fc6,fc7"]["val_top1_error"]["difference"] == pytest.approx(c.mean() - a.mean())
  assert between["removed fc6,fc7"]["val_top1_error"]["p_value"] == pytest.approx(
      stats.ttest_ind(c, a, equal_var=False).pvalue)
  json.dumps(groups, allow_nan=False)  # strict JSON: no NaN where a test cannot be made


def test_the_seeds_figure_is_drawn(tmp_path):
  ablation.plot_variants(_seeded_result({"(base)": [0.45, 0.44], "removed fc6,fc7": [0.48, 0.47]}),
                         str(tmp_path / "seeds.png"))
  assert (tmp_path / "seeds.png").stat().st_size > 10_000


def test_num_params_counts_every_weight_and_bias():
  arch = models.get_arch("zfnet64-fc-double")
  params = jax.eval_shape(lambda: models.init_params(arch, jax.random.key(0), num_classes=100))
  fc = (3 * 3 * 128 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 * 100 + 100)
  convs = (7 * 7 * 3 * 48 + 48) + (3 * 3 * 48 * 96 + 96) + (3 * 3 * 96 * 192 + 192) + (3 * 3 * 192 * 192 + 192) \
      + (3 * 3 * 192 * 128 + 128)
  assert run_record.num_params(params) == convs + fc


def test_ensemble_of_one_equals_the_model(workdirs):
  result = ensemble.compute(workdirs[:1])
  model = checkpoint.load_for_analysis(workdirs[0])
  alone = evaluation.accuracy(model, evaluation.split_source(model, "val"))
  assert (result["top1"], result["top5"]) == (alone["top1"], alone["top5"])
  assert (result["member_top1"][0], result["member_top5"][0]) == (alone["top1"], alone["top5"])
  probs, labels = evaluation.probabilities(model, evaluation.split_source(model, "val"))
  np.testing.assert_array_equal(result["probabilities"], probs)
  np.testing.assert_array_equal(result["labels"], labels)


def test_ensemble_averages_its_members_softmax(workdirs):
  result = ensemble.compute(workdirs)
  members = [evaluation.probabilities(m, evaluation.split_source(m, "val"))[0]
             for m in map(checkpoint.load_for_analysis, workdirs)]
  np.testing.assert_allclose(result["probabilities"], (members[0] + members[1]) / 2, rtol=1e-6)
  assert result["top1"] == evaluation.topk_accuracy((members[0] + members[1]) / 2, result["labels"], 1)
  assert result["cumulative_top1"][0] == result["member_top1"][0]
  summary = json.loads(json.dumps(ensemble.summary(result)))
  assert [row["members"] for row in summary["first_k"]] == [1, 2] and summary["num_images"] == 16
  alone = [100 * (1 - t) for t in result["member_top1"]]
  assert [row["single_mean_val_top1_error"] for row in summary["first_k"]] == pytest.approx([alone[0], np.mean(alone)])


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
  """A workdir whose checkpoint has 5 classes (no training needed to be refused)."""
  workdir = str(tmp_path_factory.mktemp("five") / "workdir")
  arch = train_lib.build_arch(smoke.get_config())
  params = models.init_params(arch, jax.random.key(0), num_classes=5)
  manager = checkpoint.Manager(workdir)
  meta = {"step": 1, "epoch": 1.0, "arch": checkpoint.arch_to_dict(arch), "num_classes": 5,
          "class_names": [str(i) for i in range(5)], "config": {"dataset": "synthetic"}}
  manager.save(1, params, {"momentum": params}, {"mean_image": np.zeros((64, 64, 3), np.float32),
                                                 "rng": np.zeros(2, np.uint32)}, meta)
  manager.close()
  return workdir


def test_ensemble_of_different_class_counts_is_refused(workdirs, five_classes):
  with pytest.raises(ValueError, match=r"has 5 classes and .* 10; an ensemble's members must share their classes"):
    ensemble.compute([workdirs[0], five_classes])


@pytest.fixture(scope="module")
def records(workdirs, tmp_path_factory):
  """The run records of both workdirs, as `python -m zf_jax.run_record` writes them."""
  root = tmp_path_factory.mktemp("records")
  out = [str(root / os.path.basename(w)) for w in workdirs]
  for workdir, folder in zip(workdirs, out):
    written = run_record.write(checkpoint.load_for_analysis(workdir), folder, workdir)
    assert sorted(map(os.path.basename, written)) == ["evaluation.json", "metrics.jsonl", "val_probabilities.npz"]
  return out


def test_tables_from_run_records_equal_those_from_the_checkpoints(workdirs, records):
  live, kept = ablation.compute(workdirs, use_cache=False), ablation.compute(records)
  for key in ("arch", "change", "variant", "num_params", "step", "seed", "epoch", "train_top1", "val_top1", "val_top5",
              "train_images", "val_images", "metrics_val_top1", "metrics_step"):
    np.testing.assert_array_equal(kept[key], live[key], err_msg=key)
  live, kept = ensemble.compute(workdirs), ensemble.compute(records)
  np.testing.assert_allclose(kept["probabilities"], live["probabilities"], atol=1e-3)  # stored as float16
  np.testing.assert_array_equal(kept["labels"], live["labels"])
  assert (kept["top1"], kept["top5"]) == (live["top1"], live["top5"])
  mixed = ensemble.compute([records[0], workdirs[1]], max_images=8)
  assert len(mixed["labels"]) == 8
  np.testing.assert_array_equal(mixed["labels"], live["labels"][evaluation.spaced_indices(16, 8)])


def test_ablation_takes_an_exported_params_file(workdirs, tmp_path):
  """A .npz (checkpoint.save_params_npz) is evaluated without a cache: there is no folder to keep one in."""
  npz = str(tmp_path / "no-conv34.npz")
  checkpoint.save_params_npz(npz, checkpoint.load_for_analysis(workdirs[1]))
  result = ablation.compute([workdirs[0], npz])
  live = ablation.compute(workdirs, use_cache=False)
  np.testing.assert_array_equal(result["val_top1"], live["val_top1"])
  assert sorted(os.listdir(tmp_path)) == ["no-conv34.npz"]


def test_run_records_refuse_what_they_do_not_hold(workdirs, records, tmp_path):
  with pytest.raises(ValueError, match=r"epoch=1 is not allowed for the run record .*; allowed: its epoch 2"):
    ablation.compute(records, epoch=1)
  with pytest.raises(ValueError, match=r"train_images=4 is not allowed with the run record"):
    ablation.compute(records, train_images=4)
  with pytest.raises(ValueError, match=r"num_crops=1 is not allowed with the run record"):
    ensemble.compute(records, num_crops=1)
  with pytest.raises(ValueError, match=r"holds the metrics.jsonl of another run than"):
    run_record.write(checkpoint.load_for_analysis(workdirs[1]), records[0], workdirs[1])
  with pytest.raises(ValueError, match=r"holds the metrics.jsonl of a run without step"):
    (tmp_path / "metrics.jsonl").write_text('{"step": 999, "val_top1": 0.5}\n')  # another run's
    run_record.write(checkpoint.load_for_analysis(workdirs[0]), str(tmp_path))
  broken = tmp_path / "broken"
  shutil.copytree(records[1], broken)
  with open(broken / "val_probabilities.npz", "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match=r"val_probabilities.npz is not the file its evaluation.json was written with"):
    ensemble.compute([records[0], str(broken)])
  data = np.load(os.path.join(records[1], "val_probabilities.npz"))
  np.savez(broken / "val_probabilities.npz", probabilities=data["probabilities"], labels=data["labels"][::-1])
  record = json.loads((broken / "evaluation.json").read_text())
  digest = hashlib.sha256((broken / "val_probabilities.npz").read_bytes()).hexdigest()
  (broken / "evaluation.json").write_text(json.dumps({**record, "probabilities_sha256": digest}))
  with pytest.raises(ValueError, match=r"was evaluated on other validation images than"):
    ensemble.compute([records[0], str(broken)])
  (broken / "evaluation.json").write_text(json.dumps({**record, "record_version": 99}))
  with pytest.raises(ValueError, match=r"record_version 99, this zf_jax reads 1"):
    ablation.compute([str(broken)])


def _visualize(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  process = subprocess.run([sys.executable, os.path.join(ROOT, "visualize.py"), *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
  return process.returncode, process.stdout, process.stderr


@pytest.mark.slow
def test_visualize_ablation_and_ensemble_end_to_end(workdirs, five_classes, tmp_path):
  code, _, err = _visualize("ablation", f"--workdirs={','.join(workdirs)}", f"--out={tmp_path / 'table3'}",
                            "--train_images=32")
  assert code == 0, err[-3000:]
  assert sorted(os.listdir(tmp_path / "table3")) == ["ablation.json", "ablation.png", "index.html"]
  rows = json.loads((tmp_path / "table3" / "ablation.json").read_text())["rows"]
  assert [r["change"] for r in rows] == ["(base)", "removed conv3,conv4, seed 0→1"] and rows[0]["train_images"] == 32
  assert 'src="ablation.png"' in (tmp_path / "table3" / "index.html").read_text()

  code, _, err = _visualize("ensemble", f"--workdirs={','.join(workdirs)}")  # default --out: W1/figures/ensemble
  assert code == 0, err[-3000:]
  out = os.path.join(workdirs[0], "figures", "ensemble")
  assert sorted(os.listdir(out)) == ["ensemble.json", "ensemble.png", "index.html"]
  assert json.loads(open(os.path.join(out, "ensemble.json")).read())["ensemble"]["members"] == 2

  code, _, err = _visualize("ensemble", f"--workdirs={workdirs[0]},{five_classes}", f"--out={tmp_path / 'bad'}")
  assert code == 2 and err.strip().count("\n") == 0 and err.startswith("visualize.py: error: ")
  assert "classes" in err and not os.path.exists(tmp_path / "bad")


@pytest.mark.slow
def test_run_record_command_end_to_end(workdirs, tmp_path):
  command = [sys.executable, "-m", "zf_jax.run_record", f"--workdir={workdirs[0]}", f"--out={tmp_path / 'rec'}"]
  process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert process.returncode == 0, process.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "rec")) == ["evaluation.json", "metrics.jsonl", "val_probabilities.npz"]
  code, _, err = _visualize("ablation", f"--workdirs={tmp_path / 'rec'},{workdirs[1]}", f"--out={tmp_path / 't3'}")
  assert code == 0, err[-3000:]
  process = subprocess.run([*command[:3], f"--workdir={tmp_path / 'none'}", f"--out={tmp_path / 'rec2'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
  assert process.returncode == 2 and process.stderr.startswith("run_record: error: ")
  assert process.stderr.strip().count("\n") == 0 and not os.path.exists(tmp_path / "rec2")
