/* OTA updates (admins): register a firmware version, upload its file, apply, roll back, delete. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime } from "../core/format.js";

export default function OtaView({ session }) {
  const [rows, reload, error] = useList(session, "/ota");
  const [creating, setCreating] = useState(false);
  const [version, setVersion] = useState("");
  const [changelog, setChangelog] = useState("");
  const [uploadFor, setUploadFor] = useState(null);
  const [file, setFile] = useState(null);
  const action = useAction();
  const path = (u) => "/ota/" + encodeURIComponent(u.public_id);
  const act = (fn) => action.run(async () => { try { await fn(); } finally { reload(); } });
  const create = async () => {
    await session.api.post("/ota", { version: version, changelog: changelog || null });
    setVersion("");
    setChangelog("");
    reload();
  };
  const upload = async () => {
    if (!file) throw new Error("Choose a firmware file first.");
    const form = new FormData();
    form.append("file", file, file.name);
    await session.api.upload(path(uploadFor) + "/firmware", form);
    setFile(null);
    reload();
  };
  const columns = [
    { title: "Version", render: (u) => u.version },
    { title: "Status", render: (u) => html`<span class="pill">${u.status}</span>` },
    { title: "File", render: (u) => (u.has_firmware_file ? (u.file_size_bytes || 0).toLocaleString("en-US") + " bytes" : "none") },
    { title: "Created", render: (u) => formatTime(u.created_on) },
    { title: "Error", render: (u) => u.error_message || "" },
    { title: html`<span class="sr-only">Actions</span>`, render: (u) => html`<div class="row-actions">
      ${u.status === "pending" ? html`<button type="button" aria-label=${"Upload firmware for " + u.version}
        onClick=${() => setUploadFor(u)}>Upload file</button>
        <button type="button" aria-label=${"Deploy " + u.version} title="Hand it to the controller, which downloads and flashes it"
          onClick=${() => act(() => session.api.post(path(u) + "/deploy"))}>Deploy</button>
        <button type="button" aria-label=${"Apply " + u.version} title="Mark it applied (the file is verified first)"
          onClick=${() => act(() => session.api.post(path(u) + "/apply"))}>Apply</button>` : null}
      ${u.status === "failed" || u.status === "completed" ? html`<button type="button" aria-label=${"Roll back " + u.version}
        onClick=${() => act(() => session.api.post(path(u) + "/rollback"))}>Roll back</button>` : null}
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + u.version} onConfirm=${() => act(() => session.api.del(path(u)))} /></div>` },
  ];
  return html`<section>
    <${ViewHead} title="OTA updates">
      <button type="button" class="primary" id="ota-new" onClick=${() => setCreating(true)}>New update</button>
    <//>
    <${ErrorText} error=${action.error || error} id="ota-error" />
    <${Table} id="ota-table" label="Firmware updates" columns=${columns} rows=${rows} empty="No firmware updates." />
    ${creating ? html`<${FormDialog} title="New firmware update" id="ota-dialog" submitLabel="Register"
        onSubmit=${create} onClose=${() => setCreating(false)}>
      <${Field} label="Version (semver, e.g. 1.4.0)" id="ota-version" value=${version} onInput=${setVersion} />
      <${Field} label="Changelog" id="ota-changelog" type="textarea" value=${changelog} onInput=${setChangelog} />
    <//>` : null}
    ${uploadFor ? html`<${FormDialog} title=${"Firmware file for " + uploadFor.version} id="ota-upload-dialog"
        submitLabel="Upload" onSubmit=${upload} onClose=${() => setUploadFor(null)}>
      <${Field} label="Firmware file" id="ota-file" type="file" onInput=${setFile} />
    <//>` : null}
  </section>`;
}
