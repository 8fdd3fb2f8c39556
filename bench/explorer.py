"""Benchmark 6: the live explorer (issue 21) under a bounded load test against 127.0.0.1.

The server runs in its own process (`python -m bench.explorer --serve NAME`: the shipped model, or an
architecture with random weights from `common.model`; warmed up, then uvicorn), so its RSS is its own.
C client threads then each send R requests (stopping by themselves) over a fixed mix, after uploading 8 random photos:
  50 % click to projection   api/project, a random conv layer, map, and the strongest unit or a random one
  30 % layer grid            api/grid, a random layer of a random photo
  10 % image + top-5         api/image
  10 % live occlusion        api/occlusion, exact incremental mode, a random class
Each latency is one request's wall time, client side (the PNG fully read). Reported: p50 / p99 per
endpoint against the issue's targets, the count of non-200 answers, the server's RSS after the first
100 requests and after all of them, and the compile times: at start-up (printed by the server), and of
the guided and saliency rules in the background (api/info), which the load test waits for.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

if __package__ in (None, ""):  # `python bench/explorer.py`: make the repository root importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIX = (("project", 0.5), ("grid", 0.3), ("image", 0.1), ("occlusion", 0.1))
TARGETS_MS = {("project", 50): 100.0, ("project", 99): 300.0, ("grid", 50): 150.0, ("occlusion", 50): 1000.0}
NUM_PHOTOS = 8


SHIPPED = "zfnet64-tiny-imagenet-100"


def _serve(name: str) -> None:
  """The server process: NAME, a shipped model (`zf_jax.pretrained`) or an architecture with random weights,
  warmed up, on a free port of 127.0.0.1 (URL on stdout)."""
  from zf_jax import checkpoint, data, explore, pretrained
  if name in pretrained.available():
    explore.serve(pretrained.load_model(name), port=0, background=False)
    return
  arch, params, _ = common.model(name, 1, num_classes=100)
  size = data.image_size_for(arch)
  loaded = checkpoint.Loaded(arch=arch, params=params, mean_image=np.full((size, size, 3), 110.0, np.float32),
                             num_classes=100, class_names=[f"class {i}" for i in range(100)], step=0, epoch=0.0,
                             config={})
  explore.serve(loaded, port=0, background=False)


def _rss_mb(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    return int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) / 1024


def _get(url: str) -> tuple[int, float]:
  """(HTTP status, seconds) of one GET, the body read to the end."""
  start = time.perf_counter()
  try:
    with urllib.request.urlopen(url, timeout=120) as response:
      response.read()
      status = response.status
  except urllib.error.HTTPError as e:
    status = e.code
  except OSError:
    status = 0
  return status, time.perf_counter() - start


def _upload(base: str, seed: int) -> str:
  import io
  import json

  from PIL import Image
  pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).resize((320, 240)).save(buffer, format="JPEG")
  request = urllib.request.Request(f"{base}api/upload", data=buffer.getvalue(), method="POST")
  with urllib.request.urlopen(request, timeout=60) as response:
    return json.loads(response.read())["image"]


def _request(rng: np.random.Generator, photos: list[str], shapes: dict[str, tuple[int, ...]]) -> tuple[str, str]:
  """(endpoint, query) of one request of the mix."""
  kind = MIX[rng.choice(len(MIX), p=[p for _, p in MIX])][0]
  image = photos[rng.integers(len(photos))]
  layer = list(shapes)[rng.integers(len(shapes))]
  h, w, c = shapes[layer] if len(shapes[layer]) == 3 else (1, 1, shapes[layer][0])
  if kind == "project":
    unit = "" if rng.random() < 0.5 else f"&y={rng.integers(h)}&x={rng.integers(w)}"
    return kind, f"image={image}&layer={layer}&channel={rng.integers(c)}{unit}"
  if kind == "grid":
    return kind, f"image={image}&layer={layer}"
  if kind == "occlusion":
    return kind, f"image={image}&class={rng.integers(100)}"
  return kind, f"image={image}"


def _wait_for_background_compile(base: str, timeout: float = 900.0) -> float | None:
  """Waits until the server's background compilation (guided, saliency) is over; its seconds (api/info).

  The load test measures clicks once every rule is compiled: during those seconds each compilation holds
  the device lock, and a click that arrives then waits for it (reported apart, in the RSS row's note).
  """
  import json
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    with urllib.request.urlopen(f"{base}api/info", timeout=60) as response:
      compiling = json.loads(response.read())["compiling"]
    if compiling["state"] != "compiling":
      return compiling["seconds"]
    time.sleep(0.5)
  raise RuntimeError(f"the explorer server still compiles in the background after {timeout:.0f} s")


def load_test(name: str, clients: int, requests: int, first: int) -> dict[str, Any]:
  """Starts the server for `name`, runs `clients` x `requests` requests; latencies, errors and RSS."""
  from zf_jax import models, pretrained
  arch = pretrained.load(name)[0] if name in pretrained.available() else models.get_arch(name)
  shapes = {layer: shape for layer, shape in arch.shapes().items() if layer in arch.activation_names[:-1]}
  with tempfile.TemporaryFile("w+") as log:
    server = subprocess.Popen([sys.executable, "-m", "bench.explorer", "--serve", name], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=log, text=True)
    try:
      base = server.stdout.readline().strip()
      if not base.startswith("http"):
        log.seek(0)
        raise RuntimeError(f"the explorer server did not start: {log.read()[-2000:]}")
      background_s = _wait_for_background_compile(base)
      photos = [_upload(base, seed) for seed in range(NUM_PHOTOS)]
      times: dict[str, list[float]] = {kind: [] for kind, _ in MIX}
      errors, done, rss_first = [], [0], [None]
      lock = threading.Lock()

      def client(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(requests):
          kind, query = _request(rng, photos, shapes)
          status, seconds = _get(f"{base}api/{kind}?{query}")
          with lock:
            times[kind].append(seconds)
            if status != 200:
              errors.append(f"{status} {kind}?{query}")
            done[0] += 1
            if done[0] == first:
              rss_first[0] = _rss_mb(server.pid)

      threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
      start = time.perf_counter()
      for t in threads:
        t.start()
      for t in threads:
        t.join()
      wall = time.perf_counter() - start
      rss_last = _rss_mb(server.pid)
    finally:
      server.terminate()
      server.wait(timeout=30)
    log.seek(0)
    compiled = re.search(r"compiled in ([\d.]+) s", log.read())
  return {"times": times, "errors": errors, "rss_first": rss_first[0], "rss_last": rss_last, "wall": wall,
          "requests": clients * requests, "first": first, "compile_s": float(compiled.group(1)) if compiled else None,
          "background_compile_s": background_s}


def _percentile_ms(seconds: list[float], q: float) -> float:
  """The q-th percentile in ms; NaN when the mix drew no request of that kind (a short --quick run)."""
  return 1000 * float(np.percentile(seconds, q)) if seconds else float("nan")


def rows(name: str, result: dict[str, Any], config: str) -> list[dict[str, Any]]:
  """Rows: each latency target, the errors, the RSS growth."""
  out = []
  for (kind, q), target in TARGETS_MS.items():
    ms = _percentile_ms(result["times"][kind], q)
    out.append(common.row("explorer", name, f"{kind} p{q} (ms)", ms, target, "issue 21's target (ms)", 1.0, config,
                          f"{len(result['times'][kind])} requests", lower_is_better=True))
  note = "; ".join(result["errors"][:3])
  out.append(common.row("explorer", name, "requests answered non-200", len(result["errors"]), result["requests"],
                        "requests sent", 0.0, config, note, lower_is_better=True))
  out.append(common.row("explorer", name, f"server RSS after {result['requests']} requests (MB)", result["rss_last"],
                        result["rss_first"], f"its RSS after the first {result['first']} (MB)", 1.10, config,
                        f"start-up compile {result['compile_s']} s, then guided and saliency in the background "
                        f"{result['background_compile_s']} s (before the load); {result['wall']:.0f} s of load in all",
                        lower_is_better=True))
  return out


def bench_model(name: str, clients: int, requests: int, first: int) -> list[dict[str, Any]]:
  result = load_test(name, clients, requests, first)
  weights = "the shipped model" if name == SHIPPED else "random weights"
  config = f"{clients} clients x {requests} requests, {NUM_PHOTOS} uploaded photos, {weights}"
  for kind, seconds in result["times"].items():
    print(f"[explorer] {name} {kind}: p50 {_percentile_ms(seconds, 50):.0f} ms, "
          f"p99 {_percentile_ms(seconds, 99):.0f} ms ({len(seconds)})", flush=True)
  print(f"[explorer] {name}: {len(result['errors'])} errors, RSS {result['rss_first']:.0f} -> "
        f"{result['rss_last']:.0f} MB, compile {result['compile_s']} s + {result['background_compile_s']} s "
        "in the background", flush=True)
  return rows(name, result, config)


def run(quick: bool = False) -> list[dict[str, Any]]:
  """The shipped 64-px model, then ZF at 224 px with random weights (issue 21)."""
  if quick:
    return bench_model("zfnet64", 2, 15, 10)
  return bench_model(SHIPPED, 4, 250, 100) + bench_model("zfnet", 4, 250, 100)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--serve", metavar="NAME", help="run the server process for NAME (used by the load test)")
  parser.add_argument("--quick", action="store_true", help="2 clients x 15 requests on zfnet64")
  args = parser.parse_args()
  if args.serve:
    _serve(args.serve)
  else:
    for r in run(args.quick):
      print(r)


if __name__ == "__main__":
  main()
