/* Custom dashboards: the user's own and the global ones (#/dashboards), and one
 * dashboard's widget grid (#/dashboards/<id>). Widgets: line_chart (history from
 * /datapoints/series, then live), gauge, stat_card, actuator_toggle (writes a datapoint to
 * its output event). The owner (an operator or admin) adds, moves, resizes and removes
 * widgets; the 12-column grid stores x, y, w, h on each widget. */
import { html, useState, useEffect, useRef } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, useLoad, ConfirmButton, Chart, useNow } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { href, navigate } from "../core/router.js";
import { formatValue, formatAge } from "../core/format.js";

const TYPES = [["line_chart", "Line chart"], ["gauge", "Gauge"], ["stat_card", "Stat card"], ["actuator_toggle", "Actuator toggle"]];
const MINUTES = 15;

function canEdit(session, dashboard) {
  if (!session.can("operator")) return false;
  if (dashboard.user_public_id === session.user.public_id) return true;
  return dashboard.user_public_id === null && session.can("admin");
}

function parseConfig(widget) {
  try { return widget.config_json ? JSON.parse(widget.config_json) || {} : {}; } catch (e) { return {}; }
}

/* Live readings and line-chart buffers for the events of one dashboard. */
function useDashboardData(session, widgets) {
  const store = useRef({ series: new Map() });
  const [version, setVersion] = useState(0);
  const ids = Array.from(new Set(widgets.map((w) => w.event_public_id).filter(Boolean)));
  const charted = Array.from(new Set(widgets.filter((w) => w.widget_type === "line_chart" && w.event_public_id)
    .map((w) => w.event_public_id)));
  const key = charted.slice().sort().join(",");
  useEffect(() => {
    let alive = true;
    let frame = null;
    const bump = () => { if (!frame) frame = requestAnimationFrame(() => { frame = null; setVersion((v) => v + 1); }); };
    const unsubscribe = session.live.subscribe((points) => {
      for (const p of points) {
        const buf = store.current.series.get(p.event_public_id);
        const t = Date.parse(p.timestamp) / 1000;
        if (buf && Number.isFinite(t) && (buf[0].length === 0 || t > buf[0][buf[0].length - 1])) {
          buf[0].push(t);
          buf[1].push(p.value);
        }
      }
      bump();
    });
    if (charted.length) {
      session.api.post("/datapoints/series", { event_public_ids: charted.slice(0, 20), minutes: MINUTES, max_points: 300 })
        .then((series) => {
          if (!alive) return;
          for (const id of charted) {
            const held = store.current.series.get(id) || [[], []];
            const xs = [], ys = [];
            for (const p of series[id] || []) {
              const t = Date.parse(p.timestamp) / 1000;
              if (Number.isFinite(t) && (held[0].length === 0 || t < held[0][0]) && (xs.length === 0 || t > xs[xs.length - 1])) {
                xs.push(t);
                ys.push(p.value);
              }
            }
            store.current.series.set(id, [xs.concat(held[0]), ys.concat(held[1])]);
          }
          bump();
        }, () => {});
    }
    for (const id of charted) if (!store.current.series.has(id)) store.current.series.set(id, [[], []]);
    return () => { alive = false; unsubscribe(); if (frame) cancelAnimationFrame(frame); };
  }, [key]);
  return { latest: session.live.latest, series: store.current.series, version: version, ids: ids };
}

function Gauge({ value, min, max, unit }) {
  const lo = Number.isFinite(min) ? min : 0, hi = Number.isFinite(max) && max > lo ? max : lo + 100;
  const f = value === null || value === undefined ? 0 : Math.max(0, Math.min(1, (value - lo) / (hi - lo)));
  const angle = Math.PI * (1 - f);
  const x = 60 + 48 * Math.cos(angle), y = 60 - 48 * Math.sin(angle);
  return html`<svg class="gauge" viewBox="0 0 120 72" role="img"
      aria-label=${"Gauge: " + (value === null || value === undefined ? "no data" : formatValue(value) + " " + (unit || ""))}>
    <path d="M12 60 A48 48 0 0 1 108 60" fill="none" stroke="#2a3340" stroke-width="10" stroke-linecap="round" />
    ${value === null || value === undefined ? null
      : html`<path d=${"M12 60 A48 48 0 0 1 " + x.toFixed(2) + " " + y.toFixed(2)} fill="none" stroke="#4fc3f7"
          stroke-width="10" stroke-linecap="round" />`}
    <text x="60" y="56" text-anchor="middle" class="gauge-value" fill="#e6edf3" font-size="17" font-weight="700">${formatValue(value)}</text>
    <text x="60" y="70" text-anchor="middle" fill="#8b96a8" font-size="8">${formatValue(lo)} – ${formatValue(hi)} ${unit || ""}</text>
  </svg>`;
}

