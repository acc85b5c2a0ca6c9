/* System (admins): the server's /health, refreshed every 5 s. */
import { html, useEffect } from "../core/html.js";
import { ErrorText, useLoad } from "../core/ui.js";
import { ViewHead } from "../core/crud.js";
import { formatTime, formatDuration } from "../core/format.js";

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
    <div class="card" id="health">
      <h2>Health <span class=${"pill " + (health && health.status === "ok" ? "ok" : "warn")} id="health-status">${health ? health.status : "…"}</span></h2>
      <table aria-label="Health"><tbody>${rows.map(([k, v]) => html`<tr><th scope="row">${k}</th><td class="num">${v}</td></tr>`)}</tbody></table>
    </div>
    <p class="muted">Prometheus counters are at <span class="mono">/metrics</span>, read with
      <span class="mono">WEBMACS_METRICS_TOKEN</span> rather than a user session (docs/metrics.md).</p>
  </section>`;
}
