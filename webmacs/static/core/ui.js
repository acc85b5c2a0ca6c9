/* Shared UI pieces: form fields with labels, errors shown next to their action, a modal
 * dialog that traps focus and closes with Escape, a two-step confirm button, a data
 * loading hook and a uPlot chart. */
import { html, useState, useEffect, useRef, useCallback } from "./html.js";
import { AuthLost, errorText } from "./api.js";
import { timeTicks, valueRange, CHART_COLORS } from "./format.js";

let fieldCounter = 0;
export function useId(prefix) {
  const ref = useRef(null);
  if (ref.current === null) ref.current = (prefix || "f") + "-" + (++fieldCounter);
  return ref.current;
}

/* A labelled input. type "select" takes options [[value, label], ...]; "checkbox" a bool. */
export function Field(props) {
  const auto = useId("field");
  const id = props.id || auto;
  const { label, type, value, onInput, options, hint } = props;
  let control;
  if (type === "select") {
    control = html`<select id=${id} name=${props.name} value=${value} required=${props.required}
        onChange=${(e) => onInput(e.target.value)}>
      ${(options || []).map(([v, l]) => html`<option value=${v} selected=${v === value}>${l}</option>`)}
    </select>`;
  } else if (type === "checkbox") {
    return html`<label class="field field-check" for=${id}>
      <input id=${id} name=${props.name} type="checkbox" checked=${!!value} onChange=${(e) => onInput(e.target.checked)} />
      <span>${label}</span></label>`;
  } else if (type === "textarea") {
    control = html`<textarea id=${id} name=${props.name} rows=${props.rows || 4} value=${value}
        onInput=${(e) => onInput(e.target.value)}></textarea>`;
  } else if (type === "file") {
    control = html`<input id=${id} name=${props.name} type="file" accept=${props.accept}
        onChange=${(e) => onInput(e.target.files[0] || null)} />`;
  } else {
    control = html`<input id=${id} name=${props.name} type=${type || "text"} value=${value ?? ""}
        required=${props.required} step=${props.step} min=${props.min} max=${props.max}
        autocomplete=${props.autocomplete || "off"} placeholder=${props.placeholder}
        onInput=${(e) => onInput(e.target.value)} />`;
  }
  return html`<div class="field">
    <label for=${id}>${label}</label>
    ${control}
    ${hint ? html`<small class="hint">${hint}</small>` : null}
  </div>`;
}

/* The server's answer to a failed action, next to that action. */
export function ErrorText({ error, id }) {
  if (!error) return null;
  return html`<p class="error" role="alert" id=${id}>${errorText(error)}</p>`;
}

/* Run an async action, holding its error for an <ErrorText> next to it. */
export function useAction() {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const run = useCallback(async (fn) => {
    setBusy(true);
    setError(null);
    try {
      return await fn();
    } catch (err) {
      if (!(err instanceof AuthLost)) setError(err);
      return undefined;
    } finally {
      setBusy(false);
    }
  }, []);
  return { error, busy, run, setError };
}

/* Load data when deps change: [data, reload, error]. */
export function useLoad(fn, deps) {
  const [state, setState] = useState({ data: null, error: null });
  const counter = useRef(0);
  const load = useCallback(() => {
    const n = ++counter.current;
    return Promise.resolve().then(fn).then(
      (data) => { if (n === counter.current) setState({ data: data, error: null }); },
      (err) => { if (n === counter.current && !(err instanceof AuthLost)) setState((s) => ({ data: s.data, error: err })); });
  }, deps);
  useEffect(() => { load(); }, [load]);
  return [state.data, load, state.error];
}

/* Re-render every `ms` (for ages and durations). */
export function useNow(ms) {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms || 1000);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), ' +
  'textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

/* A modal dialog (native <dialog>, opened with showModal so the page behind is inert).
 * Tab and Shift+Tab cycle inside it, Escape closes it, focus returns where it was. */
