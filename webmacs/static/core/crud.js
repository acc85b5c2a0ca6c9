/* Building blocks of the list views: a heading with actions, a table, a list loader. */
import { html } from "./html.js";
import { ErrorText, useLoad, Empty } from "./ui.js";

/* All rows of a paginated list endpoint: [rows, reload, error]. */
export function useList(session, path, deps) {
  return useLoad(() => session.api.all(path), [path].concat(deps || []));
}

export function ViewHead({ title, children }) {
  return html`<div class="view-head"><h1>${title}</h1>${children}</div>`;
}

/* columns: [{title, render(row), className}]; rows: objects with public_id (or key(row)). */
export function Table({ columns, rows, id, empty, rowKey, label }) {
  if (rows === null || rows === undefined) return html`<p class="muted">Loading…</p>`;
  if (!rows.length) return html`<${Empty}>${empty || "Nothing here yet."}<//>`;
  const key = rowKey || ((r) => r.public_id);
  return html`<div class="table-wrap"><table id=${id} aria-label=${label}>
    <thead><tr>${columns.map((c) => html`<th scope="col" class=${c.className}>${c.title}</th>`)}</tr></thead>
    <tbody>${rows.map((r) => html`<tr data-id=${key(r)}>
      ${columns.map((c) => html`<td class=${c.className}>${c.render(r)}</td>`)}</tr>`)}</tbody>
  </table></div>`;
}

/* A list with its load error shown above it. */
export function ListError({ error }) {
  return html`<${ErrorText} error=${error} />`;
}
