"""Bad input and faults (issue 13), one table per surface: the library, train.py and visualize.py.

Every case asserts the exception type (library) or exit status (CLIs), that the one error line names
the culprit and what is allowed, and that nothing was written or changed (a snapshot of every file's
path, size, mtime and mode around the case). The CLIs run in this process with their flags parsed
(visualize.py), or all train.py cases in one child process (its flags clash with visualize.py's), so
the module runs in well under a minute.
"""
import json
import os
import stat
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from jax.experimental import checkify
from PIL import Image

from zf_jax import checkpoint, deconv, models, train_lib
from zf_jax import files as zf_files
from zf_jax.data import checks, datasets, model_inputs, preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from cli import run_visualize  # noqa: E402
from configs import smoke  # noqa: E402

TINY = models.ablate(models.get_arch("zfnet64"), features={
    "conv1": 4, "conv2": 4, "conv3": 4, "conv4": 4, "conv5": 4, "fc6": 8, "fc7": 8}, name="tiny")
CLASSES = ("a", "b")


def _snapshot(*roots):
  """Every file and folder under roots: (path, size, mtime, mode)."""
  out = []
  for root in roots:
    for d, dirs, files in os.walk(root):
      for name in dirs + files:
        path = os.path.join(d, name)
        st = os.lstat(path)
        out.append((path, st.st_size if name in files else 0, st.st_mtime_ns, st.st_mode))
  return sorted(out)


def _png(path, seed, size=64):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _truncate(path, keep=60):
  with open(path, "r+b") as f:
    f.truncate(keep)


def _folder(root, per_class=4, splits=("train", "validation")):
  """An ImageFolder of random 64-px PNGs: root/<split>/<class>/<i>.png."""
  for split in splits:
    for c, name in enumerate(CLASSES):
      for i in range(per_class):
        _png(os.path.join(root, split, name, f"{i}.png"), seed=100 * c + i)
  return str(root)


def _numpy_params(arch, num_classes, seed=0):
  """Params of arch drawn with numpy (no per-shape compilation, unlike jax.random)."""
  rng = np.random.default_rng(seed)
  return {name: {part: rng.normal(0, 0.1, shape).astype(np.float32) for part, shape in parts.items()}
          for name, parts in models.param_shapes(arch, num_classes).items()}


@pytest.fixture(scope="module")
def model():
  params = _numpy_params(TINY, 3)
  images = np.random.default_rng(0).normal(0, 50, (2, 56, 56, 3)).astype(np.float32)
  _, trace = models.forward(TINY, params, images)
  return params, images, trace


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
  """A workdir with one checkpoint of TINY, its .npz, an ImageFolder of 16 validation images, and bad files."""
  root = tmp_path_factory.mktemp("bad_input")
  params, _, _ = model
  manager = checkpoint.Manager(str(root / "workdir"))
  meta = {"step": 2, "epoch": 1.0, "arch": checkpoint.arch_to_dict(TINY), "num_classes": 3,
          "class_names": ["x", "y", "z"], "config": {"dataset": str(root / "images"), "data_dir": None}}
  extras = {"mean_image": np.full((64, 64, 3), 120, np.float32), "rng": np.zeros(2, np.uint32)}
  manager.save(2, jax.tree.map(np.asarray, params), {"m": 0}, extras, meta)
  manager.close()
  for i in range(16):
    _png(str(root / "images" / "validation" / CLASSES[i % 2] / f"{i}.png"), seed=i)
  loaded = checkpoint.load_for_analysis(str(root / "workdir"))
  checkpoint.save_params_npz(str(root / "model.npz"), loaded)
  # Bad files: a params file of the wrong shapes, a truncated .npz, a truncated PNG, a corrupt checkpoint.
  wrong = dict(np.load(root / "model.npz"))
  wrong["params/conv2/kernel"] = np.zeros((5, 5, 4, 4), np.float32)
  np.savez(root / "wrong.npz", **wrong)
  (root / "truncated.npz").write_bytes((root / "model.npz").read_bytes()[:200])
  _png(str(root / "truncated.png"), seed=0)
  _truncate(root / "truncated.png")
  _png(str(root / "folder" / "val" / "a" / "0.png"), seed=0)
  _truncate(root / "folder" / "val" / "a" / "0.png")
  os.system(f"cp -r {root / 'workdir'} {root / 'corrupt'}")
  data_dir = root / "corrupt" / "checkpoints" / "2" / "params" / "ocdbt.process_0" / "d"
  for name in os.listdir(data_dir):
    _truncate(data_dir / name, 10)
  (root / "a_file").write_text("not a folder")
  return root


