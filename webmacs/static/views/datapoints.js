/* Datapoints: pick events and a time range, see the range as a chart (server-side
 * downsampled series) and the stored readings page by page. */
import { html, useState } from "../core/html.js";
import { Field, ErrorText, useLoad, Chart } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime, formatValue } from "../core/format.js";

const RANGES = [["5", "last 5 minutes"], ["15", "last 15 minutes"], ["60", "last hour"], ["360", "last 6 hours"],
  ["1440", "last 24 hours"], ["10080", "last 7 days"]];

export default function DatapointsView({ session }) {
  const [events, , eventsError] = useList(session, "/events");
  const [eventId, setEventId] = useState("");
  const [minutes, setMinutes] = useState("60");
  const [page, setPage] = useState(1);
  const chosen = eventId || (events && events[0] ? events[0].public_id : "");
  const event = (events || []).find((e) => e.public_id === chosen);
  const [series, reloadSeries, seriesError] = useLoad(() => (chosen
    ? session.api.post("/datapoints/series", { event_public_ids: [chosen], minutes: Number(minutes), max_points: 1000 })
    : null), [chosen, minutes]);
  const [list, reloadList, listError] = useLoad(() => (chosen
    ? session.api.get("/datapoints?event_public_id=" + encodeURIComponent(chosen) + "&page=" + page + "&page_size=25")
    : null), [chosen, page]);
  const points = (series && series[chosen]) || [];
  const nowS = Date.now() / 1000;
  const data = [points.map((p) => Date.parse(p.timestamp) / 1000), points.map((p) => p.value)];
  const pages = list ? Math.max(1, Math.ceil(list.total / 25)) : 1;
  const options = (events || []).map((e) => [e.public_id, e.name]);
  return html`<section>
    <${ViewHead} title="Datapoints">
      <button type="button" onClick=${() => { reloadSeries(); reloadList(); }}>Refresh</button>
    <//>
    <div class="toolbar">
      <${Field} label="Event" id="dp-event" type="select" options=${options} value=${chosen}
        onInput=${(v) => { setEventId(v); setPage(1); }} />
      <${Field} label="Time range" id="dp-range" type="select" options=${RANGES} value=${minutes} onInput=${setMinutes} />
    </div>
    <${ErrorText} error=${eventsError || seriesError || listError} />
    ${chosen ? html`<div class="card">
      <h2>${event ? event.name : ""} ${event && event.unit ? html`<span class="muted">(${event.unit})</span>` : null}
        <span class="muted" id="dp-count"> · ${points.length} point(s) in range</span></h2>
      <${Chart} data=${data} height=${260} xRange=${[nowS - Number(minutes) * 60, nowS]} className="dp-chart" />
    </div>
    <${Table} id="datapoints-table" label="Datapoints" rows=${list ? list.data : null} rowKey=${(p) => p.public_id}
      empty="No datapoints stored for this event." columns=${[
        { title: "Time", render: (p) => formatTime(p.timestamp) },
        { title: "Value", className: "num", render: (p) => formatValue(p.value) },
        { title: "Experiment", render: (p) => html`<span class="mono">${p.experiment_public_id || "—"}</span>` },
      ]} />
    <div class="toolbar">
      <button type="button" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Newer</button>
      <span class="muted">page ${page} of ${pages}</span>
      <button type="button" disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Older</button>
    </div>` : html`<p class="empty">No events yet.</p>`}
  </section>`;
}
