"""Training as section 3 of the paper: `train_and_evaluate(config, workdir)`.

  * SGD with momentum 0.9 (optax), learning rate 1e-2, mini-batches of 128, cross-entropy loss,
    dropout 0.5 in fc6/fc7, weights N(0, 1e-2^2) and biases 0 (configurable per layer).
  * Feature scale clipping: after every update, each conv filter whose RMS exceeds `radius` (0.1)
    is scaled back to it (`clip_filter_rms`); `config.filter_rms_radius = 0` turns it off (Fig. 6(a)).
  * Plateau annealing, the paper's manual "anneal when the validation error plateaus" made a rule
    (`anneal_on_plateau`): after every epoch the validation top-1 error is compared with the best so
    far; after `plateau_patience` epochs in a row without an improvement of more than
    `plateau_min_delta`, the learning rate is divided by `plateau_factor` (10), not below
    `min_learning_rate`. The learning rate lives in the optimizer state (`optax.inject_hyperparams`),
    the plateau counters in the checkpoint's metadata.
  * Data: `input_pipeline` (random crops and flips, per-pixel mean subtraction; 10-crop validation
    with top-1 and top-5). Batch `step` is a pure function of (seed, step), and each checkpoint holds
    the step, so a run killed at any moment and restarted ends with the same parameters.
  * Devices: data parallel over every device of every process through `jax.sharding` (a 1-D Mesh
    "data"; parameters replicated, batches split). Multi-host runs call `jax.distributed.initialize()`
    first (train.py --multihost); each process then loads only its share of every batch.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from zf_jax import checkpoint, data, input_pipeline, metrics, models

Params = models.Params


class NonFiniteLossError(RuntimeError):
  """The training loss became NaN or infinite; the run stops, keeping its last good checkpoint."""


CheckpointSaveError = checkpoint.SaveError  # a checkpoint could not be written; the earlier ones are kept


def clip_filter_rms(params: Params, radius: float = 0.1) -> Params:
  """Feature scale clipping (section 3): conv filters with RMS > radius are rescaled to RMS = radius.

  A filter is one output channel of a conv kernel: kernel[:, :, :, o], its RMS taken over the
  k * k * in weights. Dense layers and biases are unchanged. Pure and jittable.

  Args:
    params: {layer: {"kernel", "bias"}}; conv kernels are HWIO [k, k, in, out].
    radius: the largest RMS allowed.

  Returns:
    params with every conv kernel's filters clipped.
  """
  def clip(kernel):
    rms = jnp.sqrt(jnp.mean(jnp.square(kernel), axis=(0, 1, 2), keepdims=True))
    return kernel * jnp.minimum(1.0, radius / jnp.maximum(rms, 1e-12))
  return {name: {**layer, "kernel": clip(layer["kernel"])} if layer["kernel"].ndim == 4 else layer
          for name, layer in params.items()}


def anneal_on_plateau(state: Mapping[str, float], val_error: float, learning_rate: float,
                      config: ml_collections.ConfigDict) -> tuple[dict[str, float], float]:
  """The learning-rate rule applied after each epoch's validation.

  Args:
    state: {"best_error", "bad_epochs"} from the previous epoch ({} at the start).
    val_error: this epoch's validation top-1 error in [0, 1].
    learning_rate: the current rate.
    config: plateau_patience, plateau_factor, plateau_min_delta, min_learning_rate.

  Returns:
    (new state, new learning rate): the rate divided by plateau_factor (not below
    min_learning_rate) after plateau_patience epochs in a row without val_error < best - min_delta.
    A plateau reached with the rate already at min_learning_rate sets state["converged"] = True
    (it stays set until an improvement): the rule has nothing left to try (train_and_evaluate stops there if
    config.stop_when_converged).
  """
  best, bad = state.get("best_error", float("inf")), int(state.get("bad_epochs", 0))
  if val_error < best - config.plateau_min_delta:
    return {"best_error": val_error, "bad_epochs": 0}, learning_rate
  bad += 1
  converged = bool(state.get("converged", False))
  if bad >= config.plateau_patience:
    converged = converged or learning_rate <= config.min_learning_rate
    return ({"best_error": best, "bad_epochs": 0, "converged": converged},
            max(learning_rate / config.plateau_factor, config.min_learning_rate))
  return {"best_error": best, "bad_epochs": bad, "converged": converged}, learning_rate


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum (and optional L2 weight decay); the learning rate is a state hyperparameter."""
  def sgd(learning_rate):
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(learning_rate, momentum=config.momentum))
  return optax.inject_hyperparams(sgd)(learning_rate=config.learning_rate)


