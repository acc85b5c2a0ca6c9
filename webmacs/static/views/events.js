/* Events: list, create, edit, delete. Deleting warns with the number of datapoints the
 * event has: they stay stored, but without their event they are no longer shown or
 * exported (docs/webapp.md). */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, useLoad, Dialog } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatValue } from "../core/format.js";

const TYPES = [["sensor", "sensor"], ["actuator", "actuator"], ["range", "range"], ["cmd_button", "cmd_button"],
  ["cmd_opened", "cmd_opened"], ["cmd_closed", "cmd_closed"]];

/* The create/edit form; `event` null for a new one. Resolves with the saved event. */
export function EventDialog({ session, event, onClose, onSaved, defaults }) {
  const start = event || Object.assign({ name: "", type: "sensor", unit: "", min_value: 0, max_value: 100 }, defaults);
  const [form, setForm] = useState({ name: start.name, type: start.type, unit: start.unit,
    min_value: String(start.min_value), max_value: String(start.max_value) });
  const set = (k) => (v) => setForm(Object.assign({}, form, { [k]: v }));
  const submit = async () => {
    const body = { name: form.name, type: form.type, unit: form.unit,
      min_value: form.min_value === "" ? null : Number(form.min_value),
      max_value: form.max_value === "" ? null : Number(form.max_value) };
    const resp = event ? await session.api.put("/events/" + encodeURIComponent(event.public_id), body)
      : await session.api.post("/events", body);
    onSaved(resp.data);
  };
  return html`<${FormDialog} title=${event ? "Edit event" : "New event"} id="event-dialog"
      submitLabel=${event ? "Save" : "Create event"} onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Name" id="event-name" value=${form.name} onInput=${set("name")} required />
    <div class="form-row">
      <${Field} label="Type" id="event-type" type="select" options=${TYPES} value=${form.type} onInput=${set("type")} />
      <${Field} label="Unit" id="event-unit" value=${form.unit} onInput=${set("unit")} />
    </div>
    <div class="form-row">
      <${Field} label="Minimum" id="event-min" type="number" step="any" value=${form.min_value} onInput=${set("min_value")} />
      <${Field} label="Maximum" id="event-max" type="number" step="any" value=${form.max_value} onInput=${set("max_value")} />
    </div>
  <//>`;
}

function DeleteEvent({ session, event, onClose, onDeleted }) {
  const action = useAction();
  const [count, , countError] = useLoad(() => session.api.get("/datapoints?event_public_id=" +
    encodeURIComponent(event.public_id) + "&page=1&page_size=1").then((r) => r.total), [event.public_id]);
  const remove = () => action.run(async () => {
    await session.api.del("/events/" + encodeURIComponent(event.public_id));
    onDeleted();
    onClose();
  });
  return html`<${Dialog} title="Delete event" onClose=${onClose} id="event-delete-dialog">
    <p>Delete <strong>${event.name}</strong>?</p>
    <p class="warning" id="event-delete-warning">${countError ? "Its datapoints could not be counted."
      : count === null ? "Counting its datapoints…"
      : count === 0 ? "It has no datapoints."
      : "It has " + count.toLocaleString("en-US") + " datapoint" + (count === 1 ? "" : "s") +
        ". Rules on it are deleted with it, its channel mappings and dashboard widgets lose their event, and its datapoints stay stored but are no longer shown or exported."}</p>
    <${ErrorText} error=${action.error} />
    <div class="actions">
      <button type="button" class="danger armed" id="event-delete-confirm" onClick=${remove} disabled=${action.busy}>Delete event</button>
      <button type="button" class="quiet" autofocus onClick=${onClose}>Cancel</button>
    </div>
  <//>`;
}

export default function EventsView({ session }) {
  const [rows, reload, error] = useList(session, "/events");
  const [dialog, setDialog] = useState(null);
  const canWrite = session.can("operator");
  const columns = [
    { title: "Name", className: "name-cell", render: (e) => html`<span title=${e.name}>${e.name}</span>` },
    { title: "Type", render: (e) => e.type },
    { title: "Unit", render: (e) => e.unit },
    { title: "Range", className: "num", render: (e) => formatValue(e.min_value) + " – " + formatValue(e.max_value) },
    { title: "Public id", render: (e) => html`<span class="mono">${e.public_id}</span>` },
  ];
  if (canWrite) {
    columns.push({ title: html`<span class="sr-only">Actions</span>`, render: (e) => html`<div class="row-actions">
      <button type="button" aria-label=${"Edit " + e.name} onClick=${() => setDialog({ edit: e })}>Edit</button>
      <button type="button" class="danger" aria-label=${"Delete " + e.name} onClick=${() => setDialog({ remove: e })}>Delete</button>
    </div>` });
  }
  return html`<section>
    <${ViewHead} title="Events">
      ${canWrite ? html`<button type="button" class="primary" id="event-new" onClick=${() => setDialog({ edit: null })}>New event</button>` : null}
    <//>
    <${ErrorText} error=${error} />
    <${Table} id="events-table" label="Events" columns=${columns} rows=${rows}
      empty="No events yet: create one, or a plugin instance that makes them." />
    ${dialog && "edit" in dialog ? html`<${EventDialog} session=${session} event=${dialog.edit}
      onClose=${() => setDialog(null)} onSaved=${reload} />` : null}
    ${dialog && dialog.remove ? html`<${DeleteEvent} session=${session} event=${dialog.remove}
      onClose=${() => setDialog(null)} onDeleted=${reload} />` : null}
  </section>`;
}
