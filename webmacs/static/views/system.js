/* System (admins): the server's /health, refreshed every 5 s, and key counters from the
 * Prometheus exposition at /metrics when it is on. /metrics is not a user endpoint: it is
 * open (WEBMACS_METRICS_PUBLIC) or needs its own token (WEBMACS_METRICS_TOKEN), which the
 * admin may paste here; it is kept in this page's memory only. */
import { html, useEffect, useState } from "../core/html.js";
import { Field, ErrorText, useLoad } from "../core/ui.js";
import { ViewHead } from "../core/crud.js";
import { formatTime, formatDuration, formatValue } from "../core/format.js";

const KEY_METRICS = [
  ["webmacs_datapoints_accepted_total", "Datapoints accepted"],
  ["webmacs_datapoints_persisted_total", "Datapoints stored"],
  ["webmacs_datapoints_rejected_total", "Datapoints rejected"],
  ["webmacs_controllers_connected", "Controllers connected"],
  ["webmacs_subscribers_connected", "Live pages connected"],
  ["webmacs_ingest_queue_datapoints", "Ingest queue"],
  ["webmacs_rule_triggers_total", "Rule triggers"],
  ["webmacs_webhook_deliveries_total", "Webhook deliveries"],
  ["webmacs_login_failures_total", "Failed logins"],
];

/* Prometheus text format: the sum over labels of each metric. */
export function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) sums.set(m[1], (sums.get(m[1]) || 0) + v);
  }
  return sums;
}

async function loadMetrics(token) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const resp = await fetch("/metrics", { headers: headers, cache: "no-store" });
  if (resp.status === 404) return { off: true };
  if (resp.status === 401) return { locked: true };
  if (!resp.ok) throw new Error("/metrics answered HTTP " + resp.status);
  return { sums: parseMetrics(await resp.text()) };
}

function Metrics() {
  const [token, setToken] = useState("");
  const [used, setUsed] = useState("");
  const [metrics, reload, error] = useLoad(() => loadMetrics(used), [used]);
  useEffect(() => {
    const t = setInterval(reload, 5000);
    return () => clearInterval(t);
  }, [reload]);
  let body = html`<p class="muted">Loading…</p>`;
  if (metrics && metrics.off) {
    body = html`<p class="muted">Metrics are off: set WEBMACS_METRICS_TOKEN or WEBMACS_METRICS_PUBLIC (docs/metrics.md).</p>`;
  } else if (metrics && metrics.locked) {
    body = html`<form class="toolbar" onSubmit=${(e) => { e.preventDefault(); setUsed(token); }}>
      <${Field} label="Metrics token (WEBMACS_METRICS_TOKEN)" id="metrics-token" type="password" value=${token} onInput=${setToken} />
      <button type="submit" id="metrics-unlock">Show counters</button>
      ${used ? html`<p class="error" role="alert">The metrics token was refused.</p>` : null}
    </form>`;
  } else if (metrics && metrics.sums) {
    body = html`<table aria-label="Key counters" id="metrics-table" class="kv"><tbody>${KEY_METRICS.map(([name, label]) =>
      html`<tr data-metric=${name}><th scope="row">${label}</th>
        <td class="num">${metrics.sums.has(name) ? formatValue(metrics.sums.get(name)) : "—"}</td></tr>`)}</tbody></table>`;
  }
  return html`<div class="card" id="metrics"><h2>Counters</h2><${ErrorText} error=${error} />${body}</div>`;
}

export default function SystemView({ session }) {
  const [health, reload, error] = useLoad(() => session.api.get("/health"), []);
  useEffect(() => {
    const t = setInterval(reload, 5000);
    return () => clearInterval(t);
  }, [reload]);
  const rows = health ? [
    ["Status", health.status], ["Version", health.version], ["Database", health.database],
    ["Newest datapoint", formatTime(health.last_datapoint)],
    ["Uptime", formatDuration((health.uptime_seconds || 0) * 1000)],
    ["Live connection (this page)", session.live.mode],
  ] : [];
  return html`<section>
    <${ViewHead} title="System"><button type="button" onClick=${reload}>Refresh</button><//>
    <${ErrorText} error=${error} />
    <div class="cards">
      <div class="card" id="health">
        <h2>Health <span class=${"pill " + (health && health.status === "ok" ? "ok" : "warn")} id="health-status">${health ? health.status : "…"}</span></h2>
        <table aria-label="Health" class="kv"><tbody>${rows.map(([k, v]) => html`<tr><th scope="row">${k}</th><td class="num">${v}</td></tr>`)}</tbody></table>
      </div>
      <${Metrics} />
    </div>
  </section>`;
}
