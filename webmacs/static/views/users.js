/* Users (admins): list, create, edit role/password, delete. */
import { html, useState } from "../core/html.js";
import { Field, FormDialog, ErrorText, useAction, ConfirmButton } from "../core/ui.js";
import { ViewHead, Table, useList } from "../core/crud.js";
import { formatTime } from "../core/format.js";

const ROLES = [["viewer", "viewer"], ["operator", "operator"], ["admin", "admin"]];

function UserDialog({ session, user, onClose, onSaved }) {
  const [form, setForm] = useState({ email: user ? user.email : "", username: user ? user.username : "",
    role: user ? user.role : "viewer", password: "" });
  const set = (k) => (v) => setForm(Object.assign({}, form, { [k]: v }));
  const submit = async () => {
    const body = { email: form.email, username: form.username, role: form.role };
    if (form.password || !user) body.password = form.password;
    if (user) await session.api.put("/users/" + encodeURIComponent(user.public_id), body);
    else await session.api.post("/users", body);
    onSaved();
  };
  return html`<${FormDialog} title=${user ? "Edit user" : "New user"} id="user-dialog"
      submitLabel=${user ? "Save" : "Create user"} onSubmit=${submit} onClose=${onClose}>
    <${Field} label="Email" id="user-email" type="email" value=${form.email} onInput=${set("email")} />
    <${Field} label="Username" id="user-username" value=${form.username} onInput=${set("username")} />
    <${Field} label="Role" id="user-role-select" type="select" options=${ROLES} value=${form.role} onInput=${set("role")} />
    <${Field} label=${user ? "New password (leave empty to keep)" : "Password (at least 8 characters)"} id="user-password"
      type="password" autocomplete="new-password" value=${form.password} onInput=${set("password")} />
  <//>`;
}

export default function UsersView({ session }) {
  const [rows, reload, error] = useList(session, "/users");
  const [dialog, setDialog] = useState(null);
  const action = useAction();
  const remove = (u) => action.run(async () => { await session.api.del("/users/" + encodeURIComponent(u.public_id)); reload(); });
  const columns = [
    { title: "Username", className: "name-cell", render: (u) => u.username },
    { title: "Email", render: (u) => u.email },
    { title: "Role", render: (u) => html`<span class="pill">${u.role}</span>` },
    { title: "Sign-in", render: (u) => (u.sso_provider ? "single sign-on" : "password") },
    { title: "Created", render: (u) => formatTime(u.created_on) },
    { title: html`<span class="sr-only">Actions</span>`, render: (u) => html`<div class="row-actions">
      <button type="button" aria-label=${"Edit " + u.username} onClick=${() => setDialog({ user: u })}>Edit</button>
      <${ConfirmButton} label="Delete" ariaLabel=${"Delete " + u.username} onConfirm=${() => remove(u)} /></div>` },
  ];
  return html`<section>
    <${ViewHead} title="Users">
      <button type="button" class="primary" id="user-new" onClick=${() => setDialog({ user: null })}>New user</button>
    <//>
    <${ErrorText} error=${action.error || error} id="users-error" />
    <${Table} id="users-table" label="Users" columns=${columns} rows=${rows} />
    ${dialog ? html`<${UserDialog} session=${session} user=${dialog.user} onClose=${() => setDialog(null)} onSaved=${reload} />` : null}
  </section>`;
}
