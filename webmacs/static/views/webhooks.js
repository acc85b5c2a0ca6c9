/* Webhooks (admins): list, create, edit, delete, and each webhook's delivery log. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, Dialog, ErrorText, useAction, useLoad, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime } from "../core/format.js";

const EVENT_TYPES = ["sensor.threshold_exceeded", "sensor.reading", "experiment.started", "experiment.stopped",
  "system.health_changed"];

function WebhookDialog({ session, hook, onClose, onSaved }) {
  const [url, setUrl] = useState(hook ? hook.url : "");
  const [secret, setSecret] = useState("");
  const [types, setTypes] = useState(hook ? hook.events : ["sensor.threshold_exceeded"]);
  const [enabled, setEnabled] = useState(hook ? hook.enabled : true);
  const toggle = (t) => (on) => setTypes(on ? types.concat([t]) : types.filter((x) => x !== t));
  const submit = async () => {
    const body = { url: url, events: types, enabled: enabled };
    if (secret || !hook) body.secret = secret || null;
    if (hook) await session.api.put("/webhooks/" + encodeURIComponent(hook.public_id), body);
    else await session.api.post("/webhooks", body);
    onSaved();
  };
  return html`<${FormDialog} title=${hook ? "Edit webhook" : "New webhook"} id="webhook-dialog"
      submitLabel=${hook ? "Save" : "Create webhook"} onSubmit=${submit} onClose=${onClose}>
    <${Field} label="URL" id="webhook-url" type="url" value=${url} onInput=${setUrl} />
    <${Field} label=${hook && hook.has_secret ? "New signing secret (leave empty to keep)" : "Signing secret (optional)"}
      id="webhook-secret" type="password" autocomplete="new-password" value=${secret} onInput=${setSecret} />
    <fieldset class="field"><legend>Events</legend>
      ${EVENT_TYPES.map((t) => html`<${Field} label=${t} type="checkbox" value=${types.indexOf(t) >= 0} onInput=${toggle(t)} />`)}
    </fieldset>
    <${Field} label="Enabled" id="webhook-enabled" type="checkbox" value=${enabled} onInput=${setEnabled} />
  <//>`;
}

function Deliveries({ session, hook, onClose }) {
  const [resp, reload, error] = useLoad(() => session.api.get("/webhooks/" + encodeURIComponent(hook.public_id) +
    "/deliveries?page=1&page_size=50"), [hook.public_id]);
  return html`<${Dialog} title=${"Deliveries to " + hook.url} onClose=${onClose} id="deliveries-dialog">
    <${ErrorText} error=${error} />
    <${Table} id="deliveries-table" label="Deliveries" rows=${resp ? resp.data : null} empty="Nothing delivered yet." columns=${[
      { title: "Created", render: (d) => formatTime(d.created_on) },
      { title: "Event", render: (d) => d.event_type },
      { title: "Status", render: (d) => html`<span class="pill">${d.status}</span>` },
      { title: "HTTP", className: "num", render: (d) => d.response_code || "—" },
      { title: "Attempts", className: "num", render: (d) => d.attempts },
      { title: "Error", render: (d) => d.last_error || "" },
    ]} />
    <div class="actions"><button type="button" onClick=${reload}>Refresh</button></div>
  <//>`;
}

export default function WebhooksView({ session }) {
  const [rows, reload, error] = useList(session, "/webhooks");
  const [dialog, setDialog] = useState(null);
  const action = useAction();
  const remove = (h) => action.run(async () => { await session.api.del("/webhooks/" + encodeURIComponent(h.public_id)); reload(); });
  const columns = [
    { title: "URL", className: "name-cell", render: (h) => h.url },
    { title: "Events", render: (h) => h.events.join(", ") },
    { title: "State", render: (h) => html`<span class=${"pill " + (h.enabled ? "ok" : "off")}>${h.enabled ? "enabled" : "disabled"}</span>` },
    { title: html`<span class="sr-only">Actions</span>`, render: (h) => html`<div class="row-actions">
      <button type="button" aria-label=${"Deliveries of " + h.url} onClick=${() => setDialog({ deliveries: h })}>Deliveries</button>
      <button type="button" aria-label=${"Edit " + h.url} onClick=${() => setDialog({ edit: h })}>Edit</button>
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + h.url} onConfirm=${() => remove(h)} /></div>` },
  ];
  return html`<section>
    <${ViewHead} title="Webhooks">
      <button type="button" class="primary" id="webhook-new" onClick=${() => setDialog({ edit: null })}>New webhook</button>
    <//>
    <${ErrorText} error=${action.error || error} />
    <${Table} id="webhooks-table" label="Webhooks" columns=${columns} rows=${rows} empty="No webhooks yet." />
    ${dialog && "edit" in dialog ? html`<${WebhookDialog} session=${session} hook=${dialog.edit}
      onClose=${() => setDialog(null)} onSaved=${reload} />` : null}
    ${dialog && dialog.deliveries ? html`<${Deliveries} session=${session} hook=${dialog.deliveries}
      onClose=${() => setDialog(null)} />` : null}
  </section>`;
}
