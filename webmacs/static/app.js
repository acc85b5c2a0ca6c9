/* WebMACS web app: the entry module. Sign-in (password or single sign-on), then the shell:
 * header (live connection, data age, user and role, log out), role-aware navigation and
 * the current view (views/index.js lists them; core/router.js documents the contract).
 * No build step: Preact + htm are vendored as one ES module (docs/webapp.md). */
import { html, render, useState, useEffect, useMemo } from "./core/html.js";
import { createClient, publicPost, publicGet, AuthLost, errorText } from "./core/api.js";
import { LiveConnection, config, stats } from "./core/live.js";
import { hasRole, useRoute, findView, href } from "./core/router.js";
import { formatAge } from "./core/format.js";
import { useNow } from "./core/ui.js";
import { VIEWS } from "./views/index.js";

const TOKEN_KEY = "webmacs.token";

/* Test and kiosk hooks (docs/dashboard.md). */
const hooks = { current: null, modeSince: 0 };
window.webmacs = {
  config: config,
  stats: stats,
  get modeSince() { return hooks.current ? hooks.current.live.modeSince : hooks.modeSince; },
  get mode() { return hooks.current ? hooks.current.live.mode : "connecting"; },
  get polling() { return !!(hooks.current && hooks.current.live.polling); },
  get failures() { return hooks.current ? hooks.current.live.failures : 0; },
  get signedIn() { return !!hooks.current; },
};

function Login({ message, onToken }) {
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [msg, setMsg] = useState(message || "");
  const [busy, setBusy] = useState(false);
  const [hint, setHint] = useState("");
  const [sso, setSso] = useState(null);
  useEffect(() => { setMsg(message || ""); }, [message]);
  useEffect(() => {
    publicGet("/auth/login-hint").then((b) => setHint(b && !b.users_exist ? b.message : ""), () => setHint(""));
    publicGet("/auth/sso/config").then((c) => setSso(c && c.enabled ? c : null), () => setSso(null));
    const input = document.getElementById("login-email");
    if (input) input.focus();
  }, []);
  const submit = async (e) => {
    e.preventDefault();
    if (!email.trim() || !password) { setMsg("Enter your email and password."); return; }
    setBusy(true);
    try {
      const r = await publicPost("/auth/login", { email: email.trim(), password: password });
      if (!r.ok || !r.data || !r.data.access_token) {
        setMsg((r.data && r.data.detail) || ("Sign-in failed (HTTP " + r.status + ")."));
        return;
      }
      setPassword("");
      onToken(r.data.access_token);
    } catch (err) {
      setMsg("Cannot reach the server: " + err.message);
    } finally {
      setBusy(false);
    }
  };
  return html`<main id="login-view" class="login">
    <form id="login-form" class="login-card" novalidate onSubmit=${submit}>
      <h1>WebMACS</h1>
      <p class="login-subtitle">Lab telemetry</p>
      <p id="login-message" class="login-message" role="alert" hidden=${!msg}>${msg}</p>
      <p id="login-hint" class="login-message" hidden=${!hint}>${hint}</p>
      <label for="login-email">Email</label>
      <input id="login-email" name="email" type="email" autocomplete="username" required value=${email}
        onInput=${(e) => setEmail(e.target.value)} />
      <label for="login-password">Password</label>
      <input id="login-password" name="password" type="password" autocomplete="current-password" required
        value=${password} onInput=${(e) => setPassword(e.target.value)} />
      <button id="login-submit" type="submit" disabled=${busy}>Sign in</button>
      ${sso ? html`<a id="sso-button" class="sso-button" href="/api/v1/auth/sso/authorize">Sign in with ${sso.provider_name}</a>` : null}
    </form>
  </main>`;
}

function DataAge({ live }) {
  const now = useNow(1000);
  const last = live.lastDataMs;
  const age = last === null ? null : now - last;
  const stale = age === null || age > config.staleAfterMs;
  const text = age === null ? "no data yet" : stale ? "no data for " + formatAge(age).replace(" ago", "") : "live";
  return html`<span id="data-age" class="data-age" data-stale=${stale ? "true" : "false"}
      data-age-seconds=${age === null ? "" : String(Math.round(age / 1000))}
      title="Time since the newest reading">${text}</span>`;
}

function Connection({ live }) {
  const [, changed] = useState(0);
  useNow(1000);  // the tooltip counts down to the next try
  // re-render on a change; the mode itself is read from the connection on every render,
  // so a change between the first render and this subscription is not missed
  useEffect(() => live.onMode(() => changed((n) => n + 1)), [live]);
  const mode = live.mode;
  return html`<span id="connection" class="connection" data-mode=${mode} title=${live.describe()}>
    <span class="connection-dot" aria-hidden="true"></span>
    <span id="connection-mode">${mode}</span>
  </span>`;
}

