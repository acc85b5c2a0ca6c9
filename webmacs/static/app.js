/* WebMACS live dashboard: login, one tile per event (value, age, live chart),
 * the running experiment, and the live connection of websocket-api.md
 * ("Frontend Fallback Strategy"):
 *
 *   - WebSocket first: /ws/datapoints/stream?token=..., a {"type":"ping"} every 25 s;
 *   - after 3 consecutive failed connection attempts, poll GET /api/v1/datapoints/latest
 *     every 1500 ms, while retrying the WebSocket with capped exponential backoff;
 *   - when the WebSocket is back (its "connected" message), polling stops;
 *   - a close with code 1008 (auth) does not retry: back to the login form, with the
 *     close reason shown. A 401 from any REST call also returns to the login form.
 *
 * Timings can be overridden for tests with window.WEBMACS_CONFIG = {...} (set before
 * this script runs) or query parameters (?backoffMaxMs=500). No build step.
 */
(function () {
  "use strict";

  const DEFAULTS = {
    pingIntervalMs: 25000,        // keep-alive ping (spec: 25 s)
    pollIntervalMs: 1500,         // fallback polling period (spec: 1500 ms)
    failuresBeforePolling: 3,     // consecutive failed attempts before polling (spec: 3)
    backoffBaseMs: 1000,          // reconnect delays: 1 s, 2 s, 4 s ... capped at backoffMaxMs
    backoffMaxMs: 5000,
    connectTimeoutMs: 10000,      // an attempt with no "connected" message by then has failed
    chartMinutes: 5,              // chart window
    chartMaxPoints: 300,          // history points per chart (server-side downsampling)
    staleAfterMs: 30000,          // a value older than this is shown as stale
    experimentRefreshMs: 15000,
  };
  const TOKEN_KEY = "webmacs.token";
  const MODES = ["websocket", "polling", "connecting"];

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

  const config = loadConfig();
  const $ = (id) => document.getElementById(id);

  // --- small helpers -----------------------------------------------------------------

  class AuthLost extends Error {}
  class ApiFailure extends Error {
    constructor(status, detail) {
      super(detail || ("HTTP " + status));
      this.status = status;
    }
  }

  function formatValue(v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return "—";
    const a = Math.abs(v);
    const digits = a >= 1000 ? 1 : a >= 100 ? 2 : a >= 1 ? 3 : a === 0 ? 0 : 4;
    return v.toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function formatAge(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 2) return "just now";
    if (s < 90) return s + " s ago";
    const m = Math.round(s / 60);
    if (m < 90) return m + " min ago";
    const h = Math.round(m / 60);
    if (h < 48) return h + " h ago";
    return Math.round(h / 24) + " d ago";
  }

  function formatClock(ms) {
    return new Date(ms).toLocaleString("en-GB", {
      day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  /* x-axis labels: 24-hour local clock, seconds only when ticks are closer than a minute */
  function timeTicks(u, splits, axisIdx, space, incr) {
    const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
    if (incr < 60) opts.second = "2-digit";
    return splits.map((s) => new Date(s * 1000).toLocaleTimeString("en-GB", opts));
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- the live connection ---------------------------------------------------------------

  /* Owns the WebSocket, the reconnect backoff and the polling fallback.
   * callbacks: onPoints(points, source), onMode(mode), onConnected(), onAuthClosed(reason) */
  class LiveConnection {
    constructor(token, api, callbacks) {
      this.token = token;
      this.api = api;
      this.cb = callbacks;
      this.ws = null;
      this.mode = "connecting";
      this.failures = 0;          // consecutive failed connection attempts
      this.polling = false;
      this.pollTimer = null;
      this.pollInFlight = false;
      this.retryTimer = null;
      this.pingTimer = null;
      this.attemptTimer = null;
      this.lastMessageAt = 0;
      this.nextRetryAt = null;
      this.stopped = false;
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

    setMode(mode) {
      if (MODES.indexOf(mode) < 0 || mode === this.mode) return;
      this.mode = mode;
      this.cb.onMode(mode);
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
          this.cb.onConnected();
        } else if (msg.type === "datapoints_batch") {
          this.cb.onPoints(msg.datapoints || [], "websocket");
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
          this.cb.onAuthClosed(event.reason || "Signed out by the server.");
          return;
        }
        if (subscribed) {
          // an established connection dropped: reconnect; attempts count from zero
          if (!this.polling) this.setMode("connecting");
          this.scheduleReconnect();
        } else {
          this.attemptFailed();
        }
      };
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
      this.api("GET", "/datapoints/latest")
        .then((points) => { if (this.polling) this.cb.onPoints(points || [], "polling"); })
        .catch((err) => { if (!(err instanceof AuthLost)) console.warn("webmacs poll:", err.message); })
        .finally(() => { this.pollInFlight = false; });
    }
  }

  // --- tiles -------------------------------------------------------------------------------

  const CHART_COLORS = ["#4fc3f7", "#81c784", "#ffb74d", "#ba68c8", "#f06292", "#4db6ac", "#fff176", "#90a4ae"];

  class Tile {
    constructor(event, index) {
      this.event = event;
      this.xs = [];   // seconds (uPlot's time unit)
      this.ys = [];
      this.lastMs = null;
      this.value = null;
      this.dirty = false;
      this.color = CHART_COLORS[index % CHART_COLORS.length];

      const root = el("article", "tile");
      root.dataset.eventId = event.public_id;
      const head = el("header", "tile-head");
      head.appendChild(el("h2", "tile-name", event.name));
      if (event.unit) head.appendChild(el("span", "tile-unit", event.unit));
      root.appendChild(head);
      const reading = el("div", "tile-reading");
      this.valueEl = el("span", "value", "—");
      this.valueEl.dataset.value = "";
      reading.appendChild(this.valueEl);
      if (event.unit) reading.appendChild(el("span", "value-unit", event.unit));
      root.appendChild(reading);
      this.ageEl = el("div", "age", "no data yet");
      root.appendChild(this.ageEl);
      this.chartEl = el("div", "chart");
      root.appendChild(this.chartEl);
      this.root = root;
      this.plot = null;
    }

    mount(parent) {
      parent.appendChild(this.root);
      if (typeof window.uPlot !== "function") return;
      const axis = {
        stroke: "#8b96a8",
        grid: { stroke: "rgba(255,255,255,0.06)", width: 1 },
        ticks: { stroke: "rgba(255,255,255,0.12)", width: 1 },
        font: "12px system-ui, sans-serif",
      };
      this.plot = new window.uPlot({
        width: Math.max(200, this.chartEl.clientWidth),
        height: Math.max(100, this.chartEl.clientHeight),
        legend: { show: false },
        cursor: { show: false },
        scales: { x: { time: true } },
        axes: [Object.assign({ values: timeTicks }, axis), Object.assign({ size: 56 }, axis)],
        series: [{}, { stroke: this.color, width: 2, fill: this.color + "22", points: { size: 6, fill: this.color } }],
      }, [this.xs, this.ys], this.chartEl);
      this.resizer = new ResizeObserver(() => {
        const w = this.chartEl.clientWidth, h = this.chartEl.clientHeight;
        if (w > 0 && h > 0) this.plot.setSize({ width: w, height: h });
      });
      this.resizer.observe(this.chartEl);
    }

    destroy() {
      if (this.resizer) this.resizer.disconnect();
      if (this.plot) this.plot.destroy();
      this.root.remove();
    }

    /* History from /datapoints/series, oldest first; live points already held win. */
    setHistory(points) {
      const firstLive = this.xs.length ? this.xs[0] : Infinity;
      const hx = [], hy = [];
      for (const p of points) {
        const t = Date.parse(p.timestamp) / 1000;
        if (Number.isFinite(t) && t < firstLive && (hx.length === 0 || t > hx[hx.length - 1])) {
          hx.push(t);
          hy.push(p.value);
        }
      }
      this.xs = hx.concat(this.xs);
      this.ys = hy.concat(this.ys);
      if (this.lastMs === null && points.length) this.add(points[points.length - 1]);
      this.dirty = true;
    }

    /* One reading (stream, poll or latest); older or repeated readings are ignored. */
    add(point) {
      const ms = Date.parse(point.timestamp);
      if (!Number.isFinite(ms) || typeof point.value !== "number") return false;
      if (this.lastMs !== null && ms <= this.lastMs) return false;
      this.lastMs = ms;
      this.value = point.value;
      this.valueEl.textContent = formatValue(point.value);
      this.valueEl.dataset.value = String(point.value);
      this.valueEl.dataset.timestamp = point.timestamp;
      if (this.valueEl.animate) {  // a short highlight; no forced layout
        this.valueEl.animate([{ color: "#ffffff", textShadow: "0 0 18px rgba(79,195,247,0.9)" }, {}],
                             { duration: 700, easing: "ease-out" });
      }
      const t = ms / 1000;
      if (this.xs.length === 0 || t > this.xs[this.xs.length - 1]) {
        this.xs.push(t);
        this.ys.push(point.value);
        this.dirty = true;
      }
      this.updateAge(Date.now());
      return true;
    }

    updateAge(now) {
      if (this.lastMs === null) return;
      const age = now - this.lastMs;
      this.ageEl.textContent = "updated " + formatAge(age);
      this.ageEl.dataset.ageSeconds = String(Math.max(0, Math.round(age / 1000)));
      this.root.classList.toggle("stale", age > config.staleAfterMs);
    }

    /* Slide the window; redraw when data changed. */
    render(now) {
      const min = now / 1000 - config.chartMinutes * 60;
      let drop = 0;
      while (drop < this.xs.length - 1 && this.xs[drop] < min - 60) drop++;
      if (drop) {
        this.xs.splice(0, drop);
        this.ys.splice(0, drop);
        this.dirty = true;
      }
      if (!this.plot) return;
      if (this.dirty) {
        this.plot.setData([this.xs, this.ys], false);
        this.dirty = false;
      }
      this.plot.setScale("x", { min: min, max: now / 1000 });
    }
  }

  // --- the app --------------------------------------------------------------------------------

  const stats = { polls: 0, catchUps: 0, streamBatches: 0 };
  let session = null;  // the signed-in session; replaced on every sign-in

  class DashboardSession {
    constructor(token) {
      this.token = token;
      this.alive = true;
      this.tiles = new Map();
      this.user = null;
      this.experiment = null;
      this.timers = [];
      this.reloadingEvents = null;
      this.stopArmedUntil = 0;
      this.api = (method, path, body) => this.request(method, path, body);
      this.live = new LiveConnection(token, this.api, {
        onPoints: (points, source) => this.onPoints(points, source),
        onMode: (mode) => showMode(mode, this.live),
        onConnected: () => this.catchUp(),
        onAuthClosed: (reason) => signOut(reason),
      });
    }

    async request(method, path, body) {
      if (!this.alive) throw new AuthLost("signed out");
      const headers = { Accept: "application/json", Authorization: "Bearer " + this.token };
      const init = { method: method, headers: headers, cache: "no-store" };
      if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const resp = await fetch("/api/v1" + path, init);
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (resp.status === 401) {
        const reason = (data && data.detail) || "Your session has ended.";
        if (this.alive) signOut(reason);
        throw new AuthLost(reason);
      }
      if (!resp.ok) throw new ApiFailure(resp.status, data && data.detail);
      return data;
    }

    async start() {
      this.user = await this.api("GET", "/auth/me");
      $("user-name").textContent = this.user.username + " · " + this.user.role;
      const canOperate = this.user.role === "operator" || this.user.role === "admin";
      $("experiment").dataset.canOperate = canOperate ? "true" : "false";
      this.live.start();
      this.every(1000, () => this.tick());
      this.every(config.experimentRefreshMs, () => this.guard(this.loadExperiment()));
      const results = await Promise.allSettled([this.loadEvents(), this.loadExperiment()]);
      const failed = results.find((r) => r.status === "rejected");
      if (failed) throw failed.reason;
    }

    stop() {
      this.alive = false;
      this.live.stop();
      for (const t of this.timers) clearInterval(t);
      this.timers = [];
      for (const tile of this.tiles.values()) tile.destroy();
      this.tiles.clear();
    }

    every(ms, fn) { this.timers.push(setInterval(fn, ms)); }

    guard(promise) {
      return promise.catch((err) => {
        if (err instanceof AuthLost || !this.alive) return;
        showBanner(err.message);
      });
    }

    // events and their history
    async loadEvents() {
      const events = [];
      for (let page = 1; page < 1000; page++) {
        const resp = await this.api("GET", "/events?page=" + page + "&page_size=100");
        events.push.apply(events, resp.data);
        if (events.length >= resp.total || resp.data.length === 0) break;
      }
      if (!this.alive) return;
      const fresh = [];
      const container = $("tiles");
      events.forEach((event, i) => {
        if (this.tiles.has(event.public_id)) return;
        const tile = new Tile(event, i);
        this.tiles.set(event.public_id, tile);
        tile.mount(container);
        fresh.push(tile);
      });
      $("no-events").hidden = this.tiles.size > 0;
      if (fresh.length) await this.loadHistory(fresh);
    }

    async loadHistory(tiles) {
      const latest = this.api("GET", "/datapoints/latest").then((ok) => ({ ok: ok }), (err) => ({ err: err }));
      for (let i = 0; i < tiles.length; i += 20) {  // the series endpoint takes 1-20 events
        const group = tiles.slice(i, i + 20);
        const series = await this.api("POST", "/datapoints/series", {
          event_public_ids: group.map((t) => t.event.public_id),
          minutes: config.chartMinutes,
          max_points: config.chartMaxPoints,
        });
        if (!this.alive) return;
        for (const tile of group) tile.setHistory(series[tile.event.public_id] || []);
      }
      const got = await latest;
      if (got.err) throw got.err;
      this.onPoints(got.ok || [], "latest");
      this.tick();
    }

    reloadEvents() {
      if (!this.reloadingEvents) {
        this.reloadingEvents = this.guard(this.loadEvents()).finally(() => { this.reloadingEvents = null; });
      }
    }

    // live data
    onPoints(points, source) {
      if (!this.alive) return;
      if (source === "websocket") stats.streamBatches += 1;
      let unknown = false;
      for (const p of points) {
        const tile = this.tiles.get(p.event_public_id);
        if (!tile) { unknown = true; continue; }
        tile.add(p);
        const shown = this.experiment ? this.experiment.public_id : null;
        if (source !== "latest" && (p.experiment_public_id || null) !== shown) this.experimentChanged();
      }
      if (unknown && source !== "latest") this.reloadEvents();
      if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
    }

    catchUp() {
      // the stream only carries changes: fetch what changed while we were away
      stats.catchUps += 1;
      this.guard(this.api("GET", "/datapoints/latest").then((p) => this.onPoints(p || [], "latest")));
    }

    draw() {
      const now = Date.now();
      for (const tile of this.tiles.values()) if (tile.dirty) tile.render(now);
    }

    tick() {
      const now = Date.now();
      for (const tile of this.tiles.values()) {
        tile.updateAge(now);
        tile.render(now);
      }
      this.renderExperimentAge(now);
      showMode(this.live.mode, this.live);
    }

    // experiment
    experimentChanged() {
      const now = Date.now();
      if (this.experimentCheckAt && now - this.experimentCheckAt < 3000) return;
      this.experimentCheckAt = now;
      this.guard(this.loadExperiment());
    }

    async loadExperiment() {
      const resp = await this.api("GET", "/experiments?page=1&page_size=10");
      if (!this.alive) return;
      const running = (resp.data || []).find((x) => x.status === "running" || (!x.stopped_on && x.started_on));
      this.experiment = running || null;
      this.renderExperiment();
    }

    renderExperiment() {
      const box = $("experiment");
      const exp = this.experiment;
      const canOperate = box.dataset.canOperate === "true";
      box.dataset.state = exp ? "running" : "none";
      box.dataset.experimentId = exp ? exp.public_id : "";
      $("experiment-badge").textContent = exp ? "Running" : "No experiment";
      $("experiment-name").textContent = exp ? exp.name : "";
      $("experiment-start-form").hidden = !canOperate || !!exp;
      $("experiment-stop").hidden = !canOperate || !exp;
      if (!exp) this.stopArmedUntil = 0;
      this.renderExperimentAge(Date.now());
    }

    renderExperimentAge(now) {
      const exp = this.experiment;
      const started = exp && exp.started_on ? Date.parse(exp.started_on) : NaN;
      $("experiment-started").textContent = Number.isFinite(started)
        ? "since " + formatClock(started) + " (" + formatAge(now - started).replace(" ago", "") + ")" : "";
      const stop = $("experiment-stop");
      const armed = now < this.stopArmedUntil;
      stop.textContent = armed ? "Confirm stop" : "Stop";
      stop.classList.toggle("armed", armed);
    }

    async startExperiment(name) {
      try {
        await this.api("POST", "/experiments", { name: name });
        $("experiment-name-input").value = "";
        hideBanner();
      } finally {
        await this.loadExperiment();
      }
    }

    async stopExperiment() {
      const now = Date.now();
      if (now >= this.stopArmedUntil) {  // first click arms, a second within 5 s stops
        this.stopArmedUntil = now + 5000;
        this.renderExperimentAge(now);
        return;
      }
      this.stopArmedUntil = 0;
      const exp = this.experiment;
      try {
        if (exp) await this.api("PUT", "/experiments/" + encodeURIComponent(exp.public_id) + "/stop");
        hideBanner();
      } finally {
        await this.loadExperiment();
      }
    }
  }

  // --- views ------------------------------------------------------------------------------------

  function showMode(mode, live) {
    const box = $("connection");
    const label = $("connection-mode");
    if (label.textContent !== mode) {
      label.textContent = mode;
      box.dataset.mode = mode;
      api.modeSince = performance.now();
    }
    let title = "Live data over WebSocket";
    if (mode !== "websocket" && live) {
      const wait = live.nextRetryAt ? Math.max(0, Math.round((live.nextRetryAt - Date.now()) / 1000)) : 0;
      title = (mode === "polling" ? "WebSocket unavailable: polling every " + config.pollIntervalMs + " ms. "
        : "Connecting. ") + live.failures + " failed attempt(s); next try in " + wait + " s";
    }
    box.title = title;
  }

  let bannerTimer = null;

  function showBanner(text) {
    const banner = $("banner");
    banner.textContent = text;
    banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(hideBanner, 15000);
  }

  function hideBanner() { $("banner").hidden = true; }

  function showLogin(message) {
    $("dashboard-view").hidden = true;
    $("login-view").hidden = false;
    const msg = $("login-message");
    msg.textContent = message || "";
    msg.hidden = !message;
    $("login-password").value = "";
    $("login-submit").disabled = false;
    ($("login-email").value ? $("login-password") : $("login-email")).focus();
    showLoginHint();
  }

  // No account exists yet: say how to create the first admin (GET /api/v1/auth/login-hint).
  async function showLoginHint() {
    const hint = $("login-hint");
    try {
      const resp = await fetch("/api/v1/auth/login-hint");
      const body = resp.ok ? await resp.json() : null;
      hint.textContent = body && !body.users_exist ? body.message : "";
    } catch (err) {
      hint.textContent = "";
    }
    hint.hidden = !hint.textContent;
  }

  function showDashboard() {
    $("login-view").hidden = true;
    $("dashboard-view").hidden = false;
    hideBanner();
    showMode("connecting", null);
  }

  function signOut(message) {
    if (session) {
      session.stop();
      session = null;
    }
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(message);
  }

  async function startSession(token) {
    if (session) session.stop();
    sessionStorage.setItem(TOKEN_KEY, token);
    session = new DashboardSession(token);
    showDashboard();
    const current = session;
    try {
      await current.start();
    } catch (err) {
      if (err instanceof AuthLost || current !== session) return;
      showBanner("Could not load the dashboard: " + err.message);
    }
  }

  async function login(event) {
    event.preventDefault();
    const email = $("login-email").value.trim();
    const password = $("login-password").value;
    const msg = $("login-message");
    if (!email || !password) {
      msg.textContent = "Enter your email and password.";
      msg.hidden = false;
      return;
    }
    $("login-submit").disabled = true;
    try {
      const resp = await fetch("/api/v1/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ email: email, password: password }),
      });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (!resp.ok || !data || !data.access_token) {
        msg.textContent = (data && data.detail) || ("Sign-in failed (HTTP " + resp.status + ").");
        msg.hidden = false;
        return;
      }
      $("login-password").value = "";
      await startSession(data.access_token);
    } catch (err) {
      msg.textContent = "Cannot reach the server: " + err.message;
      msg.hidden = false;
    } finally {
      $("login-submit").disabled = false;
    }
  }

  async function logout() {
    const current = session;
    if (!current) return;
    current.live.stop();  // our own close, before the server's 1008 "Token has been revoked"
    try {
      await current.api("POST", "/auth/logout");
    } catch (err) {
      // signed out locally anyway; the token expires on its own
    }
    signOut("You have been signed out.");
  }

  // --- single sign-on (docs/sso.md) ---------------------------------------------------------------

  /* Show "Sign in with <provider>" when the server has SSO on. */
  async function showSsoButton() {
    try {
      const resp = await fetch("/api/v1/auth/sso/config", { headers: { Accept: "application/json" } });
      const cfg = resp.ok ? await resp.json() : null;
      if (cfg && cfg.enabled) {
        $("sso-button").textContent = "Sign in with " + cfg.provider_name;
        $("sso-button").hidden = false;
      }
    } catch (err) {
      // no button: password login still works
    }
  }

  /* /sso-callback?code=...: trade the one-time code for a token, like a password login. */
  async function finishSso(code) {
    window.history.replaceState(null, "", "/");  // the code is single-use; keep it out of history
    try {
      const resp = await fetch("/api/v1/auth/sso/exchange", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ code: code }),
      });
      let data = null;
      try { data = await resp.json(); } catch (e) { data = null; }
      if (resp.ok && data && data.access_token) {
        await startSession(data.access_token);
        return;
      }
      showLogin("Single sign-on failed: " + ((data && data.detail) || ("HTTP " + resp.status)));
    } catch (err) {
      showLogin("Cannot reach the server: " + err.message);
    }
  }

  // --- wiring -------------------------------------------------------------------------------------

  const api = {
    config: config,
    stats: stats,
    modeSince: 0,
    get mode() { return $("connection-mode").textContent; },
    get polling() { return !!(session && session.live.polling); },
    get failures() { return session ? session.live.failures : 0; },
    get signedIn() { return !!session; },
  };
  window.webmacs = api;

  function init() {
    $("login-form").addEventListener("submit", login);
    $("logout").addEventListener("click", logout);
    $("experiment-start-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("experiment-name-input").value.trim();
      if (!name || !session) return;
      session.guard(session.startExperiment(name));
    });
    $("experiment-stop").addEventListener("click", () => {
      if (session) session.guard(session.stopExperiment());
    });
    showSsoButton();
    const ssoCode = window.location.pathname === "/sso-callback"
      ? new URLSearchParams(window.location.search).get("code") : null;
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (ssoCode) finishSso(ssoCode);
    else if (token) startSession(token);
    else showLogin("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
