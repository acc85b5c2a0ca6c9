/* Overview: the running experiment (start/stop for operators) and one tile per event with
 * its latest value, its age and a chart of the last minutes (history from
 * /datapoints/series, then every live reading). Tiles are plain DOM, updated in place:
 * a wall screen with dozens of events redraws only what changed. */
import { html, useEffect, useRef, useState } from "../core/html.js";
import { config } from "../core/live.js";
import { formatValue, formatAge, formatClock, timeTicks, valueRange, CHART_COLORS } from "../core/format.js";
import { ErrorText, useAction, useNow } from "../core/ui.js";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

class Tile {
  constructor(event, index) {
    this.event = event;
    this.xs = [];   // seconds (uPlot's time unit)
    this.ys = [];
    this.lastMs = null;
    this.dirty = false;
    this.color = CHART_COLORS[index % CHART_COLORS.length];
    const root = el("article", "tile");
    root.dataset.eventId = event.public_id;
    const head = el("header", "tile-head");
    head.appendChild(el("h2", "tile-name", event.name));
    if (event.unit) head.appendChild(el("span", "tile-unit", event.unit));  // the unit, once
    root.appendChild(head);
    this.valueEl = el("div", "value", "—");
    this.valueEl.dataset.value = "";
    root.appendChild(this.valueEl);
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
      scales: { x: { time: true }, y: { range: valueRange } },
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

  /* History, oldest first; live points already held win. */
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

  /* One reading; older or repeated readings are ignored. */
  add(point) {
    const ms = Date.parse(point.timestamp);
    if (!Number.isFinite(ms) || typeof point.value !== "number") return false;
    if (this.lastMs !== null && ms <= this.lastMs) return false;
    this.lastMs = ms;
    this.valueEl.textContent = formatValue(point.value);
    this.valueEl.dataset.value = String(point.value);
    this.valueEl.dataset.timestamp = point.timestamp;
    if (this.valueEl.animate) {
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

/* The tiles of one mounted Overview. */
class Board {
  constructor(session, container, onCount, onExperimentSeen, onError) {
    this.session = session;
    this.container = container;
    this.onCount = onCount;
    this.onExperimentSeen = onExperimentSeen;
    this.onError = onError;
    this.tiles = new Map();
    this.alive = true;
    this.frame = null;
    this.reloading = null;
    this.unsubscribe = session.live.subscribe((points, source) => this.onPoints(points, source));
    this.timer = setInterval(() => this.tick(), 1000);
  }

  stop() {
    this.alive = false;
    this.unsubscribe();
    clearInterval(this.timer);
    if (this.frame) cancelAnimationFrame(this.frame);
    for (const tile of this.tiles.values()) tile.destroy();
    this.tiles.clear();
  }

  async load() {
    const events = await this.session.api.all("/events");
    if (!this.alive) return;
    const fresh = [];
    events.forEach((event, i) => {
      if (this.tiles.has(event.public_id)) return;
      const tile = new Tile(event, i);
      this.tiles.set(event.public_id, tile);
      tile.mount(this.container);
      fresh.push(tile);
    });
    this.onCount(this.tiles.size);
    if (fresh.length) await this.loadHistory(fresh);
  }

  async loadHistory(tiles) {
    const api = this.session.api;
    const latest = api.get("/datapoints/latest").then((ok) => ({ ok: ok }), (err) => ({ err: err }));
    for (let i = 0; i < tiles.length; i += 20) {  // the series endpoint takes 1-20 events
      const group = tiles.slice(i, i + 20);
      const series = await api.post("/datapoints/series", {
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
    for (const [id, held] of this.session.live.latest) {  // what the stream brought meanwhile
      const tile = this.tiles.get(id);
      if (tile) tile.add({ value: held.value, timestamp: held.timestamp });
    }
    this.tick();
  }

  onPoints(points, source) {
    if (!this.alive) return;
    let unknown = false;
    for (const p of points) {
      const tile = this.tiles.get(p.event_public_id);
      if (!tile) { unknown = true; continue; }
      tile.add(p);
      if (source !== "latest") this.onExperimentSeen(p.experiment_public_id || null);
    }
    if (unknown && source !== "latest" && !this.reloading) {
      this.reloading = this.load().catch(this.onError).finally(() => { this.reloading = null; });
    }
    if (!this.frame) this.frame = requestAnimationFrame(() => { this.frame = null; this.draw(); });
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
  }
}

/* The running experiment: name, start, and Start/Stop for operators. */
function ExperimentBox({ session, seen }) {
  const [exp, setExp] = useState(undefined);
  const [name, setName] = useState("");
  const [armedUntil, setArmedUntil] = useState(0);
  const action = useAction();
  const now = useNow(1000);
  const canOperate = session.can("operator");
  const load = async () => {
    const resp = await session.api.get("/experiments?page=1&page_size=10");
    const running = (resp.data || []).find((x) => x.status === "running" || (!x.stopped_on && x.started_on));
    setExp(running || null);
  };
  useEffect(() => {
    action.run(load);
    const t = setInterval(() => action.run(load), config.experimentRefreshMs);
    return () => clearInterval(t);
  }, []);
  // live data names another experiment than the one shown: look again (at most every 3 s)
  const lastCheck = useRef(0);
  useEffect(() => {
    if (seen.value === undefined || exp === undefined) return;
    const shown = exp ? exp.public_id : null;
    if (seen.value !== shown && Date.now() - lastCheck.current > 3000) {
      lastCheck.current = Date.now();
      action.run(load);
    }
  }, [seen]);

  const start = (e) => {
    e.preventDefault();
    const n = name.trim();
    if (!n) return;
    action.run(async () => {
      try {
        await session.api.post("/experiments", { name: n });
        setName("");
      } finally {
        await load();
      }
    });
  };
  const armed = now < armedUntil;
  const stop = () => {
    if (!armed) { setArmedUntil(Date.now() + 5000); return; }
    setArmedUntil(0);
    action.run(async () => {
      try {
        if (exp) await session.api.put("/experiments/" + encodeURIComponent(exp.public_id) + "/stop");
      } finally {
        await load();
      }
    });
  };
  const started = exp && exp.started_on ? Date.parse(exp.started_on) : NaN;
  return html`<section id="experiment" class="experiment" data-state=${exp ? "running" : "none"}
      data-experiment-id=${exp ? exp.public_id : ""} data-can-operate=${canOperate ? "true" : "false"}
      aria-label="Experiment">
    <span class="experiment-badge" id="experiment-badge">${exp ? "Running" : "No experiment"}</span>
    <span class="experiment-name" id="experiment-name" title=${exp ? exp.name : ""}>${exp ? exp.name : ""}</span>
    <span class="experiment-started" id="experiment-started">${Number.isFinite(started)
      ? "since " + formatClock(started) + " (" + formatAge(now - started).replace(" ago", "") + ")" : ""}</span>
    <form id="experiment-start-form" class="experiment-start" hidden=${!canOperate || !!exp} onSubmit=${start}>
      <input id="experiment-name-input" type="text" maxlength="255" placeholder="New experiment name"
        aria-label="New experiment name" required value=${name} onInput=${(e) => setName(e.target.value)} />
      <button id="experiment-start" type="submit">Start</button>
    </form>
    <button id="experiment-stop" class=${"danger" + (armed ? " armed" : "")} type="button"
      hidden=${!canOperate || !exp} onClick=${stop}>${armed ? "Confirm stop" : "Stop"}</button>
    <${ErrorText} error=${action.error} id="experiment-error" />
  </section>`;
}

export default function Overview({ session }) {
  const box = useRef(null);
  const [count, setCount] = useState(null);
  const [error, setError] = useState(null);
  const [seen, setSeen] = useState({ value: undefined });
  useEffect(() => {
    const board = new Board(session, box.current, setCount,
      (id) => setSeen((s) => (s.value === id ? s : { value: id })), setError);
    board.load().catch((err) => { if (board.alive) setError(err); });
    return () => board.stop();
  }, [session]);
  return html`<div class="overview">
    <${ExperimentBox} session=${session} seen=${seen} />
    <${ErrorText} error=${error} id="banner" />
    <div id="tiles" class="tiles" ref=${box} aria-live="off"></div>
    <p id="no-events" class="empty" hidden=${count !== 0}>No events are configured yet.
      ${session.can("operator") ? html` Create a plugin instance under <a href="#/plugins">Plugins</a>.` : null}</p>
  </div>`;
}