function Shell({ session, onLogout }) {
  const route = useRoute();
  const visible = VIEWS.filter((v) => hasRole(session.user, v.role));
  const view = findView(visible, route.path);
  const View = view ? view.component : null;
  useEffect(() => {
    document.title = "WebMACS · " + (view ? view.title : "Not found");
  }, [view]);
  return html`<div id="dashboard-view" class="app">
    <header class="topbar">
      <a class="brand" href="#/">WebMACS</a>
      <div class="status">
        <${Connection} live=${session.live} />
        <${DataAge} live=${session.live} />
      </div>
      <div class="session">
        <span class="user" title=${session.user.email}>
          <span id="user-name" class="user-name">${session.user.username}</span>
          <span class="role-tag" title="Role"><span class="role-label">role</span> <span id="user-role">${session.user.role}</span></span>
        </span>
        <button id="logout" type="button" class="quiet" onClick=${onLogout}>Log out</button>
      </div>
    </header>
    <nav class="nav" aria-label="Main">
      ${visible.filter((v) => v.nav !== false).map((v) => html`<a href=${href(v.path)} id=${"nav-" + (v.path || "overview")}
          class=${v === view ? "active" : ""} aria-current=${v === view ? "page" : undefined}>${v.title}</a>`)}
    </nav>
    <main id="view" class="view" data-view=${view ? view.path || "overview" : "none"}>
      ${View ? html`<${View} key=${route.path} session=${session} params=${route.params} />`
        : html`<p class="empty">This page does not exist or needs another role. <a href="#/">Overview</a></p>`}
    </main>
  </div>`;
}

function App() {
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY));
  const [message, setMessage] = useState("");
  const [session, setSession] = useState(null);
  const [ssoCode] = useState(() => (window.location.pathname === "/sso-callback"
    ? new URLSearchParams(window.location.search).get("code") : null));

  const signOut = (msg) => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
    setMessage(msg || "");
  };

  // /sso-callback?code=...: trade the one-time code for a token, like a password login
  useEffect(() => {
    if (!ssoCode) return;
    window.history.replaceState(null, "", "/");  // the code is single-use; keep it out of history
    publicPost("/auth/sso/exchange", { code: ssoCode }).then((r) => {
      if (r.ok && r.data && r.data.access_token) {
        sessionStorage.setItem(TOKEN_KEY, r.data.access_token);
        setToken(r.data.access_token);
      } else {
        signOut("Single sign-on failed: " + ((r.data && r.data.detail) || ("HTTP " + r.status)));
      }
    }, (err) => signOut("Cannot reach the server: " + err.message));
  }, [ssoCode]);

  useEffect(() => {
    if (!token) { setSession(null); return undefined; }
    let ended = false;
    const end = (reason) => { if (!ended) { ended = true; signOut(reason); } };
    const api = createClient(token, end);
    const live = new LiveConnection(token, api, end);
    const s = { api: api, live: live, user: null, token: token, can: (role) => hasRole(s.user, role) };
    api.get("/auth/me").then((me) => {
      if (ended) return;
      s.user = me;
      hooks.current = s;
      live.start();
      setSession(s);
    }, (err) => {
      if (!(err instanceof AuthLost)) end("Could not sign in: " + errorText(err));
    });
    return () => {
      ended = true;
      hooks.modeSince = live.modeSince;
      if (hooks.current === s) hooks.current = null;
      live.stop();
      api.close();
      setSession(null);
    };
  }, [token]);

  const onToken = (t) => {
    sessionStorage.setItem(TOKEN_KEY, t);
    setMessage("");
    setToken(t);
  };
  const onLogout = async () => {
    const current = session;
    if (!current) return;
    current.live.stop();  // our own close, before the server's 1008 "Token has been revoked"
    try { await current.api.post("/auth/logout"); } catch (err) { /* signed out locally anyway */ }
    signOut("You have been signed out.");
  };

  if (ssoCode && !token && !message) return html`<p class="loading">Signing in…</p>`;
  if (!token) return html`<${Login} message=${message} onToken=${onToken} />`;
  if (!session) return html`<p class="loading">Loading…</p>`;
  return html`<${Shell} session=${session} onLogout=${onLogout} />`;
}

render(html`<${App} />`, document.getElementById("app"));
