"""The analyses' output folder: written whole or not at all, with an index.html over its figures.

`staged(out)` gives a fresh folder beside `out` to write into; only when every figure and number
has been written does `out` switch to it, in one rename, so a failure or a kill leaves `out` as it was. `write_index`
builds index.html from sections (figures as PNG files, numbers as JSON files) so the report links
every figure with its numbers and the command that made it.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import html
import json
import os
import secrets
import shutil
from typing import Iterator, Sequence

from zf_jax.analysis import common


@dataclasses.dataclass(frozen=True)
class Section:
  """One analysis in the report.

  Attributes:
    name: short id, e.g. "topk".
    title: e.g. "Fig. 2: top-9 activations, projected".
    figures: PNG file names relative to the output folder.
    numbers: the JSON file name relative to the output folder.
    caption: what the figure shows and how to read the numbers.
  """
  name: str
  title: str
  figures: tuple[str, ...]
  numbers: str
  caption: str = ""


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
  os.makedirs(parent, exist_ok=True)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"out={out!r} is a file; allowed: a folder (new or existing)")
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
    if pid.isdigit() and _alive(int(pid)):
      continue
    path = os.path.join(parent, entry)
    if entry.endswith(".old") and not os.path.exists(out):
      os.rename(path, out)
    else:
      shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return pid != 0


def _section_html(folder: str, section: Section) -> str:
  with open(os.path.join(folder, section.numbers)) as f:
    numbers = json.dumps(json.load(f), indent=1)
  figures = "\n".join(f'<a href="{html.escape(p)}"><img src="{html.escape(p)}" alt="{html.escape(p)}"></a>'
                      for p in section.figures)
  return (f'<section id="{html.escape(section.name)}">\n<h2>{html.escape(section.title)}</h2>\n'
          f"<p>{html.escape(section.caption)}</p>\n{figures}\n"
          f'<details><summary>numbers (<a href="{html.escape(section.numbers)}">{html.escape(section.numbers)}</a>)'
          f"</summary>\n<pre>{html.escape(numbers)}</pre></details>\n</section>")


def write_index(folder: str, sections: Sequence[Section], title: str, about: str = "") -> str:
  """Writes folder/index.html linking every section's figures and numbers (which must exist there).

  Args:
    folder: where the figures and JSON files are.
    sections: in display order.
    title: the page title.
    about: a line under the title (e.g. the checkpoint and the command).

  Returns:
    The path of index.html.
  """
  for section in sections:
    for name in (*section.figures, section.numbers):
      if not os.path.isfile(os.path.join(folder, name)):
        raise ValueError(f"report: {name!r} of section {section.name!r} is not in {folder!r}")
  links = " | ".join(f'<a href="#{html.escape(s.name)}">{html.escape(s.name)}</a>' for s in sections)
  body = "\n".join(_section_html(folder, s) for s in sections)
  page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}}
img{{max-width:100%;border:1px solid #ddd;margin:4px 0}}pre{{font-size:11px;max-height:30em;overflow:auto;
background:#f6f6f6;padding:.5em}}section{{margin-bottom:2em}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>{html.escape(about)}</p>
<p>{links}</p>
{body}
</body></html>
"""
  path = os.path.join(folder, "index.html")
  with common.atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(page)
  return path
