// A trend on a canvas: a point's history as time buckets (min–max per pixel column, so a spike
// stays visible, and a line through each bucket's last value), a time axis with "now" at the
// right, a value axis with the unit and grouped digits, the rule thresholds and the point's
// min/max as lines, bad readings drawn as gaps, step lines for bools and setpoints, and the
// time and value under a finger or the mouse.

const MIN = 60_000;
const HOUR = 60 * MIN;
const DAY = 24 * HOUR;
const TIME_STEPS = [
  MIN,
  2 * MIN,
  5 * MIN,
  10 * MIN,
  15 * MIN,
  30 * MIN,
  HOUR,
  2 * HOUR,
  3 * HOUR,
  6 * HOUR,
  12 * HOUR,
  DAY,
];

/** Round value-axis steps: 1, 2 or 5 times a power of ten, about `n` of them over the span. */
function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return { ticks: out, step };
}

function fmtNumber(v, step) {
  const decimals = step && step < 1 ? Math.min(6, Math.ceil(-Math.log10(step))) : 0;
  return v.toLocaleString(undefined, { minimumFractionDigits: decimals, maximumFractionDigits: decimals });
}

function fmtTick(t, span) {
  const d = new Date(t);
  if (span > 2 * DAY) return d.toLocaleDateString(undefined, { weekday: "short", day: "numeric" });
  return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

export class Trend {
  /**
   * `opts`: { unit, step (draw as steps: bools, setpoints), lines: [{ value, label, kind:
   * "threshold"|"clear"|"limit" }] }.
   */
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.opts = opts;
    this.rangeMs = HOUR;
    this.until = Date.now();
    this.buckets = []; // { t, min, max, v, gap }
    this.hover = null;
    this.onHover = null;
    canvas.addEventListener("pointermove", (e) => this.pick(e));
    canvas.addEventListener("pointerdown", (e) => this.pick(e));
    canvas.addEventListener("pointerleave", () => {
      this.hover = null;
      this.draw();
      if (this.onHover) this.onHover(null);
    });
  }

  /** The history of `rangeMs` up to `until`, as the store's buckets. */
  set(buckets, rangeMs, until) {
    this.rangeMs = rangeMs;
    this.until = until;
    this.buckets = buckets;
    this.draw();
  }

  /** A live reading: appended when the chart ends at "now". */
  push(t, v, good) {
    this.until = Math.max(this.until, t);
    const ok = good && Number.isFinite(v);
    this.buckets.push({ t, min: ok ? v : null, max: ok ? v : null, v: ok ? v : null, gap: !ok });
    const cut = this.until - this.rangeMs;
    while (this.buckets.length && this.buckets[0].t < cut) this.buckets.shift();
    this.draw();
  }

  pick(e) {
    const r = this.canvas.getBoundingClientRect();
    const t = this.t0 + ((e.clientX - r.left - this.left) / this.plotW) * this.rangeMs;
    let best = null;
    for (const b of this.buckets) if (b.v != null && (!best || Math.abs(b.t - t) < Math.abs(best.t - t))) best = b;
    this.hover = best;
    this.draw();
    if (this.onHover) this.onHover(best);
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth,
      h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * ratio) || c.height !== Math.round(h * ratio)) {
      c.width = Math.round(w * ratio);
      c.height = Math.round(h * ratio);
    }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
    const fg = color("--accent", "#0b5cad"),
      muted = color("--muted", "#555"),
      line = color("--line", "#8a94a0");
    const alarm = color("--alarm", "#a4141a");
    g.font = "11px system-ui, sans-serif";
    this.t0 = this.until - this.rangeMs;
    const values = this.buckets.flatMap((b) => (b.v == null ? [] : [b.min, b.max]));
    for (const l of this.opts.lines || []) values.push(l.value);
    const pts = this.buckets.filter((b) => b.v != null);
    if (!pts.length) {
      g.fillStyle = muted;
      g.fillText("no readings in this range", 8, h / 2);
      return;
    }
    let lo = Math.min(...values),
      hi = Math.max(...values);
    if (this.opts.step && lo >= 0 && hi <= 1) {
      lo = 0;
      hi = 1;
    }
    if (hi - lo < 1e-9) {
      hi += 1;
      lo -= 1;
    }
    const span = hi - lo;
    lo -= span * 0.05;
    hi += span * 0.05;
    const { ticks, step } =
      this.opts.step && hi - lo <= 1.2
        ? { ticks: [0, 1], step: 1 }
        : niceTicks(lo, hi, Math.max(2, Math.floor(h / 28)));
    const labels = ticks.map((v) => (this.opts.bool ? (v ? "ON" : "OFF") : fmtNumber(v, step)));
    this.left = Math.ceil(Math.max(...labels.map((s) => g.measureText(s).width))) + 8;
    const top = 14,
      bottom = 16;
    this.plotW = w - this.left - 4;
    const plotH = h - top - bottom;
    const x = (t) => this.left + ((t - this.t0) / this.rangeMs) * this.plotW;
    const y = (v) => top + (1 - (v - lo) / (hi - lo)) * plotH;

    // Axes: value ticks with grid lines, the unit above them; time ticks, "now" at the right.
    g.fillStyle = muted;
    g.strokeStyle = line;
    g.lineWidth = 1;
    g.globalAlpha = 0.35;
    ticks.forEach((v) => {
      g.beginPath();
      g.moveTo(this.left, y(v));
      g.lineTo(w - 4, y(v));
      g.stroke();
    });
    g.globalAlpha = 1;
    g.textAlign = "right";
    for (const [i, v] of ticks.entries()) g.fillText(labels[i], this.left - 4, y(v) + 4);
    g.textAlign = "left";
    if (this.opts.unit) g.fillText(this.opts.unit, 2, 10);
    const tstep = TIME_STEPS.find((s) => this.plotW / (this.rangeMs / s) >= 70) || DAY;
    const first = Math.ceil(this.t0 / tstep) * tstep;
    g.textAlign = "center";
    for (let t = first; t <= this.until - tstep / 3; t += tstep) g.fillText(fmtTick(t, this.rangeMs), x(t), h - 3);
    g.textAlign = "right";
    g.fillText("now", w - 4, h - 3);
    g.textAlign = "left";

    // Thresholds (solid), clear bands (dashed) and the point's limits (dotted).
    for (const l of this.opts.lines || []) {
      if (l.value < lo || l.value > hi) continue;
      g.strokeStyle = l.kind === "limit" ? muted : alarm;
      g.setLineDash(l.kind === "threshold" ? [] : l.kind === "clear" ? [6, 4] : [2, 3]);
      g.beginPath();
      g.moveTo(this.left, y(l.value));
      g.lineTo(w - 4, y(l.value));
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = l.kind === "limit" ? muted : alarm;
      // Raising values labelled at the left, clearing ones at the right: close pairs stay legible.
      if (l.kind === "clear") {
        g.textAlign = "right";
        g.fillText(l.label, w - 8, y(l.value) + 12);
        g.textAlign = "left";
      } else g.fillText(l.label, this.left + 4, y(l.value) - 3);
    }

    // Each bucket's range as a band, then the line through its last values; a gap breaks it.
    g.fillStyle = fg;
    g.globalAlpha = 0.25;
    for (const b of pts) if (b.max > b.min) g.fillRect(x(b.t) - 1, y(b.max), 2, Math.max(1, y(b.min) - y(b.max)));
    g.globalAlpha = 1;
    g.strokeStyle = fg;
    g.lineWidth = 2;
    g.beginPath();
    let drawing = false,
      prevY = 0;
    for (const b of this.buckets) {
      if (b.v == null) {
        drawing = false;
        continue;
      }
      const px = x(b.t),
        py = y(b.v);
      if (!drawing) g.moveTo(px, py);
      else if (this.opts.step) {
        g.lineTo(px, prevY);
        g.lineTo(px, py);
      } else g.lineTo(px, py);
      drawing = true;
      prevY = py;
    }
    // A value holds until it changes: carry the last one to the right edge.
    const last = pts[pts.length - 1];
    if (drawing && Date.now() - this.until < this.rangeMs / 10) g.lineTo(x(this.until), y(last.v));
    g.stroke();

    if (this.hover) {
      g.strokeStyle = muted;
      g.setLineDash([3, 3]);
      g.beginPath();
      g.moveTo(x(this.hover.t), top);
      g.lineTo(x(this.hover.t), top + plotH);
      g.stroke();
      g.setLineDash([]);
      g.fillStyle = fg;
      g.beginPath();
      g.arc(x(this.hover.t), y(this.hover.v), 4, 0, 2 * Math.PI);
      g.fill();
    }
  }
}
