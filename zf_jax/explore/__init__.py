"""A live explorer of a trained model in the browser: the deep-visualization toolbox's views of section 2.1
and Figs. 2, 6, 7.

  url = zf_jax.explore.serve(loaded)            # a notebook: serves in the background, returns the URL
  zf_jax.explore.serve(loaded, background=False)  # a CLI: prints the URL, serves until Ctrl-C

`session.Session` does the model work (importable and tested without a server), `web` routes,
`export` writes the same views as static pages, `static/` is the page (HTML + JavaScript, no build step).
"""
from __future__ import annotations

import sys

from zf_jax import checkpoint
from zf_jax.data import datasets
from zf_jax.explore import web
from zf_jax.explore.session import Session


def serve(loaded: checkpoint.Loaded, data: datasets.Dataset | None = None, host: str = "127.0.0.1", port: int = 0,
          background: bool = True, cache_dir: str | None = None, scan_images: int | None = None,
          warm_up: bool = True) -> web.URL:
  """Serves the explorer of `loaded` (and `data`'s images and top-9 scan) at http://host:port/.

  Args:
    loaded: the model (`checkpoint.load_for_analysis`, `pretrained.load_model`).
    data: a dataset split (`data.get_dataset`) or None.
    host: 127.0.0.1 by default; any other prints a warning (there is no authentication).
    port: 0 picks a free port.
    background: True: serve in a daemon thread and return the URL (`url.stop()` ends it); False: print the
      URL and serve until Ctrl-C.
    cache_dir: where the top-9 scan is cached (default ~/.cache/zf_jax/explore).
    scan_images: scan only the first N images of `data`.
    warm_up: compile the jitted functions first (`Session.warm_up`: the deconvnet rule and occlusion; the seconds
      are printed to stderr), then the guided and saliency rules in the background while serving.

  Returns:
    The URL (a str with `.stop()`).
  """
  session = Session(loaded, data, cache_dir=cache_dir, scan_images=scan_images)
  if warm_up:
    print(f"explore: compiled in {session.warm_up():.1f} s", file=sys.stderr, flush=True)
    session.warm_up_in_background()
  return web.serve(session, host, port, background)


__all__ = ["Session", "serve"]
