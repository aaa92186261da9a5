// A small trend chart on a canvas: one series of (time ms, number), the last hour, redrawn only
// when asked (a new point arrives), scaled for the device's pixel ratio.

export class Trend {
  constructor(canvas, windowMs = 3600_000) {
    this.canvas = canvas;
    this.windowMs = windowMs;
    this.points = [];
  }

  set(points) {
    this.points = points.filter((p) => Number.isFinite(p[1]));
    this.draw();
  }

  push(t, v) {
    if (!Number.isFinite(v)) return;
    this.points.push([t, v]);
    const cut = Date.now() - this.windowMs;
    while (this.points.length && this.points[0][0] < cut) this.points.shift();
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = c.clientWidth, h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * ratio)) { c.width = Math.round(w * ratio); c.height = Math.round(h * ratio); }
    const g = c.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const style = getComputedStyle(document.documentElement);
    const fg = style.getPropertyValue("--accent").trim() || "#0b5cad";
    const muted = style.getPropertyValue("--muted").trim() || "#555";
    const now = Date.now(), t0 = now - this.windowMs;
    const pts = this.points.filter((p) => p[0] >= t0);
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = muted;
    if (pts.length < 2) {
      g.fillText(pts.length ? "collecting…" : "no history in the last hour", 4, h / 2);
      return;
    }
    let lo = Math.min(...pts.map((p) => p[1])), hi = Math.max(...pts.map((p) => p[1]));
    if (hi - lo < 1e-9) { hi += 1; lo -= 1; }
    const pad = 14;
    const x = (t) => ((t - t0) / this.windowMs) * (w - 2) + 1;
    const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
    g.fillText(String(Number(hi.toPrecision(5))), 2, 11);
    g.fillText(String(Number(lo.toPrecision(5))), 2, h - 2);
    g.fillText("−1 h", w - 60, h - 2);
    g.strokeStyle = fg;
    g.lineWidth = 2;
    g.beginPath();
    pts.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
  }
}