function Toggle({ session, widget, event, reading, canWrite }) {
  const action = useAction();
  const cfg = parseConfig(widget);
  const off = Number.isFinite(cfg.off_value) ? cfg.off_value : (event && Number.isFinite(event.min_value) ? event.min_value : 0);
  const on = Number.isFinite(cfg.on_value) ? cfg.on_value : (event && Number.isFinite(event.max_value) ? event.max_value : 1);
  const isOn = reading ? reading.value !== off : false;
  const flip = () => action.run(() => session.api.post("/datapoints",
    { event_public_id: widget.event_public_id, value: isOn ? off : on }));
  return html`<div class="toggle">
    <button type="button" role="switch" aria-checked=${isOn ? "true" : "false"} class=${"switch" + (isOn ? " on" : "")}
      aria-label=${widget.title} disabled=${!canWrite || !widget.event_public_id || action.busy} onClick=${flip}>
      ${isOn ? "On" : "Off"}</button>
    <span class="muted">${reading ? formatValue(reading.value) + (event && event.unit ? " " + event.unit : "") : "no data"}</span>
    <${ErrorText} error=${action.error} />
  </div>`;
}

function WidgetBody({ session, widget, event, data, now, canWrite }) {
  const reading = widget.event_public_id ? data.latest.get(widget.event_public_id) : null;
  if (!widget.event_public_id) return html`<p class="muted">No event: edit the widget to pick one.</p>`;
  if (widget.widget_type === "line_chart") {
    const buf = data.series.get(widget.event_public_id) || [[], []];
    const nowS = now / 1000;
    return html`<${Chart} data=${[buf[0], buf[1]]} xRange=${[nowS - MINUTES * 60, nowS]} />`;
  }
  if (widget.widget_type === "gauge") {
    return html`<${Gauge} value=${reading ? reading.value : null} min=${event ? event.min_value : 0}
      max=${event ? event.max_value : 100} unit=${event ? event.unit : ""} />`;
  }
  if (widget.widget_type === "actuator_toggle") {
    return html`<${Toggle} session=${session} widget=${widget} event=${event} reading=${reading} canWrite=${canWrite} />`;
  }
  return html`<div class="stat">
    <div class="stat-value" data-value=${reading ? String(reading.value) : ""}>${reading ? formatValue(reading.value) : "—"}
      ${event && event.unit ? html`<span class="muted stat-unit"> ${event.unit}</span>` : null}</div>
    <div class="muted">${reading ? "updated " + formatAge(now - reading.ms) : "no data yet"}</div>
  </div>`;
}

