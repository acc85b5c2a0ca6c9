/* Plugin packages (admins): bundled and uploaded packages, upload a wheel, uninstall.
 * Shown inside the Plugins view and as its own view. */
import { html, useState } from "../core/html.js";
import { Field, ErrorText, useAction, useLoad, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table } from "../core/crud.js";

export function Packages({ session }) {
  const [rows, reload, error] = useLoad(() => session.api.get("/plugins/packages"), []);
  const [file, setFile] = useState(null);
  const [done, setDone] = useState("");
  const action = useAction();
  const upload = (e) => {
    e.preventDefault();
    setDone("");
    action.run(async () => {
      if (!file) throw new Error("Choose a .whl file first.");
      const form = new FormData();
      form.append("file", file, file.name);
      const resp = await session.api.upload("/plugins/packages/upload", form);
      setDone(resp.message || "Installed.");
      reload();
    });
  };
  const remove = (p) => action.run(async () => {
    await session.api.del("/plugins/packages/" + encodeURIComponent(p.public_id));
    setDone("");
    reload();
  });
  const columns = [
    { title: "Package", render: (p) => p.package_name },
    { title: "Version", render: (p) => p.version },
    { title: "Plugins", render: (p) => (p.plugin_ids || []).join(", ") },
    { title: "Source", render: (p) => p.source },
    { title: html`<span class="sr-only">Actions</span>`, render: (p) => (p.removable ? html`<div class="row-actions">
      <${ConfirmButton} label="Uninstall" ariaLabel=${"Uninstall " + p.package_name} onConfirm=${() => remove(p)} /></div>` : null) },
  ];
  return html`<section class="card" id="packages">
    <h2>Plugin packages</h2>
    <${ErrorText} error=${error} />
    <${Table} label="Plugin packages" columns=${columns} rows=${rows}
      rowKey=${(p) => p.public_id || p.package_name} empty="No packages." />
    <form class="toolbar" onSubmit=${upload}>
      <${Field} label="Wheel (.whl)" id="package-file" type="file" accept=".whl" onInput=${setFile} />
      <button type="submit" id="package-upload" disabled=${action.busy}>Upload</button>
    </form>
    ${done ? html`<p class="notice" role="status">${done}</p>` : null}
    <${ErrorText} error=${action.error} id="package-error" />
  </section>`;
}

export default function PackagesView({ session }) {
  return html`<section><${ViewHead} title="Plugin packages" /><${Packages} session=${session} /></section>`;
}