# --- The library: (call, exception, fragments the message must hold). ---

def _params_with(params, layer, part, value):
  return {**params, layer: {**params[layer], part: value}}


LIBRARY = {
    "forward: a conv kernel of another shape that broadcasts": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "conv2", "kernel", np.zeros((5, 5, 4, 4), "f4")), x),
        ValueError, ["params['conv2']['kernel']", "(5, 5, 4, 4)", "(3, 3, 4, 4)"]),
    "forward: a missing layer": (
        lambda p, x, t, f: models.forward(TINY, {k: v for k, v in p.items() if k != "conv3"}, x), ValueError,
        ["missing: conv3", "takes exactly conv1, conv2, conv3"]),
    "forward: an unknown layer": (
        lambda p, x, t, f: models.forward(TINY, {**p, "conv9": p["conv1"]}, x), ValueError, ["unknown: conv9"]),
    "forward: classifier bias of another width": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "fc8", "bias", np.zeros(5, np.float32)), x),
        ValueError, ["params['fc8']['bias']", "(5,)", "(3,)"]),
    "forward: integer params": (
        lambda p, x, t, f: models.forward(TINY, _params_with(p, "fc7", "bias", np.zeros(8, np.int32)), x),
        ValueError, ["params['fc7']['bias']", "int32", "expects float (8,)"]),
    "forward: params not a dict": (
        lambda p, x, t, f: models.forward(TINY, list(p.values()), x), ValueError, ["params is a list", "conv1"]),
    "forward: a NaN pixel": (
        lambda p, x, t, f: models.forward(TINY, p, np.where(np.arange(2)[:, None, None, None] == 1, np.nan, x)),
        ValueError, ["images 1 of 2", "NaN or Inf", "allowed: finite pixels"]),
    "forward: an Inf pixel (jax array)": (
        lambda p, x, t, f: models.forward(TINY, p, jnp.asarray(x).at[0, 3, 3, 0].set(jnp.inf)), ValueError,
        ["images 0 of 2", "allowed: finite pixels"]),
    "project: channel beyond int32 (no wrap-around)": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", np.int64(2**32 + 1), 1, 1), ValueError,
        ["channel=4294967297", "allowed: 0..3"]),
    "project_many: units beyond int32": (
        lambda p, x, t, f: deconv.project_many(TINY, p, t, "conv1", np.array([[0, 2**31, 0]], np.int64)),
        ValueError, ["y=2147483648", "allowed: 0..27"]),
    "project: channel as a string": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", "3"), ValueError,
        ["channel='3' is not allowed", "allowed: an int"]),
    "project: a float position": (
        lambda p, x, t, f: deconv.project(TINY, p, t, "conv5", 1, 1.5, 1), ValueError, ["y=1.5", "allowed: an int"]),
    "project: params of another arch": (
        lambda p, x, t, f: deconv.project(TINY, _numpy_params(models.get_arch("zfnet64"), 3), t, "conv5", 1),
        ValueError, ["params['conv1']['kernel']", "(7, 7, 3, 4)"]),
    "project_many: units of the wrong shape": (
        lambda p, x, t, f: deconv.project_many(TINY, p, t, "conv5", np.zeros((2, 2), np.int32)), ValueError,
        ["units has shape (2, 2)", "allowed: int [N, 3]"]),
    "checked_project_many under jit: out of range": (
        lambda p, x, t, f: jax.jit(checkify.checkify(
            lambda tr, u: deconv.checked_project_many(TINY, p, tr, "conv5", u)))(t, jnp.array([[9, 0, 0]]))[0].throw(),
        ValueError, ["channel is out of range", "allowed: 0..3"]),
    "receptive_field: a float position": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "conv2", 1.0, 2), ValueError, ["y=1.0", "allowed: an int"]),
    "receptive_field: an fc position that project rejects": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "fc6", 3, 0), ValueError, ["y=3", "'fc6'", "0..0"]),
    "receptive_field: an unknown layer": (
        lambda p, x, t, f: deconv.receptive_field(TINY, "conv9", 0, 0), ValueError, ["layer='conv9'", "allowed"]),
    "ablate: a width of 0": (
        lambda p, x, t, f: models.ablate(TINY, features={"conv3": 0}), ValueError,
        ["features['conv3']=0", "allowed: an int >= 1"]),
    "ablate: the classifier": (
        lambda p, x, t, f: models.ablate(TINY, remove=("fc8",)), ValueError, ["'fc8'", "allowed: conv1"]),
    "get_arch: None": (
        lambda p, x, t, f: models.get_arch(None), ValueError, ["arch=None", "allowed: zfnet, alexnet"]),
    "get_arch: a list": (
        lambda p, x, t, f: models.get_arch(["zfnet"]), ValueError, ["arch=['zfnet']", "allowed: zfnet"]),
    "init_params: 0 classes": (
        lambda p, x, t, f: models.init_params(TINY, jax.random.key(0), 0), ValueError,
        ["num_classes=0", "allowed: an int >= 1"]),
    "load_for_analysis: an npz of the wrong shapes": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "wrong.npz")), ValueError,
        ["params['conv2']['kernel']", "(5, 5, 4, 4)", "(3, 3, 4, 4)"]),
    "load_for_analysis: a truncated npz": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "truncated.npz")), ValueError,
        ["truncated.npz", "corrupt or truncated", "allowed: a .npz written by"]),
    "load_for_analysis: a corrupt checkpoint": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "corrupt")), ValueError,
        [os.path.join("corrupt", "checkpoints", "2"), "corrupt or truncated", "allowed: a complete checkpoint"]),
    "load_for_analysis: a step not there": (
        lambda p, x, t, f: checkpoint.load_for_analysis(str(f / "workdir"), step=3), ValueError,
        ["step=3", "allowed: [2]"]),
    "read_image: a truncated PNG": (
        lambda p, x, t, f: model_inputs.read_image(str(f / "truncated.png")), ValueError,
        ["truncated.png", "allowed: a complete PNG/JPEG"]),
    "ImageFolder: a truncated PNG is named": (
        lambda p, x, t, f: datasets.ImageFolderSource(str(f / "folder"), "val")[0], ValueError,
        [os.path.join("val", "a", "0.png"), "cannot be decoded", "allowed: a complete PNG/JPEG"]),
    "to_rgb: int values beyond 0..255 (no wrap-around)": (
        lambda p, x, t, f: preprocess.to_rgb(np.full((4, 4), 300, np.int32)), ValueError,
        ["values 300..300", "allowed: uint8, uint16, or values in 0..255"]),
    "scan_split: an empty split": (
        lambda p, x, t, f: checks.scan_split([], "val_split='v'", 2, 64), ValueError,
        ["val_split='v' has no images", "allowed"]),
    "scan_split: a label out of range": (
        lambda p, x, t, f: checks.scan_split([{"image": np.zeros((64, 64, 3), np.uint8), "label": 7}], "s", 2, 64),
        ValueError, ["label 7", "allowed: 0..1"]),
    "zf_files.staged: --out is a file": (
        lambda p, x, t, f: zf_files.staged(str(f / "a_file")).__enter__(), ValueError,
        ["a_file", "is a file", "allowed: a folder"]),
}


