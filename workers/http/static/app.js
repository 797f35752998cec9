// relayd's page: a live table of PVs, a page per PV, a status panel. No build step.
// Everything live comes from one server-sent event stream (/api/v1/live) for what the page
// shows; changing the filter, the sort or the page opens a new stream.
"use strict";

const SEVERITIES = ["NO_ALARM", "MINOR", "MAJOR", "INVALID"];
const STATUSES = ["NO_ALARM", "READ", "WRITE", "HIHI", "HIGH", "LOLO", "LOW", "STATE", "COS",
  "COMM", "TIMEOUT", "HWLIMIT", "CALC", "SCAN", "LINK", "SOFT", "BAD_SUB", "UDF", "DISABLE",
  "SIMM", "READ_ACCESS", "WRITE_ACCESS"];
const HISTORY = 600;  // points of a scalar's live history
const $ = (id) => document.getElementById(id);

const view = { filter: "", sort: "name", desc: false, offset: 0, limit: 50, total: 0 };
let source = null;        // the open EventSource
let prefix = "";
let clockOffset = 0;      // server time - this browser's time, ms
let plot = null;
let pvState = null;       // the PV page: {name, history, lastTs, lastFetch, kind}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" })[c]);
}

function number(value, prec, float) {
  if (typeof value !== "number") return String(value);   // "NaN", "Infinity"
  if (float && prec > 0 && Math.abs(value) < 1e15) return value.toFixed(prec);
  if (Number.isInteger(value)) return String(value);
  const text = value.toPrecision(7);
  return text.includes("e") ? text : String(parseFloat(text));
}

function axisNumber(value) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  return size >= 1e5 || size < 1e-3 ? value.toExponential(2) : String(parseFloat(value.toPrecision(6)));
}

function isFloat(name) {
  return /_[fF]\d+$/.test(name);
}

function formatValue(value, elements, prec, float) {
  if (value === null || value === undefined) return "(no value)";
  if (typeof value === "string" && elements !== 1 && !/^(NaN|-?Infinity)$/.test(value)) {
    return value;
  }
  if (Array.isArray(value)) {
    const shown = value.slice(0, 6).map((v) => number(v, prec, float)).join(", ");
    const more = elements > Math.min(value.length, 6) ? ", …" : "";
    return `[${shown}${more}] (${elements})`;
  }
  return number(value, prec, float);
}

