"""The HTML of the report: one static page, inline CSS and JS, data as inline JSON.

The server-side part writes what does not change (summary tables, figures, neighbour grids);
the cluster gallery and the embedding are drawn by the page's script from the JSON so that
sorting, filtering and paging 1,000 clusters stay instant: only one page of cluster cards
(and their sprite sheets) is in the document at a time.

When the script has drawn the page it marks ``<body>``: ``data-ready="1"``, and
``data-images`` becomes ``"decoded"`` once every sprite sheet of the visible page has loaded
and its header decoded to a non-empty image (``"failed"`` if one did not, ``"none"`` without
images; ``data-images-decoded`` counts the good ones); ``data-errors`` counts script errors.
Tests read these from a headless browser's DOM.
"""

from __future__ import annotations

import html
import json
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def script_json(data: Any) -> str:
    """JSON that is safe inside a <script> element."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)} min {value % 60:.0f} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


def table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def render(parts: dict[str, str], data: dict[str, Any]) -> str:
    """The page from pre-rendered HTML ``parts`` and the ``data`` the script draws from."""
    page = TEMPLATE
    for key, value in parts.items():
        page = page.replace(f"%%{key}%%", value)
    return page.replace("%%CSS%%", CSS).replace("%%JS%%", JS).replace("%%DATA%%", script_json(data))


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body data-ready="0" data-images="pending" data-errors="0">
<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || e));
  document.body.dataset.errors = String(window.__errors.length);
});
</script>
<header class="top">
  <div class="brand"><span class="logo">&#9673;</span> smcluster report
    <span class="run">%%RUNNAME%%</span></div>
  <div class="keys">%%KEYS%%</div>
  <nav>%%NAV%%</nav>
</header>
<main>
%%NOTES%%
<section id="summary">
  <h2>Summary</h2>
  <div class="panels">%%SUMMARY%%</div>
  %%SIZES%%
</section>
<section id="clusters">
  <h2>Clusters</h2>
  %%GALLERYNOTE%%
  <div class="toolbar">
    <label>Sort <select id="sort">
      <option value="size">size</option>
      <option value="conf">mean confidence</option>
      <option value="purity">purity</option>
      <option value="id">cluster id</option>
    </select></label>
    <button id="order" type="button" title="reverse the order">&#8595; descending</button>
    <label>Find <input id="filter" type="search" placeholder="cluster id or class name"></label>
    <label>Per page <select id="pagesize">
      <option>24</option><option selected>48</option><option>96</option><option>192</option>
    </select></label>
    <span class="pager"><button id="prev" type="button">&#8249;</button>
      <span id="pageinfo"></span><button id="next" type="button">&#8250;</button></span>
  </div>
  <div id="grid" class="grid"></div>
</section>
%%EMBEDDING%%
%%NEIGHBOURS%%
%%CONFUSION%%
%%CURVES%%
<footer>Written by smcluster from the run folder <code>%%RUNPATH%%</code> %%REPORTTIME%%.
Static figures for papers are in <code>report/figures/</code>.</footer>
</main>
<div id="modal" class="modal" hidden>
  <div class="sheet" role="dialog" aria-modal="true">
    <button id="close" class="close" type="button" aria-label="close">&times;</button>
    <div id="modalbody"></div>
  </div>
</div>
<div id="tip" class="tip" hidden></div>
<script id="report-data" type="application/json">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

CSS = """
:root { --ink:#1d2330; --muted:#5f6b7a; --line:#e3e7ee; --bg:#f6f7fb; --card:#fff;
  --accent:#3056d3; --bad:#d62728; --good:#2ca02c; --tile:40px; }
* { box-sizing:border-box; }
html { scroll-padding-top:120px; }
body { margin:0; font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",
  Arial,sans-serif; color:var(--ink); background:var(--bg); }
code { font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
header.top { position:sticky; top:0; z-index:20; background:rgba(255,255,255,.96);
  border-bottom:1px solid var(--line); padding:8px 24px; display:flex; flex-wrap:wrap;
  align-items:center; gap:6px 24px; backdrop-filter:blur(6px); }
.brand { font-weight:700; font-size:16px; white-space:nowrap; }
.brand .logo { color:var(--accent); }
.brand .run { font-weight:400; color:var(--muted); margin-left:8px; font-size:13px; }
.keys { display:flex; flex-wrap:wrap; gap:4px 16px; min-width:0; }
.key { white-space:nowrap; }
.key { display:flex; flex-direction:column; line-height:1.15; }
.key b { font-size:16px; font-variant-numeric:tabular-nums; }
.key span { font-size:11px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
nav { margin-left:auto; display:flex; gap:12px; }
@media (min-width:1100px) { header.top, .keys { flex-wrap:nowrap; } }
nav a { color:var(--accent); text-decoration:none; font-size:13px; }
nav a:hover { text-decoration:underline; }
main { max-width:1320px; margin:0 auto; padding:8px 24px 40px; }
section { margin-top:28px; }
h2 { font-size:20px; margin:0 0 12px; font-weight:650; }
h3 { font-size:14px; margin:0 0 8px; color:var(--muted); text-transform:uppercase;
  letter-spacing:.05em; font-weight:600; }
.panels { display:grid; grid-template-columns:repeat(auto-fit,minmax(280px,1fr)); gap:14px; }
.panel { background:var(--card); border:1px solid var(--line); border-radius:10px;
  padding:14px 16px; }
.panel.wide { grid-column:1/-1; }
table.kv { border-collapse:collapse; }
table.kv th { text-align:left; font-weight:500; color:var(--muted); padding:2px 16px 2px 0;
  vertical-align:top; }
table.kv td { padding:2px 0; font-variant-numeric:tabular-nums; overflow-wrap:anywhere; }
table.num { width:100%; }
table.num td { text-align:right; white-space:nowrap; }
.panel.span2 { grid-column:span 2; }
@media (max-width:700px) { .panel.span2 { grid-column:auto; } }
.panel .scroll { overflow-x:auto; }
table.heads { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums;
  font-size:13px; }
table.heads th, table.heads td { padding:2px 8px; text-align:right; border-bottom:1px solid
  var(--line); }
table.heads th { color:var(--muted); font-weight:500; }
table.heads tr.best td { font-weight:700; background:#eef2ff; }
details.settings summary { cursor:pointer; color:var(--accent); }
.settings-grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(230px,1fr));
  gap:4px 18px; margin-top:8px; }
.settings-grid table.kv { font-size:12.5px; }
.bar { height:8px; background:#edf0f5; border-radius:4px; overflow:hidden; }
.bar > i { display:block; height:100%; background:var(--accent); }
.timing { display:grid; grid-template-columns:90px 1fr 80px; gap:4px 10px; align-items:center;
  font-variant-numeric:tabular-nums; }
.note { background:#fff8e1; border:1px solid #f3d98b; border-radius:8px; padding:8px 12px;
  margin:10px 0; }
figure { margin:14px 0 0; background:var(--card); border:1px solid var(--line);
  border-radius:10px; padding:12px; text-align:center; }
figure img { max-width:100%; height:auto; }
figcaption { color:var(--muted); font-size:12.5px; margin-top:6px; text-align:left; }
.toolbar { display:flex; flex-wrap:wrap; gap:8px 16px; align-items:center; margin:6px 0 12px;
  position:sticky; top:var(--header,64px); z-index:10; background:var(--bg); padding:6px 0; }
.toolbar select, .toolbar input, .toolbar button { font:inherit; padding:3px 8px;
  border:1px solid var(--line); border-radius:6px; background:#fff; }
.toolbar button { cursor:pointer; }
.toolbar button:disabled { opacity:.4; cursor:default; }
.pager { margin-left:auto; display:flex; gap:8px; align-items:center; }
.grid { display:grid; grid-template-columns:repeat(auto-fill,minmax(280px,1fr)); gap:12px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:10px;
  cursor:pointer; transition:box-shadow .15s,border-color .15s; }
.card:hover { border-color:#b9c4e8; box-shadow:0 2px 10px rgba(30,50,120,.12); }
.card-head { display:flex; align-items:baseline; gap:8px; }
.swatch { width:10px; height:10px; border-radius:50%; display:inline-block; flex:none; }
.card-head b { font-size:15px; }
.card-head .size { margin-left:auto; color:var(--muted); font-variant-numeric:tabular-nums; }
.stats { color:var(--muted); font-size:12.5px; margin:2px 0 6px; min-height:19px; }
.stats .cls { color:var(--ink); font-weight:600; }
.tiles { display:flex; flex-wrap:wrap; gap:3px; align-items:center; }
.t { width:var(--tile); height:var(--tile); flex:none; background-color:#eee;
  background-image:var(--img); background-repeat:no-repeat;
  background-size:calc(var(--cols) * var(--tile)) calc(var(--rows) * var(--tile));
  background-position:calc(var(--x) * -1 * var(--tile)) calc(var(--y) * -1 * var(--tile));
  image-rendering:auto; border-radius:3px; box-shadow:inset 0 0 0 1px rgba(0,0,0,.06); }
.t.bad { outline:2px solid var(--bad); outline-offset:-2px; }
.t.low { opacity:.9; }
.gap { color:var(--muted); padding:0 2px; font-size:12px; }
.lowrow { display:flex; align-items:center; gap:6px; margin-top:6px; padding-top:5px;
  border-top:1px dashed var(--line); }
.lowrow > span { font-size:11px; color:var(--muted); line-height:1.2; width:62px; }
.empty { color:var(--muted); font-style:italic; }
.modal { position:fixed; inset:0; background:rgba(15,20,35,.55); z-index:50; display:flex;
  align-items:flex-start; justify-content:center; padding:40px 16px; overflow:auto; }
.modal[hidden] { display:none; }
.sheet { background:#fff; border-radius:12px; max-width:1100px; width:100%; padding:18px 22px;
  position:relative; --tile:64px; }
.close { position:absolute; right:12px; top:8px; border:0; background:none; font-size:28px;
  cursor:pointer; color:var(--muted); }
.sheet .tiles { gap:4px; }
.compo { display:flex; flex-wrap:wrap; gap:6px; margin:6px 0 10px; }
.compo span { background:#eef2ff; border-radius:12px; padding:1px 9px; font-size:12.5px; }
.emb { display:grid; grid-template-columns:minmax(0,760px) minmax(200px,1fr); gap:18px; }
.emb canvas { width:100%; aspect-ratio:1/1; background:#fff;
  border:1px solid var(--line); border-radius:10px; cursor:crosshair; }
.emb .side { font-size:13px; }
.legend { display:grid; grid-template-columns:1fr 1fr; gap:2px 8px; margin-top:8px;
  max-height:540px; overflow:auto; }
.legend div { display:flex; gap:6px; align-items:center; white-space:nowrap; overflow:hidden;
  text-overflow:ellipsis; cursor:pointer; }
.tip { position:fixed; z-index:60; pointer-events:none; background:#1d2330; color:#fff;
  font-size:12px; padding:4px 8px; border-radius:6px; max-width:320px; }
.tip[hidden] { display:none; }
.nbrow { display:flex; flex-wrap:wrap; align-items:center; gap:10px; padding:8px 0;
  border-bottom:1px solid var(--line); --tile:46px; }
.nbrow .group { display:flex; flex-direction:column; gap:2px; }
.nbrow .group span { font-size:11.5px; color:var(--muted); }
.nbrow .anchor .t { outline:2px solid var(--ink); outline-offset:-2px; }
.legend-inline { font-size:12.5px; color:var(--muted); }
.legend-inline i { display:inline-block; width:12px; height:12px; vertical-align:-2px;
  outline:2px solid var(--bad); outline-offset:-2px; margin:0 3px; }
footer { margin-top:40px; color:var(--muted); font-size:12px; }
@media (max-width:800px) { .emb { grid-template-columns:1fr; } nav { display:none; } }
"""

JS = r"""
(function () {
"use strict";
const D = JSON.parse(document.getElementById("report-data").textContent);
const $ = (id) => document.getElementById(id);
const body = document.body;
const state = { sort: "size", desc: true, filter: "", page: 0, size: 48 };
const header = document.querySelector("header.top");
function setHeaderHeight() {
  document.documentElement.style.setProperty("--header", header.offsetHeight + "px");
}
setHeaderHeight();
window.addEventListener("resize", setHeaderHeight);

function fmt(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function tile(sheet, pos, info) {
  const t = el("i", "t");
  t.style.setProperty("--x", pos % sheet.cols);
  t.style.setProperty("--y", Math.floor(pos / sheet.cols));
  if (info) {
    t.title = info.title;
    if (info.bad) t.classList.add("bad");
  }
  return t;
}
function sheetBox(box, sheet) {
  box.style.setProperty("--img", "url('" + sheet.file + "')");
  box.style.setProperty("--cols", sheet.cols);
  box.style.setProperty("--rows", sheet.rows);
}
function memberInfo(c, j) {
  const k = c.o + j;
  const lab = D.shown.label ? D.shown.label[k] : null;
  let title = D.shown.id[k] + " · confidence " + fmt(D.shown.conf[k], 3);
  if (lab !== null) title += " · class " + D.classes[lab];
  return { title: title, bad: lab !== null && c.majId !== null && lab !== c.majId };
}

// ---- cluster gallery -------------------------------------------------------
const keyOf = {
  size: (c) => c.n, conf: (c) => (c.conf === null ? -1 : c.conf), id: (c) => c.c,
  purity: (c) => (c.pur === null ? -1 : c.pur),
};
function ordered() {
  const f = state.filter.trim().toLowerCase();
  let list = D.clusters;
  if (f) {
    list = list.filter((c) => String(c.c) === f ||
      (c.maj !== null && c.maj.toLowerCase().includes(f)));
  }
  const key = keyOf[state.sort];
  const sign = state.desc ? -1 : 1;
  return list.slice().sort((a, b) => sign * (key(a) - key(b)) || a.c - b.c);
}
function card(c) {
  const d = el("div", "card");
  d.dataset.cluster = c.c;
  const head = el("div", "card-head");
  const sw = el("span", "swatch");
  sw.style.background = D.colours[c.c];
  head.append(sw, el("b", "", "Cluster " + c.c), el("span", "size", c.n.toLocaleString() +
    (c.n === 1 ? " image" : " images")));
  const st = el("div", "stats");
  st.append("conf " + fmt(c.conf, 2));
  if (c.maj !== null) {
    st.append(" · class ");
    st.append(el("span", "cls", c.maj));
    st.append(" · purity " + fmt(c.pur, 2));
  }
  d.append(head, st);
  const tiles = el("div", "tiles");
  if (!c.sheet) {
    tiles.append(el("span", "empty", c.n ? "no images available" : "empty cluster"));
  } else {
    sheetBox(tiles, c.sheet);
    const k = c.sheet.count;
    const first = Math.min(k, D.preview);
    const rest = Math.max(0, Math.min(D.least, k - first));
    for (let j = 0; j < first; j++) tiles.append(tile(c.sheet, j, memberInfo(c, j)));
    d.append(tiles);
    if (rest > 0) {
      const low = el("div", "lowrow");
      const lt = el("div", "tiles");
      sheetBox(lt, c.sheet);
      for (let j = k - rest; j < k; j++) lt.append(tile(c.sheet, j, memberInfo(c, j)));
      low.append(el("span", "", "least confident"), lt);
      d.append(low);
    }
  }
  if (!c.sheet) d.append(tiles);
  d.addEventListener("click", () => openCluster(c.c));
  return d;
}
function waitImages(files) {
  const unique = Array.from(new Set(files.filter(Boolean)));
  if (!D.hasImages) { body.dataset.images = "none"; return; }
  body.dataset.images = "pending";
  const jobs = unique.map((f) => new Promise((resolve) => {
    const im = new Image();
    im.onload = () => resolve(im.naturalWidth > 0);
    im.onerror = () => resolve(false);
    im.src = f;
  }));
  Promise.all(jobs).then((ok) => {
    const good = ok.filter(Boolean).length;
    body.dataset.imagesDecoded = String(good);
    body.dataset.images = good === ok.length ? "decoded" : "failed";
  });
}
function draw() {
  const list = ordered();
  const pages = Math.max(1, Math.ceil(list.length / state.size));
  state.page = Math.min(state.page, pages - 1);
  const part = list.slice(state.page * state.size, (state.page + 1) * state.size);
  const grid = $("grid");
  const frag = document.createDocumentFragment();
  part.forEach((c) => frag.append(card(c)));
  grid.replaceChildren(frag);
  if (!part.length) grid.append(el("p", "empty", "No cluster matches."));
  $("pageinfo").textContent = "page " + (state.page + 1) + " of " + pages + " · " +
    list.length.toLocaleString() + " clusters";
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
  $("order").innerHTML = state.desc ? "&#8595; descending" : "&#8593; ascending";
  const files = part.map((c) => (c.sheet ? c.sheet.file : null));
  if (D.neighbours) files.push(D.neighbours.sheet.file);
  waitImages(files);
}
function restart() { state.page = 0; draw(); }
$("sort").addEventListener("change", (e) => {
  state.sort = e.target.value;
  state.desc = state.sort !== "id";
  restart();
});
$("order").addEventListener("click", () => { state.desc = !state.desc; restart(); });
$("filter").addEventListener("input", (e) => { state.filter = e.target.value; restart(); });
$("pagesize").addEventListener("change", (e) => { state.size = +e.target.value; restart(); });
$("prev").addEventListener("click", () => { state.page--; draw(); });
$("next").addEventListener("click", () => { state.page++; draw(); });
state.size = +$("pagesize").value;
if (!D.classes.length) $("sort").querySelector('option[value="purity"]').remove();

// ---- one cluster, all shown members -----------------------------------------
const byId = new Map(D.clusters.map((c) => [c.c, c]));
function openCluster(id) {
  const c = byId.get(id);
  if (!c) return;
  const box = $("modalbody");
  box.replaceChildren();
  const h = el("h2");
  const sw = el("span", "swatch");
  sw.style.background = D.colours[c.c];
  sw.style.marginRight = "8px";
  h.append(sw, "Cluster " + c.c);
  box.append(h);
  const facts = [c.n.toLocaleString() + " images", "mean confidence " + fmt(c.conf, 3)];
  if (c.maj !== null) facts.push("majority class " + c.maj, "purity " + fmt(c.pur, 3));
  box.append(el("p", "", facts.join(" · ")));
  if (c.top && c.top.length) {
    const compo = el("div", "compo");
    c.top.forEach((p) => compo.append(el("span", "", p[0] + ": " + p[1])));
    box.append(compo);
  }
  if (c.sheet) {
    const k = c.sheet.count;
    let what = "All " + k + " members, most confident first.";
    if (k < c.n) what = "The " + (k - c.low) + " most confident and the " + c.low +
      " least confident of " + c.n.toLocaleString() + " members (report max_members = " +
      D.maxMembers + ").";
    if (c.maj !== null) what += " Members outside the majority class are outlined in red.";
    box.append(el("p", "legend-inline", what));
    const tiles = el("div", "tiles");
    sheetBox(tiles, c.sheet);
    for (let j = 0; j < k; j++) {
      if (k < c.n && j === k - c.low) tiles.append(el("span", "gap", "… least confident:"));
      tiles.append(tile(c.sheet, j, memberInfo(c, j)));
    }
    box.append(tiles);
  } else {
    box.append(el("p", "empty", c.n ? "No images available for this run." : "Empty cluster."));
  }
  $("modal").hidden = false;
  $("close").focus();
}
function closeModal() { $("modal").hidden = true; }
$("close").addEventListener("click", closeModal);
$("modal").addEventListener("click", (e) => { if (e.target === $("modal")) closeModal(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeModal(); });

// ---- neighbour grids ----------------------------------------------------------
function drawNeighbours() {
  const N = D.neighbours;
  const host = $("nbrows");
  if (!N || !host) return;
  N.rows.forEach((r) => {
    const row = el("div", "nbrow");
    const mk = (label, items, cls) => {
      const g = el("div", "group " + (cls || ""));
      g.append(el("span", "", label));
      const ts = el("div", "tiles");
      sheetBox(ts, N.sheet);
      items.forEach((it) => ts.append(tile(N.sheet, it[0], { title: it[1], bad: it[2] })));
      g.append(ts);
      return g;
    };
    row.append(mk("anchor", [r.anchor], "anchor"), mk(r.knnLabel, r.knn),
      mk(r.usedLabel, r.used));
    host.append(row);
  });
}

// ---- embedding --------------------------------------------------------------
function drawEmbedding() {
  const E = D.embedding;
  const canvas = $("embcanvas");
  if (!E || !canvas) return;
  const ctx = canvas.getContext("2d");
  let colourBy = "cluster";
  let focus = null;
  let size = 0;
  function resize() {
    const r = canvas.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    size = Math.max(200, Math.round(r.width));
    canvas.width = size * dpr;
    canvas.height = size * dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    paint();
  }
  const pad = 12;
  const px = (i) => pad + E.x[i] * (size - 2 * pad);
  const py = (i) => pad + (1 - E.y[i]) * (size - 2 * pad);
  function colour(i) {
    return colourBy === "class" ? D.classColours[E.l[i]] : D.colours[E.c[i]];
  }
  function paint() {
    ctx.clearRect(0, 0, size, size);
    const rad = E.x.length > 3000 ? 1.6 : E.x.length > 800 ? 2.2 : 3;
    for (let i = 0; i < E.x.length; i++) {
      ctx.globalAlpha = focus === null || E.c[i] === focus ? 0.85 : 0.08;
      ctx.fillStyle = colour(i);
      ctx.beginPath();
      ctx.arc(px(i), py(i), focus !== null && E.c[i] === focus ? rad + 1 : rad, 0, 6.2832);
      ctx.fill();
    }
    ctx.globalAlpha = 1;
  }
  function nearest(ev) {
    const r = canvas.getBoundingClientRect();
    const mx = ev.clientX - r.left, my = ev.clientY - r.top;
    let best = -1, bd = 100;
    for (let i = 0; i < E.x.length; i++) {
      const dx = px(i) - mx, dy = py(i) - my, d = dx * dx + dy * dy;
      if (d < bd) { bd = d; best = i; }
    }
    return best;
  }
  const tip = $("tip");
  canvas.addEventListener("mousemove", (ev) => {
    const i = nearest(ev);
    if (i < 0) { tip.hidden = true; if (focus !== null) { focus = null; paint(); } return; }
    let text = "cluster " + E.c[i] + " · image " + E.id[i];
    if (E.l) text += " · class " + D.classes[E.l[i]];
    tip.textContent = text + " (click to open the cluster)";
    tip.style.left = ev.clientX + 14 + "px";
    tip.style.top = ev.clientY + 10 + "px";
    tip.hidden = false;
    if (focus !== E.c[i]) { focus = E.c[i]; paint(); }
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; focus = null; paint(); });
  canvas.addEventListener("click", (ev) => {
    const i = nearest(ev);
    if (i >= 0) openCluster(E.c[i]);
  });
  const pick = $("colourby");
  if (pick) {
    pick.addEventListener("change", (e) => { colourBy = e.target.value; paint(); legend(); });
  }
  function legend() {
    const box = $("emblegend");
    if (!box) return;
    box.replaceChildren();
    const names = colourBy === "class" ? D.classes : D.clusters.map((c) => "cluster " + c.c +
      (c.maj !== null ? " (" + c.maj + ")" : ""));
    const cols = colourBy === "class" ? D.classColours : D.colours;
    if (names.length > 60) {
      box.append(el("span", "empty", names.length + " colours: hover a point to name it."));
      return;
    }
    names.forEach((n, j) => {
      const d = el("div");
      const sw = el("span", "swatch");
      sw.style.background = cols[j];
      d.append(sw, n);
      if (colourBy === "cluster") {
        d.addEventListener("mouseenter", () => { focus = j; paint(); });
        d.addEventListener("mouseleave", () => { focus = null; paint(); });
        d.addEventListener("click", () => openCluster(j));
      }
      box.append(d);
    });
  }
  window.addEventListener("resize", resize);
  resize();
  legend();
}

draw();
drawNeighbours();
drawEmbedding();
body.dataset.ready = "1";
})();
"""
