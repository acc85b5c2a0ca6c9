/* Rules (admins): threshold rules on an event that write a log entry or fire webhooks. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime, formatValue } from "../core/format.js";

const OPERATORS = [["gt", "> greater than"], ["gte", "≥ at least"], ["lt", "< less than"], ["lte", "≤ at most"],
  ["eq", "= equal to"], ["between", "between"], ["not_between", "not between"]];
const ACTIONS = [["log", "write a log entry"], ["webhook", "fire webhooks"]];
const SYMBOL = { gt: ">", gte: "≥", lt: "<", lte: "≤", eq: "=" };

function RuleDialog({ session, rule, events, onClose, onSaved }) {
  const r = rule || { name: "", event_public_id: events[0] ? events[0].public_id : "", operator: "gt", threshold: "",
    threshold_high: "", action_type: "log", cooldown_seconds: 60, enabled: true };
  const [form, setForm] = useState({ name: r.name, event_public_id: r.event_public_id, operator: r.operator,
    threshold: String(r.threshold), threshold_high: r.threshold_high === null ? "" : String(r.threshold_high),
    action_type: r.action_type, cooldown_seconds: String(r.cooldown_seconds), enabled: r.enabled });
  const set = (k) => (v) => setForm(Object.assign({}, form, { [k]: v }));
  const range = form.operator === "between" || form.operator === "not_between";
  const num = (v) => (v === "" ? null : Number(v));
  const submit = async () => {
    const body = { name: form.name, event_public_id: form.event_public_id, operator: form.operator,
      threshold: num(form.threshold), threshold_high: range ? num(form.threshold_high) : null,
      action_type: form.action_type, cooldown_seconds: num(form.cooldown_seconds), enabled: form.enabled };
    if (rule) await session.api.put("/rules/" + encodeURIComponent(rule.public_id), body);
    else await session.api.post("/rules", body);
    onSaved();
  };
  return html`<${FormDialog} title=${rule ? "Edit rule" : "New rule"} id="rule-dialog"
      submitLabel=${rule ? "Save" : "Create rule"} onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Name" id="rule-name" value=${form.name} onInput=${set("name")} />
    <${Field} label="Event" id="rule-event" type="select" value=${form.event_public_id} onInput=${set("event_public_id")}
      options=${events.map((e) => [e.public_id, e.name])} />
    <div class="form-row">
      <${Field} label="Condition" id="rule-operator" type="select" options=${OPERATORS} value=${form.operator} onInput=${set("operator")} />
      <${Field} label=${range ? "Low" : "Threshold"} id="rule-threshold" type="number" step="any" value=${form.threshold} onInput=${set("threshold")} />
      ${range ? html`<${Field} label="High" id="rule-threshold-high" type="number" step="any" value=${form.threshold_high} onInput=${set("threshold_high")} />` : null}
    </div>
    <div class="form-row">
      <${Field} label="Action" id="rule-action" type="select" options=${ACTIONS} value=${form.action_type} onInput=${set("action_type")} />
      <${Field} label="Cooldown (s)" id="rule-cooldown" type="number" min="0" value=${form.cooldown_seconds} onInput=${set("cooldown_seconds")} />
    </div>
    <${Field} label="Enabled" id="rule-enabled" type="checkbox" value=${form.enabled} onInput=${set("enabled")} />
  <//>`;
}

export function condition(rule) {
  if (rule.operator === "between") return "between " + formatValue(rule.threshold) + " and " + formatValue(rule.threshold_high);
  if (rule.operator === "not_between") return "outside " + formatValue(rule.threshold) + " – " + formatValue(rule.threshold_high);
  return SYMBOL[rule.operator] + " " + formatValue(rule.threshold);
}

export default function RulesView({ session }) {
  const [rows, reload, error] = useList(session, "/rules");
  const [events] = useList(session, "/events");
  const [dialog, setDialog] = useState(null);
  const action = useAction();
  const remove = (r) => action.run(async () => { await session.api.del("/rules/" + encodeURIComponent(r.public_id)); reload(); });
  const columns = [
    { title: "Name", className: "name-cell", render: (r) => r.name },
    { title: "Event", render: (r) => r.event_name },
    { title: "Condition", render: condition },
    { title: "Action", render: (r) => r.action_type },
    { title: "State", render: (r) => html`<span class=${"pill " + (r.enabled ? "ok" : "off")}>${r.enabled ? "enabled" : "disabled"}</span>` },
    { title: "Last fired", render: (r) => formatTime(r.last_triggered_at) },
    { title: html`<span class="sr-only">Actions</span>`, render: (r) => html`<div class="row-actions">
      <button type="button" aria-label=${"Edit " + r.name} onClick=${() => setDialog({ rule: r })}>Edit</button>
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + r.name} onConfirm=${() => remove(r)} /></div>` },
  ];
  return html`<section>
    <${ViewHead} title="Rules">
      <button type="button" class="primary" id="rule-new" disabled=${!events || !events.length}
        onClick=${() => setDialog({ rule: null })}>New rule</button>
    <//>
    <${ErrorText} error=${action.error || error} />
    <${Table} id="rules-table" label="Rules" columns=${columns} rows=${rows} empty="No rules yet." />
    ${dialog ? html`<${RuleDialog} session=${session} rule=${dialog.rule} events=${events || []}
      onClose=${() => setDialog(null)} onSaved=${reload} />` : null}
  </section>`;
}
