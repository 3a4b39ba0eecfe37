// The dashboard of `backfill serve`: the runs (executive), one run's on-call view (rate and
// why, errors, controls) and its debug view (heat strip, throughput, partitions), refreshed
// every few seconds from the JSON API. Text from the API is only ever set as textContent.
"use strict";

const REFRESH_MS = 3000;
const PAGE = 50;
const STATE_COLOURS = {
  done: "#2e9d5b", done_with_quarantine: "#8bbf3f", running: "#3563d8", pending: "#c9ced8",
  waiting_source: "#7b5bd6", failed: "#d04545", split: "#9aa3b2",
};
const STATES = Object.keys(STATE_COLOURS);

let selected = null;          // the run shown below the table
let pageAfter = null;         // `after` (plan order) or `cursor` (sorted) of the page shown

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

// The token typed for the controls; a server off loopback needs it for reading too.
function authHeaders() {
  const token = $("token").value;
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json", ...authHeaders() } });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error + (body.hint ? " (" + body.hint + ")" : ""));
  return body;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + "%");

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
}

function badge(state) {
  return el("span", state.replace("_", " "), "badge " + state);
}

function progressBar(done, total) {
  const wrap = el("span");
  const bar = el("span", null, "bar");
  const fill = el("span");
  fill.style.width = total ? Math.min(100, (100 * done) / total).toFixed(1) + "%" : "0%";
  bar.appendChild(fill);
  wrap.append(bar, `${fmt(done)} / ${fmt(total)}`);
  return wrap;
}

function budgetUsed(live) {
  const limits = (live && live.budget) || [];
  let worst = null;
  for (const l of limits) {
    if (l.limit > 0) {
      const share = l.used / l.limit;
      if (worst === null || share > worst.share) worst = { share, kind: l.kind };
    }
  }
  return worst ? `${pct(worst.share)} of ${worst.kind}` : "–";
}

async function refreshRuns() {
  const list = (await api("/api/runs?limit=20")).runs;
  $("empty").hidden = list.length > 0;
  const statuses = await Promise.all(list.map((r) => api("/api/runs/" + r.run_id).catch(() => null)));
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const st of statuses) {
    if (!st) continue;
    const tr = el("tr");
    if (selected === st.run_id) tr.className = "selected";
    const done = (st.partitions.done || 0) + (st.partitions.done_with_quarantine || 0);
    const checks = st.reconciliation;
    const compared = checks.verified + checks.mismatched + checks.not_verified;
    const cost = st.live && st.live.cost ? st.live.cost.to_complete : null;
    const name = el("td");
    name.append(el("div", st.spec), el("div", st.run_id.slice(0, 8), "muted"));
    const state = el("td");
    state.appendChild(badge(st.state));
    const progress = el("td");
    progress.appendChild(progressBar(done, st.partitions_total));
    tr.append(name, state, progress, el("td", etaText(st)),
      el("td", `${fmt(st.rows.written)} / ${fmt(st.rows.read)}`), el("td", pct(st.success_rate)),
      el("td", compared ? pct(checks.verified / compared) : "–"), el("td", budgetUsed(st.live)),
      el("td", cost || "–"));
    tr.addEventListener("click", () => { selected = st.run_id; pageAfter = null; refresh(); });
    body.appendChild(tr);
  }
  if (!selected && statuses.length && statuses[0]) selected = statuses[0].run_id;
}

// The ETA, and against the `[slo]` deadline when the run has one.
function etaText(st) {
  const eta = duration(st.eta_seconds);
  if (!st.slo || st.slo.on_track === null) return eta;
  return `${eta} · ${st.slo.on_track ? "on track" : "late"}`;
}

