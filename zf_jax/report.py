"""The analyses' output folder: written whole or not at all, with an index.html over its figures.

`staged(out)` gives a fresh folder beside `out` to write into; only when every figure and number
has been written does `out` switch to it, in one rename, so a failure or a kill leaves `out` as it was. `write_index`
builds index.html from sections (figures as PNG files, numbers as JSON files) so the report links
every figure with its numbers and the command that made it.
"""
from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence

from zf_jax import files
from zf_jax.analysis.common import Section


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
  with files.atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(page)
  return path