@pytest.mark.parametrize("name", list(LIBRARY))
def test_library(name, model, files):
  call, error, fragments = LIBRARY[name]
  params, images, trace = model
  before = _snapshot(files)
  with pytest.raises(error) as info:
    call(params, images, trace, files)
  message = str(info.value)
  assert len(message.splitlines()) == 1 and all(f in message for f in fragments), message
  assert _snapshot(files) == before


# --- Training: train_lib.train_and_evaluate on an ImageFolder, every case failing before the first step. ---


def _config(folder, **overrides):
  config = smoke.get_config()
  config.dataset = folder
  config.train_split, config.val_split = "train", "validation"
  config.batch_size, config.eval_batch_size = 4, 4
  config.update(overrides)
  return config


def _empty_class(folder):
  os.makedirs(os.path.join(folder, "train", "c"))


def _empty_val(folder):
  for name in CLASSES:
    for f in os.listdir(os.path.join(folder, "validation", name)):
      os.remove(os.path.join(folder, "validation", name, f))


TRAINING = {
    "num_epochs=0": ({"num_epochs": 0}, None, ["num_epochs=0", "allowed: an int >= 1"]),
    "num_epochs=-1": ({"num_epochs": -1}, None, ["num_epochs=-1", "allowed: an int >= 1"]),
    "negative learning rate": ({"learning_rate": -0.01}, None, ["learning_rate=-0.01", "allowed: a finite number > 0"]),
    "NaN learning rate": ({"learning_rate": float("nan")}, None, ["learning_rate=nan", "allowed"]),
    "momentum 1": ({"momentum": 1.0}, None, ["momentum=1.0", "allowed: 0 <= momentum < 1"]),
    "plateau_factor 1": ({"plateau_factor": 1.0}, None, ["plateau_factor=1.0", "allowed: a finite number > 1"]),
    "min_learning_rate above learning_rate": ({"min_learning_rate": 0.1}, None,
                                              ["min_learning_rate=0.1", "allowed: min_learning_rate <= learning_rate"]),
    "keep_epochs 0": ({"keep_epochs": (0, 2)}, None, ["keep_epochs holds [0]", "allowed: ints >= 1"]),
    "batch larger than the training split": ({"batch_size": 64}, None, ["batch_size=64", "allowed: 1..8"]),
    "an empty class folder": ({}, _empty_class, ["train_split='train'", "class 'c'", "allowed: every class"]),
    "an empty validation split": ({}, _empty_val, ["val_split='validation'", "has no images", "allowed"]),
    "a corrupt validation image": ({}, lambda f: _truncate(os.path.join(f, "validation", "b", "2.png")),
                                   ["val_split='validation'", os.path.join("validation", "b", "2.png"), "allowed"]),
    "a truncated training image": ({}, lambda f: _truncate(os.path.join(f, "train", "a", "3.png")),
                                   ["train_split='train'", os.path.join("train", "a", "3.png"), "allowed"]),
    "a workdir that is a file": ({}, "workdir-file", ["workdir=", "is a file", "allowed: a writable folder"]),
    "a workdir below a file": ({}, "workdir-below-file", ["cannot be created", "is a file", "allowed"]),
    "an unknown dataset": ({"dataset": "no_such_dataset"}, None, ["dataset='no_such_dataset'", "allowed"]),
}


