// feedbackloop dashboard: reads /api with the secret key (or none in local mode) and draws
// with the vendored Chart.js. Data is inserted with textContent only, never as HTML.
"use strict";

const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#be123c"];
const REFRESH_MS = 15000;
const charts = {};
let selected = null; // {app_id, experiment}

// --- key handling -----------------------------------------------------------------------
// A link may carry the key in the fragment (#key=...), which never reaches a server log;
// it moves to sessionStorage and out of the address bar at once.
function takeKeyFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) {
    sessionStorage.setItem("feedbackloop.key", key);
    params.delete("key");
    history.replaceState(null, "", location.pathname + (params.toString() ? "#" + params : ""));
  }
}

function authHeaders() {
  const key = sessionStorage.getItem("feedbackloop.key");
  return key ? { Authorization: "Bearer " + key } : {};
}

class ApiFailure extends Error {
  constructor(status, body) {
    super((body && body.message) || "HTTP " + status);
    this.status = status;
  }
}

async function api(path) {
  const res = await fetch(path, { headers: authHeaders() });
  let body = null;
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new ApiFailure(res.status, body);
  return body;
}

// --- formatting -------------------------------------------------------------------------
const pct = (x, digits = 1) => (x === null || x === undefined ? "n/a" : (100 * x).toFixed(digits) + "%");
const num = (x) => (x === null || x === undefined ? "n/a" : Number(x).toLocaleString());
const pval = (p) => (p === null || p === undefined ? "n/a" : p < 1e-4 ? "<0.0001" : p.toFixed(4));
const when = (ms) => new Date(ms).toLocaleString();
const color = (i) => PALETTE[i % PALETTE.length];
const alpha = (hex, a) => hex + Math.round(a * 255).toString(16).padStart(2, "0");

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function table(node, headers, rows) {
  node.replaceChildren();
  const head = el("tr");
  headers.forEach((h) => head.appendChild(el("th", h)));
  node.appendChild(head);
  rows.forEach((r) => {
    const tr = el("tr");
    r.forEach((c) => {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el("td", c));
    });
    node.appendChild(tr);
  });
}

function interval(e) {
  if (!e || e.value === null) return "n/a";
  return `${pct(e.value)} [${pct(e.lower)}, ${pct(e.upper)}]`;
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options);
  charts[id] = new Chart(document.getElementById(id), config);
}

const timeAxis = (span) => ({
  type: "linear",
  ticks: {
    maxTicksLimit: 8,
    callback: (v) => {
      const d = new Date(v);
      return span > 2 * 86400000 ? d.toLocaleDateString() : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    },
  },
});

// --- experiments ------------------------------------------------------------------------
function renderExperimentList(exps) {
  const list = document.getElementById("exp-list");
  list.replaceChildren();
  document.getElementById("exp-empty").hidden = exps.length > 0;
  exps.forEach((x) => {
    const li = el("li");
    li.dataset.app = x.app_id;
    li.dataset.experiment = x.experiment;
    li.appendChild(el("div", x.experiment, "name"));
    li.appendChild(el("div", `${x.app_id} · ${x.variants.join(" vs ")}`, "muted"));
    li.appendChild(el("div", `${num(x.interactions)} interactions · last ${when(x.last_seen_ms)}`, "muted"));
    if (selected && selected.app_id === x.app_id && selected.experiment === x.experiment) li.classList.add("active");
    li.addEventListener("click", () => {
      selected = { app_id: x.app_id, experiment: x.experiment };
      location.hash = "exp=" + encodeURIComponent(x.app_id + "/" + x.experiment);
      refresh();
    });
    list.appendChild(li);
  });
}

