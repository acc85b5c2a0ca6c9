/* The REST client. Every call goes to /api/v1 with the session's bearer token; an answer
 * that is not 2xx becomes an ApiError carrying the server's `detail`, which views show
 * next to the action that failed (never swallowed). A 401 ends the session (AuthLost). */

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || ("HTTP " + status));
    this.status = status;
    this.detail = detail || ("HTTP " + status);
  }
}

export class AuthLost extends Error {}

/* Errors as text for the user: the server's detail, or what went wrong on the way. */
export function errorText(err) {
  if (!err) return "";
  if (err instanceof ApiError) return err.detail;
  return err.message || String(err);
}

async function readJson(resp) {
  try { return await resp.json(); } catch (e) { return null; }
}

/* POST without a token (login, SSO exchange): returns {ok, status, data}. */
export async function publicPost(path, body) {
  const resp = await fetch("/api/v1" + path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(body),
  });
  return { ok: resp.ok, status: resp.status, data: await readJson(resp) };
}

export async function publicGet(path) {
  const resp = await fetch("/api/v1" + path, { headers: { Accept: "application/json" } });
  return resp.ok ? readJson(resp) : null;
}

/* A client bound to one token. onAuthLost(reason) runs once, on the first 401. */
export function createClient(token, onAuthLost) {
  let alive = true;
  async function request(method, path, body, options) {
    if (!alive) throw new AuthLost("signed out");
    const headers = { Accept: "application/json", Authorization: "Bearer " + token };
    const init = { method: method, headers: headers, cache: "no-store" };
    if (options && options.form) {
      init.body = options.form;  // FormData: the browser sets the multipart boundary
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch("/api/v1" + path, init);
    } catch (err) {
      throw new ApiError(0, "Cannot reach the server: " + err.message);
    }
    const data = await readJson(resp);
    if (resp.status === 401) {
      const reason = (data && data.detail) || "Your session has ended.";
      if (alive) {
        alive = false;
        onAuthLost(reason);
      }
      throw new AuthLost(reason);
    }
    if (!resp.ok) throw new ApiError(resp.status, data && data.detail);
    return data;
  }
  /* Every page of a paginated list ({data, total}). */
  async function all(path) {
    const out = [];
    const sep = path.indexOf("?") < 0 ? "?" : "&";
    for (let page = 1; page < 1000; page++) {
      const resp = await request("GET", path + sep + "page=" + page + "&page_size=100");
      out.push.apply(out, resp.data || []);
      if (out.length >= resp.total || !resp.data || resp.data.length === 0) break;
    }
    return out;
  }
  return {
    token: token,
    request: request,
    get: (path) => request("GET", path),
    post: (path, body) => request("POST", path, body),
    put: (path, body) => request("PUT", path, body),
    del: (path) => request("DELETE", path),
    upload: (path, form) => request("POST", path, undefined, { form: form }),
    all: all,
    close: () => { alive = false; },
    get alive() { return alive; },
  };
}
