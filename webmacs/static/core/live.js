/* The live data connection of websocket-api.md ("Frontend Fallback Strategy"), shared by
 * every view of a session:
 *
 *   - WebSocket first: /ws/datapoints/stream?token=..., a {"type":"ping"} every 25 s;
 *   - after 3 consecutive failed connection attempts, poll GET /api/v1/datapoints/latest
 *     every 1500 ms, while retrying the WebSocket with capped exponential backoff;
 *   - when the WebSocket is back (its "connected" message), polling stops and /latest is
 *     read once to catch up;
 *   - a close with code 1008 (auth) does not retry: the session ends with the close reason.
 *
 * Views subscribe to readings with live.subscribe(fn) (fn(points, source), source one of
 * "websocket", "polling", "latest"); live.latest holds the newest reading per event and
 * live.lastDataMs the newest reading's time (the header's "no data for N s").
 */
import { AuthLost } from "./api.js";

const DEFAULTS = {
  pingIntervalMs: 25000,        // keep-alive ping (spec: 25 s)
  pollIntervalMs: 1500,         // fallback polling period (spec: 1500 ms)
  failuresBeforePolling: 3,     // consecutive failed attempts before polling (spec: 3)
  backoffBaseMs: 1000,          // reconnect delays: 1 s, 2 s, 4 s ... capped at backoffMaxMs
  backoffMaxMs: 5000,
  connectTimeoutMs: 10000,      // an attempt with no "connected" message by then has failed
  chartMinutes: 5,              // overview chart window
  chartMaxPoints: 300,          // history points per chart (server-side downsampling)
  staleAfterMs: 30000,          // a value older than this is shown as stale
  experimentRefreshMs: 15000,
};
const MODES = ["websocket", "polling", "connecting"];

/* Timings can be overridden for tests with window.WEBMACS_CONFIG = {...} (set before the
 * app runs) or query parameters (?backoffMaxMs=500). */
function loadConfig() {
  const cfg = Object.assign({}, DEFAULTS);
  const override = window.WEBMACS_CONFIG || {};
  const query = new URLSearchParams(window.location.search);
  for (const key of Object.keys(DEFAULTS)) {
    const raw = query.has(key) ? query.get(key) : override[key];
    const value = Number(raw);
    if (raw !== undefined && raw !== null && raw !== "" && Number.isFinite(value) && value >= 0) {
      cfg[key] = value;
    }
  }
  return cfg;
}

export const config = loadConfig();
export const stats = { polls: 0, catchUps: 0, streamBatches: 0 };

export class LiveConnection {
  /* api: the session's client; onAuthClosed(reason) ends the session. */
  constructor(token, api, onAuthClosed) {
    this.token = token;
    this.api = api;
    this.onAuthClosed = onAuthClosed;
    this.ws = null;
    this.mode = "connecting";
    this.modeSince = performance.now();
    this.failures = 0;
    this.polling = false;
    this.pollTimer = null;
    this.pollInFlight = false;
    this.retryTimer = null;
    this.pingTimer = null;
    this.attemptTimer = null;
    this.lastMessageAt = 0;
    this.nextRetryAt = null;
    this.stopped = false;
    this.latest = new Map();   // event_public_id -> newest reading {value, timestamp, ms}
    this.lastDataMs = null;
    this.listeners = new Set();
    this.modeListeners = new Set();
  }

  start() { this.connect(); }

