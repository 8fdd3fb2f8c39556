"""Checkpoints: the one place that talks to orbax.

A training workdir holds `checkpoints/<step>/` directories written by an orbax `CheckpointManager`
(atomically: orbax writes into a temporary directory and renames it when complete, so a run killed
while saving leaves the previous checkpoints usable). Each checkpoint has these items:

  params     the model parameters {layer: {"kernel", "bias"}} (see `models.init_params`).
  opt_state  the optax state, including the current learning rate (`optax.inject_hyperparams`).
  extras     {"mean_image": float32 [S, S, 3] per-pixel training mean (section 3),
              "rng": uint32 key data of the run's base jax.random key}.
  meta       JSON: step, epoch, steps_per_epoch, data_position (seed, epoch, batch: the next batch
             is batch `batch` of epoch `epoch`'s order, see input_pipeline), the architecture
             (`arch_to_dict`), num_classes, class_names, image_size, the whole config, the
             plateau-annealing state and the latest metrics.
  data       the training input iterator's position (Grain's own orbax handler, one JSON file per
             process), counted from the step data_position["origin"] the iterator started at, with
             data_position["grain_workers"] workers; absent from checkpoints written before the
             pipeline used Grain, whose position follows from the step alone (batches are pure
             functions of the step).

so `load_for_analysis(workdir)` gives everything an analysis needs, knowing nothing else.
`save_params_npz` exports the same as one .npz file, which `load_for_analysis` also reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from zf_jax import models
from zf_jax.files import atomic_path, check_finite_json

CHECKPOINT_DIR = "checkpoints"
ITEMS = ("params", "opt_state", "extras", "meta", "data")
_LAYER_TYPES = {cls.__name__: cls for cls in (models.Conv, models.Pool, models.Norm, models.Dense)}


def arch_to_dict(arch: models.Arch) -> dict[str, Any]:
  """An `Arch` as JSON-able data: {"name", "input_size", "layers": [{"type": "Conv", ...}, ...]}."""
  return {"name": arch.name, "input_size": arch.input_size,
          "layers": [{"type": type(layer).__name__, **dataclasses.asdict(layer)} for layer in arch.layers]}


def arch_from_dict(data: Mapping[str, Any]) -> models.Arch:
  """Inverse of `arch_to_dict` (JSON lists become the tuples the layers use)."""
  def tuples(value):
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value
  layers = []
  for spec in data["layers"]:
    fields = {k: tuples(v) for k, v in spec.items() if k != "type"}
    layers.append(_LAYER_TYPES[spec["type"]](**fields))
  return models.Arch(data["name"], int(data["input_size"]), tuple(layers))


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


class SaveError(ValueError):
  """A checkpoint could not be written (the earlier ones are kept). Orbax's save threads of the failed step
  then wait for signals that never come: a program should end with os._exit after reporting it."""


class Manager:
  """Saves and restores training checkpoints in `workdir/checkpoints` (used by train_lib).

  Keeps the checkpoints at `keep_steps` (the steps ending the epochs a config lists, Fig. 4) and
  the latest one; every other checkpoint is deleted once a newer one is complete. Unfinished saves
  of a killed run (orbax's temporary directories) are removed when the next run opens the workdir.
  """

  def __init__(self, workdir: str, keep_steps: Sequence[int] = ()):
    policy = checkpoint_managers.AnyPreservationPolicy(
        [checkpoint_managers.CustomSteps(list(keep_steps)), checkpoint_managers.LatestN(1)])
    self._manager = _manager(workdir, ocp.CheckpointManagerOptions(
        preservation_policy=policy, cleanup_tmp_directories=True))
    self._saving: int | None = None
    self._failed = False
    _drop_closed_loop_reports()  # a failed save (a full disk) leaves tensorstore's callbacks on a closed loop too

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, extras: Mapping[str, Any],
           meta: Mapping[str, Any], data: grain.DatasetIterator | None = None) -> None:
    """Starts an asynchronous save of one step (arrays are copied, the iterator's state is written,
    before this returns)."""
    items = dict(params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
                 extras=ocp.args.StandardSave(dict(extras)), meta=ocp.args.JsonSave(dict(meta)))
    if data is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data)
    self.wait()  # the previous save's failure (a full disk while it finished) is reported as that step's
    self._saving = step
    try:
      # Orbax blocks for its whole timeout (10 minutes) when it cannot make the step's folder: fail first.
      probe_writable(str(self._manager.directory))
      self._manager.save(step, args=ocp.args.Composite(**items))
    except Exception as e:  # this save could not start
      raise self._save_error(e) from None

  def has_data(self, step: int) -> bool:
    """Whether checkpoint `step` holds an input iterator's state (not in checkpoints from before Grain)."""
    return os.path.isdir(os.path.join(str(self._manager.directory), str(step), "data"))

  def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, dict[str, np.ndarray], dict]:
    """Restores `step` onto the shapes, dtypes and shardings of the given `params` and `opt_state`.

    Returns:
      (params, opt_state, extras as numpy, meta).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, (params, opt_state))
    _drop_closed_loop_reports()
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract[0]), opt_state=ocp.args.StandardRestore(abstract[1]),
          extras=_numpy_restore(self._manager, step, "extras"), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax, tensorstore and json errors alike
      raise _unreadable(str(self._manager.directory), step, e) from None
    return restored["params"], restored["opt_state"], restored["extras"], restored["meta"]

  def restore_data(self, step: int, data: grain.DatasetIterator) -> None:
    """Moves `data`, an iterator over the dataset that was saved (`has_data(step)`), to its saved position."""
    _drop_closed_loop_reports()
    try:
      self._manager.restore(step, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(data)))
    except Exception as e:  # a damaged iterator-state file (a kill while it was written)
      raise _unreadable(os.path.join(str(self._manager.directory), str(step)), "data", e) from None

  def wait(self) -> None:
    """Blocks until every started save is complete on disk (nothing to wait for after a failed save)."""
    if self._failed:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e) from None

  def _save_error(self, error: Exception) -> SaveError:
    self._failed = True
    directory = str(self._manager.directory)
    # The complete checkpoints orbax knows of, and those on disk (orbax names a step's folder once it is
    # finalized; its list can lag behind a save that failed in finalizing).
    on_disk = {int(n) for n in os.listdir(directory) if n.isdigit()} if os.path.isdir(directory) else set()
    kept = sorted((set(self._manager.all_steps()) | on_disk) - {self._saving})
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    # A full disk, as Python (ENOSPC) or tensorstore (RESOURCE_EXHAUSTED, the path before the reason) says it.
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left on device" in str(error) \
        or str(error).startswith("RESOURCE_EXHAUSTED: Error writing")
    cause = "No space left on device" if full else f"{type(error).__name__}: {first[:300]}"
    return SaveError(f"saving checkpoint {self._saving} in {directory} failed ({cause}); "
                     f"{f'the checkpoints of steps {kept} are kept' if kept else 'no checkpoint is kept'}; allowed: "
                     "a writable checkpoints folder with free space (then run the same command to resume)")

  def close(self) -> None:
    if self._failed:  # orbax's close would wait for the failed save's threads
      return
    self._manager.close()


def probe_writable(directory: str) -> None:
  """Raises OSError unless a file can be created in `directory` (root ignores permission bits: try it)."""
  path = os.path.join(directory, f".write-test-{os.getpid()}")
  os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  os.remove(path)


def _numpy_restore(manager: ocp.CheckpointManager, step: int, item: str) -> ocp.args.StandardRestore:
  """Restore args that read an item as host numpy arrays, whatever devices wrote it."""
  tree = manager.item_metadata(step)[item]
  return ocp.args.StandardRestore(jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree))


@contextlib.contextmanager
def _read_only(workdir: str, step: int | None = None) -> Iterator[ocp.CheckpointManager]:
  """A manager that only reads, closed after the block; a failure to read becomes one ValueError naming
  checkpoint `step` (or the checkpoints folder)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise ValueError(f"workdir={workdir!r} holds no checkpoints ({directory} does not exist)")
  manager = _manager(workdir, ocp.CheckpointManagerOptions(create=False))
  _drop_closed_loop_reports()
  try:
    yield manager
  except Exception as e:  # orbax, tensorstore and json errors alike
    raise _unreadable(directory, step, e) from None
  finally:
    manager.close()


