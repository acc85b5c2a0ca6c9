/* Experiments: list with status and duration, start, stop, delete, and CSV download.
 * The download asks the server for a short-lived single-use URL
 * (POST /experiments/{id}/export/ticket) and navigates to it: the browser streams the
 * file to disk, the page never holds it, and no bearer token goes into a URL. */
import { html, useState } from "../core/html.js";
import { Field, ErrorText, useAction, useNow, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime, formatDuration } from "../core/format.js";

export async function downloadCsv(session, experiment) {
  const resp = await session.api.post("/experiments/" + encodeURIComponent(experiment.public_id) + "/export/ticket?bom=true");
  const a = document.createElement("a");
  a.href = resp.url;
  a.download = "";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

export default function ExperimentsView({ session }) {
  const [rows, reload, error] = useList(session, "/experiments");
  const [name, setName] = useState("");
  const action = useAction();
  const now = useNow(1000);
  const canWrite = session.can("operator");
  const running = (rows || []).find((x) => x.status === "running");
  const path = (x) => "/experiments/" + encodeURIComponent(x.public_id);
  const act = (fn) => action.run(async () => { try { await fn(); } finally { reload(); } });
  const start = (e) => {
    e.preventDefault();
    act(async () => { await session.api.post("/experiments", { name: name.trim() }); setName(""); });
  };
  const duration = (x) => {
    const a = Date.parse(x.started_on), b = x.stopped_on ? Date.parse(x.stopped_on) : now;
    return Number.isFinite(a) ? formatDuration(b - a) : "—";
  };
  const columns = [
    { title: "Name", className: "name-cell", render: (x) => html`<span title=${x.name}>${x.name}</span>` },
    { title: "Status", render: (x) => html`<span class=${"pill " + (x.status === "running" ? "ok" : "off")}>${x.status}</span>` },
    { title: "Started", render: (x) => formatTime(x.started_on) },
    { title: "Duration", className: "num", render: duration },
    { title: html`<span class="sr-only">Actions</span>`, render: (x) => html`<div class="row-actions">
      <button type="button" class="csv-download" aria-label=${"Download CSV of " + x.name}
        onClick=${() => action.run(() => downloadCsv(session, x))}>CSV</button>
      ${canWrite && x.status === "running" ? html`<${ConfirmButton} label="Stop" ariaLabel=${"Stop " + x.name}
        onConfirm=${() => act(() => session.api.put(path(x) + "/stop"))} />` : null}
      ${canWrite ? html`<${ConfirmButton} label="Delete" ariaLabel=${"Delete " + x.name}
        onConfirm=${() => act(() => session.api.del(path(x)))} />` : null}
    </div>` },
  ];
  return html`<section>
    <${ViewHead} title="Experiments" />
    ${canWrite && !running ? html`<form class="toolbar" onSubmit=${start}>
      <${Field} label="New experiment name" id="new-experiment-name" value=${name} onInput=${setName} />
      <button type="submit" class="primary" id="new-experiment-start">Start</button>
    </form>` : null}
    <${ErrorText} error=${action.error || error} id="experiments-error" />
    <${Table} id="experiments-table" label="Experiments" columns=${columns} rows=${rows} empty="No experiments yet." />
  </section>`;
}
