/* Logs: the log entries (rules write them too), filtered by type and read state;
 * operators mark them read or unread. */
import { html, useState } from "../core/html.js";
import { Field, ErrorText, useAction, useLoad } from "../core/ui.js";
import { ViewHead, Table } from "../core/crud.js";
import { formatTime } from "../core/format.js";

const TYPES = [["", "all types"], ["error", "error"], ["warning", "warning"], ["info", "info"]];
const STATES = [["", "read and unread"], ["unread", "unread"], ["read", "read"]];

export default function LogsView({ session }) {
  const [type, setType] = useState("");
  const [state, setState] = useState("");
  const [page, setPage] = useState(1);
  const query = "/logging?page=" + page + "&page_size=50" + (type ? "&logging_type=" + type : "") +
    (state ? "&status_type=" + state : "");
  const [resp, reload, error] = useLoad(() => session.api.get(query), [query]);
  const action = useAction();
  const canWrite = session.can("operator");
  const mark = (entry, status) => action.run(async () => {
    await session.api.put("/logging/" + encodeURIComponent(entry.public_id), { status_type: status });
    reload();
  });
  const columns = [
    { title: "Time", render: (e) => formatTime(e.created_on) },
    { title: "Type", render: (e) => html`<span class=${"pill " + (e.logging_type === "error" ? "warn" : e.logging_type === "warning" ? "warn" : "")}>${e.logging_type}</span>` },
    { title: "Message", className: "log-content", render: (e) => e.content },
    { title: "State", render: (e) => html`<span class="log-state">${e.status_type}</span>` },
  ];
  if (canWrite) {
    columns.push({ title: html`<span class="sr-only">Actions</span>`, render: (e) => html`<div class="row-actions">
      ${e.status_type === "unread"
        ? html`<button type="button" aria-label=${"Mark read: " + e.content} onClick=${() => mark(e, "read")}>Mark read</button>`
        : html`<button type="button" aria-label=${"Mark unread: " + e.content} onClick=${() => mark(e, "unread")}>Mark unread</button>`}
    </div>` });
  }
  const pages = resp ? Math.max(1, Math.ceil(resp.total / 50)) : 1;
  return html`<section>
    <${ViewHead} title="Logs"><button type="button" onClick=${reload}>Refresh</button><//>
    <div class="toolbar">
      <${Field} label="Type" id="log-type" type="select" options=${TYPES} value=${type} onInput=${(v) => { setType(v); setPage(1); }} />
      <${Field} label="State" id="log-state" type="select" options=${STATES} value=${state} onInput=${(v) => { setState(v); setPage(1); }} />
    </div>
    <${ErrorText} error=${action.error || error} />
    <${Table} id="logs-table" label="Log entries" columns=${columns} rows=${resp ? resp.data : null} empty="No log entries." />
    <div class="toolbar">
      <button type="button" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Newer</button>
      <span class="muted">page ${page} of ${pages}</span>
      <button type="button" disabled=${page >= pages} onClick=${() => setPage(page + 1)}>Older</button>
    </div>
  </section>`;
}