function age(tsMs) {
  if (!tsMs) return "–";
  const seconds = Math.max(0, (Date.now() + clockOffset - tsMs) / 1000);
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

function short(name) {
  return prefix && name.startsWith(prefix + ":") ? name.slice(prefix.length + 1) : name;
}

// --- the stream -------------------------------------------------------------------------

function open(params, handlers) {
  if (source) source.close();
  source = new EventSource("/api/v1/live?" + new URLSearchParams(params));
  for (const [kind, handler] of Object.entries(handlers)) {
    source.addEventListener(kind, (message) => handler(JSON.parse(message.data)));
  }
  source.addEventListener("status", (message) => showStatus(JSON.parse(message.data)));
  source.onerror = () => setSync(false, "reconnecting…");
}

function setSync(ok, text) {
  const sync = $("sync");
  sync.textContent = text;
  sync.classList.toggle("ok", ok);
}

// --- the table ----------------------------------------------------------------------------

function glob(text) {
  text = text.trim();
  if (!text) return "";
  return /[*?[]/.test(text) ? text : `*${text}*`;
}

function openTable() {
  open({ view: "table", match: glob(view.filter), sort: view.sort, desc: view.desc ? 1 : 0,
    offset: view.offset, limit: view.limit }, { table: showTable });
}

let lastTable = null;

function showTable(data) {
  lastTable = data;
  view.total = data.total;
  setSync(data.synced, data.synced ? `live · ${data.all.toLocaleString()} PVs` : "syncing…");
  const rows = data.rows.map(([name, value, elements, sevr, stat, tsMs, egu, prec, writer,
    updates, rate]) => `<tr data-name="${escape(name)}">` +
    `<td class="name"><a href="#/pv/${encodeURIComponent(name)}">${escape(short(name))}</a></td>` +
    `<td class="num value sev-${sevr}">${escape(formatValue(value, elements, prec, isFloat(name)))}</td>` +
    `<td>${escape(egu || "")}</td>` +
    `<td class="severity sev-${sevr}" title="${STATUSES[stat] || stat}">${SEVERITIES[sevr] || sevr}</td>` +
    `<td class="num age" data-ts="${tsMs}">${age(tsMs)}</td>` +
    `<td class="num">${updates}</td><td class="num">${rate}</td>` +
    `<td>${escape(writer)}</td></tr>`);
  document.querySelector("#pvs tbody").innerHTML = rows.join("");
  const first = data.total ? data.offset + 1 : 0;
  const last = Math.min(data.offset + data.rows.length, data.total);
  $("range").textContent = `${first.toLocaleString()}–${last.toLocaleString()} of ` +
    `${data.total.toLocaleString()}`;
}

function goTo(offset) {
  const lastPage = Math.max(0, Math.floor((view.total - 1) / view.limit) * view.limit);
  view.offset = Math.min(Math.max(0, offset), lastPage);
  openTable();
}

function setUpTable() {
  let timer = null;
  $("filter").addEventListener("input", (event) => {
    clearTimeout(timer);
    timer = setTimeout(() => { view.filter = event.target.value; view.offset = 0; openTable(); }, 150);
  });
  $("limit").addEventListener("change", (event) => { view.limit = +event.target.value; goTo(0); });
  $("first").onclick = () => goTo(0);
  $("prev").onclick = () => goTo(view.offset - view.limit);
  $("next").onclick = () => goTo(view.offset + view.limit);
  $("last").onclick = () => goTo(view.total);
  for (const th of document.querySelectorAll("#pvs th[data-sort]")) {
    th.addEventListener("click", () => {
      view.desc = view.sort === th.dataset.sort ? !view.desc : false;
      view.sort = th.dataset.sort;
      for (const other of document.querySelectorAll("#pvs th")) {
        other.classList.toggle("sorted", other === th);
        other.classList.toggle("desc", other === th && view.desc);
      }
      goTo(0);
    });
  }
  setInterval(() => {
    for (const cell of document.querySelectorAll("td.age")) cell.textContent = age(+cell.dataset.ts);
  }, 1000);
}

// --- the status panel -------------------------------------------------------------------

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60);
  return d ? `${d} d ${h} h` : h ? `${h} h ${m} min` : `${m} min ${Math.floor(seconds % 60)} s`;
}

function bytes(n) {
  return n === null || n === undefined ? "–" : (n / 1048576).toFixed(1) + " MiB";
}

function rowsOf(pairs) {
  return pairs.map((cells) => "<tr>" + cells.map((c) => `<td>${escape(c)}</td>`).join("") + "</tr>").join("");
}

function showStatus(status) {
  if (prefix !== status.prefix) {
    prefix = status.prefix;
    if (lastTable && !$("list-view").hidden) showTable(lastTable);
  }
  $("prefix").textContent = status.prefix;
  if (status.time) clockOffset = status.time * 1000 - Date.now();
  const c = status.counters;
  $("st-pvs").textContent = (c.pvs ?? "–").toLocaleString();
  $("st-uptime").textContent = duration(status.uptime || 0);
  $("st-accepted").textContent = (c.accepted ?? 0).toLocaleString();
  $("st-refused").textContent = (c.refused ?? 0).toLocaleString();
  const s = status.severities;
  $("st-alarms").textContent = `${s.MINOR || 0} minor · ${s.MAJOR || 0} major · ${s.INVALID || 0} invalid`;
  const a = status.autosave;
  $("st-autosave").textContent = !a.enabled ? "off" : a.lastError ? "failing: " + a.lastError
    : a.lastSave ? `saved ${age(a.lastSave * 1000)} ago` : "on";
  document.querySelector("#st-processes tbody").innerHTML = rowsOf(status.processes.map(
    (p) => [p.role, p.pid, bytes(p.rss_bytes), p.restarts ?? "–"]));
  const reasons = Object.entries(c).filter(([k, v]) => k.startsWith("refused:") && v > 0)
    .map(([k, v]) => [k.slice(8), v]);
  document.querySelector("#st-reasons tbody").innerHTML = rowsOf(reasons.length ? reasons : [["none", ""]]);
  const e = status.endpoints;
  document.querySelector("#st-endpoints tbody").innerHTML = rowsOf([["CA port", e.ca_port],
    ...e.zmq.map((z) => ["ZMQ", z]), ...e.http.map((h) => ["HTTP", h])]);
  $("st-last").textContent = c.lastRefusal ? "last refusal: " + c.lastRefusal : "";
}

