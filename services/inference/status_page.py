"""The status page: one self-contained HTML document (no external assets) that polls `/v1/status`."""

STATUS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>unirec inference</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1b1f24; background: #fafafa; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  h2 { font-size: 1rem; margin: 1.5rem 0 .5rem; }
  .cards { display: flex; flex-wrap: wrap; gap: .75rem; }
  .card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .6rem .9rem; min-width: 10rem; }
  .card .k { color: #57606a; font-size: .8rem; }
  .card .v { font-size: 1.2rem; font-variant-numeric: tabular-nums; word-break: break-all; }
  table { border-collapse: collapse; background: #fff; }
  td, th { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; vertical-align: top; }
  td.n { font-variant-numeric: tabular-nums; }
  .bad { color: #cf222e; } .ok { color: #1a7f37; } .muted { color: #57606a; }
  pre { margin: 0; font-size: .8rem; }
</style>
</head>
<body>
<h1>unirec inference <span id="state" class="muted">connecting...</span></h1>
<div class="cards">
  <div class="card"><div class="k">model version</div><div class="v" id="version">-</div></div>
  <div class="card"><div class="k">freshness</div><div class="v" id="freshness">-</div></div>
  <div class="card"><div class="k">reached by</div><div class="v" id="kind">-</div></div>
  <div class="card"><div class="k">requests / s</div><div class="v" id="rps">-</div></div>
  <div class="card"><div class="k">predictions / s</div><div class="v" id="pps">-</div></div>
  <div class="card"><div class="k">5xx (this worker)</div><div class="v" id="errors">-</div></div>
  <div class="card"><div class="k">registry</div><div class="v" id="follower">-</div></div>
</div>
<h2>Training figures (from the served model's manifest)</h2>
<div id="training" class="muted">none</div>
<h2>Vocabulary churn (Redis <code>unirec:churn:*</code>)</h2>
<div id="churn" class="muted">none</div>
<h2>Refused versions</h2>
<div id="refused" class="muted">none</div>
<script>
"use strict";
let last = null;
function el(id) { return document.getElementById(id); }
function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  if (s < 172800) return (s / 3600).toFixed(1) + " h";
  return (s / 86400).toFixed(1) + " d";
}
function fmt(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (v === null || v === undefined) return "-";
  if (typeof v === "object") return null;
  return String(v);
}
function table(obj) {
  const keys = Object.keys(obj || {});
  if (!keys.length) {
    const d = document.createElement("div");
    d.className = "muted";
    d.textContent = "none";
    return d;
  }
  const t = document.createElement("table");
  for (const k of keys) {
    const tr = t.insertRow();
    const th = document.createElement("th"); th.textContent = k; tr.appendChild(th);
    const td = tr.insertCell(); td.className = "n";
    const v = obj[k];
    const text = fmt(v);
    if (text !== null) { td.textContent = text; }
    else if (Array.isArray(v)) {
      const pre = document.createElement("pre");
      pre.textContent = JSON.stringify(v);
      td.appendChild(pre);
    }
    else { td.appendChild(table(v)); }
  }
  return t;
}
function put(id, node) { const c = el(id); c.className = ""; c.replaceChildren(node); }
async function tick() {
  try {
    const r = await fetch("v1/status", { headers: { "Accept": "application/json" } });
    const s = await r.json();
    const now = performance.now() / 1000;
    el("state").textContent = s.ready ? "ready" : "not ready (no model loaded)";
    el("state").className = s.ready ? "ok" : "bad";
    el("version").textContent = s.model ? s.model.version + (s.model.pinned ? " (pinned)" : "") : "-";
    el("freshness").textContent = s.model ? fmtAge(s.model.freshness_s) : "-";
    el("kind").textContent = s.model ? s.model.kind : "-";
    el("errors").textContent = String(s.requests.errors);
    el("follower").textContent = s.follower.mode;
    if (last) {
      const dt = Math.max(now - last.t, 1e-3);
      el("rps").textContent = ((s.requests.predict_requests - last.req) / dt).toFixed(1);
      el("pps").textContent = ((s.requests.predictions - last.pred) / dt).toFixed(1);
    }
    last = { t: now, req: s.requests.predict_requests, pred: s.requests.predictions };
    put("training", table(s.training));
    put("churn", table(s.churn));
    put("refused", table(s.refused));
  } catch (e) {
    el("state").textContent = "unreachable: " + e;
    el("state").className = "bad";
  }
}
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
"""
