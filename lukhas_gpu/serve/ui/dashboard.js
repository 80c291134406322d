// The lukhas-gpu dashboard: reads GET /v1/dashboard every few seconds and searches through
// POST /v1/dashboard/search, sending the API key as "Authorization: Bearer". Data is written
// with textContent only (contents are the users' text, never markup).
"use strict";

const KEY_STORE = "lukhas-gpu-api-key";
const REFRESH_MS = 5000;
const PLACES = [["anon", "RAM"], ["mapped", "mapped"], ["disk", "disk"], ["gpu", "GPU"]];
let apiKey = null;
let timer = null;

const $ = (id) => document.getElementById(id);
const SOURCES = { queries: "recorded queries", memories: "sampled memories", given: "given queries" };
const source = (s) => SOURCES[s] || s;

function readKey() {
  const m = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (m) {
    apiKey = decodeURIComponent(m[1]);
    sessionStorage.setItem(KEY_STORE, apiKey);
    history.replaceState(null, "", location.pathname + location.search);  // keep it out of the history
  } else {
    apiKey = sessionStorage.getItem(KEY_STORE);
  }
}

class Unauthorized extends Error {}

async function api(path, body) {
  const headers = {};
  if (apiKey) headers["Authorization"] = "Bearer " + apiKey;
  const init = { headers, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const data = await r.json().catch(() => ({}));
  if (r.status === 401) throw new Unauthorized((data.status && data.status.error) || "unauthorized");
  if (!r.ok) throw new Error(`${r.status}: ${(data.status && data.status.error) || r.statusText}`);
  return data;
}

function askKey(message) {
  clearTimeout(timer);
  $("main").hidden = true;
  $("key-panel").hidden = false;
  setStatus(message, true);
  $("key-input").focus();
}

function setStatus(text, error) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

// -- formatting ------------------------------------------------------------------------------
const int = (n) => Number(n).toLocaleString("en-US");
const num = (x, digits) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(digits));
function ms(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds >= 1) return seconds.toFixed(2) + " s";
  return seconds < 0.01 ? (seconds * 1e3).toFixed(2) + " ms" : (seconds * 1e3).toFixed(1) + " ms";
}
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}
function setText(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}
function lines(id, rows) {  // rows: [text, className?]
  const el = $(id);
  el.replaceChildren(...rows.map(([text, cls]) => {
    const d = document.createElement("div");
    d.textContent = text;
    if (cls) d.className = cls;
    return d;
  }));
}

// -- the cards -------------------------------------------------------------------------------
function render(d) {
  const s = d.stats;
  $("store-line").textContent = `${d.mode === "w" ? "writer" : "reader"} · ${s.phase} · dim ${s.dim} · ` +
    `${s.backend}${d.generation !== null ? " · generation " + d.generation : ""}`;
  setText("count", int(s.count), s.count);
  setText("count-sub", `${int(s.rows)} rows, ${int(s.deleted)} deleted`);
  renderRecall(d.recall);
  const t = d.traffic.recent;
  $("recent-s").textContent = d.traffic.recent_s;
  setText("qps", num(t.qps, 2) + " /s", t.qps);
  setText("latency", `p50 ${ms(t.p50)} · p90 ${ms(t.p90)} · p99 ${ms(t.p99)} · ${num(t.errors_per_s, 2)} errors/s`);
  setText("lag", d.mode === "w" ? "writer" : num(d.lag_s, 1) + " s", d.lag_s);
  setText("lag-sub", d.ready);
  renderTuning(d.tuning, s);
  renderDrift(d.drift);
  renderChart(d.traffic);
  renderBytes(s);
  const search = $("search-mode").options[0];
  search.disabled = !d.text_index;
  if (!d.text_index && $("search-mode").value === "text") $("search-mode").value = "like";
}

function renderRecall(r) {
  const target = r.target === null || r.target === undefined ? "no target" : "target " + num(r.target, 3);
  if (r.estimate === null) {
    setText("recall", "–", "");
    setText("recall-sub", `${target} · not measured yet (serve --quality-s)`);
    return;
  }
  setText("recall", num(r.estimate, 3), r.estimate);
  const ok = r.target === null || r.target === undefined || r.ci[1] >= r.target;
  lines("recall-sub", [[`${Math.round(r.confidence * 100)}% interval ${num(r.ci[0], 3)}–${num(r.ci[1], 3)}`],
    [target + (ok ? "" : " · below target"), ok ? "" : "warn"],
    [`recall@${r.k} on ${int(r.queries)} ${source(r.source)}, ${num(r.age_s, 0)} s ago`]]);
}

function renderTuning(t, s) {
  if (!t) {
    lines("tuning", [[s.phase === "exact" ? "exact search (not trained yet): nothing to tune" : "not tuned yet"]]);
    return;
  }
  const how = t.kind + (t.nprobe !== undefined ? ` nprobe ${t.nprobe}` : "") + ` · rerank ${t.rerank}`;
  lines("tuning", [[how], [`recall ${num(t.recall, 3)} (${num(t.ci[0], 3)}–${num(t.ci[1], 3)}) for target ` +
    `${num(t.target, 3)}`, t.met ? "" : "warn"], [`~${int(Math.round(t.expected_qps || 0))} queries/s expected · ` +
    `tuned on ${int(t.queries)} ${source(t.source)}`, "muted"]]);
}

