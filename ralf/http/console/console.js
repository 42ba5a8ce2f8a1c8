// The ralf web console: polls the server's JSON routes and draws the pipeline graph, the
// per-table metrics, live plots (SVG) and the table, history and SQL views. No framework,
// no CDN: this file is all the code the page runs (docs/console.md).
"use strict";

const POLL_MS = 2000;
const WINDOW_S = 600; // the plots show the last ten minutes
const RATE_S = 10; // rates in the metrics table: over the last ten seconds
const HISTORY_LIMIT = 20; // a key's newest versions shown
const COLORS = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
                "#eeca3b", "#9d755d", "#ff9da6", "#bab0ac"];
const SVG = "http://www.w3.org/2000/svg";

const state = { samples: [], status: null, tables: {}, graph: null, selected: null,
                offset: 0, limit: 20, paused: false, timer: null };
const $ = (id) => document.getElementById(id);

// ---- talking to the server --------------------------------------------------------------
function token() {
  return $("token").value.trim();
}

class ApiError extends Error {}

// A JSON answer of the server; `accept`: statuses whose JSON body is an answer, not an error.
async function api(path, options = {}, accept = []) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body;
  try { body = JSON.parse(text); } catch (e) { body = { error: "HTTP " + response.status, message: text }; }
  if (!response.ok && !accept.includes(response.status)) {
    if (response.status === 401) {
      throw new ApiError("This server wants a bearer token: enter it at the top right.");
    }
    throw new ApiError(`${body.error || response.status}: ${body.message || text}`);
  }
  return body;
}