def get_learning_rate(opt_state: Any) -> float:
  """The current learning rate, stored in the optimizer state by `make_optimizer`."""
  return float(opt_state.hyperparams["learning_rate"])


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
  """The optimizer state with a new learning rate (same dtype and sharding)."""
  old = opt_state.hyperparams["learning_rate"]
  new = jax.device_put(jnp.asarray(learning_rate, old.dtype), old.sharding)
  return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": new})


def build_arch(config: ml_collections.ConfigDict) -> models.Arch:
  """config.arch (a name of `models.ARCH_NAMES`) with config.arch_features widths, if any."""
  arch = models.get_arch(config.arch)
  features = dict(config.get("arch_features") or {})
  return models.ablate(arch, features=features, name=f"{arch.name}-custom") if features else arch


def paper_gain_std(arch: models.Arch, reference: models.Arch, std: float = 0.01) -> dict[str, float]:
  """{layer: std'} giving every conv/fc layer of `arch` the gain std * sqrt(fan_in) it has in `reference`.

  For the 64-px models: the paper's N(0, 0.01^2) (section 3) on zfnet's wide layers, carried over to
  zfnet64's narrower ones (std' = 0.01 * sqrt(fan_in in zfnet / fan_in in zfnet64)).
  """
  def fan_ins(a: models.Arch) -> dict[str, int]:
    shapes, previous, out = a.shapes(), (a.input_size, a.input_size, 3), {}
    for layer in a.layers:
      if isinstance(layer, models.Conv):
        out[layer.name] = layer.kernel * layer.kernel * previous[-1]
      elif isinstance(layer, models.Dense):
        out[layer.name] = int(np.prod(previous))
      previous = shapes[layer.name]
    return out
  small, large = fan_ins(arch), fan_ins(reference)
  return {name: round(std * float(np.sqrt(large[name] / small[name])), 5) for name in small}


def per_layer_values(config: ml_collections.ConfigDict, arch: models.Arch, name: str) -> dict[str, float]:
  """{layer: value}: config[name] for every conv/fc layer, or config["layer_" + name][layer] if given."""
  overrides = dict(config.get("layer_" + name) or {})
  unknown = sorted(set(overrides) - set(arch.activation_names))
  if unknown:
    raise ValueError(f"layer_{name} names {unknown}, not layers of {arch.name!r}; "
                     f"allowed: {', '.join(arch.activation_names)}")
  return {layer: float(overrides.get(layer, config[name])) for layer in arch.activation_names}


