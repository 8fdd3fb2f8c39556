"""Training metrics: a JSON-lines file and TensorBoard event files in the workdir.

Each `write(step, values)` appends one line {"step": s, **values} to `workdir/metrics.jsonl` and
one scalar per value to the event files in `workdir/tensorboard/`. A resumed run starts the writer at
its checkpoint's step: lines and events of later steps (written by the killed run after its last
checkpoint) are dropped, so the logs read as one uninterrupted run.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import tensorboardX
from absl import logging

from zf_jax.files import atomic_path, check_finite_json

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, in order ([] if there is none).

  A torn last line (what a kill in the middle of a write leaves: no newline, not JSON) is dropped with a
  warning naming the file; any other line that is not a JSON record raises one ValueError naming the file.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      lines = f.read().split("\n")
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} cannot be read ({type(e).__name__}: {e}); allowed: a metrics.jsonl written by "
                     "train.py") from None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a record with an int 'step'")
    except ValueError as e:
      if number == len(lines):  # the last line, without its newline: a torn write
        logging.warning("%s: dropped its torn last line %d (%r): a write cut short by a kill", path, number,
                        line[:80])
        break
      raise ValueError(f"{path} line {number} is not a metrics record ({e}); allowed: one JSON record a line, "
                       "as train.py writes") from None
    records.append(record)
  return records


def validation_at(workdir: str, step: int) -> dict:
  """The last validation record (one with "val_top1") of workdir/metrics.jsonl at or before `step`; {} if none."""
  records = [r for r in read(workdir) if "val_top1" in r and r["step"] <= step]
  return records[-1] if records else {}


class Writer:
  """Writes scalars for steps after `start_step` (0 for a fresh run).

  Args:
    workdir: the training workdir.
    start_step: the step the run resumes from; records of later steps already on disk are dropped.
    enabled: False on all but the first process of a multi-host run.
  """

  def __init__(self, workdir: str, start_step: int = 0, enabled: bool = True):
    self._enabled = enabled
    if not enabled:
      return
    self._path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in read(workdir) if r["step"] <= start_step]
    with atomic_path(self._path) as tmp, open(tmp, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                          purge_step=start_step + 1)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    values = {k: float(v) for k, v in values.items()}
    record = {"step": step, **values}
    check_finite_json(record, f"{METRICS_FILE} at step {step}")
    with open(self._path, "a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._enabled:
      self._tensorboard(self._tb.flush)

  def close(self) -> None:
    if self._enabled:
      self._tensorboard(self._tb.close)

  def _tensorboard(self, call: Callable[[], None]) -> None:
    """Flushes or closes the event files; a failure there (a full disk) is a warning, not the run's error:
    metrics.jsonl holds every value, and an error already on its way (a failed checkpoint save) stays the one
    reported."""
    try:
      call()
    except OSError as e:
      logging.warning("%s: the TensorBoard event files could not be written (%s); %s holds every value",
                      os.path.join(os.path.dirname(self._path), TENSORBOARD_DIR), e.strerror or e, METRICS_FILE)