@pytest.mark.parametrize("name", list(TRAINING))
def test_training_fails_before_the_first_step(name, tmp_path):
  overrides, damage, fragments = TRAINING[name]
  folder = _folder(tmp_path / "data")
  workdir = tmp_path / "run"
  if damage == "workdir-file":
    workdir.write_text("x")
  elif damage == "workdir-below-file":
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
  elif damage:
    damage(folder)
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError) as info:
    train_lib.train_and_evaluate(_config(folder, **overrides), str(workdir))
  message = str(info.value)
  assert len(message.splitlines()) == 1 and all(f in message for f in fragments), message
  assert _snapshot(tmp_path) == before  # no workdir, no checkpoints folder, data untouched


def test_absurd_learning_rate_is_a_warning_line(tmp_path):
  records = []
  handler = type("H", (absl_logging.logging.Handler,), {"emit": lambda self, r: records.append(r.getMessage())})()
  absl_logging.get_absl_logger().addHandler(handler)
  try:
    config = _config(str(tmp_path), learning_rate=1e6)
    train_lib.check_config(config, train_lib.build_arch(config))
  finally:
    absl_logging.get_absl_logger().removeHandler(handler)
  assert any("learning_rate=1e+06" in r and "diverge" in r for r in records), records


def test_resume_says_what_is_kept_and_what_is_taken():
  saved = json.loads(json.dumps(_config("x", keep_epochs=(1, 2)).to_dict()))  # as the checkpoint holds it
  meta = {"epoch": 2.0, "config": {**saved, "learning_rate": 0.01, "num_epochs": 2}}
  line = train_lib.resume_summary(meta, _config("x", learning_rate=0.5, num_epochs=4, keep_epochs=(1, 2)), 8, 0.001)
  assert len(line.splitlines()) == 1
  assert "kept from the checkpoint" in line and "learning rate 0.001, not the command's 0.5" in line
  assert "taken from the command: num_epochs=4 (was 2)" in line and "keep_epochs" not in line
  same = train_lib.resume_summary(meta, _config("x", learning_rate=0.01), 8, float(np.float32(0.01)))
  assert "(learning rate 0.01)" in same and "not the command's" not in same