// --- the PV page ----------------------------------------------------------------------------

function makePlot(xs, ys, xLabel) {
  const element = $("plot");
  if (plot) plot.destroy();
  element.innerHTML = "";
  plot = new uPlot({
    width: Math.max(300, element.clientWidth || 800), height: 320,
    scales: { x: { time: xLabel === "time" } },
    axes: [{ label: xLabel === "time" ? "" : xLabel },
      { size: 70, values: (u, splits) => splits.map(axisNumber) }],
    series: [{}, { label: pvState.name, stroke: "#0b5cad", width: 1.5, points: { show: xs.length < 80 } }],
  }, [xs, ys], element);
}

function numeric(values) {
  return values.map((v) => typeof v === "number" ? v : v === "Infinity" ? Infinity
    : v === "-Infinity" ? -Infinity : NaN);
}

async function fetchWhole() {
  pvState.lastFetch = Date.now();
  const answer = await fetch("/api/v1/pvs/" + encodeURIComponent(pvState.name));
  if (!answer.ok) return;
  const pv = await answer.json();
  if (typeof pv.value === "string" || !Array.isArray(pv.value)) return;
  const ys = numeric(pv.value);
  const xs = pv.buffer ? ys.map((_, i) => i - ys.length + 1) : ys.map((_, i) => i);
  makePlot(xs, ys, pv.buffer ? "samples before the newest" : "element");
  $("plot-note").textContent = pv.buffer ? `the last ${ys.length} values, newest on the right`
    : `${ys.length} elements`;
}

function showPV(pv) {
  setSync(true, "live");
  const scalar = pv.count === 1 && pv.dtype !== "c";
  const prec = pv.attributes.prec;
  const valueBox = $("pv-value");
  valueBox.textContent = formatValue(pv.value, pv.elements, prec, pv.dtype === "f") +
    (pv.attributes.egu ? " " + pv.attributes.egu : "");
  valueBox.className = `pv-value sev-${SEVERITIES.indexOf(pv.severity)}`;
  const alarm = $("pv-alarm");
  alarm.textContent = pv.status === "NO_ALARM" ? pv.severity : `${pv.severity} / ${pv.status}`;
  alarm.className = `badge sev-${SEVERITIES.indexOf(pv.severity)}`;
  const attributes = [["type", `${pv.dtype}${pv.buffer ? " buffer" : ""} × ${pv.count}`],
    ["elements held", pv.elements], ["time stamp", pv.ts ? new Date(pv.ts * 1000).toISOString() : "–"],
    ["last writer", pv.writer], ["updates", pv.updates], ["updates per minute", pv.updates_per_minute],
    ...Object.entries(pv.attributes).map(([k, v]) => [k.toUpperCase(), v === null ? "(unset)" : v])];
  document.querySelector("#pv-attributes tbody").innerHTML = rowsOf(attributes);
  if (pv.ts === pvState.lastTs) return;
  pvState.lastTs = pv.ts;
  if (scalar && typeof pv.value === "number" || typeof pv.value === "string" && scalar) {
    const h = pvState.history;
    h[0].push(pv.ts); h[1].push(numeric([pv.value])[0]);
    if (h[0].length > HISTORY) { h[0].shift(); h[1].shift(); }
    if (!plot) makePlot(h[0], h[1], "time"); else plot.setData(h);
    $("plot-note").textContent = `live history since this page opened (${h[0].length} values)`;
  } else if (pv.dtype !== "c" && Date.now() - pvState.lastFetch > 500) {
    fetchWhole();
  }
}

function openPV(name) {
  if (plot) { plot.destroy(); plot = null; }
  $("plot").innerHTML = "";
  $("plot-note").textContent = "";
  pvState = { name, history: [[], []], lastTs: undefined, lastFetch: 0 };
  $("pv-name").textContent = name;
  open({ view: "pv", name }, {
    pv: showPV,
    gone: (data) => { $("pv-value").textContent = data.synced ? "(no such PV)" : "(syncing…)"; },
  });
}

// --- routing ------------------------------------------------------------------------------

function route() {
  const match = location.hash.match(/^#\/pv\/(.+)$/);
  $("list-view").hidden = !!match;
  $("pv-view").hidden = !match;
  if (match) openPV(decodeURIComponent(match[1]));
  else { pvState = null; openTable(); }
}

setUpTable();
window.addEventListener("hashchange", route);
route();
