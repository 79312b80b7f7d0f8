// The monitor dashboard: reads /api/dashboard and draws it with Plotly, again every REFRESH_MS.
// Names from the line (line ids, cameras, versions) are set as text, never as HTML.
"use strict";

const REFRESH_MS = 5000;
const PLOT_CONFIG = { displaylogo: false, responsive: true };
const LAYOUT = { margin: { l: 50, r: 10, t: 10, b: 40 }, legend: { orientation: "h" }, font: { size: 11 } };
let selectedLine = "";
let renders = 0;
let latest = null;

// With auth required the API wants a bearer token: given once as /#token=<JWT>, kept for the tab only.
function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem("lineloop-token", fromHash);
    history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("lineloop-token");
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fillTable(id, rows) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(cell instanceof Node ? wrap(cell) : el("td", cell));
    return tr;
  }));
}

function wrap(node) {
  const td = el("td");
  td.append(node);
  return td;
}

function badge(state) {
  return el("span", state, `state state-${state.replace(/\s+/g, "-")}`);
}

function pct(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString() : "–";
}

function plot(id, traces, layout) {
  Plotly.react(id, traces, { ...LAYOUT, ...layout }, PLOT_CONFIG);
}

function render(data) {
  const lineIds = data.lines.map((l) => l.line_id);
  const select = document.getElementById("line-select");
  if (!lineIds.includes(selectedLine)) {
    const drifting = data.lines.find((l) => l.state === "drifting");
    selectedLine = drifting ? drifting.line_id : (lineIds[0] || "");
  }
  select.replaceChildren(...lineIds.map((id) => Object.assign(el("option", id), { value: id, selected: id === selectedLine })));
  document.querySelectorAll(".line-name").forEach((n) => { n.textContent = selectedLine || "–"; });

  fillTable("lines", data.lines.map((l) => [l.line_id, l.model_name, badge(l.state), l.frames_seen, l.frames_unscored, l.frames_rejected]));
  fillTable("cameras", data.cameras.map((c) => [c.line_id, c.camera_id, badge(c.state), c.frames, c.unscored, time(c.last_at)]));
  fillTable("alerts", data.alerts.map((a) => [time(a.detected_at), a.camera_id ? `${a.line_id} / ${a.camera_id}` : a.line_id, a.kind, a.feature,
    a.score === null ? `> ${pct(a.threshold)} unscored` : `${a.score.toFixed(3)} / ${a.threshold.toFixed(3)}`]));
  fillTable("versions", data.versions.map((v) => [v.line_id, `v${v.model_version}`, v.role, v.frames, v.labelled,
    v.accuracy === null ? "no labels" : `${pct(v.accuracy)} [${pct(v.accuracy_low)}, ${pct(v.accuracy_high)}]`]));

  // Drift scores of the selected line, each feature with its threshold in the same colour.
  const features = data.drift_scores[selectedLine] || {};
  const driftTraces = [];
  Object.entries(features).forEach(([feature, s], i) => {
    const color = `hsl(${(i * 47) % 360}, 65%, 45%)`;
    driftTraces.push({ x: s.at, y: s.score, name: feature, mode: "lines", line: { color }, legendgroup: feature });
    driftTraces.push({ x: s.at, y: s.threshold, name: `${feature} threshold`, mode: "lines", showlegend: false,
      line: { color, dash: "dot", width: 1 }, legendgroup: feature, hoverinfo: "skip" });
  });
  plot("chart-drift", driftTraces, { yaxis: { title: { text: "PSI" }, rangemode: "tozero" } });

  // Live accuracy per version and role, with the Wilson interval, across lines.
  const labelled = data.versions.filter((v) => v.accuracy !== null);
  const byRole = (role) => labelled.filter((v) => v.role === role);
  plot("chart-accuracy", ["production", "canary"].map((role) => ({
    type: "bar", name: role,
    x: byRole(role).map((v) => `${v.line_id} v${v.model_version}`),
    y: byRole(role).map((v) => v.accuracy),
    error_y: { type: "data", symmetric: false, array: byRole(role).map((v) => v.accuracy_high - v.accuracy),
      arrayminus: byRole(role).map((v) => v.accuracy - v.accuracy_low) },
  })), { yaxis: { range: [0, 1.05], tickformat: ".0%" }, barmode: "group",
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: data.settings.min_live_accuracy, y1: data.settings.min_live_accuracy,
      line: { dash: "dash", color: "#b3261e" } }] });

  // Model-version timeline: one row per model, a marker per stage change.
  const symbols = { promotion: "circle", rollback: "x", canary: "diamond", archived: "square-open", rejected: "x-open", candidate: "circle-open" };
  const kinds = [...new Set(data.model_changes.map((c) => c.kind))];
  plot("chart-timeline", kinds.map((kind) => {
    const changes = data.model_changes.filter((c) => c.kind === kind);
    return { type: "scatter", mode: "markers+text", name: kind, x: changes.map((c) => c.at), y: changes.map((c) => c.model_name),
      text: changes.map((c) => `v${c.version}`), textposition: "top center",
      hovertext: changes.map((c) => `${c.kind} v${c.version} by ${c.actor}: ${c.reason} (${c.lines})`), hoverinfo: "text",
      marker: { size: 12, symbol: symbols[kind] || "circle" } };
  }), { yaxis: { type: "category" } });

  // Class shares and confidence per version of the selected line.
  const shares = data.class_shares[selectedLine] || {};
  const classes = [...new Set(Object.values(shares).flatMap((m) => Object.keys(m)))].sort();
  const versionsOfLine = Object.keys(shares).sort();
  plot("chart-classes", classes.map((cls) => ({
    type: "bar", name: cls, x: versionsOfLine.map((v) => `v${v}`),
    y: versionsOfLine.map((v) => {
      const total = Object.values(shares[v]).reduce((a, b) => a + b, 0);
      return (shares[v][cls] || 0) / total;
    }),
  })), { barmode: "stack", yaxis: { tickformat: ".0%" } });
  const hist = data.confidence_histograms[selectedLine] || {};
  const bins = data.settings.confidence_bins;
  plot("chart-confidence", Object.keys(hist).sort().map((v) => ({
    type: "bar", name: `v${v}`, opacity: 0.7,
    x: hist[v].map((_, i) => (i + 0.5) / bins), y: hist[v],
  })), { barmode: "overlay", bargap: 0.05, xaxis: { range: [0, 1], title: { text: "top-class confidence" } } });

  // Throughput of every line; refusals by reason.
  plot("chart-throughput", Object.entries(data.throughput).map(([line, t]) => ({
    type: "scatter", mode: "lines+markers", name: line, x: t.at, y: t.frames,
  })), { yaxis: { title: { text: `frames / ${data.settings.bucket_s} s` }, rangemode: "tozero" } });
  const reasons = [...new Set(Object.values(data.refusals).flatMap((r) => Object.keys(r)))].sort();
  plot("chart-refusals", reasons.map((reason) => ({
    type: "bar", name: reason, x: lineIds, y: lineIds.map((l) => (data.refusals[l] || {})[reason] || 0),
  })), { barmode: "stack" });

  document.getElementById("updated").textContent = `updated ${time(data.generated_at)}`;
  renders += 1;
  document.body.dataset.renders = String(renders);
}

function showProblem(text) {
  const box = document.getElementById("problem");
  box.textContent = text;
  box.hidden = !text;
}

async function refresh() {
  try {
    const headers = {};
    const bearer = token();
    if (bearer) headers.Authorization = `Bearer ${bearer}`;
    const response = await fetch("/api/dashboard", { headers, cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showProblem(`The monitor answered ${response.status}: ${body.message || response.statusText}`);
    } else {
      latest = await response.json();
      render(latest);
      showProblem("");
    }
  } catch (err) {
    showProblem(`The monitor cannot be reached (${err.message}); retrying every ${REFRESH_MS / 1000} s`);
  }
  setTimeout(refresh, REFRESH_MS);
}

document.getElementById("line-select").addEventListener("change", (event) => {
  selectedLine = event.target.value;
  if (latest) render(latest);
});
refresh();
