// lineguard operator dashboard: plain JS, inline SVG charts, no external resources
// (the shop-floor browser may have no internet). Data: the API's /api/* JSON endpoints
// and /heatmaps/{key}, all with the X-API-Key header. The key comes from the URL
// fragment (#key=..., never sent to a server or logged) or the login form, and is kept
// in sessionStorage for this tab only.
"use strict";

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
const REFRESH_MS = 30000;
const state = { key: null, objectUrls: [] };

function takeKey() {
  const match = /(?:^|[#&])key=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("lineguard-key", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // drop it from the address bar
  }
  return sessionStorage.getItem("lineguard-key");
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { "X-API-Key": state.key };
  const operator = (localStorage.getItem("lineguard-operator") || "").trim();
  if (operator) headers["X-Operator"] = operator;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 401) {
    sessionStorage.removeItem("lineguard-key");
    state.key = null;
    showLogin("that API key was refused");
    throw new Error("unauthorized");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${detail}`);
  }
  return response;
}

const el = (tag, attrs = {}, text) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};
const svgEl = (tag, attrs = {}, text) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};
const pct = (x) => (100 * x).toFixed(1) + " %";
const when = (iso) => iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1");

// The smallest 1, 2, 2.5 or 5 x 10^k at or above v: round axis ticks.
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((c) => c >= v);
}

// A line chart: series = [{name, points: [{t: Date, v: number}]}], guides = [{v, label, colour}].
function lineChart(svg, series, { yFormat = (v) => v.toFixed(2), guides = [], grain = "day" } = {}) {
  svg.replaceChildren();
  const W = 720, H = 260, L = 52, R = 190, T = 12, B = 34;
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no data in this window"));
    return;
  }
  const step = grain === "hour" ? 3600e3 : 86400e3;
  let t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
  if (t1 - t0 < step) { t0 -= step / 2; t1 += step / 2; }
  const vMax = niceCeil(Math.max(...all.map((p) => p.v), ...guides.map((g) => g.v)) * 1.05);
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (Math.min(v, vMax) / vMax) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const v = (vMax * i) / 4;
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, yFormat(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const d = new Date(t).toISOString();
    const label = grain === "hour" ? d.slice(5, 13).replace("T", " ") + "h" : d.slice(5, 10);
    svg.append(svgEl("text", { x: x(t), y: H - B + 16, "text-anchor": "middle" }, label));
  }
  svg.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  svg.append(svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  for (const g of guides) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(g.v), y2: y(g.v), class: "guide", stroke: g.colour }));
    svg.append(svgEl("text", { x: W - R + 4, y: y(g.v) + 4, fill: g.colour }, g.label));
  }
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const pts = [...s.points].sort((a, b) => a.t - b.t);
    const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    svg.append(svgEl("path", { d, class: "series", stroke: colour, "data-series": s.name, "data-points": pts.length }));
    for (const p of pts) {
      const dot = svgEl("circle", { cx: x(p.t), cy: y(p.v), r: 2.5, fill: colour });
      dot.append(svgEl("title", {}, `${s.name} ${new Date(p.t).toISOString().slice(0, 16)}: ${yFormat(p.v)}`));
      svg.append(dot);
    }
    const ly = T + 14 + i * 16;
    svg.append(svgEl("rect", { x: W - R + 4, y: ly - 9, width: 10, height: 10, fill: colour }));
    svg.append(svgEl("text", { x: W - R + 18, y: ly }, s.name));
  });
}

function groupSeries(rows, keyOf, valueOf) {
  const groups = new Map();
  for (const r of rows) {
    const k = keyOf(r);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push({ t: Date.parse(r.period), v: valueOf(r) });
  }
  return [...groups].sort().map(([name, points]) => ({ name, points }));
}

async function refresh() {
  const hours = document.getElementById("window").value;
  const grain = hours <= 48 ? "hour" : "day";
  const q = `hours=${hours}`;
  const error = document.getElementById("error");
  try {
    const [lines, rates, drift, defects, feedback, passed] = await Promise.all([
      api(`/api/lines?${q}`).then((r) => r.json()),
      api(`/api/defect-rate?${q}&grain=${grain}`).then((r) => r.json()),
      api(`/api/drift?${q}&grain=${grain}`).then((r) => r.json()),
      api(`/api/defects/latest?${q}&limit=12`).then((r) => r.json()),
      api(`/api/feedback?${q}`).then((r) => r.json()),
      api(`/review/passed?${q}&n=8`).then((r) => r.json()),
    ]);
    renderLines(lines);
    renderFeedback(lines, feedback);
    renderPassed(passed);
    lineChart(document.getElementById("rate-chart"), groupSeries(rates, (r) => r.line_id, (r) => r.defect_rate),
      { yFormat: (v) => (100 * v).toFixed(0) + "%", grain });
    lineChart(document.getElementById("drift-chart"),
      groupSeries(drift.filter((r) => r.psi !== null), (r) => `${r.line_id} ${r.model_name} ${r.model_version}`, (r) => r.psi),
      { grain, guides: [{ v: 0.1, label: "watch", colour: "#b8860b" }, { v: 0.25, label: "drift", colour: "#c62828" }] });
    // The shadow trial of each line (most lines have none: the panel stays hidden).
    const shadow = await Promise.all(lines.map((l) =>
      api(`/api/shadow?line=${encodeURIComponent(l.line_id)}&${q}&limit=12`).then((r) => r.json())));
    releaseObjectUrls();
    await Promise.all([renderDefects(defects), renderShadow(shadow)]);
    error.textContent = "";
    document.getElementById("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e.message !== "unauthorized") error.textContent = e.message;
  }
}

// Precision and recall per line from the operators' labels (ClickHouse, via lineguard sink labels).
function renderFeedback(lines, feedback) {
  const body = document.querySelector("#feedback tbody");
  body.replaceChildren();
  const byLine = new Map(feedback.map((f) => [f.line_id, f]));
  const names = [...new Set([...lines.map((l) => l.line_id), ...byLine.keys()])].sort();
  for (const line of names) {
    const f = byLine.get(line) || { labelled: 0, confirmed: 0, false_alarms: 0, missed: 0, precision: null, recall: null };
    const tr = el("tr", { "data-line": line });
    for (const v of [line, f.labelled, f.confirmed, f.false_alarms, f.missed]) tr.append(el("td", {}, String(v)));
    for (const [name, v] of [["precision", f.precision], ["recall", f.recall]]) {
      tr.append(el("td", { class: name, "data-value": v === null ? "" : String(v) }, v === null ? "–" : pct(v)));
    }
    body.append(tr);
  }
}

// Label buttons under a frame: POST /verdicts/{frame_id}/label, then say what was recorded.
function labelButtons(frame, choices, current) {
  const box = el("div", { class: "labels" });
  const status = el("div", { class: "label-state muted" }, current ? `marked: ${current.replace("_", " ")}` : "");
  for (const [label, text] of choices) {
    const button = el("button", { type: "button", class: "label-btn", "data-label": label }, text);
    button.addEventListener("click", async () => {
      box.querySelectorAll("button").forEach((b) => { b.disabled = true; });
      status.textContent = "sending…";
      try {
        const saved = await (await api(`/verdicts/${frame}/label`, { method: "POST", body: { label } })).json();
        status.textContent = `marked: ${text} (${saved.operator})`;
        status.dataset.saved = label;
      } catch (e) {
        status.textContent = "not saved: " + e.message;
      } finally {
        box.querySelectorAll("button").forEach((b) => { b.disabled = false; });
      }
    });
    box.append(button);
  }
  box.append(status);
  return box;
}

function renderPassed(passed) {
  const box = document.getElementById("passed");
  box.replaceChildren();
  for (const p of passed) {
    const card = el("div", { class: "defect passed", "data-frame": p.frame_id });
    card.append(el("div", {}, `${p.line_id} · ${p.camera_id} · ${p.product}`));
    card.append(el("div", {}, `${p.score.toFixed(3)} ≤ ${p.threshold.toFixed(3)} (${p.model_version})`));
    card.append(el("div", { class: "muted" }, when(p.captured_at)));
    card.append(labelButtons(p.frame_id, [["missed_defect", "missed defect"]], p.label));
    box.append(card);
  }
  if (!passed.length) box.append(el("p", { class: "muted" }, "no passed frames in this window"));
}

function renderLines(lines) {
  const body = document.querySelector("#lines tbody");
  body.replaceChildren();
  for (const l of lines) {
    const tr = el("tr", { "data-line": l.line_id });
    for (const v of [l.line_id, l.model_name, l.model_version, l.frames, l.defective, pct(l.defect_rate), when(l.last_frame_at)]) {
      tr.append(el("td", {}, String(v)));
    }
    tr.children[2].classList.add("model-version");
    body.append(tr);
  }
  if (!lines.length) body.append(el("tr", {}, "no verdicts in this window"));
}

function releaseObjectUrls() {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  state.objectUrls = [];
}

// <img src> cannot send the key header: fetch the PNG, show it from a blob URL.
async function loadHeatmap(img, key) {
  try {
    const blob = await (await api(`/heatmaps/${key.split("/").map(encodeURIComponent).join("/")}`)).blob();
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    await new Promise((resolve) => { img.onload = img.onerror = resolve; img.src = url; });
  } catch (e) {
    img.alt = "heatmap unavailable: " + e.message;
  }
}

async function renderDefects(defects) {
  const box = document.getElementById("defects");
  box.replaceChildren();
  await Promise.all(defects.map(async (d) => {
    const card = el("div", { class: "defect", "data-frame": d.frame_id });
    const img = el("img", { class: "heatmap", alt: `heatmap of frame ${d.frame_id}` });
    card.append(img);
    card.append(el("div", {}, `${d.line_id} · ${d.camera_id} · ${d.product}`));
    const score = el("div", {});
    score.append(el("span", { class: "score" }, d.score.toFixed(3)));
    score.append(document.createTextNode(` > ${d.threshold.toFixed(3)} (${d.model_version})`));
    card.append(score);
    card.append(el("div", { class: "muted" }, when(d.captured_at)));
    card.append(labelButtons(d.frame_id, [["confirmed_defect", "confirmed defect"], ["false_alarm", "false alarm"]]));
    box.append(card);
    if (d.heatmap_key) await loadHeatmap(img, d.heatmap_key);
  }));
}

// Shadow trials (GET /api/shadow, the figures of `lineguard models compare`): per line and candidate
// the agreement, the agreement table, score quantiles and, with labels, precision and recall of both;
// then the line's latest disagreements, each saying which model flagged the frame.
const ratio = (v) => (v === null ? "–" : pct(v));

function figureTable(cls, head, rows) {
  const table = el("table", { class: cls });
  const tr = el("tr");
  head.forEach((h) => tr.append(el("th", {}, h)));
  const thead = el("thead");
  thead.append(tr);
  table.append(thead);
  const body = el("tbody");
  for (const [name, cells] of rows) {
    const row = el("tr", { "data-side": name });
    row.append(el("td", {}, name));
    for (const [key, text, value] of cells) row.append(el("td", { class: key, "data-value": value }, text));
    body.append(row);
  }
  table.append(body);
  return table;
}

function trialCard(line, c) {
  const card = el("div", { class: "trial", "data-line": line, "data-shadow-version": c.shadow_version });
  const title = el("h3", {}, `${line}: live ${c.live_versions.join(", ")} vs shadow ${c.shadow_version} `);
  title.append(el("span", { class: "muted" }, `on ${c.frames} frames`));
  card.append(title);
  const agreement = el("div", { class: "agreement-box" });
  agreement.append(el("div", { class: "agreement", "data-value": c.agreement === null ? "" : String(c.agreement) },
    ratio(c.agreement)));
  agreement.append(el("div", { class: "muted" }, "agreement"));
  card.append(agreement);
  const counts = [["both_pass", "both pass"], ["both_defective", "both defective"],
    ["live_only", "live only defective"], ["shadow_only", "shadow only defective"]];
  card.append(figureTable("shadow-counts", ["", ...counts.map(([, h]) => h)],
    [["frames", counts.map(([k]) => [k, String(c[k]), String(c[k])])]]));
  const qs = Object.keys(c.live_score_quantiles);
  card.append(figureTable("shadow-quantiles", ["score", ...qs], ["live", "shadow"].map((side) =>
    [side, qs.map((q) => [q, c[`${side}_score_quantiles`][q].toFixed(4), String(c[`${side}_score_quantiles`][q])])])));
  if (c.labelled) {
    card.append(figureTable("shadow-accuracy", [`${c.labelled} labelled`, "precision", "recall"],
      ["live", "shadow"].map((side) => [side, ["precision", "recall"].map((m) => {
        const v = c[`${side}_${m}`];
        return [m, ratio(v), v === null ? "" : String(v)];
      })])));
  } else {
    card.append(el("p", { class: "muted no-labels" }, "no labelled frames: precision and recall unknown"));
  }
  return card;
}

function disagreementTile(d) {
  const flagged = d.flagged_by === "live" ? `live ${d.live_version}` : `shadow ${d.shadow_version}`;
  const tile = el("div", { class: "shadow-tile", "data-frame": d.frame_id, "data-flagged-by": d.flagged_by });
  const scores = [["live", d.live_version, d.live_score, d.live_threshold, d.live_defective],
    ["shadow", d.shadow_version, d.shadow_score, d.shadow_threshold, d.shadow_defective]]
    .map(([side, v, score, thr, bad]) => `${side} ${v}: ${score.toFixed(3)} ${bad ? ">" : "≤"} ${thr.toFixed(3)}`);
  let img = null;
  if (d.heatmap_key) {
    img = el("img", { class: "shadow-heatmap", alt: `heatmap of frame ${d.frame_id}` });
    tile.append(img);
  } else {
    const plain = el("div", { class: "plain-tile" });
    scores.forEach((s) => plain.append(el("div", {}, s)));
    tile.append(plain);
  }
  tile.append(el("div", { class: `flagged flagged-${d.flagged_by}` }, `flagged by ${flagged}`));
  if (img) scores.forEach((s) => tile.append(el("div", {}, s)));
  tile.append(el("div", { class: "muted" }, `${d.camera_id} · ${when(d.captured_at)}`));
  return { tile, img };
}

async function renderShadow(reports) {
  const section = document.getElementById("shadow");
  const box = document.getElementById("shadow-trials");
  box.replaceChildren();
  const trials = reports.filter((r) => r.candidates.length);
  section.hidden = !trials.length;
  const loads = [];
  for (const r of trials) {
    r.candidates.forEach((c) => box.append(trialCard(r.line_id, c)));
    const strip = el("div", { class: "defects shadow-strip", "data-line": r.line_id });
    for (const d of r.disagreements) {
      const { tile, img } = disagreementTile(d);
      strip.append(tile);
      if (img) loads.push(loadHeatmap(img, d.heatmap_key));
    }
    if (!r.disagreements.length) strip.append(el("p", { class: "muted" }, "no disagreements in this window"));
    box.append(el("h3", {}, `${r.line_id}: latest disagreements`), strip);
  }
  await Promise.all(loads);
}

function showLogin(message) {
  document.getElementById("content").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("content").hidden = false;
  refresh();
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  state.key = document.getElementById("key").value.trim();
  sessionStorage.setItem("lineguard-key", state.key);
  start();
});
document.getElementById("window").addEventListener("change", refresh);
const operatorInput = document.getElementById("operator");
operatorInput.value = localStorage.getItem("lineguard-operator") || "";
operatorInput.addEventListener("change", () => localStorage.setItem("lineguard-operator", operatorInput.value.trim()));
state.key = takeKey();
if (state.key) start(); else showLogin();
setInterval(() => { if (state.key && !document.hidden) refresh(); }, REFRESH_MS);