def _unreadable(directory: str, step: int | None, error: Exception) -> ValueError:
  """One error line for a checkpoint that cannot be read (and no tracebacks after it)."""
  _drop_closed_loop_reports()
  _drop_orphan_task_reports()
  what = os.path.join(directory, str(step)) if step is not None else directory
  first = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return ValueError(f"checkpoint {what} cannot be read, it is corrupt or truncated ({type(error).__name__}: "
                    f"{first[:300]}); allowed: a complete checkpoint written by train.py (delete this one to use "
                    "the ones before it)")


def _drop_closed_loop_reports() -> None:
  """orbax closes its event loop at the first failed read of a restore (or write of a save); tensorstore's
  other reads (writes) then each report RuntimeError("Event loop is closed"), through sys.unraisablehook or
  printed via sys.excepthook from their callback threads: a traceback apiece after our error line; and the
  failed restore's other orbax coroutines report their own read errors when they are collected. Drops
  exactly those reports from both hooks (installed once, before the first restore or save, since the
  reports race with the failure; every other report goes to the previous hook)."""
  def closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"

  def orbax_coroutine(obj: Any) -> bool:  # a read of the failed restore, its error reported when it is collected
    code = getattr(obj, "cr_code", None)
    return code is not None and "/orbax/" in code.co_filename

  if not getattr(sys.unraisablehook, "zf_jax_closed_loop_filter", False):
    previous_unraisable = sys.unraisablehook

    def unraisable_hook(unraisable: Any) -> None:
      if not (closed_loop(unraisable.exc_value) or orbax_coroutine(unraisable.object)):
        previous_unraisable(unraisable)
    unraisable_hook.zf_jax_closed_loop_filter = True
    sys.unraisablehook = unraisable_hook
  if not getattr(sys.excepthook, "zf_jax_closed_loop_filter", False):
    previous_except = sys.excepthook

    def except_hook(kind: type, value: BaseException, tb: Any) -> None:
      if not closed_loop(value):
        previous_except(kind, value, tb)
    except_hook.zf_jax_closed_loop_filter = True
    sys.excepthook = except_hook