function renderExperiment(d) {
  const rep = d.report;
  document.getElementById("experiment").hidden = false;
  document.getElementById("exp-title").textContent = `${d.experiment} (${d.app_id})`;
  document.getElementById("exp-meta").textContent =
    `control: ${d.control} · variants: ${d.variants.join(", ")} · primary metric: ${rep.primary} · ${when(d.first_seen_ms)} – ${when(d.last_seen_ms)}`;

  const srm = rep.srm || {};
  const banner = document.getElementById("srm-banner");
  banner.hidden = !srm.mismatch;
  banner.textContent = srm.mismatch
    ? `Sample-ratio mismatch: sessions per variant ${srm.observed.join(" / ")} (p = ${pval(srm.p_value)}). Do not trust the results until the assignment is fixed.`
    : "";

  const box = document.getElementById("decisions");
  box.replaceChildren();
  rep.decisions.forEach((c) => {
    const cmp = rep.comparisons.find((m) => m.treatment === c.treatment && m.metric === c.metric) || {};
    const seq = cmp.sequential || {};
    const div = el("div", null, "decision " + c.decision.verdict);
    div.dataset.verdict = c.decision.verdict;
    div.appendChild(el("span", `${c.treatment} vs ${d.control}:`, "verdict"));
    div.appendChild(el("span", c.decision.text));
    div.appendChild(el("span", `(${c.decision.reason})`, "muted"));
    div.appendChild(el("span", `${c.metric} difference ${interval(c.difference)}`));
    div.appendChild(el("span", `sequential p ${pval(c.sequential_p_value)} (always valid; confidence sequence ${interval(seq.confidence_sequence)})`, "muted"));
    const pb = c.bayesian ? ` · P(better) ${pct(c.bayesian.prob_treatment_beats_control)}` : "";
    div.appendChild(el("span", `fixed-horizon p ${pval(c.p_value)}${pb}`, "muted"));
    if (c.power && c.power.message) div.appendChild(el("span", c.power.message, "muted"));
    box.appendChild(div);
  });
  if (rep.design && rep.design.registered) box.appendChild(el("p", `design: ${rep.design_text}`, "muted"));
  (rep.warnings || []).forEach((w) => box.appendChild(el("p", w, "muted")));
  if (!rep.decisions.length) box.appendChild(el("p", "Only one variant seen so far.", "muted"));

  // Satisfaction over time: per variant a band (lower, upper filled to lower) and the line.
  const datasets = [];
  d.variants.forEach((v, i) => {
    const pts = d.series[v] || [];
    const c = color(i);
    datasets.push({ label: `${v} lower`, data: pts.map((p) => ({ x: p.t_ms, y: p.lower })), borderWidth: 0, pointRadius: 0, fill: false, band: true });
    datasets.push({ label: `${v} 95% interval`, data: pts.map((p) => ({ x: p.t_ms, y: p.upper })), borderWidth: 0, pointRadius: 0, fill: "-1", backgroundColor: alpha(c, 0.18), band: true });
    datasets.push({ label: v, data: pts.map((p) => ({ x: p.t_ms, y: p.value })), borderColor: c, backgroundColor: c, borderWidth: 2, pointRadius: 2, fill: false });
  });
  draw("chart-satisfaction", {
    type: "line",
    data: { datasets },
    options: {
      scales: { x: timeAxis(d.last_seen_ms - d.first_seen_ms), y: { min: 0, max: 1, ticks: { callback: (v) => pct(v, 0) } } },
      plugins: {
        legend: { labels: { filter: (item, data) => !data.datasets[item.datasetIndex].band } },
        tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${pct(ctx.parsed.y)}` } },
      },
    },
  });

  table(
    document.getElementById("variants"),
    ["variant", "sessions", "interactions", "rated", "satisfaction (95% CI)"],
    rep.variants.map((s) => {
      const name = el("span");
      const sw = el("span", null, "swatch");
      sw.style.background = color(d.variants.indexOf(s.variant));
      name.append(sw, document.createTextNode(s.variant));
      name.dataset.variant = s.variant;
      return [name, num(s.sessions), num(s.interactions), num(s.rated), interval(s.satisfaction)];
    }),
  );

  const specs = rep.metrics || [];
  const labelOf = (name) => (specs.find((m) => m.name === name) || { label: name }).label;
  const names = (prefix) => specs.map((m) => m.name).filter((n) => n.startsWith(prefix));
  draw("chart-signals", barsByVariant(d, rep, names("implicit."), labelOf));
  draw("chart-outcomes", barsByVariant(d, rep, names("outcome."), labelOf));
}

function barsByVariant(d, rep, metricNames, labelOf) {
  return {
    type: "bar",
    data: {
      labels: metricNames.map(labelOf),
      datasets: rep.variants.map((s) => ({
        label: s.variant,
        data: metricNames.map((k) => (s.metrics[k] && s.metrics[k].value ? s.metrics[k].value.value : null)),
        backgroundColor: color(d.variants.indexOf(s.variant)),
      })),
    },
    options: {
      scales: { y: { beginAtZero: true, ticks: { callback: (v) => pct(v, 0) } } },
      plugins: { tooltip: { callbacks: { label: (ctx) => `${ctx.dataset.label}: ${pct(ctx.parsed.y)}` } } },
    },
  };
}

// --- failures, alerts, prompt versions -------------------------------------------------
function renderFailures(f) {
  document.getElementById("failures-overall").textContent =
    `(negative rate per slice; overall ${pct(f.overall_rate)} of ${num(f.total)} interactions; red: significant after BH)`;
  const top = f.findings.slice(0, 12);
  draw("chart-failures", {
    type: "bar",
    data: {
      labels: top.map((s) => s.slice),
      datasets: [{
        label: "negative rate",
        data: top.map((s) => s.negative_rate),
        backgroundColor: top.map((s) => (s.significant ? "#b91c1c" : "#94a3b8")),
      }],
    },
    options: {
      indexAxis: "y",
      scales: { x: { beginAtZero: true, ticks: { callback: (v) => pct(v, 0) } } },
      plugins: { legend: { display: false } },
    },
  });
  table(
    document.getElementById("failures"),
    ["slice", "interactions", "negative (95% CI)", "elsewhere", "share of failures", "q"],
    top.map((s) => [s.slice, num(s.support), `${pct(s.negative_rate)} [${pct(s.negative_rate_ci[0])}, ${pct(s.negative_rate_ci[1])}]`, pct(s.rest_rate), pct(s.share_of_failures, 0), pval(s.q_value)]),
  );
}

function renderAlerts(alerts) {
  // An empty timeline says nothing the "No alerts." line does not.
  document.getElementById("chart-alerts").parentElement.hidden = !alerts.length;
  const keys = [...new Set(alerts.map((a) => a.detector_key))];
  draw("chart-alerts", {
    type: "scatter",
    data: { datasets: [{ label: "alerts", data: alerts.map((a) => ({ x: a.detected_ms, y: keys.indexOf(a.detector_key) })), backgroundColor: "#b91c1c", pointRadius: 5 }] },
    options: {
      scales: {
        x: timeAxis(alerts.length ? alerts[0].detected_ms - alerts[alerts.length - 1].detected_ms : 0),
        y: { min: -1, max: Math.max(1, keys.length), ticks: { stepSize: 1, callback: (v) => keys[v] ?? "" } },
      },
      plugins: { legend: { display: false }, tooltip: { callbacks: { label: (ctx) => alerts[ctx.dataIndex].message } } },
    },
  });
  const list = document.getElementById("alerts");
  list.replaceChildren();
  if (!alerts.length) list.appendChild(el("li", "No alerts.", "muted"));
  alerts.slice(0, 100).forEach((a) => list.appendChild(el("li", `${when(a.detected_ms)} · ${a.detector_key} · ${a.message}`)));
}

function renderPrompts(rep) {
  table(
    document.getElementById("prompts"),
    ["prompt version", "interactions", "sessions", "satisfaction (95% CI)", "vs previous", "p", "first seen", "last seen"],
    rep.versions.map((r) => [
      r.prompt_version || "(none)", num(r.interactions), num(r.sessions), interval(r.satisfaction),
      r.previous === null ? "" : `${r.change ? interval(r.change).replace(/%/g, " pp") : "n/a"} vs ${r.previous}`,
      r.change_test ? pval(r.change_test.p_value) : "", r.first_seen, r.last_seen,
    ]),
  );
}

// --- live experiments (the control plane) ---------------------------------------------
// Every button asks for confirmation and a reason; the change is a new version, recorded
// with who (the dashboard and the key used) and why, exactly like one from the CLI.
async function post(path, body, headers = {}) {
  const res = await fetch(path, {
    method: "POST",
    headers: { ...authHeaders(), "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  let out = null;
  try { out = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new ApiFailure(res.status, out);
  return out;
}

function serving(cfg) {
  const names = Object.keys(cfg.variants);
  if (cfg.status !== "running") return names.map((n, i) => `${n} ${i === 0 ? "100" : "0"}%`).join(", ");
  if (cfg.canary) {
    const w = cfg.canary.steps[cfg.canary.step];
    return `${names[0]} ${+(100 * (1 - w)).toFixed(2)}%, ${cfg.canary.treatment} ${+(100 * w).toFixed(2)}%`;
  }
  return names.map((n) => `${n} ${+(100 * cfg.variants[n]).toFixed(2)}%`).join(", ");
}

function liveActions(cfg) {
  if (cfg.status === "running") {
    const acts = [["pause", "Pause"], ["rollback", "Roll back"], ["stop", "Stop"]];
    if (cfg.canary && cfg.canary.step < cfg.canary.steps.length - 1) acts.unshift(["ramp", "Next step"]);
    return acts;
  }
  if (cfg.status === "paused") return [["resume", "Resume"], ["rollback", "Roll back"], ["stop", "Stop"]];
  return [];
}

async function change(cfg, action) {
  if (!window.confirm(`${action} ${cfg.name} (${cfg.app_id}) now? Every SDK follows within seconds.`)) return;
  const reason = window.prompt("Why? (recorded in the audit trail)");
  if (!reason) return;
  const body = { app_id: cfg.app_id, reason, by: "dashboard" };
  if (action === "ramp") body.to = cfg.canary.steps[cfg.canary.step + 1];
  const status = document.getElementById("status");
  try {
    // Compare-and-set on the version shown: if someone (or the canary guard) changed it
    // since, nothing happens and the 412 says so.
    const v = await post(`/v1/experiments/${encodeURIComponent(cfg.name)}/${action}`, body,
      { "If-Match": `"v${cfg.version}"` });
    status.textContent = `${cfg.name}: v${v.version} ${v.status}`;
  } catch (e) {
    status.textContent = `${cfg.name}: ${action} refused: ${e.message}`;
  }
  refreshLive();
}

function renderLive(cfgs) {
  const list = document.getElementById("live-list");
  list.replaceChildren();
  document.getElementById("live-empty").hidden = cfgs.length > 0;
  cfgs.forEach((cfg) => {
    const li = el("li");
    li.dataset.experiment = cfg.name;
    li.appendChild(el("div", cfg.name, "name"));
    const step = cfg.canary ? ` · canary step ${cfg.canary.step + 1}/${cfg.canary.steps.length}` : "";
    li.appendChild(el("div", `${cfg.app_id} · v${cfg.version} ${cfg.status}${step}`, "muted live-state"));
    li.appendChild(el("div", serving(cfg), "muted"));
    li.appendChild(el("div", `${cfg.action} by ${cfg.changed_by}${cfg.reason ? ": " + cfg.reason : ""}`, "muted"));
    liveActions(cfg).forEach(([action, label]) => {
      const b = el("button", label);
      b.type = "button";
      b.dataset.action = action;
      b.addEventListener("click", () => change(cfg, action));
      li.appendChild(b);
    });
    list.appendChild(li);
  });
}

async function refreshLive() {
  try {
    const body = await api("/v1/experiments");
    renderLive(body.experiments);
  } catch (e) {
    const empty = document.getElementById("live-empty");
    empty.hidden = false;
    empty.textContent = "live experiments unavailable: " + e.message;
  }
  document.body.dataset.liveReady = "1";
}

// --- shadow candidates ------------------------------------------------------------------
const SHADOW_SHOWN = 3;
const signedPp = (e) => (!e || e.value === null ? "n/a" : `${(100 * e.value).toFixed(1)} pp [${(100 * e.lower).toFixed(1)}, ${(100 * e.upper).toFixed(1)}]`);

async function loadShadow(appQuery) {
  const candidates = await api("/api/shadow" + appQuery);
  const shown = candidates.slice(0, SHADOW_SHOWN);
  const sep = appQuery ? "&" : "?";
  const reports = await Promise.all(shown.map((c) =>
    api(`/api/shadow/report${appQuery}${sep}candidate=${encodeURIComponent(c.candidate)}`).catch((e) => ({ error: e.message }))));
  return shown.map((c, i) => ({ candidate: c, report: reports[i] }));
}

function renderShadow(rows) {
  document.getElementById("shadow-empty").hidden = rows.length > 0;
  table(
    document.getElementById("shadow"),
    ["candidate", "pairs", "corrected: net win (95% CI)", "accepted: departs", "latency Δ ms", "recommendation"],
    rows.map(({ candidate, report }) => {
      if (report.error) return [candidate.candidate, num(candidate.shadows), "n/a", "n/a", "n/a", "could not load: " + report.error];
      const lat = report.deltas.find((d) => d.metric === "latency_ms");
      const latText = lat && lat.difference.value !== null ? lat.difference.value.toFixed(1) : "n/a";
      return [
        candidate.candidate, num(report.pairs),
        report.corrected.n ? `${signedPp(report.corrected.result.net)} over ${num(report.corrected.n)}` : "no corrections",
        report.accepted.n ? interval(report.accepted.departs) : "n/a",
        latText, `${report.recommendation}: ${report.reason}`,
      ];
    }),
  );
}

// --- main loop --------------------------------------------------------------------------
function selectionFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const exp = params.get("exp");
  if (!exp || !exp.includes("/")) return null;
  const i = exp.indexOf("/");
  return { app_id: exp.slice(0, i), experiment: exp.slice(i + 1) };
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const exps = await api("/api/experiments");
    if (!selected) selected = selectionFromHash();
    if (!selected && exps.length) selected = { app_id: exps[0].app_id, experiment: exps[0].experiment };
    renderExperimentList(exps);
    const q = selected ? `?app_id=${encodeURIComponent(selected.app_id)}&experiment=${encodeURIComponent(selected.experiment)}` : "";
    const appQuery = selected ? `?app_id=${encodeURIComponent(selected.app_id)}` : "";
    const [detail, failures, alerts, prompts, shadow] = await Promise.all([
      selected ? api(`/api/experiments/${encodeURIComponent(selected.app_id)}/${encodeURIComponent(selected.experiment)}`) : null,
      api("/api/failures" + q),
      api("/api/alerts" + appQuery),
      api("/api/prompt-versions" + appQuery),
      loadShadow(appQuery),
    ]);
    if (detail) renderExperiment(detail);
    renderFailures(failures);
    renderAlerts(alerts);
    renderPrompts(prompts);
    renderShadow(shadow);
    status.textContent = "updated " + new Date().toLocaleTimeString();
    document.getElementById("keyform").hidden = true;
    document.body.dataset.ready = "1";
  } catch (e) {
    if (e instanceof ApiFailure && (e.status === 401 || e.status === 403)) {
      document.getElementById("keyform").hidden = false;
      status.textContent = "a secret key is needed to read";
    } else {
      status.textContent = "could not load: " + e.message;
    }
  }
}

document.addEventListener("DOMContentLoaded", () => {
  takeKeyFromHash();
  document.getElementById("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("feedbackloop.key", document.getElementById("key").value.trim());
    refresh();
    refreshLive();
  });
  refresh();
  refreshLive();
  setInterval(refresh, REFRESH_MS);
  setInterval(refreshLive, 5000);
});