function WidgetDialog({ session, dashboard, widget, events, onClose, onSaved }) {
  const [form, setForm] = useState({ widget_type: widget ? widget.widget_type : "line_chart",
    title: widget ? widget.title : "", event_public_id: widget ? widget.event_public_id || "" : (events[0] ? events[0].public_id : "") });
  const set = (k) => (v) => setForm(Object.assign({}, form, { [k]: v }));
  const submit = async () => {
    const event = events.find((e) => e.public_id === form.event_public_id);
    const body = { widget_type: form.widget_type, title: form.title || (event ? event.name : "Widget"),
      event_public_id: form.event_public_id || null };
    const base = "/dashboards/" + encodeURIComponent(dashboard.public_id) + "/widgets";
    if (widget) {
      await session.api.put(base + "/" + encodeURIComponent(widget.public_id), body);
    } else {
      const bottom = dashboard.widgets.reduce((m, w) => Math.max(m, w.y + w.h), 0);
      const size = form.widget_type === "line_chart" ? { w: 6, h: 4 } : { w: 3, h: 3 };
      await session.api.post(base, Object.assign(body, { x: 0, y: bottom }, size));
    }
    onSaved();
  };
  return html`<${FormDialog} title=${widget ? "Edit widget" : "Add widget"} id="widget-dialog"
      submitLabel=${widget ? "Save" : "Add widget"} onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Widget type" id="widget-type" type="select" options=${TYPES} value=${form.widget_type} onInput=${set("widget_type")} />
    <${Field} label="Event" id="widget-event" type="select" value=${form.event_public_id} onInput=${set("event_public_id")}
      options=${[["", "— none —"]].concat(events.map((e) => [e.public_id, e.name]))} />
    <${Field} label="Title (the event's name if empty)" id="widget-title" value=${form.title} onInput=${set("title")} />
  <//>`;
}

function Widget({ session, dashboard, widget, event, data, now, editing, onChange, onEdit }) {
  const action = useAction();
  const canWrite = session.can("operator");
  const path = "/dashboards/" + encodeURIComponent(dashboard.public_id) + "/widgets/" + encodeURIComponent(widget.public_id);
  const change = (dx, dy, dw, dh) => action.run(async () => {
    const w = Math.max(1, Math.min(12, widget.w + dw));
    const x = Math.max(0, Math.min(12 - w, widget.x + dx));
    const body = { x: x, y: Math.max(0, widget.y + dy), w: w, h: Math.max(1, Math.min(12, widget.h + dh)) };
    await session.api.put(path, body);
    onChange();
  });
  const remove = () => action.run(async () => { await session.api.del(path); onChange(); });
  const style = "grid-column: " + (widget.x + 1) + " / span " + widget.w + "; grid-row: " + (widget.y + 1) + " / span " + widget.h;
  const t = widget.title;
  return html`<article class="widget" style=${style} data-id=${widget.public_id} data-type=${widget.widget_type}
      data-x=${widget.x} data-y=${widget.y} data-w=${widget.w} data-h=${widget.h} aria-label=${t}>
    <header class="widget-head">
      <h2 class="widget-title" title=${t}>${t}</h2>
      ${editing ? html`<div class="widget-tools">
        <button type="button" aria-label=${"Move " + t + " left"} onClick=${() => change(-1, 0, 0, 0)}>←</button>
        <button type="button" aria-label=${"Move " + t + " right"} onClick=${() => change(1, 0, 0, 0)}>→</button>
        <button type="button" aria-label=${"Move " + t + " up"} onClick=${() => change(0, -1, 0, 0)}>↑</button>
        <button type="button" aria-label=${"Move " + t + " down"} onClick=${() => change(0, 1, 0, 0)}>↓</button>
        <button type="button" aria-label=${"Make " + t + " narrower"} onClick=${() => change(0, 0, -1, 0)}>−W</button>
        <button type="button" aria-label=${"Make " + t + " wider"} onClick=${() => change(0, 0, 1, 0)}>+W</button>
        <button type="button" aria-label=${"Make " + t + " shorter"} onClick=${() => change(0, 0, 0, -1)}>−H</button>
        <button type="button" aria-label=${"Make " + t + " taller"} onClick=${() => change(0, 0, 0, 1)}>+H</button>
        <button type="button" aria-label=${"Edit " + t} onClick=${onEdit}>Edit</button>
        <button type="button" class="danger" aria-label=${"Remove " + t} onClick=${remove}>✕</button>
      </div>` : null}
    </header>
    <${ErrorText} error=${action.error} />
    <div class="widget-body"><${WidgetBody} session=${session} widget=${widget} event=${event} data=${data}
      now=${now} canWrite=${canWrite} /></div>
  </article>`;
}