# --- train.py: every case in one child process (train.py's flags clash with visualize.py's in this one). ---

TRAIN_CLI = {
    "a missing config file": (["--config=configs/nope.py", "--workdir={tmp}/run"],
                              ["--config=configs/nope.py cannot be loaded", "No such file", "allowed: a configs/*.py"]),
    "a misspelt config key": (["--config=configs/smoke.py", "--config.nume_epochs=3", "--workdir={tmp}/run"],
                              ["--config.nume_epochs", "did you mean num_epochs?", "allowed: arch, arch_features"]),
    "an unknown config key": (["--config=configs/smoke.py", "--config.colour=red", "--workdir={tmp}/run"],
                              ["--config.colour", "no such key", "allowed: arch"]),
    "a config value of the wrong type": (
        ["--config=configs/smoke.py", "--config.num_epochs=abc", "--workdir={tmp}/run"],
        ["--config.num_epochs=abc", "invalid literal", "allowed: the flags of train.py --helpfull"]),
    "num_epochs=0": (["--config=configs/smoke.py", "--config.num_epochs=0", "--workdir={tmp}/run"],
                     ["num_epochs=0", "allowed: an int >= 1"]),
    "a workdir below a file": (["--config=configs/smoke.py", "--workdir={tmp}/file/run"],
                               ["cannot be created", "allowed: a writable folder"]),
    "an extra argument": (["--config=configs/smoke.py", "--workdir={tmp}/run", "extra"],
                          ["unexpected arguments: extra", "allowed: flags only"]),
}

_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    sys.path.insert(0, {root!r})
    import train
    from absl import flags
    results = {{}}
    for name, argv in json.loads(sys.argv[1]).items():
      flags.FLAGS.unparse_flags()
      for flag in [f for f in flags.FLAGS if f.startswith("config.")]:  # the last case's --config.KEY overrides
        delattr(flags.FLAGS, flag)
      err = io.StringIO()
      code = 0
      sys.argv = ["train.py", *argv]  # ml_collections reads the --config.KEY overrides from sys.argv
      with contextlib.redirect_stderr(err):
        try:
          train.main(train.parse_flags(sys.argv))
        except SystemExit as e:
          code = e.code
      results[name] = [code, err.getvalue()]
    # A corrupt checkpoint, read in a fresh process as visualize.py does: one error, then no stray
    # `Event loop is closed` tracebacks from orbax's other reads (give them time to arrive).
    import time
    from zf_jax import checkpoint
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      try:
        checkpoint.load_for_analysis({corrupt!r})
      except ValueError as e:
        print(f"error: {{e}}", file=sys.stderr)
      time.sleep(1)
    results["corrupt checkpoint"] = [1, err.getvalue()]
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def train_cli(tmp_path_factory, files):
  tmp = tmp_path_factory.mktemp("train_cli")
  (tmp / "file").write_text("x")
  cases = {name: [a.format(tmp=tmp) for a in argv] for name, (argv, _) in TRAIN_CLI.items() if argv}
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  before = _snapshot(tmp)
  driver = _DRIVER.format(root=ROOT, corrupt=str(files / "corrupt"))
  run = subprocess.run([sys.executable, "-c", driver, json.dumps(cases)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1]), _snapshot(tmp) == before


TRAIN_CLI["corrupt checkpoint"] = ([], ["checkpoints/2", "corrupt or truncated", "allowed: a complete checkpoint"])


@pytest.mark.parametrize("name", list(TRAIN_CLI))
def test_train_cli(name, train_cli):
  results, unchanged = train_cli
  code, err = results[name]
  errors = [line for line in err.splitlines() if line.startswith("error: ")]
  assert code == 1 and len(errors) == 1 and "Traceback" not in err, err
  assert all(f in errors[0] for f in TRAIN_CLI[name][1]), errors[0]
  assert unchanged