function alertBox(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

// ---- formatting and tables --------------------------------------------------------------
function fmt(value) {
  if (value === null || value === undefined) return "null";
  if (typeof value === "number") {
    return Number.isInteger(value) ? value.toLocaleString("en-US")
      : value.toLocaleString("en-US", { maximumFractionDigits: 3 });
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// Fill a <table> with a header row of `columns` and one row per record of `rows`.
function fillTable(table, columns, rows, onClick) {
  const head = table.tHead, body = table.tBodies[0];
  head.replaceChildren(), body.replaceChildren();
  const tr = el("tr");
  for (const c of columns) tr.append(el("th", c));
  head.append(tr);
  for (const row of rows) {
    const line = el("tr");
    for (const c of columns) line.append(el("td", fmt(row[c])));
    if (onClick) line.addEventListener("click", () => onClick(row, line));
    body.append(line);
  }
}

// ---- the pipeline graph -----------------------------------------------------------------
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function drawGraph() {
  const g = state.graph, root = $("graph");
  if (!g) return;
  const layers = {};
  for (const n of g.nodes) (layers[n.layer] = layers[n.layer] || []).push(n);
  const depth = Math.max(0, ...g.nodes.map((n) => n.layer)) + 1;
  const widest = Math.max(1, ...Object.values(layers).map((l) => l.length));
  const longest = Math.max(...g.nodes.map((n) => n.name.length + n.kind.length));
  const W = Math.max(root.clientWidth || 800, 300), boxW = Math.max(150, 7 * longest + 30);
  const boxH = 30;
  const H = Math.max(120, widest * 50 + 20);
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.style.height = H + "px";
  const at = {};
  for (const [layer, nodes] of Object.entries(layers)) {
    nodes.forEach((n, i) => {
      const step = depth === 1 ? 0 : Math.min(boxW + 110, (W - boxW - 20) / (depth - 1));
      const x = 10 + layer * step;
      const y = ((i + 0.5) * H) / nodes.length - boxH / 2;
      at[n.name] = { x, y };
    });
  }
  const defs = svg("defs"), marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10",
    refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a94a3" }));
  defs.append(marker);
  root.replaceChildren(defs);
  for (const e of g.edges) {
    const a = at[e.from], b = at[e.to];
    if (!a || !b) continue;
    const x1 = a.x + boxW, y1 = a.y + boxH / 2, x2 = b.x, y2 = b.y + boxH / 2, mid = (x1 + x2) / 2;
    root.append(svg("path", { class: "edge " + e.role, "data-from": e.from, "data-to": e.to,
      d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}` }));
  }
  for (const n of g.nodes) {
    const group = svg("g", { class: "node" + (n.name === state.selected ? " selected" : ""),
      "data-table": n.name, "data-kind": n.kind, transform: `translate(${at[n.name].x},${at[n.name].y})` });
    const color = getComputedStyle(document.documentElement).getPropertyValue("--" + n.kind);
    group.append(svg("rect", { width: boxW, height: boxH, fill: color.trim() || "#888" }));
    const label = svg("text", { x: 8, y: 19 });
    label.textContent = `${n.name} · ${n.kind}`;
    group.append(label);
    group.addEventListener("click", () => selectTable(n.name));
    root.append(group);
  }
}

// ---- metrics, rates and plots -----------------------------------------------------------
// The per-second rate of a counter over the last `seconds` of samples (null: too few).
function rate(table, name, seconds) {
  const s = state.samples;
  if (s.length < 2) return null;
  const last = s[s.length - 1];
  let first = s[s.length - 2];
  for (let i = s.length - 2; i >= 0 && last.t - s[i].t <= seconds; i--) first = s[i];
  const a = first.tables[table], b = last.tables[table];
  if (!a || !b || last.t <= first.t) return null;
  return Math.max(0, (b[name] - a[name]) / (last.t - first.t));
}

function budgetUse(table) {
  const s = state.samples, last = s[s.length - 1];
  const budget = last && last.tables[table] && last.tables[table].budget;
  if (!budget || s.length < 2) return "—";
  const first = s[Math.max(0, s.length - 1 - RATE_S)];
  const ticks = last.ticks - first.ticks;
  if (ticks <= 0) return "idle";
  const used = last.tables[table].refreshes - first.tables[table].refreshes;
  return Math.round((100 * used) / (ticks * budget)) + "%";
}

function drawMetrics() {
  const body = $("metrics").tBodies[0], status = state.status;
  body.replaceChildren();
  for (const [name, m] of Object.entries(status.tables)) {
    const feature = m.kind !== "source", r = rate(name, "refreshes", RATE_S);
    const cells = [name, m.kind, state.tables[name] ? state.tables[name].rows : null,
      feature ? m.stale_keys : "—", feature ? m.pending_appends : "—",
      feature ? m.staleness_p50.toFixed(2) : "—", feature ? m.staleness_p99.toFixed(2) : "—",
      feature ? (r === null ? "…" : r.toFixed(1)) : "—", feature ? budgetUse(name) : "—",
      feature ? m.quarantined_keys : "—", m.rejected];
    const tr = el("tr", undefined, { "data-table": name });
    const keys = ["table", "kind", "rows", "stale_keys", "pending_appends", "staleness_p50",
      "staleness_p99", "refresh_rate", "budget_use", "quarantined_keys", "rejected"];
    cells.forEach((c, i) => tr.append(el("td", fmt(c), { "data-metric": keys[i] })));
    if (name === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => selectTable(name));
    body.append(tr);
  }
  const d = new Date();
  $("summary").textContent = `tick ${fmt(status.ticks)} · ${Object.keys(status.tables).length}` +
    ` tables · SQL running ${fmt(status.sql_running || 0)} · updated ${d.toLocaleTimeString()}`;
}

// Series per table: [t, value] points from the samples (`counter`: per-second rates).
function series(name, counter, kinds) {
  const out = {}, s = state.samples;
  const tables = Object.entries(state.status.tables)
    .filter(([, m]) => kinds.includes(m.kind)).map(([t]) => t);
  for (const t of tables) {
    const points = [];
    for (let i = counter ? 1 : 0; i < s.length; i++) {
      const b = s[i].tables[t];
      if (!b || b[name] === null || b[name] === undefined) continue;
      if (counter) {
        const a = s[i - 1].tables[t], dt = s[i].t - s[i - 1].t;
        if (!a || dt <= 0 || b[name] < a[name]) continue; // a restart resets counters
        points.push([s[i].t, (b[name] - a[name]) / dt]);
      } else {
        points.push([s[i].t, b[name]]);
      }
    }
    out[t] = points;
  }
  return out;
}

// The plots' time span: the samples there are, at least a minute, at most WINDOW_S.
function span() {
  const first = state.samples.length ? state.samples[0].t : Date.now() / 1000;
  return Math.min(WINDOW_S, Math.max(60, Date.now() / 1000 - first));
}

function drawPlot(root, data) {
  const W = 300, H = 140, left = 34, bottom = 16, now = Date.now() / 1000, shown = span();
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.setAttribute("preserveAspectRatio", "none");
  root.replaceChildren();
  const all = Object.values(data).flat();
  const top = Math.max(1e-9, ...all.map((p) => p[1])) * 1.1;
  const x = (t) => left + ((t - (now - shown)) / shown) * (W - left - 4);
  const y = (v) => H - bottom - (v / top) * (H - bottom - 6);
  root.append(svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, stroke: "#ccc" }));
  root.append(svg("line", { x1: left, y1: 0, x2: left, y2: H - bottom, stroke: "#ccc" }));
  const labels = [[2, 12, fmt(Number((top / 1.1).toPrecision(3)))], [2, H - bottom, "0"],
    [left, H - 3, `−${shown >= 120 ? Math.round(shown / 60) + " min" : Math.round(shown) + " s"}`],
    [W - 26, H - 3, "now"]];
  for (const [lx, ly, text] of labels) {
    const label = svg("text", { x: lx, y: ly });
    label.textContent = text;
    root.append(label);
  }
  Object.entries(data).forEach(([table, points]) => {
    const visible = points.filter((p) => p[0] >= now - shown);
    const line = svg("polyline", { stroke: colorOf(table), "data-table": table,
      "data-points": visible.length,
      points: visible.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") });
    root.append(line);
  });
}

function colorOf(table) {
  const names = Object.keys(state.status.tables);
  return COLORS[names.indexOf(table) % COLORS.length];
}

function drawPlots() {
  drawPlot($("plot-ingested"), series("ingested", true, ["source"]));
  drawPlot($("plot-refreshes"), series("refreshes", true, ["feature"]));
  drawPlot($("plot-stale"), series("stale_keys", false, ["feature"]));
  drawPlot($("plot-staleness"), series("staleness_p99", false, ["feature"]));
  const legend = $("plot-legend");
  legend.replaceChildren();
  for (const name of Object.keys(state.status.tables)) {
    const item = el("span", name);
    item.style.color = colorOf(name);
    legend.append(item);
  }
}

// ---- a table's rows, a key's history ----------------------------------------------------
function selectTable(name) {
  state.selected = name;
  state.offset = 0;
  document.querySelectorAll("#graph .node").forEach((n) =>
    n.classList.toggle("selected", n.dataset.table === name));
  document.querySelectorAll("#metrics tbody tr").forEach((tr) =>
    tr.classList.toggle("selected", tr.dataset.table === name));
  loadRows();
}

async function loadRows() {
  const name = state.selected;
  if (!name) return;
  $("rows-title").textContent = name;
  try {
    // the keys first: reading a lazy table's rows refreshes it
    const keys = await api(`/ui/api/keys/${encodeURIComponent(name)}?limit=${HISTORY_LIMIT}`);
    const page = await api(`/ui/api/rows/${encodeURIComponent(name)}?offset=${state.offset}` +
      `&limit=${state.limit}`);
    const info = state.tables[name];
    const columns = info && info.schema ? Object.keys(info.schema.columns)
      : Object.keys(page.rows[0] || {});
    const key = info && info.schema ? info.schema.primary_key : columns[0];
    fillTable($("rows"), columns, page.rows, (row) => {
      $("history-key").value = fmt(row[key]);
      loadHistory();
    });
    $("quarantined").textContent = keys.quarantined.length
      ? `quarantined keys (held after repeated failures): ${keys.quarantined.map(fmt).join(", ")}`
      : "no quarantined keys";
    fillTable($("stalest"), ["key", "pending", "since", "staleness"], keys.stalest, (row) => {
      $("history-key").value = fmt(row.key);
      loadHistory();
    });
    const end = Math.min(page.total, state.offset + page.rows.length);
    $("rows-range").textContent = ` ${page.total ? state.offset + 1 : 0}–${end} of ${fmt(page.total)} `;
    $("rows").dataset.total = page.total;
    $("rows").dataset.table = name; // what the views below the title show now
  } catch (e) {
    showError(e);
  }
}

async function loadHistory() {
  const name = state.selected, key = $("history-key").value.trim();
  if (!name || !key) return;
  try {
    const versions = await api(`/ui/api/history/${encodeURIComponent(name)}/` +
      `${encodeURIComponent(key)}?limit=${HISTORY_LIMIT}`);
    fillTable($("history"), Object.keys(versions[0] || { "no versions": 1 }), versions);
  } catch (e) {
    fillTable($("history"), ["error"], [{ error: e.message }]);
  }
}

// ---- SQL ------------------------------------------------------------------------------
async function runSql(event) {
  event.preventDefault();
  alertBox($("sql-error"), "");
  $("sql-count").textContent = "running…";
  try {
    const rows = await api("/sql", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ query: $("sql-query").value }) });
    fillTable($("sql-result"), Object.keys(rows[0] || {}), rows);
    $("sql-count").textContent = `${fmt(rows.length)} rows`;
  } catch (e) {
    fillTable($("sql-result"), [], []);
    $("sql-count").textContent = "";
    alertBox($("sql-error"), e.message);
  }
}

// ---- polling ----------------------------------------------------------------------------
function showError(e) {
  alertBox($("alert"), e instanceof ApiError ? e.message : `cannot reach the server: ${e}`);
}

async function poll() {
  try {
    const since = state.samples.length ? state.samples[state.samples.length - 1].t : 0;
    const [status, tables, history, ready, rejected] = await Promise.all([
      api("/status"), api("/tables"), api(`/status/history?since=${since}`),
      api("/ready", {}, [503]), api("/rejected?limit=20")]);
    state.status = status;
    state.tables = Object.fromEntries(tables.map((t) => [t.name, t]));
    state.samples.push(...history.samples);
    const cut = Date.now() / 1000 - WINDOW_S - 60;
    while (state.samples.length && state.samples[0].t < cut) state.samples.shift();
    if (!state.graph) {
      state.graph = await api("/ui/api/graph");
      drawGraph();
    }
    drawMetrics();
    drawPlots();
    const problems = $("problems");
    problems.replaceChildren(...(ready.problems || []).map((p) =>
      el("li", `${p.table}: ${p.problem}${p.reason ? " — " + p.reason : ""}`)));
    fillTable($("rejected"), ["id", "table_name", "reason", "column_name", "record", "rejected_at"],
      rejected);
    alertBox($("alert"), "");
  } catch (e) {
    showError(e);
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.paused) state.timer = setTimeout(async () => { await poll(); schedule(); }, POLL_MS);
}

function start() {
  // a token may come in the URL's fragment (#token=...), which browsers never send
  const fragment = new URLSearchParams(location.hash.slice(1));
  $("token").value = fragment.get("token") || sessionStorage.getItem("ralf-token") || "";
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("ralf-token", token());
    state.graph = null;
    poll();
  });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "resume" : "pause";
    schedule();
  });
  $("sql-form").addEventListener("submit", runSql);
  $("history-form").addEventListener("submit", (e) => { e.preventDefault(); loadHistory(); });
  $("rows-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    loadRows();
  });
  $("rows-next").addEventListener("click", () => {
    const total = Number($("rows").dataset.total || 0);
    if (state.offset + state.limit < total) state.offset += state.limit;
    loadRows();
  });
  window.addEventListener("resize", drawGraph);
  poll().then(schedule);
}

start();
