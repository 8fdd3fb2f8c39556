// The explorer page: every view is an <img> of api/<view>?... (PNG) plus its JSON; all URLs are relative
// (so the page works behind a proxy, e.g. Jupyter's). The state lives in the page's query string (permalinks).
"use strict";

const client = Math.random().toString(36).slice(2);
let seq = 0;
const pending = {};  // view -> AbortController of its request in flight: a newer request aborts it
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  image: params.get("image") || "sample:chelsea", layer: params.get("layer") || "conv1",
  channel: params.get("channel"), y: params.get("y"), x: params.get("x"),
  rule: params.get("rule") || "deconvnet", class: params.get("class") || "", scale: params.get("scale") || "own",
};
let info = null;
let grid = null;

function query(fields) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(fields)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  return q.toString();
}

function status(text) { $("status").textContent = text; }

// Fetches a view's JSON and PNG (latest request of each view wins); returns [json, object URL] or null.
async function load(view, fields) {
  if (pending[view]) pending[view].abort();
  const controller = new AbortController();
  pending[view] = controller;
  const n = ++seq;
  const base = `api/${view}?${query(fields)}`;
  $(`${view}-png`) && ($(`${view}-png`).href = base);
  $(`${view}-json`) && ($(`${view}-json`).href = `${base}&format=json`);
  $(`${view}-link`) && ($(`${view}-link`).href = `?${query(state)}`);
  try {
    const tag = `client=${client}&seq=${n}`;
    const [j, p] = await Promise.all([fetch(`${base}&format=json&${tag}`, {signal: controller.signal}),
                                      fetch(`${base}&${tag}`, {signal: controller.signal})]);
    if (j.status === 409 && view !== "top9") return null;  // superseded by a newer click
    const data = await j.json();
    if (!j.ok) { status(data.error); return [data, null]; }
    if (!p.ok) return null;
    status("");
    return [data, URL.createObjectURL(await p.blob())];
  } catch (e) {
    if (e.name !== "AbortError") status(`${view}: ${e.message}`);
    return null;
  }
}

function remember() { history.replaceState(null, "", `?${query(state)}`); }

async function showImage() {
  remember();
  const out = await load("image", {image: state.image});
  if (!out || !out[1]) return;
  $("input").src = out[1];
  $("top5").replaceChildren(...out[0].top5.map((t) => {
    const li = document.createElement("li");
    li.textContent = `${t.name} (${(100 * t.p).toFixed(1)} %)`;
    return li;
  }));
  await Promise.all([showGrid(), showOcclusion()]);
  if (state.channel !== null) await showUnit();
}

async function showGrid() {
  remember();
  for (const b of $("tabs").children) b.classList.toggle("active", b.dataset.layer === state.layer);
  const out = await load("grid", {image: state.image, layer: state.layer});
  if (!out || !out[1]) return;
  grid = out[0];
  $("grid").src = out[1];
  drawMarks();
}

// The tile (and position in it) of one map in the grid, as fractions of the grid image.
function tileBox(channel) {
  const [h, w] = grid.shape, gap = grid.gap, cols = grid.columns;
  const rows = Math.ceil(grid.shape[2] / cols);
  const width = cols * (w + gap) - gap, height = rows * (h + gap) - gap;
  const r = Math.floor(channel / cols), c = channel % cols;
  return {left: c * (w + gap) / width, top: r * (h + gap) / height, width: w / width, height: h / height};
}

function drawMarks() {
  const marks = grid.strongest.map((ch) => mark(ch, "mark"));
  if (state.channel !== null && Number(state.channel) < grid.shape[2]) marks.push(mark(Number(state.channel), "mark chosen"));
  $("marks").replaceChildren(...marks);
}

function mark(channel, cls) {
  const box = tileBox(channel), div = document.createElement("div");
  div.className = cls;
  Object.assign(div.style, {left: `${100 * box.left}%`, top: `${100 * box.top}%`, width: `${100 * box.width}%`,
                            height: `${100 * box.height}%`});
  return div;
}

function clickGrid(event) {
  if (!grid) return;
  const img = $("grid");
  const px = event.offsetX * img.naturalWidth / img.clientWidth, py = event.offsetY * img.naturalHeight / img.clientHeight;
  const [h, w, c] = grid.shape, gap = grid.gap;
  const col = Math.floor(px / (w + gap)), row = Math.floor(py / (h + gap));
  const x = Math.floor(px - col * (w + gap)), y = Math.floor(py - row * (h + gap));
  const channel = row * grid.columns + col;
  if (x >= w || y >= h || col >= grid.columns || channel >= c) return;  // a gap between tiles
  state.channel = String(channel);
  [state.y, state.x] = $("at-pointer").checked ? [String(y), String(x)] : [null, null];
  drawMarks();
  showUnit();
}