# --- visualize.py: in this process, with its flags parsed. ---




VISUALIZE = {
    "--params of the wrong shapes": (["topk", "--params={f}/wrong.npz"], ["params['conv2']['kernel']", "(3, 3, 4, 4)"]),
    "a truncated --params": (["filters", "--params={f}/truncated.npz"], ["truncated.npz", "corrupt or truncated"]),
    "a corrupt checkpoint": (["filters", "--workdir={f}/corrupt"], ["checkpoints/2", "corrupt or truncated"]),
    "a truncated --images": (["topk", "--workdir={f}/workdir", "--images={f}/truncated.png"],
                             ["truncated.png", "allowed: a complete PNG/JPEG"]),
    "--out is a file": (["filters", "--workdir={f}/workdir", "--out={f}/a_file"], ["a_file", "allowed: a folder"]),
    "--k=0": (["topk", "--workdir={f}/workdir", "--k=0"], ["k=0", "allowed: 1..16"]),
    "--k beyond the images": (["topk", "--workdir={f}/workdir", "--k=17"], ["k=17", "allowed: 1..16"]),
    "--maps out of range": (["topk", "--workdir={f}/workdir", "--maps=9"], ["maps=9", "allowed: 0..3"]),
    "--maps not integers": (["topk", "--workdir={f}/workdir", "--maps=a"], ["maps=a", "allowed: comma-separated"]),
    "--workdir and --params": (["filters", "--workdir={f}/workdir", "--params={f}/model.npz"],
                               ["exactly one of --workdir", "--params"]),
    "--step with --params": (["filters", "--params={f}/model.npz", "--step=2"], ["--step", "--params is one file"]),
    "--step not in the workdir": (["filters", "--workdir={f}/workdir", "--step=7"], ["step=7", "allowed: [2]"]),
    "an unknown subcommand": (["frobnicate", "--workdir={f}/workdir"], ["'frobnicate'", "allowed: topk"]),
}


@pytest.mark.parametrize("name", list(VISUALIZE))
def test_visualize(name, files, capsys):
  args, fragments = VISUALIZE[name]
  out = files / "out"
  before = _snapshot(files)
  args = [a.format(f=files) for a in args]
  out_flag = [] if any(a.startswith("--out=") for a in args) else [f"--out={out}"]
  assert run_visualize(*args, *out_flag, "--num_images=16", "--num_maps=2", "--batch_size=8") == 2
  stderr = capsys.readouterr().err
  err = [line for line in stderr.splitlines() if "visualize.py" in line]  # besides progress bars
  assert len(err) == 1 and err[0].startswith("visualize.py: error: ") and "Traceback" not in stderr, stderr
  assert all(f in err[0] for f in fragments), err[0]
  assert _snapshot(files) == before


# --- Valid values that used to fail, and the output folder's switch. ---


def test_topk_with_k_2_and_16_images_and_umask_modes(files, capsys):
  out = files / "topk_out"
  os.makedirs(out)
  (out / "keep.txt").write_text("old")
  stale = files / f".topk_out.tmp-{2**22 + 12345}-dead"  # a staging folder of a process that is gone
  os.makedirs(stale)
  old_umask = os.umask(0o022)
  try:
    assert run_visualize("topk", f"--workdir={files}/workdir", f"--out={out}", "--num_images=16", "--k=2",
                      "--num_maps=2", "--layers=conv1,conv5", "--batch_size=8") == 0
  finally:
    os.umask(old_umask)
  capsys.readouterr()
  assert sorted(os.listdir(out)) == ["keep.txt", "topk.json", "topk_conv1.png", "topk_conv5.png"]
  assert not [e for e in os.listdir(files) if ".tmp-" in e]
  assert stat.S_IMODE(os.stat(out / "topk.json").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o755


def test_sixteen_bit_grayscale_png_keeps_its_tones(tmp_path):
  ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0..65520
  Image.fromarray(ramp).save(tmp_path / "g16.png")
  image = model_inputs.read_image(str(tmp_path / "g16.png"))
  assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
  np.testing.assert_allclose(image[..., 0], ramp / 257, atol=1)