class _OrphanTaskFilter(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" reports: after a failed read, orbax leaves the read's
  other tasks unawaited, and asyncio logs each one's error (a traceback) when it is collected."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Task exception was never retrieved")


def _drop_orphan_task_reports() -> None:
  """Installs `_OrphanTaskFilter` on the asyncio logger, once (only after a checkpoint read failed)."""
  logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _OrphanTaskFilter) for f in logger.filters):
    logger.addFilter(_OrphanTaskFilter())


def _manager(workdir: str, options: ocp.CheckpointManagerOptions) -> ocp.CheckpointManager:
  handlers = {item: ocp.StandardCheckpointHandler() for item in ITEMS}
  handlers |= {"meta": ocp.JsonCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def list_steps(workdir: str) -> list[int]:
  """The steps of the complete checkpoints in `workdir`, ascending ([] if there are none)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with _read_only(workdir) as manager:
    return sorted(manager.all_steps())


def read_meta(workdir: str, step: int | None = None) -> dict[str, Any] | None:
  """The JSON metadata of checkpoint `step` (default: the latest), or None if there is none."""
  steps = list_steps(workdir)
  if not steps:
    return None
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"step={step} has no checkpoint in {workdir!r}; allowed: {steps}")
  with _read_only(workdir, step) as manager:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def epochs_by_step(workdir: str) -> dict[int, float]:
  """{step: epoch} for every checkpoint (epoch = step / steps_per_epoch; whole at epoch ends)."""
  return {step: read_meta(workdir, step)["epoch"] for step in list_steps(workdir)}


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A trained model with what the analyses need.

  Attributes:
    arch: the architecture.
    params: {layer: {"kernel", "bias"}} as jax arrays on the default device.
    mean_image: float32 [S, S, 3], the training mean at the stored image size S (256 or 64); crop
      its center to arch.input_size to match model inputs.
    num_classes: C.
    class_names: C names, or None if the dataset has none.
    step: the training step of the checkpoint (0 for an exported file without one).
    epoch: step / steps_per_epoch.
    config: the training config as a dict.
  """
  arch: models.Arch
  params: models.Params
  mean_image: np.ndarray
  num_classes: int
  class_names: list[str] | None
  step: int
  epoch: float
  config: dict[str, Any]


def load_for_analysis(path: str, step: int | None = None, epoch: float | None = None) -> Loaded:
  """Loads a model from a training workdir (its checkpoints) or a .npz file from `save_params_npz`.

  Args:
    path: a workdir or a .npz file.
    step: the checkpoint's step (default: the latest). Only for workdirs.
    epoch: instead of step, the checkpoint at this epoch (see `epochs_by_step`).

  Returns:
    A `Loaded`.
  """
  if path.endswith(".npz"):
    if step is not None or epoch is not None:
      raise ValueError(f"step/epoch select a checkpoint in a workdir; {path!r} is one .npz file")
    return _load_npz(path)
  steps = list_steps(path)
  if not steps:
    raise ValueError(f"{path!r} holds no checkpoints (expected a training workdir or a .npz file)")
  if epoch is not None:
    by_epoch = {e: s for s, e in epochs_by_step(path).items()}
    if epoch not in by_epoch:
      raise ValueError(f"epoch={epoch} has no checkpoint in {path!r}; allowed: {sorted(by_epoch)}")
    step = by_epoch[epoch]
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ValueError(f"step={step} has no checkpoint in {path!r}; allowed: {steps}")
  with _read_only(path, step) as manager:
    restored = manager.restore(step, args=ocp.args.Composite(
        params=_numpy_restore(manager, step, "params"), extras=_numpy_restore(manager, step, "extras"),
        meta=ocp.args.JsonRestore()))
  return _loaded(restored["params"], restored["extras"]["mean_image"], restored["meta"])


def _loaded(params: Any, mean_image: np.ndarray, meta: Mapping[str, Any]) -> Loaded:
  """The Loaded, its params checked against its arch (`models.check_params`: one error naming the layer)."""
  arch = arch_from_dict(meta["arch"])
  params = jax.tree.map(np.asarray, params)
  num_classes = models.check_params(arch, params)
  models.check_finite_params(params)
  if num_classes != int(meta["num_classes"]):
    raise ValueError(f"params has {num_classes} classes (fc8), its metadata says num_classes={meta['num_classes']}")
  return Loaded(arch=arch, params=jax.tree.map(jax.numpy.asarray, params),
                mean_image=np.asarray(mean_image, np.float32), num_classes=num_classes,
                class_names=meta.get("class_names"), step=int(meta["step"]), epoch=float(meta["epoch"]),
                config=dict(meta.get("config", {})))


def params_to_arrays(params: Any) -> dict[str, np.ndarray]:
  """params {layer: {"kernel", "bias"}} -> the flat {"params/<layer>/<kernel|bias>": array} of an .npz file."""
  return {f"params/{layer}/{part}": np.asarray(value)
          for layer, values in params.items() for part, value in values.items()}


def params_from_arrays(arrays: Any) -> dict[str, dict[str, np.ndarray]]:
  """The inverse of `params_to_arrays`, from an opened .npz (other keys are left out)."""
  params: dict[str, dict[str, np.ndarray]] = {}
  for key in arrays.files:
    if key.startswith("params/"):
      _, layer, part = key.split("/")
      params.setdefault(layer, {})[part] = arrays[key]
  return params


def save_params_npz(path: str, loaded: Loaded) -> None:
  """Exports a model as one .npz file: "params/<layer>/<kernel|bias>", "mean_image" and "meta" (JSON).

  Args:
    path: the file to write (whole or not at all); must end in .npz.
    loaded: e.g. from `load_for_analysis(workdir)`.
  """
  if not path.endswith(".npz"):
    raise ValueError(f"path={path!r} must end in .npz")
  arrays = params_to_arrays(loaded.params)
  meta = {"arch": arch_to_dict(loaded.arch), "num_classes": loaded.num_classes, "class_names": loaded.class_names,
          "step": loaded.step, "epoch": loaded.epoch, "config": loaded.config}
  check_finite_json(meta, f"{os.path.basename(path)} metadata")
  with atomic_path(path) as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, mean_image=loaded.mean_image, meta=np.array(json.dumps(meta, allow_nan=False)), **arrays)


def _load_npz(path: str) -> Loaded:
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} does not exist")
  allowed = "allowed: a .npz written by checkpoint.save_params_npz"
  try:
    with np.load(path) as data:
      if "meta" not in data or "mean_image" not in data:
        raise ValueError(f"{path!r} is not a zf_jax params file (no 'meta'/'mean_image'); {allowed}")
      params = params_from_arrays(data)
      mean_image, meta = data["mean_image"], json.loads(str(data["meta"]))
  except Exception as e:  # zipfile, pickle, json and OS errors of a damaged file
    if isinstance(e, ValueError) and str(e).startswith(repr(path)):
      raise
    raise ValueError(f"{path!r} cannot be read, it is corrupt or truncated ({type(e).__name__}: {e}); {allowed}") \
        from None
  try:
    return _loaded(params, mean_image, meta)
  except (KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{path!r} has incomplete metadata ({type(e).__name__}: {e}); {allowed}") from None
