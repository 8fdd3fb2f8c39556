"""Files written whole or not at all: the bottom layer every other module may use (stdlib + numpy only).

`atomic_path` gives a temporary path renamed onto the target only when the write succeeded;
`save_json` (strict JSON: NaN and Inf are refused, naming the number) and `save_figure` write through
it; `staged(out)` gives a fresh folder that replaces `out` in one rename, so a failure or a kill leaves
`out` as it was.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path beside `path`; renamed onto it only if the block succeeds.

  The file is created as `open()` would create it, with mode 0666 less the umask (not mkstemp's 0600).
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f".tmp-{secrets.token_hex(8)}{os.path.splitext(path)[1]}")
  os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def portable_path(path: Any) -> Any:
  """A path as committed results may name it: relative to the current folder when it lies beside it
  (e.g. "../shared/data/..."), "~/..." under the home folder, otherwise (and any non-path) as given."""
  if not isinstance(path, str) or not os.path.isabs(path):
    return path
  here, home = os.getcwd(), os.path.expanduser("~")
  if os.path.commonpath([path, os.path.dirname(here)]) == os.path.dirname(here) != os.sep:
    return os.path.relpath(path, here)
  if os.path.commonpath([path, home]) == home != os.sep:
    return "~" + path[len(home):]
  return path


def _non_finite(obj: Any, path: str = "") -> str | None:
  """The JSON path of the first NaN or Inf number in `obj` (None if every number is finite)."""
  if isinstance(obj, dict):
    items = obj.items()
  elif isinstance(obj, (list, tuple)):
    items = enumerate(obj)
  elif isinstance(obj, np.ndarray):
    if obj.dtype.kind in "fc" and not np.isfinite(obj).all():
      return f"{path}[{np.argwhere(~np.isfinite(obj))[0].tolist()}]"
    return None
  elif isinstance(obj, (float, np.floating)):
    return None if math.isfinite(obj) else path
  else:
    return None
  for key, value in items:
    found = _non_finite(value, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]")
    if found is not None:
      return found
  return None


def check_finite_json(obj: Any, what: str) -> None:
  """Raises one ValueError naming the first NaN or Inf number in `obj` (strict JSON has none), `what` being
  the file (or record) it was meant for."""
  bad = _non_finite(obj)
  if bad is not None:
    raise ValueError(f"{what}: the number at {bad or 'the top'} is not finite (NaN or Inf); allowed: finite numbers "
                     "only (the inputs or weights that produced it are probably not finite)")


def save_json(obj: Any, path: str) -> None:
  """Writes numbers as strict JSON (numpy scalars and arrays converted), whole or not at all.

  Raises:
    ValueError: a number is NaN or infinite (strict JSON has no such numbers); names it.
  """
  check_finite_json(obj, os.path.basename(path))

  def default(o):
    if isinstance(o, np.ndarray):
      return o.tolist()
    if isinstance(o, np.generic):
      return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=default, allow_nan=False)


def save_figure(fig: Any, path: str, dpi: int = 100) -> None:
  """Saves a matplotlib figure as PNG, whole or not at all, and closes it."""
  import matplotlib.pyplot as plt
  try:
    with atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
  finally:
    plt.close(fig)


@contextlib.contextmanager
def staged(out: str) -> Iterator[str]:
  """Yields an empty folder beside `out` to write into; `out` switches to the new files in one step.

  Only if the block succeeds, the files of the old `out` that were not written again are hard-linked
  into the staging folder, which then takes the place of `out` in one atomic rename (an exchange of
  the two folders where `out` exists: Linux renameat2). So `out` is always all old or all new, also
  when the process is killed. Staging folders left by killed runs (`.OUT.tmp-<pid>-*` of a process
  that no longer runs) are removed first. Folders and files get the usual modes (umask applied).

  Raises:
    ValueError: `out` exists and is not a folder (before anything is written).
  """
  out = os.path.realpath(out)  # a symlinked --out: switch the folder it points to
  parent, name = os.path.split(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"out={out!r} is a file; allowed: a folder (new or existing)")
  existing = parent
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"out={out!r} cannot be created: {existing} is a file; allowed: a folder (new or existing)")
  os.makedirs(parent, exist_ok=True)
  _remove_stale_stages(parent, name, out)
  stage = os.path.join(parent, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
  os.mkdir(stage)  # 0777 less the umask
  try:
    yield stage
    if os.path.isdir(out):
      os.chmod(stage, os.stat(out).st_mode & 0o7777)
      for entry in sorted(set(os.listdir(out)) - set(os.listdir(stage))):
        _link(os.path.join(out, entry), os.path.join(stage, entry))
      _exchange(stage, out)  # the old out is now at `stage`, removed below
    else:
      os.rename(stage, out)
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def _link(source: str, target: str) -> None:
  """Hard links (copies where the file system cannot link) a file or folder tree."""
  if os.path.isdir(source) and not os.path.islink(source):
    shutil.copytree(source, target, symlinks=True, copy_function=_link)
    return
  try:
    os.link(source, target, follow_symlinks=False)
  except OSError:
    shutil.copy2(source, target, follow_symlinks=False)


def _exchange(a: str, b: str) -> None:
  """Swaps two folders atomically (renameat2 RENAME_EXCHANGE); elsewhere two renames, `b` absent between."""
  libc = ctypes.CDLL(None, use_errno=True)
  renameat2 = getattr(libc, "renameat2", None)
  at_fdcwd, rename_exchange = -100, 2
  if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return
  os.rename(b, a + ".old")
  os.rename(a, b)
  os.rename(a + ".old", a)


def _remove_stale_stages(parent: str, name: str, out: str) -> None:
  """Removes `.NAME.tmp-<pid>-*` folders of processes that have ended (restoring an old `out` that a
  killed two-rename `_exchange` left aside)."""
  prefix = f".{name}.tmp-"
  for entry in os.listdir(parent):
    if not entry.startswith(prefix):
      continue
    pid = entry[len(prefix):].split("-")[0]
    if pid.isdigit() and pid_alive(int(pid)):
      continue
    path = os.path.join(parent, entry)
    if entry.endswith(".old") and not os.path.exists(out):
      os.rename(path, out)
    else:
      shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
  """Whether process `pid` runs (on this machine, in this pid namespace)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid != 0