function DashboardPage({ session, id }) {
  const [dashboard, reload, error] = useLoad(() => session.api.get("/dashboards/" + encodeURIComponent(id)), [id]);
  const [events] = useList(session, "/events");
  const [editing, setEditing] = useState(false);
  const [dialog, setDialog] = useState(null);
  const now = useNow(1000);
  const widgets = dashboard ? dashboard.widgets : [];
  const data = useDashboardData(session, widgets);
  if (error) return html`<section><${ViewHead} title="Dashboard" /><${ErrorText} error=${error} />
    <a href=${href("dashboards")}>All dashboards</a></section>`;
  if (!dashboard) return html`<p class="muted">Loading…</p>`;
  const mine = canEdit(session, dashboard);
  const byId = new Map((events || []).map((e) => [e.public_id, e]));
  return html`<section>
    <${ViewHead} title=${dashboard.name}>
      <a href=${href("dashboards")}>All dashboards</a>
      ${dashboard.is_global ? html`<span class="pill">global</span>` : null}
      ${mine ? html`<button type="button" id="widget-add" onClick=${() => setDialog({ widget: null })}>Add widget</button>
        <button type="button" id="layout-edit" aria-pressed=${editing ? "true" : "false"}
          onClick=${() => setEditing(!editing)}>${editing ? "Done" : "Edit layout"}</button>` : null}
    <//>
    ${!widgets.length ? html`<p class="empty">No widgets yet.${mine ? " Add one." : ""}</p>` : null}
    <div class="widget-grid" id="widget-grid">
      ${widgets.map((w) => html`<${Widget} key=${w.public_id} session=${session} dashboard=${dashboard} widget=${w}
        event=${byId.get(w.event_public_id)} data=${data} now=${now} editing=${editing && mine}
        onChange=${reload} onEdit=${() => setDialog({ widget: w })} />`)}
    </div>
    ${dialog ? html`<${WidgetDialog} session=${session} dashboard=${dashboard} widget=${dialog.widget}
      events=${events || []} onClose=${() => setDialog(null)} onSaved=${reload} />` : null}
  </section>`;
}

function DashboardList({ session }) {
  const [rows, reload, error] = useList(session, "/dashboards");
  const [creating, setCreating] = useState(false);
  const [name, setName] = useState("");
  const [global, setGlobal] = useState(false);
  const action = useAction();
  const create = async () => {
    const d = await session.api.post("/dashboards", { name: name, is_global: global });
    setName("");
    navigate("dashboards", d.public_id);
  };
  const remove = (d) => action.run(async () => { await session.api.del("/dashboards/" + encodeURIComponent(d.public_id)); reload(); });
  const columns = [
    { title: "Name", className: "name-cell", render: (d) => html`<a href=${href("dashboards", d.public_id)}>${d.name}</a>` },
    { title: "Visibility", render: (d) => (d.is_global ? "global" : "private") },
    { title: "Widgets", className: "num", render: (d) => d.widgets.length },
    { title: html`<span class="sr-only">Actions</span>`, render: (d) => (canEdit(session, d) ? html`<div class="row-actions">
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + d.name} onConfirm=${() => remove(d)} /></div>` : null) },
  ];
  return html`<section>
    <${ViewHead} title="Dashboards">
      ${session.can("operator") ? html`<button type="button" class="primary" id="dashboard-new"
        onClick=${() => setCreating(true)}>New dashboard</button>` : null}
    <//>
    <${ErrorText} error=${action.error || error} />
    <${Table} id="dashboards-table" label="Dashboards" columns=${columns} rows=${rows}
      empty="No dashboards yet." />
    ${creating ? html`<${FormDialog} title="New dashboard" id="dashboard-dialog" submitLabel="Create dashboard"
        onSubmit=${create} onClose=${() => setCreating(false)}>
      <${Field} label="Name" id="dashboard-name" value=${name} onInput=${setName} />
      <${Field} label="Global (every user sees it)" id="dashboard-global" type="checkbox" value=${global} onInput=${setGlobal} />
    <//>` : null}
  </section>`;
}

export default function DashboardsView({ session, params }) {
  return params && params[0] ? html`<${DashboardPage} key=${params[0]} session=${session} id=${params[0]} />`
    : html`<${DashboardList} session=${session} />`;
}