// The `[slo]` rows of the on-call view: deadline, error budget, burn rates, guard stage.
function objectiveRows(slo, row) {
  if (!slo) return;
  if (slo.deadline) {
    const when = slo.projected_completion ? `projected ${slo.projected_completion}` : "no projection yet";
    const verdict = slo.on_track === null ? "" : slo.on_track ? " (on track)" : " (LATE)";
    row("deadline", `${slo.deadline}, ${when}${verdict}`);
  }
  const budget = slo.error_budget;
  if (budget.allowed !== null) {
    const used = budget.used_ratio === null ? "all used" : `${pct(budget.used_ratio)} used`;
    const allowed = budget.allowed < 10 ? budget.allowed.toFixed(2) : fmt(Math.round(budget.allowed));
    row("error budget", `${fmt(budget.used)} of ${allowed} failed attempts (${used})`);
    const burn = (b) => (b === null || b === undefined ? "–" : b.toFixed(2));
    row("burn rate", `${burn(slo.burn_rate.short)} (5m) · ${burn(slo.burn_rate.long)} (1h)`);
  }
  if (slo.stage !== "watching") row("burn guard", slo.stage);
}

function onCall(st) {
  $("run-title").textContent = `${st.spec} · ${st.run_id}`;
  const dl = $("oncall");
  dl.replaceChildren();
  const row = (k, v) => dl.append(el("dt", k), el("dd", v));
  const stateCell = el("dd");
  stateCell.appendChild(badge(st.state));
  if (st.pause_reason) stateCell.append(` (${st.pause_reason})`);
  dl.append(el("dt", "state"), stateCell);
  row("reason", st.reason);
  row("process", st.control.process_running ? "executing" : "none is executing it");
  const rate = st.rate;
  row("rate", rate ? `${rate.rows_per_second === null ? "no limit" : fmt(Math.round(rate.rows_per_second)) + " rows/s"} (${rate.cause})` : "–");
  const adaptive = st.live && st.live.adaptive;
  if (adaptive && adaptive.p90_ms !== undefined && adaptive.p90_ms !== null) {
    row("probe p90", `${adaptive.p90_ms.toFixed(2)} ms vs baseline ${adaptive.baseline_p90_ms === null ? "–" : adaptive.baseline_p90_ms.toFixed(2) + " ms"}`);
  }
  row("failing", fmt(st.failing_total));
  row("throughput", `${fmt(Math.round(st.rows_per_second))} rows/s over ${duration(st.elapsed_seconds)}`);
  row("ETA", duration(st.eta_seconds));
  objectiveRows(st.slo, row);
}

async function refreshErrors(id) {
  const groups = (await api(`/api/runs/${id}/errors`)).groups;
  const body = $("errors").tBodies[0];
  body.replaceChildren();
  for (const g of groups) {
    const tr = el("tr");
    tr.append(el("td", fmt(g.partitions)), el("td", fmt(g.failed)), el("td", g.class || "–"),
      el("td", g.message, "wrap"));
    body.appendChild(tr);
  }
  $("no-errors").hidden = groups.length > 0;
}

async function refreshHeat(id) {
  const heat = await api(`/api/runs/${id}/heat?bins=200`);
  const strip = $("heat");
  strip.replaceChildren();
  const n = heat.bins.length || 1;
  const width = 1000 / n;
  heat.bins.forEach((b, i) => {
    // Each bin is split by its states, in a fixed order.
    const total = Object.values(b.states).reduce((a, c) => a + c, 0) || 1;
    let y = 0;
    for (const s of STATES) {
      const count = b.states[s] || 0;
      if (!count) continue;
      const h = (28 * count) / total;
      const rect = svg("rect", { x: (i * width).toFixed(2), y: y.toFixed(2), width: (width + 0.5).toFixed(2), height: h.toFixed(2), fill: STATE_COLOURS[s] });
      rect.appendChild(svg("title", {})).textContent = `${s}: ${count}`;
      strip.appendChild(rect);
      y += h;
    }
  });
}

async function refreshProgress(id) {
  const points = (await api(`/api/runs/${id}/progress`)).points.slice(-120);
  const chart = $("progress");
  chart.replaceChildren();
  const max = Math.max(1, ...points.map((p) => p.rows));
  // At most 40 units a bar, so a young run's few minutes do not fill the chart.
  const width = Math.min(40, 1000 / Math.max(points.length, 1));
  points.forEach((p, i) => {
    const h = (110 * p.rows) / max;
    const bar = svg("rect", { x: (i * width + width * 0.1).toFixed(2), y: (115 - h).toFixed(2), width: (width * 0.8).toFixed(2), height: h.toFixed(2), fill: "#3563d8" });
    bar.appendChild(svg("title", {})).textContent = `${p.at}: ${fmt(p.rows)} rows, ${fmt(p.partitions)} partitions`;
    chart.appendChild(bar);
  });
}

