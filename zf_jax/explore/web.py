"""The explorer's web layer: Starlette routes over a `Session`, served by uvicorn; it only routes.

Starlette (with uvicorn) rather than FastAPI: the API is a dozen GET routes of query parameters that
the session checks itself (one error line each), so FastAPI's pydantic models would add a dependency
and a second layer of validation without adding anything; Starlette is what FastAPI runs on.

Every view is `GET api/<view>?...` answering its PNG, or with `format=json` the JSON of its numbers;
uploads are `POST api/upload` with the image bytes as the body (read in chunks and refused past the cap,
before they are kept anywhere). Errors are JSON {"error": one line} with a 4xx status. A page sends
`client` (a random token of its own) and `seq` (increasing) with each view request: a request of a view
still waiting for the device when a newer one of the same view from the same page has arrived answers
409 and computes nothing (the latest click wins). URLs in the page are relative, so it also works
behind a proxy (Jupyter's).
"""
from __future__ import annotations

import collections
import importlib.resources
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from zf_jax.data import preprocess
from zf_jax.explore import session as session_lib
from zf_jax.explore.session import Rejected, Session, View

STATIC = importlib.resources.files("zf_jax.explore") / "static"
MAX_CLIENTS = 1024
MEMO = 16  # views kept, so a page's PNG and JSON requests of one view compute it once


