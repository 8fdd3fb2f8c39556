"""The explorer's views as static files (`visualize.py serve --export=DIR`): shareable, no server needed.

For each image (default: the sample photos) a folder with the image and its top-5, every layer's grid
and the projection of its strongest map's strongest unit (section 2.1), and the occlusion maps of the
predicted class (Fig. 7), each a PNG beside the JSON of its numbers; `filters.png` (Fig. 6) once; and an
index.html showing them all. Written whole or not at all (`files.staged`).
"""
from __future__ import annotations

import html
import os
from collections.abc import Sequence

from zf_jax import files
from zf_jax.explore.session import SAMPLES, Session, View

STYLE = ("body{font:14px system-ui,sans-serif;margin:1em}img{image-rendering:pixelated}"
         ".frame{position:relative;display:inline-block;line-height:0;margin:0 1em 1em 0}"
         ".box{position:absolute;border:2px solid #ff1744;box-sizing:border-box}figure{display:inline-block}")


def _write(folder: str, name: str, view: View) -> str:
  """Writes name.png and name.json into folder; returns the PNG's file name."""
  with open(os.path.join(folder, f"{name}.png"), "wb") as f:
    f.write(view.png)
  files.save_json(view.data, os.path.join(folder, f"{name}.json"))
  return f"{name}.png"


def _figure(src: str, caption: str, width: int, box: Sequence[int] | None = None, size: int = 1) -> str:
  overlay = "" if box is None else (
      f'<div class="box" style="top:{100 * box[0] / size}%;left:{100 * box[1] / size}%;'
      f'height:{100 * (box[2] - box[0]) / size}%;width:{100 * (box[3] - box[1]) / size}%"></div>')
  json_link = src[:-len(".png")] + ".json"
  return (f'<figure><div class="frame"><img src="{html.escape(src)}" width="{width}">{overlay}</div>'
          f'<figcaption>{html.escape(caption)} (<a href="{html.escape(json_link)}">JSON</a>)</figcaption></figure>')


def export(session: Session, out: str, images: Sequence[str] | None = None) -> list[str]:
  """Writes the views of `images` (ids; default the sample photos) under `out`; returns the files' paths."""
  images = list(images) if images is not None else [f"sample:{name}" for name in SAMPLES]
  with files.staged(out) as stage:
    filters = _write(stage, "filters", session.filters())
    sections = [f"<h2>Layer-1 filters (Fig. 6)</h2>{_figure(filters, 'conv1', 336)}"]
    for image_id in images:
      name = image_id.replace(":", "-")
      folder = os.path.join(stage, name)
      os.makedirs(folder)
      view = session.image(image_id)
      top5 = "".join(f"<li>{html.escape(t['name'])} ({100 * t['p']:.1f} %)</li>" for t in view.data["top5"])
      parts = [f"<h2>{html.escape(image_id)}</h2>",
               _figure(f"{name}/{_write(folder, 'image', view)}", "the model input", 224), f"<ol>{top5}</ol>"]
      for layer in session.layers:
        grid = session.layer_grid(image_id, layer)
        channel = int(grid.data["strongest"][0])
        unit = session.project(image_id, layer, channel)
        parts.append(f"<h3>{layer}</h3>" + _figure(f"{name}/{_write(folder, f'grid-{layer}', grid)}",
                                                   "every map, the strongest first in the JSON", 336))
        parts.append(_figure(f"{name}/{_write(folder, f'project-{layer}', unit)}",
                             f"map {channel}'s strongest unit {unit.data['unit'][1:]}, activation "
                             f"{unit.data['activation']:.3g}, its receptive field boxed", 224, unit.data["box"],
                             unit.data["size"]))
      occluded = session.occlusion(image_id)
      parts.append("<h3>Occlusion (Fig. 7)</h3>" + _figure(
          f"{name}/{_write(folder, 'occlusion', occluded)}", f"left: {occluded.data['layer']} map "
          f"{occluded.data['map']}'s total activity; right: p({occluded.data['name']})", 448))
      sections.append("\n".join(parts))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>zf_jax explorer export</title>"
            f"<style>{STYLE}</style></head><body><h1>zf_jax explorer: {html.escape(session.arch.name)}</h1>"
            + "\n".join(sections) + "</body></html>")
    with open(os.path.join(stage, "index.html"), "w") as f:
      f.write(page)
    written = sorted(os.path.relpath(os.path.join(d, f), stage) for d, _, fs in os.walk(stage) for f in fs)
  return [os.path.join(out, path) for path in written]