function renderDrift(d) {
  if (d.score === null || d.score === undefined) {
    lines("drift", [[d.trained ? "no baseline yet" : "not trained yet: no baseline"],
      [`${int(d.rows_measured)} rows measured in ${int(d.batches)} batches`, "muted"]]);
    return;
  }
  lines("drift", [[`score ${num(d.score, 2)} (threshold ${num(d.threshold, 2)})`],
    [d.retrain_recommended ? `retrain recommended (worst: ${d.worst})` : `worst: ${d.worst}`,
      d.retrain_recommended ? "warn" : ""],
    [`${int(d.rows_measured)} rows measured in ${int(d.batches)} batches`, "muted"]]);
}

function renderChart(traffic) {
  const svg = $("chart");
  const pts = traffic.series;
  const qmax = Math.max(1e-9, ...pts.map((p) => p.qps));
  const lat = pts.map((p) => (p.p99 === null ? NaN : p.p99));
  const lmax = Math.max(1e-9, ...lat.filter((x) => !Number.isNaN(x)));
  const x = (i) => (pts.length > 1 ? (i * 600) / (pts.length - 1) : 0);
  const line = (vals, max, cls) => {
    const p = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    p.setAttribute("points", vals.map((v, i) => `${x(i).toFixed(1)},${(115 - (Number.isNaN(v) ? 0 : v / max) * 110).toFixed(1)}`).join(" "));
    p.setAttribute("class", cls);
    return p;
  };
  svg.replaceChildren(line(pts.map((p) => p.qps), qmax, "qps"), line(lat, lmax, "p99"));
  $("chart-qps").textContent = num(qmax, 1) + "/s";
  $("chart-p99").textContent = ms(lmax);
}

function renderBytes(s) {
  const m = s.memory, n = Math.max(s.count, 1);
  const comps = new Map();
  for (const [place] of PLACES) {
    for (const [c, v] of Object.entries(m[place] || {})) comps.set(c, (comps.get(c) || 0) + v);
  }
  const order = [...comps.entries()].sort((a, b) => b[1] - a[1]).map(([c]) => c);
  const cell = (v, attrs) => {
    const td = document.createElement("td");
    for (const [k, val] of Object.entries(attrs)) td.dataset[k] = val;
    if (v === undefined) { td.textContent = ""; return td; }
    td.dataset.value = String(v);
    td.textContent = (v / n).toFixed(1);
    td.title = bytes(v) + " in all";
    return td;
  };
  $("bytes").tBodies[0].replaceChildren(...order.map((c) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = c;
    tr.append(name, ...PLACES.map(([place]) => cell((m[place] || {})[c], { component: c, place })));
    return tr;
  }));
  const foot = document.createElement("tr");
  const label = document.createElement("td");
  label.textContent = `all (${int(s.count)} memories)`;
  foot.append(label, ...PLACES.map(([place]) => cell(m[place + "_bytes"], { component: "all", place })));
  $("bytes").tFoot.replaceChildren(foot);
}

// -- refresh and search ----------------------------------------------------------------------
async function refresh() {
  clearTimeout(timer);
  try {
    const d = await api("/v1/dashboard");
    $("key-panel").hidden = true;
    $("main").hidden = false;
    render(d);
    setStatus("updated " + new Date(d.time * 1000).toLocaleTimeString(), false);
    document.body.dataset.loaded = String(d.time);
  } catch (e) {
    if (e instanceof Unauthorized) return askKey(e.message);
    setStatus(String(e.message || e), true);
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

async function search(ev) {
  ev.preventDefault();
  const mode = $("search-mode").value, q = $("search-input").value.trim(), k = Number($("search-k").value) || 10;
  const body = mode === "text" ? { text: q, k } : { like: Number(q), k };
  if (mode === "like" && !/^-?\d+$/.test(q)) { $("search-msg").textContent = "give a memory id (an integer)"; return; }
  $("search-msg").textContent = "searching…";
  try {
    const r = await api("/v1/dashboard/search", body);
    showResults(r.results);
    $("search-msg").textContent = `${r.results.length} results in ${ms(r.time)}`;
  } catch (e) {
    if (e instanceof Unauthorized) return askKey(e.message);
    $("results").tBodies[0].replaceChildren();
    $("search-msg").textContent = String(e.message || e);
  }
}

function showResults(results) {
  $("results").tBodies[0].replaceChildren(...results.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.id = String(r.id);
    const id = document.createElement("td"), score = document.createElement("td");
    const content = document.createElement("td"), more = document.createElement("td");
    id.textContent = r.id;
    score.textContent = num(r.score, 4);
    content.className = "content";
    const c = r.content;
    content.textContent = c === null ? "(none)" : typeof c === "string" ? c : `(${c.base64.length * 3 / 4 | 0} bytes)`;
    const b = document.createElement("button");
    b.className = "link";
    b.type = "button";
    b.textContent = "more like this";
    b.addEventListener("click", () => {
      $("search-mode").value = "like";
      $("search-input").value = String(r.id);
      $("search-form").requestSubmit();
    });
    more.append(b);
    tr.append(id, score, content, more);
    return tr;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  readKey();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    apiKey = $("key-input").value.trim();
    sessionStorage.setItem(KEY_STORE, apiKey);
    $("key-input").value = "";
    refresh();
  });
  $("search-form").addEventListener("submit", search);
  refresh();
});