  stop() {
    this.stopped = true;
    this.stopPolling();
    clearTimeout(this.retryTimer);
    clearTimeout(this.attemptTimer);
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      try { ws.close(1000, "Signed out"); } catch (e) { /* already closing */ }
    }
  }

  subscribe(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }
  onMode(fn) { this.modeListeners.add(fn); return () => this.modeListeners.delete(fn); }

  emit(points, source) {
    if (this.stopped) return;
    if (source === "websocket") stats.streamBatches += 1;
    for (const p of points) {
      const ms = Date.parse(p.timestamp);
      if (!Number.isFinite(ms) || typeof p.value !== "number") continue;
      const held = this.latest.get(p.event_public_id);
      if (!held || ms > held.ms) this.latest.set(p.event_public_id, { value: p.value, timestamp: p.timestamp, ms: ms });
      if (this.lastDataMs === null || ms > this.lastDataMs) this.lastDataMs = ms;
    }
    for (const fn of Array.from(this.listeners)) {
      try { fn(points, source); } catch (e) { console.error("webmacs live listener:", e); }
    }
  }

  setMode(mode) {
    if (MODES.indexOf(mode) < 0 || mode === this.mode) return;
    this.mode = mode;
    this.modeSince = performance.now();
    for (const fn of Array.from(this.modeListeners)) fn(mode);
  }

  url() {
    const proto = window.location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + window.location.host + "/ws/datapoints/stream?token=" + encodeURIComponent(this.token);
  }

  connect() {
    if (this.stopped) return;
    this.nextRetryAt = null;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.attemptFailed();
      return;
    }
    this.ws = ws;
    let subscribed = false;
    clearTimeout(this.attemptTimer);
    this.attemptTimer = setTimeout(() => {
      if (this.ws === ws && !subscribed) ws.close();  // hangs: count it as a failed attempt
    }, config.connectTimeoutMs);

    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.lastMessageAt = Date.now();
      let msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (msg.type === "connected") {
        subscribed = true;
        clearTimeout(this.attemptTimer);
        this.failures = 0;
        this.stopPolling();
        this.setMode("websocket");
        this.startPing(ws);
        this.catchUp();
      } else if (msg.type === "datapoints_batch") {
        this.emit(msg.datapoints || [], "websocket");
      } else if (msg.type === "error") {
        console.warn("webmacs stream:", msg.message);
      }
    };

    ws.onclose = (event) => {
      if (this.ws !== ws) return;  // replaced or stopped
      this.ws = null;
      clearTimeout(this.attemptTimer);
      clearInterval(this.pingTimer);
      if (this.stopped) return;
      if (event.code === 1008) {  // policy violation: token missing, invalid, revoked, or no such user
        this.stop();
        this.onAuthClosed(event.reason || "Signed out by the server.");
        return;
      }
      if (subscribed) {
        if (!this.polling) this.setMode("connecting");
        this.scheduleReconnect();
      } else {
        this.attemptFailed();
      }
    };
  }

  catchUp() {
    // the stream only carries changes: fetch what changed while we were away
    stats.catchUps += 1;
    this.api.get("/datapoints/latest")
      .then((points) => this.emit(points || [], "latest"))
      .catch((err) => { if (!(err instanceof AuthLost)) console.warn("webmacs catch-up:", err.message); });
  }

  attemptFailed() {
    this.failures += 1;
    if (this.failures >= config.failuresBeforePolling) {
      this.startPolling();
    } else if (!this.polling) {
      this.setMode("connecting");
    }
    this.scheduleReconnect();
  }

  backoff() {
    const exp = config.backoffBaseMs * Math.pow(2, Math.max(0, this.failures - 1));
    const capped = Math.min(config.backoffMaxMs, exp);
    return Math.round(capped * (0.8 + 0.4 * Math.random()));  // jitter: no reconnect stampede
  }

  scheduleReconnect() {
    clearTimeout(this.retryTimer);
    const delay = this.backoff();
    this.nextRetryAt = Date.now() + delay;
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  startPing(ws) {
    clearInterval(this.pingTimer);
    this.pingTimer = setInterval(() => {
      if (this.ws !== ws || ws.readyState !== WebSocket.OPEN) return;
      // nothing heard (not even a pong) for two ping periods: the link is dead
      if (Date.now() - this.lastMessageAt > 2 * config.pingIntervalMs + 5000) {
        ws.close(4000, "No reply to ping");
        return;
      }
      ws.send(JSON.stringify({ type: "ping" }));
    }, config.pingIntervalMs);
  }

  startPolling() {
    if (this.polling || this.stopped) return;
    this.polling = true;
    this.setMode("polling");
    this.poll();
    this.pollTimer = setInterval(() => this.poll(), config.pollIntervalMs);
  }

  stopPolling() {
    if (!this.polling) return;
    this.polling = false;
    clearInterval(this.pollTimer);
    this.pollTimer = null;
  }

  poll() {
    if (!this.polling || this.pollInFlight) return;
    this.pollInFlight = true;
    stats.polls += 1;
    this.api.get("/datapoints/latest")
      .then((points) => { if (this.polling) this.emit(points || [], "polling"); })
      .catch((err) => { if (!(err instanceof AuthLost)) console.warn("webmacs poll:", err.message); })
      .finally(() => { this.pollInFlight = false; });
  }

  /* The connection pill's tooltip. */
  describe() {
    if (this.mode === "websocket") return "Live data over WebSocket";
    const wait = this.nextRetryAt ? Math.max(0, Math.round((this.nextRetryAt - Date.now()) / 1000)) : 0;
    return (this.mode === "polling" ? "WebSocket unavailable: polling every " + config.pollIntervalMs + " ms. "
      : "Connecting. ") + this.failures + " failed attempt(s); next try in " + wait + " s";
  }
}