def _json(data: Any, status: int = 200) -> JSONResponse:
  def plain(o):
    if isinstance(o, dict):
      return {k: plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
      return [plain(v) for v in o]
    return o.tolist() if isinstance(o, (np.ndarray, np.generic)) else o
  return JSONResponse(plain(data), status_code=status)


def _error(status: int, message: str) -> JSONResponse:
  return JSONResponse({"error": message}, status_code=status)


class Latest:
  """The newest `seq` each page (`client`) sent for each view; a request older than that is superseded."""

  def __init__(self):
    self._seen: collections.OrderedDict[tuple[str, str], int] = collections.OrderedDict()
    self._lock = threading.Lock()

  def note(self, client: str, view: str, seq: int) -> None:
    with self._lock:
      key = (client, view)
      self._seen[key] = max(seq, self._seen.get(key, seq))
      self._seen.move_to_end(key)
      while len(self._seen) > MAX_CLIENTS:
        self._seen.popitem(last=False)

  def superseded(self, client: str, view: str, seq: int) -> bool:
    with self._lock:
      return self._seen.get((client, view), seq) > seq


def app(session: Session) -> Starlette:
  """The explorer's Starlette app for `session`."""
  latest = Latest()
  memo: collections.OrderedDict[tuple, View] = collections.OrderedDict()
  memo_lock = threading.Lock()  # views run under different locks (`Session.lock_for`)

  async def view(request: Request, name: str, compute: Callable[[dict[str, str]], View]) -> Response:
    query = dict(request.query_params)
    fmt = query.pop("format", "png")
    client, seq = query.pop("client", None), query.pop("seq", None)
    if fmt not in ("png", "json"):
      return _error(400, f"format={fmt!r} is not allowed; allowed: png, json")
    if seq is not None and not seq.isdigit():
      return _error(400, f"seq={seq!r} is not allowed; allowed: an int >= 0")
    if client is not None and seq is not None:
      latest.note(client, name, int(seq))

    def run() -> View:
      with session.lock_for(name):  # the check and the computation under one hold of the view's lock
        if client is not None and seq is not None and latest.superseded(client, name, int(seq)):
          raise Rejected(409, "superseded by a newer request of this view from the same page")
        key = (name, *sorted(query.items()))
        with memo_lock:
          if key in memo:
            return memo[key]
        computed = compute(query)
        with memo_lock:
          memo[key] = computed
          while len(memo) > MEMO:
            memo.popitem(last=False)
        return computed

    try:
      result = await run_in_threadpool(run)
    except Rejected as e:
      return _error(e.status, str(e))
    except Exception as e:  # noqa: BLE001  one line, and the server goes on
      return _error(500, f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if fmt == "json":
      return _json(result.data)
    return Response(result.png, media_type="image/png", headers={"Cache-Control": "no-store"})

  def route(name: str, compute: Callable[[dict[str, str]], View], allowed: tuple[str, ...]) -> Route:
    async def endpoint(request: Request) -> Response:
      unknown = sorted(set(request.query_params) - set(allowed) - {"format", "client", "seq"})
      if unknown:
        return _error(400, f"unknown parameter {unknown[0]!r} for api/{name}; allowed: "
                           f"{', '.join((*allowed, 'format', 'client', 'seq'))}")
      return await view(request, name, compute)
    return Route(f"/api/{name}", endpoint)

  def need(query: dict[str, str], *names: str) -> list[str]:
    missing = [n for n in names if n not in query]
    if missing:
      raise Rejected(400, f"missing parameter {missing[0]!r}; required: {', '.join(names)}")
    return [query[n] for n in names]

  async def upload(request: Request) -> Response:
    chunks, size = [], 0
    async for chunk in request.stream():
      size += len(chunk)
      if size > session_lib.MAX_UPLOAD_BYTES:
        return _error(413, f"the upload has more than {session_lib.MAX_UPLOAD_BYTES} bytes; allowed: at most "
                           f"{session_lib.MAX_UPLOAD_BYTES}")
      chunks.append(chunk)
    try:
      image_id = await run_in_threadpool(session.upload, b"".join(chunks))
    except Rejected as e:
      return _error(e.status, str(e))
    return _json({"image": image_id})

  async def info(request: Request) -> Response:
    loaded = session.loaded
    return _json({
        "model": loaded.config.get("name") or loaded.arch.name, "arch": loaded.arch.name, "step": loaded.step,
        "input_size": loaded.arch.input_size, "layers": list(session.layers), "rules": list(session_lib.deconv.RULES),
        "classes": session.class_names, "samples": [f"sample:{s}" for s in session_lib.SAMPLES],
        "data": None if session.data is None else {"name": session.data.name, "split": session.data.split,
                                                   "size": len(session.data.source)},
        "max_upload_bytes": session_lib.MAX_UPLOAD_BYTES, "max_upload_pixels": preprocess.MAX_IMAGE_PIXELS,
        "compiling": session.compiling})

  async def scan(request: Request) -> Response:
    if request.method == "POST":
      try:
        session.start_scan()
      except Rejected as e:
        return _error(e.status, str(e))
    return _json(session.scan_status())

  async def index(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"))

  routes = [
      Route("/", index),
      Route("/api/info", info),
      Route("/api/scan", scan, methods=["GET", "POST"]),
      Route("/api/upload", upload, methods=["POST"]),
      route("image", lambda q: session.image(*need(q, "image")), ("image",)),
      route("grid", lambda q: session.layer_grid(*need(q, "image", "layer")), ("image", "layer")),
      route("project", lambda q: session.project(*need(q, "image", "layer", "channel"), q.get("y"), q.get("x"),
                                                 q.get("rule", "deconvnet")),
            ("image", "layer", "channel", "y", "x", "rule")),
      route("occlusion", lambda q: session.occlusion(*need(q, "image"), q.get("class")), ("image", "class")),
      route("top9", lambda q: session.top9(*need(q, "layer", "channel"), q.get("rule", "deconvnet"),
                                           _flag(q.get("scale", "own"))), ("layer", "channel", "rule", "scale")),
      route("filters", lambda q: session.filters(), ()),
      Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
  ]
  return Starlette(routes=routes)


def _flag(scale: str) -> bool:
  """scale=own|shared -> shared?"""
  if scale not in ("own", "shared"):
    raise Rejected(400, f"scale={scale!r} is not allowed; allowed: own, shared")
  return scale == "shared"


class URL(str):
  """The explorer's URL (a str); `stop()` shuts its background server down."""
  server: Any
  thread: threading.Thread

  def stop(self) -> None:
    self.server.should_exit = True
    self.thread.join(timeout=10)


def serve(session: Session, host: str = "127.0.0.1", port: int = 8000, background: bool = True) -> URL:
  """Serves `session` at http://host:port/ (port 0: a free one).

  background=True starts uvicorn in a daemon thread and returns the URL once it accepts connections
  (`url.stop()` ends it); False prints the URL and serves until Ctrl-C. A host other than 127.0.0.1 /
  localhost prints a warning: the explorer has no authentication.
  """
  import uvicorn
  if host not in ("127.0.0.1", "localhost", "::1"):
    print(f"explore: warning: serving on {host}: anyone who can reach it can use the explorer (no authentication)",
          file=sys.stderr)
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
    sock.listen(128)  # connections queue from now on, before uvicorn's loop accepts them
  except OSError as e:
    sock.close()
    raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); allowed: a free port (0 picks one)") from None
  bound = sock.getsockname()[1]
  url = URL(f"http://{'[' + host + ']' if ':' in host else host}:{bound}/")
  # log_config=None: uvicorn's own logging.config.dictConfig would close every handler the process has
  # (a notebook's, pytest's); its loggers propagate to the root logger instead.
  server = uvicorn.Server(uvicorn.Config(app(session), log_level="warning", access_log=False, log_config=None))
  if not background:
    print(url, flush=True)
    server.run(sockets=[sock])
    return url
  url.server, url.thread = server, threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                                    name="zf_jax-explore")
  url.thread.start()
  while not server.started and url.thread.is_alive():
    threading.Event().wait(0.02)
  return url