def train_step(arch: models.Arch, tx: optax.GradientTransformation, radius: float, params: Params,
               opt_state: Any, images: jax.Array, labels: jax.Array, step: jax.Array,
               key: jax.Array, compute_dtype: Any = jnp.float32) -> tuple[Params, Any, dict[str, jax.Array]]:
  """One SGD step on a batch, then feature scale clipping (section 3).

  Args:
    arch, tx, radius: the model, optimizer and clipping radius (0: no clipping); static.
    params, opt_state: the state (float32, whatever compute_dtype).
    images: float32 [B, S, S, 3] mean-subtracted crops; labels: int32 [B].
    step: the global step (int32 []), folded into `key` for dropout.
    key: the run's base key.
    compute_dtype: of the forward and backward passes (activations, convolutions: float32 or bfloat16);
      the parameters are cast to it inside the step, the loss and softmax stay float32.

  Returns:
    new params, new opt_state and {"loss", "accuracy"} of the batch (before the update).
  """
  def loss_fn(p):
    p, x = jax.tree.map(lambda a: a.astype(compute_dtype), (p, images))
    logits, _ = models.forward(arch, p, x, train=True, rng=jax.random.fold_in(key, step))
    logits = logits.astype(jnp.float32)
    return optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = tx.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  if radius:
    params = clip_filter_rms(params, radius)
  return params, opt_state, {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def eval_step(arch: models.Arch, params: Params, crops: jax.Array, labels: jax.Array,
              mask: jax.Array, compute_dtype: Any = jnp.float32) -> jax.Array:
  """Top-1 and top-5 hits of a batch, softmax averaged over each image's crops (section 3).

  Args:
    crops: float32 [B, N, S, S, 3] (N = 1 or 10 crops per image); labels int32 [B]; mask bool [B].
    compute_dtype: of the forward pass (see `train_step`); the softmax is float32.

  Returns:
    int32 [3]: (top-1 hits, top-5 hits, images) among the unmasked.
  """
  b, n = crops.shape[:2]
  params, crops = jax.tree.map(lambda a: a.astype(compute_dtype), (params, crops))
  logits, _ = models.forward(arch, params, crops.reshape(b * n, *crops.shape[2:]))
  probs = jax.nn.softmax(logits.astype(jnp.float32)).reshape(b, n, -1).mean(axis=1)
  _, top = jax.lax.top_k(probs, min(5, probs.shape[-1]))
  hits = top == labels[:, None]
  return jnp.stack([jnp.sum(hits[:, 0] & mask), jnp.sum(hits.any(-1) & mask), jnp.sum(mask)]).astype(jnp.int32)


# (key, test, what is allowed): numbers a config must hold, checked before anything is read or written.
_CONFIG_RULES = (
    ("num_epochs", lambda v: v >= 1, "an int >= 1"),
    ("learning_rate", lambda v: np.isfinite(v) and v > 0, "a finite number > 0 (the paper: 1e-2)"),
    ("min_learning_rate", lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("momentum", lambda v: 0 <= v < 1, "0 <= momentum < 1 (the paper: 0.9)"),
    ("weight_decay", lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("weight_std", lambda v: np.isfinite(v) and v > 0, "a finite number > 0 (the paper: 1e-2)"),
    ("bias_init", lambda v: np.isfinite(v), "a finite number (the paper: 0)"),
    ("filter_rms_radius", lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0 (0: no clipping)"),
    ("plateau_patience", lambda v: v >= 1, "an int >= 1"),
    ("plateau_factor", lambda v: np.isfinite(v) and v > 1, "a finite number > 1"),
    ("plateau_min_delta", lambda v: np.isfinite(v) and v >= 0, "a finite number >= 0"),
    ("log_every_steps", lambda v: v >= 1, "an int >= 1"),
    ("checkpoint_every_steps", lambda v: v >= 0, "an int >= 0 (0: at epoch ends only)"),
    ("seed", lambda v: v >= 0, "an int >= 0"),
    ("train_per_class", lambda v: v >= 0, "an int >= 0 (images per class; 0: all)"),
    ("train_per_class_fold", lambda v: v >= 0, "an int >= 0"),
    ("train_per_class_seed", lambda v: v >= 0, "an int >= 0"),
    ("train_per_class_holdout", lambda v: v >= 0, "an int >= 0"),
    ("image_size", lambda v: v >= 1, "an int >= 1"),
)
_INT_KEYS = {"num_epochs", "plateau_patience", "log_every_steps", "checkpoint_every_steps", "seed", "train_per_class",
             "train_per_class_fold", "train_per_class_seed", "train_per_class_holdout", "image_size"}
ABSURD_LEARNING_RATE = 1.0  # 100 x the paper's 1e-2: a warning (the loss is bound to diverge), not an error


def check_config(config: ml_collections.ConfigDict, arch: models.Arch) -> None:
  """Raises one ValueError naming the first config value that cannot work, and what is allowed; logs a
  warning for an absurd learning rate. Reads nothing and writes nothing (train_and_evaluate calls it first)."""
  for name, valid, allowed in _CONFIG_RULES:
    value = config.get(name)
    kinds = (int, np.integer) if name in _INT_KEYS else (int, float, np.integer, np.floating)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or not valid(value)):
      raise ValueError(f"{name}={value!r} is not allowed; allowed: {allowed}")
  for name in ("weight_std", "bias_init"):
    for layer, value in dict(config.get("layer_" + name) or {}).items():
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or \
          (name == "weight_std" and value <= 0):
        raise ValueError(f"layer_{name}.{layer}={value!r} is not allowed; allowed: a finite number"
                         f"{' > 0' if name == 'weight_std' else ''}")
  if config.min_learning_rate > config.learning_rate:
    raise ValueError(f"min_learning_rate={config.min_learning_rate:g} is above learning_rate={config.learning_rate:g}; "
                     "allowed: min_learning_rate <= learning_rate")
  if config.learning_rate > ABSURD_LEARNING_RATE:
    logging.warning("learning_rate=%g is more than %g (the paper uses 1e-2): expect the loss to diverge",
                    config.learning_rate, ABSURD_LEARNING_RATE)
  bad_epochs = [e for e in config.keep_epochs if isinstance(e, bool) or not isinstance(e, int) or e < 1]
  if bad_epochs:
    raise ValueError(f"keep_epochs holds {bad_epochs}; allowed: ints >= 1 (epochs whose checkpoints are kept)")
  want = data.image_size_for(arch)
  if config.image_size != want:
    raise ValueError(f"image_size={config.image_size} does not match arch {config.arch!r}, which takes "
                     f"{arch.input_size}-px crops of {want}-px images; set --config.image_size={want}")
  devices = jax.device_count()
  for name in ("batch_size", "eval_batch_size"):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}={value!r} is not allowed; allowed: an int >= 1 (a multiple of the {devices} devices)")
    if value % devices:
      raise ValueError(f"{name}={value} is not divisible by the {devices} devices; use a multiple of {devices}")
  if config.eval_crops not in (1, 10):
    raise ValueError(f"eval_crops={config.eval_crops}; allowed: 1 (center) or 10 (corners + center, with flips)")
  if config.compute_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"compute_dtype={config.compute_dtype!r}; allowed: 'float32' or 'bfloat16'")
  for name in ("weight_std", "bias_init"):
    per_layer_values(config, arch, name)  # layer_* keys that name no layer of the arch
  for name, least in (("grain_workers", 0), ("grain_read_threads", 1), ("grain_prefetch", 1)):
    if isinstance(config[name], bool) or not isinstance(config[name], int) or config[name] < least:
      raise ValueError(f"{name}={config[name]!r} is not allowed; allowed: an int >= {least}")


def check_workdir_path(workdir: str) -> None:
  """Raises one ValueError unless `workdir` is a folder, or can be made one, that this process can write."""
  path = os.path.abspath(workdir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  allowed = "allowed: a writable folder (new, or a previous run's to resume)"
  if not os.path.isdir(existing):
    what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
    raise ValueError(f"workdir={workdir!r} {what}; {allowed}")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f"workdir={workdir!r} is not writable ({existing}: permission denied); {allowed}")


def check_checkpoint_folder(workdir: str) -> None:
  """Raises one ValueError if `workdir/checkpoints` exists but is not a folder this process can write in
  (tried by creating and removing a file: permission bits say nothing for root or read-only mounts)."""
  directory = checkpoint.checkpoint_dir(workdir)
  allowed = "allowed: a writable checkpoints folder (or none: a new run makes it)"
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise ValueError(f"{directory} is not a folder; {allowed}")
  if not os.path.isdir(directory):
    return
  try:
    checkpoint.probe_writable(directory)
  except OSError as e:
    raise ValueError(f"{directory} is not writable ({e.strerror}); the checkpoints could not be saved; {allowed}") \
        from None


LOCK_FILE = "train.lock"


def lock_workdir(workdir: str) -> int:
  """Creates `workdir` if needed and takes an exclusive lock on its (empty) `train.lock` (fcntl.flock), held
  until the returned file descriptor is closed (or the process ends, however it ends).

  Raises:
    ValueError: another process holds the lock (names its pid).
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _lock_holder(fd)
    os.close(fd)
    raise ValueError(f"workdir={workdir!r} is in use by another trainer (pid {holder}, holding {path}); "
                     "allowed: one train.py per workdir (wait for it to end, or stop it)") from None
  except OSError as e:  # a file system without flock (some network file systems): train unlocked
    logging.warning("cannot lock %s (%s); make sure no other trainer uses this workdir", path, e.strerror)
  return fd


def _lock_holder(fd: int) -> str:
  """The pid holding a flock on the open file `fd`, from /proc/locks (the lock file itself is never written,
  so re-running a finished run changes nothing); "unknown" where that cannot be read."""
  inode = os.fstat(fd).st_ino
  try:
    with open("/proc/locks") as f:
      for line in f:
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF"
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
          return fields[4]
  except OSError:
    pass
  return "unknown"


def _check_history(workdir: str, previous: Mapping[str, Any] | None, first_save_step: int) -> None:
  """A workdir without a checkpoint but with metrics: a run killed before its first checkpoint (every record at
  or before `first_save_step`) has nothing to resume, so it starts over and its records are replaced (a warning
  says so); records beyond that step mean a lost checkpoints folder: refused, keeping the history."""
  if previous is not None:
    return
  records = metrics.read(workdir)
  if not records:
    return
  last = max(r["step"] for r in records)
  if last > first_save_step:
    raise ValueError(f"workdir={workdir!r} has no checkpoint but {metrics.METRICS_FILE} holds {len(records)} records "
                     f"(to step {last}, past the first checkpoint's step {first_save_step}: its checkpoints are "
                     f"lost); starting over would overwrite them; allowed: another --workdir, or move "
                     f"{metrics.METRICS_FILE} and {metrics.TENSORBOARD_DIR}/ away to start over")
  logging.warning("%s: starting over; its %d metrics records (to step %d) are of a run killed before its first "
                  "checkpoint (step %d) and are replaced", workdir, len(records), last, first_save_step)


def _check_workdir(meta: Mapping[str, Any] | None, arch: models.Arch, num_classes: int, workdir: str) -> None:
  if meta is None:
    return
  if checkpoint.arch_from_dict(meta["arch"]) != arch or meta["num_classes"] != num_classes:
    raise ValueError(f"workdir={workdir!r} holds a checkpoint of arch {meta['arch']['name']!r} with "
                     f"{meta['num_classes']} classes, not {arch.name!r} with {num_classes}; use another --workdir")


def _check_data(config: ml_collections.ConfigDict, datasets: input_pipeline.Datasets,
                first_run: bool) -> np.ndarray | None:
  """Before the first step: every validation image decodes (each run: an evaluation reads them all anyway),
  and on a run's first start every training image too, in the pass that computes the mean image
  (section 3), with every class present. Returns that mean image (None when resuming: the checkpoint
  has it).
  """
  progress = jax.process_index() == 0
  data.checks.scan_split(datasets.val, f"val_split={config.val_split!r} of {config.dataset!r}",
                         datasets.num_classes, datasets.image_size, progress=progress)
  if not first_run:
    return None
  what = f"train_split={config.train_split!r} of {config.dataset!r}"
  logging.info("Checking the %d training images and computing their mean image", len(datasets.train))
  scan = data.checks.scan_split(datasets.train, what, datasets.num_classes, datasets.image_size, mean=True,
                                progress=progress)
  data.checks.check_classes(scan.counts, datasets.class_names, what,
                            whole="[" not in config.train_split and not config.get("train_per_class"))
  return scan.mean_image


def resume_summary(meta: Mapping[str, Any], config: ml_collections.ConfigDict, step: int,
                   learning_rate: float) -> str:
  """One line: what a resumed run keeps from its checkpoint and what it takes from the command.

  Kept: params, the optimizer state with its learning rate (which the plateau rule may have lowered,
  so the command's learning_rate is not used), the mean image and the plateau state. Everything else
  comes from the command; the line lists the keys that differ from the checkpoint's config
  (initialisation keys then have no effect).
  """
  old = meta.get("config", {})
  init_only = ("weight_std", "layer_weight_std", "bias_init", "layer_bias_init")
  # The checkpoint's config went through JSON (tuples came back as lists): compare like with like.
  new = json.loads(json.dumps(config.to_dict()))
  taken = [f"{k}={config[k]!r} (was {old[k]!r}{', unused after initialisation' if k in init_only else ''})"
           for k, v in new.items() if k in old and old[k] != v and k != "learning_rate"]
  # The optimizer state holds the rate in float32: compare at that precision.
  rate = f"learning rate {learning_rate:g}" + (f", not the command's {config.learning_rate:g}"
                                               if np.float32(learning_rate) != np.float32(config.learning_rate) else "")
  return (f"Resuming from step {step} (epoch {meta.get('epoch', 0):g}): kept from the checkpoint: params, optimizer "
          f"state ({rate}), mean image, plateau state; taken from the command: "
          f"{'; '.join(taken) if taken else 'the rest of the config, unchanged'}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  Args:
    config: see configs/*.py.
    workdir: holds checkpoints/, metrics.jsonl and tensorboard/.

  Returns:
    The last epoch's metrics: val_top1, val_top5 (accuracies in [0, 1]), train_loss, learning_rate, epoch.

  Raises:
    ValueError: bad config or data, or a workdir of another model (nothing is written then).
    NonFiniteLossError: the loss became NaN/inf (checkpoints so far are kept).
  """
  arch = build_arch(config)
  check_config(config, arch)
  check_workdir_path(workdir)
  check_checkpoint_folder(workdir)
  datasets = input_pipeline.load_datasets(config)
  steps_per_epoch = len(datasets.train) // config.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {len(datasets.train)} images of "
                     f"train_split={config.train_split!r}; allowed: 1..{len(datasets.train)}")
  num_steps = config.num_epochs * steps_per_epoch
  previous = checkpoint.read_meta(workdir)
  _check_workdir(previous, arch, datasets.num_classes, workdir)
  first_save_step = min(config.checkpoint_every_steps or steps_per_epoch, steps_per_epoch)
  _check_history(workdir, previous, first_save_step)
  checked_mean = _check_data(config, datasets, first_run=previous is None)
  # The run can start: the workdir is made (if new) and locked, and only now is anything written.
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0:
      stack.callback(os.close, lock_workdir(workdir))
      if checkpoint.read_meta(workdir) != previous:  # another trainer wrote a checkpoint meanwhile
        raise ValueError(f"workdir={workdir!r} changed while this run started (another trainer?); run it again")
    return _train(config, workdir, arch, datasets, steps_per_epoch, num_steps, previous, checked_mean)


def _train(config: ml_collections.ConfigDict, workdir: str, arch: models.Arch, datasets: input_pipeline.Datasets,
           steps_per_epoch: int, num_steps: int, previous: Mapping[str, Any] | None,
           checked_mean: np.ndarray | None) -> dict[str, float]:
  """train_and_evaluate once everything is checked and the workdir locked."""

  mesh = Mesh(np.array(jax.devices()), ("data",))
  replicated, split = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  shard = (jax.process_index(), jax.process_count())
  init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
  params = models.init_params(arch, init_key, datasets.num_classes, per_layer_values(config, arch, "weight_std"),
                              per_layer_values(config, arch, "bias_init"))
  tx = make_optimizer(config)
  params = jax.device_put(params, replicated)
  opt_state = jax.device_put(tx.init(params), replicated)
  manager = checkpoint.Manager(workdir, keep_steps=[e * steps_per_epoch for e in config.keep_epochs])
  if previous is None:
    step, plateau, last = 0, {}, {}
    mean_image = checked_mean
  else:
    step = manager.latest_step()
    params, opt_state, extras, meta = manager.restore(step, params, opt_state)
    mean_image, plateau, last = extras["mean_image"], meta["plateau"], meta["metrics"]
    logging.info("%s", resume_summary(meta, config, step, get_learning_rate(opt_state)))

  def save(step: int) -> None:
    if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(params)):
      raise NonFiniteLossError(f"parameters became non-finite before step {step}; stopped, "
                               f"the checkpoints in {checkpoint.checkpoint_dir(workdir)} are kept")
    meta = {"step": step, "epoch": step / steps_per_epoch, "steps_per_epoch": steps_per_epoch,
            "data_position": {"seed": config.seed, "epoch": step // steps_per_epoch, "batch": step % steps_per_epoch,
                              "origin": origin, "grain_workers": config.grain_workers},
            "arch": checkpoint.arch_to_dict(arch), "num_classes": datasets.num_classes,
            "class_names": datasets.class_names, "image_size": datasets.image_size, "config": config.to_dict(),
            "plateau": plateau, "metrics": last}
    extras = {"mean_image": mean_image, "rng": np.asarray(jax.random.key_data(dropout_key))}
    manager.save(step, params, opt_state, extras, meta, batches)
    logging.info("Saved checkpoint at step %d", step)

  if step >= num_steps or _converged(config, plateau):
    logging.info("Already trained: step %d of %d%s", step, num_steps,
                 " (converged: the validation error plateaued at min_learning_rate)" * _converged(config, plateau))
    manager.close()
    return last
  dtype = jnp.dtype(config.compute_dtype)
  train_fn = jax.jit(functools.partial(train_step, arch, tx, config.filter_rms_radius, compute_dtype=dtype),
                     donate_argnums=(0, 1), out_shardings=(replicated, replicated, replicated))
  eval_fn = jax.jit(functools.partial(eval_step, arch, compute_dtype=dtype), out_shardings=replicated)
  to_device = functools.partial(jax.make_array_from_process_local_data, split)
  # The loader's uint8 crops minus the mean's same crops, on the device (input_pipeline.normalize).
  inputs = functools.partial(jax.jit(input_pipeline.normalize, out_shardings=split),
                             mean_image=jax.device_put(np.asarray(mean_image, np.float32), replicated))
  writer = metrics.Writer(workdir, step, enabled=jax.process_index() == 0)
  # Batches [origin, num_steps): the iterator's saved position counts from origin. Checkpoints from
  # before Grain (or of another worker count) hold none, and restart the iterator at their step.
  train_data = input_pipeline.train_dataset(datasets, config.seed, config.batch_size, arch.input_size, num_steps,
                                            shard)
  position = (previous or {}).get("data_position", {})
  resume_iterator = previous is not None and manager.has_data(step) and position.get("grain_workers") == \
      config.grain_workers
  origin = position["origin"] if resume_iterator else step
  batches = input_pipeline.loader(train_data[origin:], config)
  if resume_iterator:
    manager.restore_data(step, batches)
  with contextlib.ExitStack() as stack:
    stack.callback(batches.close)
    stack.callback(writer.close)
    stack.callback(manager.close)
    stack.callback(manager.wait)
    while step < num_steps:
      epoch = step // steps_per_epoch
      end = (epoch + 1) * steps_per_epoch
      pending, tick, interval_start = [], time.time(), step
      with tqdm.tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch, unit="batch",
                     desc=f"epoch {epoch + 1}/{config.num_epochs}", disable=jax.process_index() != 0) as bar:
        for batch in itertools.islice(batches, end - step):
          if batch["step"][0] != step:
            raise RuntimeError(f"the input iterator gave batch {batch['step'][0]} for step {step}")
          images = inputs(to_device(batch["image"]), to_device(batch["box"]))
          params, opt_state, batch_metrics = train_fn(params, opt_state, images, to_device(batch["label"]),
                                                      np.int32(step), dropout_key)
          pending.append(batch_metrics)
          step += 1
          bar.update()
          if step % config.log_every_steps == 0 or step == end:
            values = _summarize(pending, step, steps_per_epoch, workdir)
            values["images_per_second"] = (step - interval_start) * config.batch_size / (time.time() - tick)
            values["learning_rate"] = get_learning_rate(opt_state)
            writer.write(step, {**values, "epoch": step / steps_per_epoch})
            bar.set_postfix(loss=f"{values['train_loss']:.3f}", acc=f"{values['train_accuracy']:.3f}")
            last = {**last, **values}
            pending, tick, interval_start = [], time.time(), step
          if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and step != end:
            save(step)
      if step != end:
        raise RuntimeError(f"the input iterator ended at step {step}, before the epoch's end at step {end}")
      val = evaluate(eval_fn, inputs, params, datasets.val, datasets.image_size, config, arch, split, shard)
      plateau, learning_rate = anneal_on_plateau(plateau, 1.0 - val["val_top1"], get_learning_rate(opt_state), config)
      if learning_rate != get_learning_rate(opt_state):
        logging.info("Validation error plateaued: learning rate %g -> %g", get_learning_rate(opt_state), learning_rate)
        opt_state = set_learning_rate(opt_state, learning_rate)
      last = {**last, **val, "epoch": step / steps_per_epoch}
      writer.write(step, {**val, "epoch": step / steps_per_epoch})
      logging.info("Epoch %d: val top-1 %.4f, top-5 %.4f, train loss %.4f", step // steps_per_epoch,
                   val["val_top1"], val["val_top5"], last["train_loss"])
      save(step)
      if _converged(config, plateau):
        logging.info("Converged at epoch %d: the validation error plateaued at min_learning_rate %g; stopping",
                     step // steps_per_epoch, config.min_learning_rate)
        break
  return last


def _converged(config: ml_collections.ConfigDict, plateau: Mapping[str, Any]) -> bool:
  """True if config.stop_when_converged and the plateau rule has reached its floor (anneal_on_plateau)."""
  return bool(config.get("stop_when_converged", False) and plateau.get("converged", False))


def _summarize(pending: list[dict[str, jax.Array]], step: int, steps_per_epoch: int, workdir: str) -> dict[str, float]:
  """Means of the steps' metrics; raises NonFiniteLossError on a NaN/inf loss."""
  pending = jax.device_get(pending)
  losses = np.array([m["loss"] for m in pending], np.float64)
  if not np.isfinite(losses).all():
    bad = step - len(losses) + int(np.argmin(np.isfinite(losses))) + 1
    raise NonFiniteLossError(f"the loss is {losses[~np.isfinite(losses)][0]} at step {bad} (epoch "
                             f"{bad / steps_per_epoch:.2f}); stopped, the checkpoints before it in "
                             f"{checkpoint.checkpoint_dir(workdir)} are kept (try a lower learning_rate)")
  return {"train_loss": float(losses.mean()), "train_accuracy": float(np.mean([m["accuracy"] for m in pending]))}


def evaluate(eval_fn: Any, inputs: Any, params: Params, source: Any, image_size: int,
             config: ml_collections.ConfigDict, arch: models.Arch, split: NamedSharding,
             shard: tuple[int, int]) -> dict[str, float]:
  """Top-1/top-5 accuracy over a split with config.eval_crops crops per image (10: section 3), read through
  the same Grain loader as training; `inputs(images, boxes)` makes the model's inputs (`input_pipeline.normalize`)."""
  dataset = input_pipeline.eval_dataset(source, image_size, config.eval_batch_size, arch.input_size,
                                        config.eval_crops, shard)
  to_device = functools.partial(jax.make_array_from_process_local_data, split)
  totals = jnp.zeros(3, jnp.int32)
  batches = input_pipeline.loader(dataset, config)
  for batch in batches:
    images = inputs(to_device(batch["image"]), to_device(batch["box"]))
    totals = totals + eval_fn(params, images, to_device(batch["label"]), to_device(batch["mask"]))
  batches.close()
  top1, top5, count = np.asarray(jax.device_get(totals))
  return {"val_top1": float(top1 / count), "val_top5": float(top5 / count)}