async function showUnit() {
  remember();
  const out = await load("project", {image: state.image, layer: state.layer, channel: state.channel,
                                     y: state.y, x: state.x, rule: state.rule});
  if (!out || !out[1]) return;
  const d = out[0];
  $("projection").src = out[1];
  $("projection").hidden = false;
  $("unit-info").textContent = `${d.layer} map ${d.unit[0]}, unit (y ${d.unit[1]}, x ${d.unit[2]}): activation ` +
      `${d.activation.toFixed(3)}; receptive field rows ${d.box[0]}-${d.box[2] - 1}, columns ${d.box[1]}-${d.box[3] - 1}`;
  const box = $("rfbox"), s = d.size;
  Object.assign(box.style, {top: `${100 * d.box[0] / s}%`, left: `${100 * d.box[1] / s}%`,
                            height: `${100 * (d.box[2] - d.box[0]) / s}%`, width: `${100 * (d.box[3] - d.box[1]) / s}%`});
  box.hidden = false;
  if (info.data) await showTop9();
}

async function showTop9() {
  const out = await load("top9", {layer: state.layer, channel: state.channel, rule: state.rule, scale: state.scale});
  if (!out) return;
  if (!out[1]) { pollScan(); return; }
  $("top9").src = out[1];
  $("top9").hidden = false;
  $("scan-info").textContent = `activations ${out[0].value.map((v) => v.toFixed(2)).join(", ")}; classes ` +
      out[0].classes.join(", ");
}

async function pollScan() {
  const s = await (await fetch("api/scan")).json();
  $("scan-info").textContent = s.state === "failed" ? `scan failed: ${s.error}` :
      `top-9 scan: ${s.state}, ${s.done} / ${s.total} images`;
  if (s.state === "running") setTimeout(pollScan, 1000);
  else if (s.state === "done" && state.channel !== null) showTop9();
}

async function showOcclusion() {
  remember();
  $("occlusion-info").textContent = "computing...";
  const out = await load("occlusion", {image: state.image, class: state.class});
  if (!out || !out[1]) return;
  const d = out[0];
  $("occlusion").src = out[1];
  $("occlusion").hidden = false;
  $("occlusion-info").textContent = `left: total activity of ${d.layer} map ${d.map} (the strongest); right: ` +
      `p(${d.name}), unoccluded ${d.p_true_unoccluded.toFixed(3)}; occluder ${d.size} px`;
}

async function upload(file) {
  status("uploading...");
  const r = await fetch("api/upload", {method: "POST", body: file, headers: {"Content-Type": file.type}});
  const d = await r.json();
  if (!r.ok) { status(d.error); return; }
  state.image = d.image;
  $("sample").value = "";
  showImage();
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

async function start() {
  info = await (await fetch("api/info")).json();
  $("model").textContent = `${info.model} (${info.arch}, ${info.input_size} px, step ${info.step})`;
  $("sample").append(option("", "(choose)"), ...info.samples.map((s) => option(s, s.split(":")[1])));
  $("sample").value = info.samples.includes(state.image) ? state.image : "";
  $("sample").onchange = (e) => { if (e.target.value) { state.image = e.target.value; showImage(); } };
  $("upload").onchange = (e) => e.target.files.length && upload(e.target.files[0]);
  $("rule").append(...info.rules.map((r) => option(r, r)));
  $("rule").value = state.rule;
  $("rule").onchange = (e) => { state.rule = e.target.value; if (state.channel !== null) showUnit(); };
  $("scale").value = state.scale;
  $("scale").onchange = (e) => { state.scale = e.target.value; if (state.channel !== null && info.data) showTop9(); };
  $("class").append(...info.classes.map((c, i) => option(String(i), `${i}: ${c}`)));
  $("class").value = state.class;
  $("class").onchange = (e) => { state.class = e.target.value; showOcclusion(); };
  $("tabs").append(...info.layers.map((layer) => {
    const b = document.createElement("button");
    b.textContent = layer;
    b.id = `layer-${layer}`;
    b.dataset.layer = layer;
    b.onclick = () => { state.layer = layer; state.channel = state.y = state.x = null; showGrid(); };
    return b;
  }));
  $("grid").onclick = clickGrid;
  if (info.data) {
    $("data-pick").hidden = false;
    $("data-index").max = info.data.size - 1;
    $("data-index").onchange = (e) => { state.image = `data:${e.target.value}`; showImage(); };
    $("top9-view").hidden = false;
    fetch("api/scan", {method: "POST"}).then(pollScan);
  }
  await showImage();
}

start();
