"""The explorer (issue 21): its session's views without a server, and every API route in-process (httpx TestClient).

Random zfnet64 weights, 100 class names, a 12-image ImageFolder for the top-9 scan.
"""
import dataclasses
import io
import json
import os
import struct
import threading
import zlib

import jax
import numpy as np
import pytest
from PIL import Image

from tests.cli import write_synthetic_folder
from zf_jax import checkpoint, data, deconv, models
from zf_jax.explore import session as session_lib
from zf_jax.explore.session import Rejected, Session

WEIGHT_STD = {"conv1": 0.01, "conv2": 0.05, "conv3": 0.05, "conv4": 0.05, "conv5": 0.05, "fc6": 0.05, "fc7": 0.05}


def random_model() -> checkpoint.Loaded:
  """zfnet64 with random weights that keep every layer active, 100 classes named "class i"."""
  arch = models.get_arch("zfnet64")
  params = models.init_params(arch, jax.random.key(0), 100, WEIGHT_STD, bias=0.05)
  return checkpoint.Loaded(arch=arch, params=params, mean_image=np.full((64, 64, 3), 110.0, np.float32),
                           num_classes=100, class_names=[f"class {i}" for i in range(100)], step=0, epoch=0.0,
                           config={})


@pytest.fixture(scope="module")
def session(tmp_path_factory):
  folder = tmp_path_factory.mktemp("folder")
  write_synthetic_folder(str(folder), 12)
  split = data.get_dataset(str(folder), "validation")
  return Session(random_model(), split, cache_dir=str(tmp_path_factory.mktemp("cache")), batch_size=8)


@pytest.fixture(scope="module")
def client(session):
  from starlette.testclient import TestClient

  from zf_jax.explore import web
  with TestClient(web.app(session)) as c:
    yield c


def png(content: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(content)))