export function Dialog({ title, onClose, children, id }) {
  const ref = useRef(null);
  const titleId = useId("dialog-title");
  useEffect(() => {
    const dialog = ref.current;
    const before = document.activeElement;
    if (dialog && !dialog.open) dialog.showModal();
    // the first field (or button) of the body, not the header's close button
    const body = dialog.querySelector(".dialog-body");
    const first = dialog.querySelector("[autofocus]") || (body && body.querySelector(FOCUSABLE)) ||
      dialog.querySelector(FOCUSABLE);
    if (first) first.focus();
    return () => {
      if (dialog && dialog.open) dialog.close();
      if (before && before.focus && document.contains(before)) before.focus();
    };
  }, []);
  const onKeyDown = (e) => {
    if (e.key === "Escape") {
      e.preventDefault();
      onClose();
      return;
    }
    if (e.key !== "Tab") return;
    const items = Array.from(ref.current.querySelectorAll(FOCUSABLE)).filter((n) => n.offsetParent !== null);
    if (!items.length) return;
    const first = items[0], last = items[items.length - 1];
    if (e.shiftKey && document.activeElement === first) { e.preventDefault(); last.focus(); }
    else if (!e.shiftKey && document.activeElement === last) { e.preventDefault(); first.focus(); }
  };
  return html`<dialog ref=${ref} class="dialog" id=${id} aria-labelledby=${titleId} onKeyDown=${onKeyDown}
      onCancel=${(e) => { e.preventDefault(); onClose(); }}>
    <header class="dialog-head">
      <h2 id=${titleId}>${title}</h2>
      <button type="button" class="quiet close" aria-label="Close" onClick=${onClose}>×</button>
    </header>
    <div class="dialog-body">${children}</div>
  </dialog>`;
}

/* A form in a dialog: fields, a submit button and the error of the submit. */
export function FormDialog({ title, submitLabel, onSubmit, onClose, children, id }) {
  const action = useAction();
  const submit = (e) => {
    e.preventDefault();
    action.run(async () => {
      const done = await onSubmit();
      if (done !== false) onClose();
    });
  };
  return html`<${Dialog} title=${title} onClose=${onClose} id=${id}>
    <form class="form" onSubmit=${submit} novalidate>
      ${children}
      <${ErrorText} error=${action.error} />
      <div class="actions">
        <button type="submit" class="primary" disabled=${action.busy}>${submitLabel || "Save"}</button>
        <button type="button" class="quiet" onClick=${onClose}>Cancel</button>
      </div>
    </form>
  <//>`;
}

/* A destructive action: the first press arms it ("Confirm ..."), a second within 5 s runs it. */
export function ConfirmButton({ label, confirmLabel, onConfirm, className, id, ariaLabel }) {
  const [armed, setArmed] = useState(false);
  useEffect(() => {
    if (!armed) return undefined;
    const t = setTimeout(() => setArmed(false), 5000);
    return () => clearTimeout(t);
  }, [armed]);
  const click = () => {
    if (!armed) { setArmed(true); return; }
    setArmed(false);
    onConfirm();
  };
  return html`<button type="button" id=${id} class=${"danger " + (armed ? "armed " : "") + (className || "")}
      aria-label=${ariaLabel && !armed ? ariaLabel : undefined} onClick=${click}>
    ${armed ? (confirmLabel || "Confirm " + label.toLowerCase()) : label}</button>`;
}

/* A uPlot line chart of one or more series: data = [xs(seconds), ys1, ys2...]. */
export function Chart({ data, labels, height, xRange, className }) {
  const box = useRef(null);
  const plot = useRef(null);
  const n = data.length - 1;
  useEffect(() => {
    if (typeof window.uPlot !== "function" || !box.current) return undefined;
    const axis = {
      stroke: "#8b96a8",
      grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
      ticks: { stroke: "rgba(255,255,255,0.12)", width: 1 },
      font: "12px system-ui, sans-serif",
    };
    const series = [{}];
    for (let i = 0; i < n; i++) {
      const c = CHART_COLORS[i % CHART_COLORS.length];
      series.push({ label: labels ? labels[i] : "value", stroke: c, width: 2, fill: n === 1 ? c + "22" : undefined,
                    points: { size: 5, fill: c } });
    }
    plot.current = new window.uPlot({
      width: Math.max(200, box.current.clientWidth),
      height: height || Math.max(100, box.current.clientHeight),
      legend: { show: n > 1 },
      cursor: { show: true },
      scales: { x: { time: true }, y: { range: valueRange } },
      axes: [Object.assign({ values: timeTicks }, axis), Object.assign({ size: 56 }, axis)],
      series: series,
    }, data, box.current);
    const resizer = new ResizeObserver(() => {
      const w = box.current && box.current.clientWidth;
      if (w > 0) plot.current.setSize({ width: w, height: height || box.current.clientHeight });
    });
    resizer.observe(box.current);
    return () => { resizer.disconnect(); plot.current.destroy(); plot.current = null; };
  }, [n, height]);
  useEffect(() => {
    if (!plot.current) return;
    plot.current.setData(data, !xRange);
    if (xRange) plot.current.setScale("x", { min: xRange[0], max: xRange[1] });
  });
  return html`<div class=${"chart " + (className || "")} ref=${box} data-points=${data[0].length}></div>`;
}

/* Empty and loading states of a list. */
export function Empty({ children }) {
  return html`<p class="empty">${children}</p>`;
}
