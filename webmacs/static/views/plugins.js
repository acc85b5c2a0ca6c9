/* Plugins: the available plugins, their instances (create in demo mode, enable/disable,
 * delete), each instance's channels with their linked events (link to an existing or a
 * new event, unlink), and for admins the uploaded plugin packages. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, useLoad, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { EventDialog } from "./events.js";
import { Packages } from "./packages.js";

function CreateInstance({ session, plugin, onClose, onCreated }) {
  const [form, setForm] = useState({ instance_name: plugin.name, demo_mode: true, enabled: true, auto_create_events: true });
  const set = (k) => (v) => setForm(Object.assign({}, form, { [k]: v }));
  const submit = async () => {
    const resp = await session.api.post("/plugins", Object.assign({ plugin_id: plugin.id }, form));
    onCreated(resp.data);
  };
  return html`<${FormDialog} title=${"New " + plugin.name + " instance"} id="instance-dialog"
      submitLabel="Create instance" onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Instance name" id="instance-name" value=${form.instance_name} onInput=${set("instance_name")} />
    <${Field} label="Demo mode (simulated values, no hardware)" id="instance-demo" type="checkbox" value=${form.demo_mode} onInput=${set("demo_mode")} />
    <${Field} label="Enabled" id="instance-enabled" type="checkbox" value=${form.enabled} onInput=${set("enabled")} />
    <${Field} label="Create an event for every channel" id="instance-auto-events" type="checkbox"
      value=${form.auto_create_events} onInput=${set("auto_create_events")} />
  <//>`;
}

function LinkChannel({ session, instance, channel, events, onClose, onLinked }) {
  const [choice, setChoice] = useState(channel.event_public_id || (events[0] ? events[0].public_id : "__new"));
  const [creating, setCreating] = useState(false);
  const link = async (eventId) => {
    await session.api.put("/plugins/" + encodeURIComponent(instance.public_id) + "/channels/" +
      encodeURIComponent(channel.public_id), { event_public_id: eventId });
    onLinked();
  };
  if (creating) {
    return html`<${EventDialog} session=${session} event=${null} onClose=${onClose}
      defaults=${{ name: instance.instance_name + " " + channel.channel_name, unit: channel.unit,
                   type: channel.direction === "output" ? "actuator" : "sensor" }}
      onSaved=${(ev) => link(ev.public_id)} />`;
  }
  const options = events.map((e) => [e.public_id, e.name + (e.unit ? " (" + e.unit + ")" : "")]).concat([["__new", "A new event…"]]);
  const submit = async () => {
    if (choice === "__new") { setCreating(true); return false; }
    await link(choice);
    return true;
  };
  return html`<${FormDialog} title=${"Link " + channel.channel_name} id="link-dialog" submitLabel="Link"
      onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Event" id="link-event" type="select" options=${options} value=${choice} onInput=${setChoice} />
  <//>`;
}

function Instance({ session, instance, events, onChanged }) {
  const action = useAction();
  const [linking, setLinking] = useState(null);
  const canWrite = session.can("operator");
  const base = "/plugins/" + encodeURIComponent(instance.public_id);
  const eventName = (id) => { const e = events.find((x) => x.public_id === id); return e ? e.name : id; };
  const toggle = () => action.run(async () => { await session.api.put(base, { enabled: !instance.enabled }); onChanged(); });
  const remove = () => action.run(async () => { await session.api.del(base); onChanged(); });
  const unlink = (ch) => action.run(async () => {
    await session.api.put(base + "/channels/" + encodeURIComponent(ch.public_id), { event_public_id: null });
    onChanged();
  });
  const columns = [
    { title: "Channel", render: (c) => html`${c.channel_name} <span class="muted mono">${c.channel_id}</span>` },
    { title: "Direction", render: (c) => c.direction },
    { title: "Unit", render: (c) => c.unit },
    { title: "Event", className: "name-cell", render: (c) => (c.event_public_id
      ? html`<span class="linked-event">${eventName(c.event_public_id)}</span>` : html`<span class="muted">not linked</span>`) },
  ];
  if (canWrite) {
    columns.push({ title: html`<span class="sr-only">Actions</span>`, render: (c) => html`<div class="row-actions">
      <button type="button" aria-label=${"Link " + c.channel_name} onClick=${() => setLinking(c)}>${c.event_public_id ? "Change" : "Link"}</button>
      ${c.event_public_id ? html`<button type="button" aria-label=${"Unlink " + c.channel_name} onClick=${() => unlink(c)}>Unlink</button>` : null}
    </div>` });
  }
  const status = instance.enabled ? (instance.demo_mode ? "warn" : "ok") : "off";
  return html`<article class="card instance" data-id=${instance.public_id}>
    <div class="view-head">
      <h2>${instance.instance_name} <span class="muted">· ${instance.plugin_id}</span></h2>
      <span class=${"pill " + status} data-status=${instance.status}>${instance.status}</span>
      ${canWrite ? html`<button type="button" class="instance-toggle" onClick=${toggle} disabled=${action.busy}
          aria-label=${(instance.enabled ? "Disable " : "Enable ") + instance.instance_name}>${instance.enabled ? "Disable" : "Enable"}</button>
        <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + instance.instance_name} onConfirm=${remove} />` : null}
    </div>
    <${ErrorText} error=${action.error} />
    <${Table} label=${"Channels of " + instance.instance_name} columns=${columns} rows=${instance.channel_mappings}
      empty="No channels." />
    ${linking ? html`<${LinkChannel} session=${session} instance=${instance} channel=${linking} events=${events}
      onClose=${() => setLinking(null)} onLinked=${onChanged} />` : null}
  </article>`;
}

export default function PluginsView({ session }) {
  const [available, , availableError] = useLoad(() => session.api.get("/plugins/available"), []);
  const [instances, reload, error] = useList(session, "/plugins");
  const [events, reloadEvents] = useList(session, "/events");
  const [creating, setCreating] = useState(null);
  const canWrite = session.can("operator");
  const changed = () => { reload(); reloadEvents(); };
  return html`<section>
    <${ViewHead} title="Plugins" />
    <h2 class="section-title">Available plugins</h2>
    <${ErrorText} error=${availableError} />
    <div class="cards" id="available-plugins">
      ${(available || []).map((p) => html`<article class="card" data-plugin=${p.id}>
        <h2>${p.name} <span class="muted mono">${p.id}</span></h2>
        <p class="muted">${p.description}</p>
        <p class="muted">${(p.channels || []).length} channel(s)${p.version ? " · v" + p.version : ""}</p>
        ${canWrite ? html`<button type="button" class="primary" id=${"create-" + p.id}
          onClick=${() => setCreating(p)}>Create instance</button>` : null}
      </article>`)}
    </div>
    <h2 class="section-title">Instances</h2>
    <${ErrorText} error=${error} />
    ${instances && !instances.length ? html`<p class="empty">No plugin instances yet.</p>` : null}
    <div id="instances">${(instances || []).map((inst) => html`<${Instance} key=${inst.public_id} session=${session}
      instance=${inst} events=${events || []} onChanged=${changed} />`)}</div>
    ${session.can("admin") ? html`<${Packages} session=${session} />` : null}
    ${creating ? html`<${CreateInstance} session=${session} plugin=${creating} onClose=${() => setCreating(null)}
      onCreated=${changed} />` : null}
  </section>`;
}
