/* Number, time and age formatting shared by the views. */

export function formatValue(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  const digits = a >= 1000 ? 1 : a >= 100 ? 2 : a >= 1 ? 3 : a === 0 ? 0 : 4;
  return v.toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function formatAge(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 2) return "just now";
  if (s < 90) return s + " s ago";
  const m = Math.round(s / 60);
  if (m < 90) return m + " min ago";
  const h = Math.round(m / 60);
  if (h < 48) return h + " h ago";
  return Math.round(h / 24) + " d ago";
}

export function formatDuration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  if (h) return h + " h " + m + " min";
  if (m) return m + " min " + r + " s";
  return r + " s";
}

export function formatClock(ms) {
  return new Date(ms).toLocaleString("en-GB", {
    day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

export function formatTime(iso) {
  if (!iso) return "—";
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? formatClock(ms) : iso;
}

/* x-axis labels: 24-hour local clock, seconds only when ticks are closer than a minute */
export function timeTicks(u, splits, axisIdx, space, incr) {
  const opts = { hour: "2-digit", minute: "2-digit", hour12: false };
  if (incr < 60) opts.second = "2-digit";
  return splits.map((s) => new Date(s * 1000).toLocaleTimeString("en-GB", opts));
}

/* y range for uPlot: a flat series is shown around its value, not stretched to 0-100. */
export function valueRange(u, min, max) {
  if (min === null || max === null || !Number.isFinite(min) || !Number.isFinite(max)) return [0, 1];
  if (min === max) {
    const pad = Math.abs(min) > 0 ? Math.abs(min) * 0.05 : 1;
    return [min - pad, max + pad];
  }
  const pad = (max - min) * 0.08;
  return [min - pad, max + pad];
}

export const CHART_COLORS = ["#4fc3f7", "#81c784", "#ffb74d", "#ba68c8", "#f06292", "#4db6ac", "#fff176", "#90a4ae"];
