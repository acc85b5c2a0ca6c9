/* API tokens (for controllers and scripts): list, create (the plaintext is shown once,
 * with a copy button), delete. Admins see every user's tokens. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, Dialog, ErrorText, useAction, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime } from "../core/format.js";

function ShowOnce({ token, onClose }) {
  const [copied, setCopied] = useState("");
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(token.token);
      setCopied("Copied.");
    } catch (err) {
      const range = document.createRange();  // no clipboard access: select it for Ctrl+C
      range.selectNodeContents(document.getElementById("token-plaintext"));
      window.getSelection().removeAllRanges();
      window.getSelection().addRange(range);
      setCopied("Selected: press Ctrl+C to copy.");
    }
  };
  return html`<${Dialog} title="API token created" onClose=${onClose} id="token-created">
    <p class="warning">Copy the token now: it is shown only once and cannot be read again.</p>
    <div class="secret"><code id="token-plaintext">${token.token}</code>
      <button type="button" id="token-copy" onClick=${copy}>Copy</button></div>
    <p role="status" class="muted">${copied}</p>
    <div class="actions"><button type="button" class="primary" onClick=${onClose}>Done</button></div>
  <//>`;
}

export default function TokensView({ session }) {
  const [rows, reload, error] = useList(session, "/tokens");
  const [creating, setCreating] = useState(false);
  const [name, setName] = useState("");
  const [expires, setExpires] = useState("");
  const [created, setCreated] = useState(null);
  const action = useAction();
  const submit = async () => {
    const body = { name: name };
    if (expires) body.expires_at = new Date(expires).toISOString();
    const resp = await session.api.post("/tokens", body);
    setName("");
    setExpires("");
    setCreated(resp);
    reload();
  };
  const remove = (t) => action.run(async () => { await session.api.del("/tokens/" + encodeURIComponent(t.public_id)); reload(); });
  const columns = [
    { title: "Name", className: "name-cell", render: (t) => t.name },
    { title: "Created", render: (t) => formatTime(t.created_at) },
    { title: "Expires", render: (t) => (t.expires_at ? formatTime(t.expires_at) : "never") },
    { title: "Last used", render: (t) => (t.last_used_at ? formatTime(t.last_used_at) : "—") },
    { title: html`<span class="sr-only">Actions</span>`, render: (t) => html`<div class="row-actions">
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete token " + t.name} onConfirm=${() => remove(t)} /></div>` },
  ];
  return html`<section>
    <${ViewHead} title="API tokens">
      <button type="button" class="primary" id="token-new" onClick=${() => setCreating(true)}>New token</button>
    <//>
    <p class="muted">A controller signs in with an API token: <span class="mono">WEBMACS_API_TOKEN</span>.</p>
    <${ErrorText} error=${action.error || error} />
    <${Table} id="tokens-table" label="API tokens" columns=${columns} rows=${rows} empty="No API tokens." />
    ${creating ? html`<${FormDialog} title="New API token" id="token-dialog" submitLabel="Create token"
        onSubmit=${submit} onClose=${() => setCreating(false)}>
      <${Field} label="Name" id="token-name" value=${name} onInput=${setName} />
      <${Field} label="Expires (optional)" id="token-expires" type="datetime-local" value=${expires} onInput=${setExpires} />
    <//>` : null}
    ${created ? html`<${ShowOnce} token=${created} onClose=${() => setCreated(null)} />` : null}
  </section>`;
}