def encoded(image: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=fmt)
  return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
  """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
  small = encoded(np.zeros((2, 2, 3), np.uint8), "PNG")
  ihdr = struct.pack(">II", width, height) + small[24:29]
  return small[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + small[33:]


# --- the session, without a server


def test_image_gives_the_top5_of_the_validation_preprocessing(session):
  view = session.image("sample:chelsea")
  x = data.model_inputs.prepare_images([data.model_inputs.read_image("skimage:chelsea")], 56, 64,
                                       session.loaded.mean_image)
  logits, _ = models.forward(session.arch, session.params, x)
  probs = np.asarray(jax.nn.softmax(logits[0]))
  assert [t["class"] for t in view.data["top5"]] == list(np.argsort(-probs)[:5])
  np.testing.assert_allclose([t["p"] for t in view.data["top5"]], np.sort(probs)[::-1][:5], rtol=1e-5)
  assert view.data["top5"][0]["name"] == f"class {view.data['top5'][0]['class']}"
  assert png(view.png).shape == (56, 56, 3)


@pytest.mark.parametrize("layer, shape, columns", [("conv1", (28, 28, 48), 7), ("conv3", (7, 7, 192), 14),
                                                   ("fc6", (1, 1, 512), 23)])
def test_layer_grid_tiles_every_map(session, layer, shape, columns):
  view = session.layer_grid("sample:chelsea", layer)
  h, w, c = shape
  gap = view.data["gap"]
  assert view.data["shape"] == list(shape) and view.data["columns"] == columns
  rows = -(-c // columns)
  image = png(view.png)
  assert image.shape == (rows * (h + gap) - gap, columns * (w + gap) - gap, 3)
  _, trace = models.forward(session.arch, session.params, session._forward("sample:chelsea")[2][None])
  act = np.asarray(trace.activations[layer][0]).reshape(-1, c)
  np.testing.assert_allclose(view.data["max"], act.max(0), rtol=1e-5)
  assert list(view.data["strongest"]) == list(np.argsort(-act.max(0), kind="stable")[:5])
  # the strongest map's brightest pixel in the PNG is where its maximum is
  ch = int(view.data["strongest"][0])
  y, x = view.data["argmax"][ch]
  r, col = divmod(ch, columns)
  assert image[r * (h + gap) + y, col * (w + gap) + x, 0] == 255


def test_project_strongest_unit_its_box_and_no_recompile_for_a_new_unit(session):
  view = session.project("sample:chelsea", "conv3", 7)
  maps = session._maps("sample:chelsea", "conv3")
  y, x = np.unravel_index(maps[..., 7].argmax(), maps.shape[:2])
  assert view.data["unit"] == [7, y, x]
  assert view.data["activation"] == pytest.approx(float(maps[y, x, 7]))
  assert view.data["box"] == list(deconv.receptive_field(session.arch, "conv3", int(y), int(x)))
  compiled = deconv._project_units._cache_size()
  other = session.project("sample:chelsea", "conv3", 11, 1, 2)
  assert deconv._project_units._cache_size() == compiled  # the unit is a traced argument
  assert other.data["unit"] == [11, 1, 2]
  pixels = png(other.png).astype(int)
  y0, x0, y1, x1 = other.data["box"]
  outside = np.ones((56, 56), bool)
  outside[y0:y1, x0:x1] = False
  assert (pixels[outside] == 128).all() and (pixels[~outside] != 128).any()  # 0 is mid-grey, nothing outside the field


def test_stretch_is_robust_per_patch_or_shared():
  faint = np.zeros((2, 4, 4, 3), np.float32)
  faint[0, 0, 0] = [1e-3, -1e-3, 5e-4]
  faint[1, 1, 1] = [10.0, 0, 0]
  own = session_lib.stretch(faint)
  assert own[0, 0, 0, 0] > 0.99 and own[0, 0, 0, 1] < 0.01  # the faint patch at full contrast
  assert (own[:, 3, 3] == 0.5).all()  # zero at mid-grey
  shared = session_lib.stretch(faint, shared=True)
  assert abs(shared[0, 0, 0, 0] - 0.5) < 0.01 and shared[1, 1, 1, 0] == 1.0


def test_occlusion_is_figure7_exact_mode(session):
  view = session.occlusion("sample:chelsea", 3)
  d = view.data
  positions = len(d["corners"])
  assert d["activity"].shape == d["p_true"].shape == (positions, positions) and d["class"] == 3
  probs, _, _ = session._forward("sample:chelsea")
  assert d["p_true_unoccluded"] == pytest.approx(float(probs[3]), rel=1e-4)
  assert png(view.png).shape == (56, 56 * 2 + 2, 3)


def test_a_click_does_not_wait_for_an_occlusion_map(session, monkeypatch):
  session.project("sample:chelsea", "conv2", 0)  # compiled and the trace kept: the click below is short
  answered = []
  maps = session_lib.occlusion.occlusion_maps

  def occlusion_maps_with_a_click_inside(*args, **kwargs):  # a click arrives while the map is computed
    click = threading.Thread(target=lambda: answered.append(session.project("sample:chelsea", "conv2", 1)))
    click.start()
    click.join(timeout=60)  # under one lock for both, the click would wait until this map returned
    answered.append("joined")
    return maps(*args, **kwargs)

  monkeypatch.setattr(session_lib.occlusion, "occlusion_maps", occlusion_maps_with_a_click_inside)
  session.occlusion("sample:chelsea", 3)
  assert len(answered) == 2 and answered[1] == "joined" and answered[0].data["unit"][0] == 1


def test_filters_view(session):
  view = session.filters()
  assert view.data["num_filters"] == 48 and view.data["kernel_size"] == 7
  assert png(view.png).shape == (7 * 8 - 1, 7 * 8 - 1, 3)


@pytest.mark.parametrize("content, status", [
    (b"x" * (session_lib.MAX_UPLOAD_BYTES + 1), 413),
    (png_claiming(10_000, 10_000), 413),
    (encoded(np.zeros((8, 8, 3), np.uint8), "GIF"), 415),
    (b"not an image", 415),
    (encoded(np.zeros((8, 8, 3), np.uint8), "PNG")[:40], 415),
])
def test_bad_uploads_are_rejected(session, content, status):
  with pytest.raises(Rejected) as e:
    session.upload(content)
  assert e.value.status == status and "allowed" in str(e.value) and "\n" not in str(e.value)


def test_top9_scan_is_cached_by_what_it_was_computed_from(session, tmp_path):
  session.start_scan()
  session._scan_thread.join(60)
  assert session.scan_status()["state"] == "done"
  top = session.top9("conv2", 5)
  assert len(top.data["images"]) == 9 and list(top.data["value"]) == sorted(top.data["value"], reverse=True)
  assert png(top.png).shape[1] > png(top.png).shape[0]  # patches | projections, side by side
  again = Session(session.loaded, session.data, cache_dir=session.cache_dir)
  again.start_scan()
  again._scan_thread.join(60)
  assert again.scan_status()["done"] == 12
  np.testing.assert_array_equal(again._top["conv2"]["image"], session._top["conv2"]["image"])
  other = dict(session.loaded.params, fc7={k: v + 1 for k, v in session.loaded.params["fc7"].items()})
  changed = Session(dataclasses.replace(session.loaded, params=other), session.data, cache_dir=session.cache_dir)
  assert changed._cache_path(again._inputs) != again._cache_path(again._inputs)


# --- the API, in-process


def test_every_route_answers(client, session):
  assert "zf_jax explorer" in client.get("/").text
  assert client.get("/static/app.js").status_code == 200
  info = client.get("/api/info").json()
  assert info["layers"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
  assert len(info["classes"]) == 100 and info["data"]["size"] == 12
  assert info["compiling"]["state"] in ("compiling", "done", "failed")
  photo = np.asarray(Image.fromarray(np.uint8(np.random.default_rng(0).integers(0, 255, (90, 120, 3)))))
  image = client.post("/api/upload", content=encoded(photo, "JPEG")).json()["image"]
  assert image.startswith("upload:")
  assert len(client.get(f"/api/image?image={image}&format=json").json()["top5"]) == 5
  for path in (f"image?image={image}", f"grid?image={image}&layer=conv3",
               f"project?image={image}&layer=conv3&channel=4&rule=guided",
               f"project?image={image}&layer=conv2&channel=4&y=3&x=5",
               "occlusion?image=sample:camera", "filters"):
    r = client.get(f"/api/{path}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", (path, r.text[:200])
    assert client.get(f"/api/{path}&format=json" if "?" in path else f"/api/{path}?format=json").status_code == 200
  client.post("/api/scan")
  session._scan_thread.join(60)
  assert client.get("/api/scan").json()["state"] == "done"
  r = client.get("/api/top9?layer=conv5&channel=3&scale=shared&format=json")
  assert r.status_code == 200 and r.json()["shared_scale"] is True
  fc = client.get("/api/top9?layer=fc6&channel=3&format=json").json()  # an fc unit sees the whole image
  assert fc["boxes"] == [[0, 0, 56, 56]] * 9 and len(set(fc["images"])) == 9
  assert client.get("/api/project?image=data:11&layer=fc7&channel=100&format=json").json()["box"] == [0, 0, 56, 56]


@pytest.mark.parametrize("path, status, says", [
    ("grid?image=sample:chelsea&layer=conv9", 400, "allowed: conv1, conv2, conv3, conv4, conv5, fc6, fc7"),
    ("grid?image=sample:chelsea&layer=fc8", 400, "allowed: conv1"),
    ("project?image=sample:chelsea&layer=conv3&channel=192", 400, "allowed: an int in 0..191"),
    ("project?image=sample:chelsea&layer=conv3&channel=-1", 400, "allowed: an int in 0..191"),
    ("project?image=sample:chelsea&layer=conv3&channel=1&y=7&x=0", 400, "allowed: an int in 0..6"),
    ("project?image=sample:chelsea&layer=conv3&channel=1&y=2", 400, "give both y and x"),
    ("project?image=sample:chelsea&layer=conv3&channel=1&rule=lrp", 400, "allowed: deconvnet, guided, saliency"),
    ("project?image=sample:chelsea&layer=conv3", 400, "missing parameter 'channel'"),
    ("occlusion?image=sample:chelsea&class=100", 400, "allowed: an int in 0..99"),
    ("image?image=/etc/passwd", 404, "allowed: sample:astronaut"),
    ("image?image=upload:0000", 404, "expired upload"),
    ("image?image=data:12", 400, "allowed: an int in 0..11"),
    ("image?image=sample:chelsea&path=x", 400, "unknown parameter 'path'"),
    ("image?image=sample:chelsea&format=gif", 400, "allowed: png, json"),
    ("top9?layer=conv2&channel=1&scale=wide", 400, "allowed: own, shared"),
])
def test_bad_requests_get_one_line_4xx(client, path, status, says):
  r = client.get(f"/api/{path}")
  assert r.status_code == status, r.text
  assert says in r.json()["error"] and "\n" not in r.json()["error"]


def test_bad_uploads_get_4xx(client):
  r = client.post("/api/upload", content=iter([b"x" * 1_000_000] * 9))  # streamed, no length: cut at the cap
  assert r.status_code == 413 and "at most" in r.json()["error"]
  assert client.post("/api/upload", content=png_claiming(100_000, 100_000)).status_code == 413
  assert client.post("/api/upload", content=encoded(np.zeros((4, 4, 3), np.uint8), "BMP")).status_code == 415


def test_an_older_request_of_a_view_is_superseded(client):
  base = "/api/grid?image=sample:chelsea&layer=conv1&format=json&client=page1"
  assert client.get(f"{base}&seq=5").status_code == 200
  r = client.get(f"{base}&seq=3")
  assert r.status_code == 409 and "superseded" in r.json()["error"]
  assert client.get(f"{base}&seq=6").status_code == 200
  assert client.get("/api/grid?image=sample:chelsea&layer=conv1&client=page2&seq=1").status_code == 200


def test_top9_without_data_is_404():
  from starlette.testclient import TestClient

  from zf_jax.explore import web
  with TestClient(web.app(Session(random_model()))) as c:
    r = c.get("/api/top9?layer=conv1&channel=0")
    assert r.status_code == 404 and "--data" in r.json()["error"]


@pytest.mark.slow  # every layer's projection compiles: a minute on a busy 2-core machine
def test_export_writes_every_view_as_static_files_or_nothing(session, tmp_path):
  from zf_jax.explore import export
  out = tmp_path / "views"
  written = export.export(session, str(out), ["sample:chelsea"])
  names = {os.path.relpath(p, out) for p in written}
  assert {"index.html", "filters.png", "filters.json", "sample-chelsea/image.png", "sample-chelsea/occlusion.json",
          "sample-chelsea/grid-conv3.png", "sample-chelsea/project-fc7.json"} <= names
  page = (out / "index.html").read_text()
  assert all(f'src="{name}"' in page for name in names if name.endswith(".png"))
  assert json.loads((out / "sample-chelsea" / "project-conv3.json").read_text())["layer"] == "conv3"
  with pytest.raises(Rejected):
    export.export(session, str(out), ["sample:chelsea", "sample:nope"])
  assert {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs} == names  # as it was


def test_serve_in_the_background_warns_off_loopback_and_refuses_a_busy_port(session, capsys):
  import urllib.request

  from zf_jax.explore import web
  url = web.serve(session, port=0)
  try:
    assert url.startswith("http://127.0.0.1:") and "authentication" not in capsys.readouterr().err
    with urllib.request.urlopen(f"{url}api/info", timeout=30) as r:
      assert json.loads(r.read())["arch"] == "zfnet64"
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{port}.*allowed: a free port"):
      web.serve(session, port=port)
  finally:
    url.stop()
  exposed = web.serve(session, host="0.0.0.0", port=0)
  exposed.stop()
  assert "no authentication" in capsys.readouterr().err


def test_the_server_answers_a_click_while_an_occlusion_map_computes(session, monkeypatch):
  import urllib.request

  from zf_jax.explore import web
  started, occluded = threading.Event(), threading.Event()

  def slow_occlusion(image_id, label=None):  # holds whatever lock the server runs occlusion views under
    started.set()
    occluded.wait(30)
    occluded.set()
    return session_lib.View(b"", {"image": image_id})

  monkeypatch.setattr(session, "occlusion", slow_occlusion)
  session.project("sample:chelsea", "conv2", 0)  # compiled: the click below is short
  url = web.serve(session, port=0)
  occlusion = threading.Thread(
      target=lambda: urllib.request.urlopen(f"{url}api/occlusion?image=sample:chelsea&format=json", timeout=60).read())
  try:
    occlusion.start()
    assert started.wait(60)  # the occlusion view is computing
    with urllib.request.urlopen(f"{url}api/project?image=sample:chelsea&layer=conv2&channel=1&format=json",
                                timeout=60) as r:
      assert json.loads(r.read())["unit"][0] == 1
    assert not occluded.is_set()  # answered before the occlusion map was done
  finally:
    occluded.set()
    occlusion.join(timeout=60)
    url.stop()


def test_the_other_rules_compile_in_the_background_and_clicks_then_compile_nothing(session, monkeypatch):
  """serve() compiles the deconvnet rule before it serves, guided and saliency in a thread while it serves."""
  from zf_jax import deconv
  deconv._project_units.clear_cache()  # what earlier tests compiled is gone
  uploads = list(session._uploads)
  thread = session.warm_up_in_background(("guided",))
  assert session.compiling["state"] == "compiling" and session.compiling["rules"] == ["guided"]
  thread.join(timeout=300)
  assert session.compiling["state"] == "done" and session.compiling["seconds"] > 0  # api/info shows it
  assert list(session._uploads) == uploads  # its blank image is gone again
  traced = []
  windowed = deconv._project_windowed
  monkeypatch.setattr(deconv, "_project_windowed", lambda *args: traced.append(1) or windowed(*args))
  for layer in ("conv1", "conv5"):
    session.project("sample:coffee", layer, 3, rule="guided")
  assert traced == []  # every layer's guided projection was traced (and compiled) by the warm-up