// A partition's last reconciliation: verified, or how many rows the target has more (+) or
// fewer (−) than the source.
function checkText(check) {
  if (!check) return "–";
  if (check.status === "verified") return "✓ verified";
  if (check.status === "not_verified") return "not verified";
  const d = check.row_delta;
  return d === null ? "mismatched" : `mismatched (${d > 0 ? "+" : ""}${fmt(d)} rows)`;
}

async function refreshPartitions(id) {
  const state = $("state-filter").value;
  const sort = $("sort").value;
  let path = `/api/runs/${id}/partitions?limit=${PAGE}&sort=${sort}`;
  if (state) path += `&state=${encodeURIComponent(state)}`;
  if (pageAfter !== null) path += `&${sort === "index" ? "after" : "cursor"}=${encodeURIComponent(pageAfter)}`;
  const page = await api(path);
  const body = $("partitions").tBodies[0];
  body.replaceChildren();
  for (const p of page.partitions) {
    const tr = el("tr");
    const stateCell = el("td");
    stateCell.appendChild(badge(p.state));
    const written = p.rows.inserted + p.rows.updated + p.rows.deleted + p.rows.affected;
    tr.append(el("td", p.index), el("td", p.window.text), stateCell, el("td", p.attempts),
      el("td", fmt(p.rows.read)), el("td", fmt(written)), el("td", duration(p.elapsed_ms / 1000)),
      el("td", p.checkpoint ? JSON.stringify(p.checkpoint) : "–"), el("td", checkText(p.check)),
      el("td", p.last_error || "", "wrap"));
    body.appendChild(tr);
  }
  const next = sort === "index" ? page.next_after : page.next_cursor;
  $("next-page").disabled = next === null;
  $("next-page").dataset.after = next === null ? "" : String(next);
}

async function refresh() {
  try {
    await refreshRuns();
    $("run").hidden = !selected;
    if (selected) {
      const st = await api("/api/runs/" + selected);
      onCall(st);
      await Promise.all([refreshErrors(selected), refreshHeat(selected), refreshProgress(selected), refreshPartitions(selected)]);
    }
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    $("updated").textContent = "update failed: " + e.message;
  }
}

async function control(action, body) {
  if (!selected) return;
  if (!window.confirm(`${action} run ${selected}?`)) return;
  const headers = { "Content-Type": "application/json", ...authHeaders() };
  if ($("actor").value) headers["X-Backfill-Actor"] = $("actor").value;
  sessionStorage.setItem("backfill-token", $("token").value);
  const r = await fetch(`/api/runs/${selected}/${action}`, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const answer = await r.json();
  $("action-result").textContent = r.ok
    ? `${action} recorded by ${answer.by}; ` +
      (answer.process_running ? "the executing process acts within a second" : `the run is ${answer.state}`)
    : `${action} refused: ${answer.error}${answer.hint ? " — " + answer.hint : ""}`;
  refresh();
}

function setup() {
  for (const s of STATES) {
    $("state-filter").appendChild(el("option", s.replace("_", " "))).value = s;
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = STATE_COLOURS[s];
    item.append(swatch, s.replace("_", " "));
    $("legend").appendChild(item);
  }
  $("token").value = sessionStorage.getItem("backfill-token") || "";
  $("state-filter").addEventListener("change", () => { pageAfter = null; refresh(); });
  $("sort").addEventListener("change", () => { pageAfter = null; refresh(); });
  $("first-page").addEventListener("click", () => { pageAfter = null; refresh(); });
  $("next-page").addEventListener("click", () => {
    const after = $("next-page").dataset.after;
    if (after) { pageAfter = after; refresh(); }
  });
  $("pause").addEventListener("click", () => control("pause", { reason: "from the dashboard" }));
  $("resume").addEventListener("click", () => control("resume"));
  $("cancel").addEventListener("click", () => control("cancel", { reason: "from the dashboard" }));
  $("throttle").addEventListener("click", () => {
    const rate = Number($("rate").value);
    if (rate >= 1) control("throttle", { rows_per_second: rate });
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", setup);
