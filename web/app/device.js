// The device view: every point with its live value, quality and trend (ranges from 10 min to
// 7 days, from the store's buckets), and for admins a write control with an old → new
// confirmation, refused before asking when the value cannot fit the point.

import { h, setText, setClass } from "./dom.js";
import { Trend } from "./chart.js";
import { fmtValue, fmtAgo, fmtTime, QUALITY_TEXT } from "./format.js";

/** The trend ranges, from a look at the last minutes to a week. */
const RANGES = [
  { label: "10 min", ms: 600_000 },
  { label: "1 h", ms: 3_600_000 },
  { label: "8 h", ms: 28_800_000 },
  { label: "24 h", ms: 86_400_000 },
  { label: "7 d", ms: 604_800_000 },
];

/** `env`: { conn, S, isAdmin, confirmDialog }. */
export function deviceView(id, env) {
  const { conn, S, isAdmin } = env;
  const d = S.desc.get(id);
  if (!d) return { name: "device", node: h("p", { class: "error", text: `No device ${id}.` }), update() {} };
  const state = h("span", { class: "state" });
  const seen = h("span", {});
  const rows = new Map();
  const list = h("div", { class: "list" });

  for (const p of d.points) {
    const value = h("span", { class: "value" });
    const q = h("span", { class: "q" });
    const ts = h("span", { class: "small" });
    const canvas = p.type === "string" ? null : h("canvas", { "aria-label": `trend of ${p.id}`, role: "img" });
    const lines = (p.thresholds || []).map((t) => ({
      value: t.value,
      label: t.clear ? `${t.rule} clears` : t.rule,
      kind: t.clear ? "clear" : "threshold",
    }));
    if (p.min != null) lines.push({ value: p.min, label: "min", kind: "limit" });
    if (p.max != null) lines.push({ value: p.max, label: "max", kind: "limit" });
    const trend = canvas
      ? new Trend(canvas, { unit: p.unit, lines, step: p.type === "bool" || p.writable, bool: p.type === "bool" })
      : null;
    const tip = h("output", { class: "small tip" });
    if (trend)
      trend.onHover = (b) =>
        setText(
          tip,
          b
            ? `${fmtTime(b.t)} · ${fmtValue(b.v)}${p.unit ? ` ${p.unit}` : ""}${b.max > b.min ? ` (${fmtValue(b.min)} … ${fmtValue(b.max)})` : ""}`
            : "",
        );
    const row = h(
      "section",
      { class: "point-row", "data-point": p.id },
      h("header", {}, h("strong", { text: p.id }), h("span", {}, value, q), ts),
      canvas,
      canvas ? tip : null,
    );
    if (p.writable && isAdmin()) row.append(writeControl(env, d, p));
    list.append(row);
    rows.set(p.id, { el: row, value, q, ts, trend, unit: p.unit, type: p.type });
  }

  const num = (v) => (typeof v === "boolean" ? (v ? 1 : 0) : typeof v === "number" ? v : NaN);

  function paint() {
    const l = S.live.get(id);
    if (!l) return;
    setClass(state, `state ${l.online ? "on" : "off"}`);
    setText(state, l.online ? "● Online" : "○ Offline");
    setText(seen, `last read ${fmtAgo(l.lastSeen)}`);
    for (const [pid, r] of rows) {
      const p = l.points.get(pid);
      if (!p) continue;
      setText(r.value, `${fmtValue(p.value)}${r.unit ? ` ${r.unit}` : ""}`);
      setClass(r.value, `value ${p.quality}`);
      setClass(r.q, `q q-${p.quality}`);
      setText(r.q, QUALITY_TEXT[p.quality] || "");
      setText(r.ts, p.ts ? `at ${fmtTime(p.ts)}` : "");
    }
  }

  // Each point's range from the store, downsampled there to one bucket per pixel column, then
  // live samples on top. At most four requests at a time: the gateway allows 16 in flight per
  // connection, and a device may have dozens of points.
  let rangeMs = RANGES.find((r) => r.label === S.trendRange)?.ms || RANGES[1].ms;
  function loadTrends() {
    const pending = [...rows].filter(([, r]) => r.trend);
    const until = Date.now();
    const fetchNext = async () => {
      for (let item = pending.shift(); item; item = pending.shift()) {
        const [pid, r] = item;
        const columns = Math.max(50, Math.min(4000, Math.round(r.trend.canvas.clientWidth || 600)));
        try {
          const hst = await conn.call("points.history", {
            deviceId: id,
            pointId: pid,
            since: until - rangeMs,
            until,
            buckets: columns,
          });
          r.trend.set(
            hst.buckets.map((b) => ({ t: Date.parse(b.lastTs), min: b.min, max: b.max, v: b.v, gap: b.gap })),
            rangeMs,
            until,
          );
          r.el.dataset.history = String(hst.buckets.length);
        } catch (e) {
          r.trend.set([], rangeMs, until);
          r.el.dataset.history = `error ${e.code}`;
        }
      }
    };
    for (let i = 0; i < 4; i++) fetchNext();
  }
  loadTrends();
  const rangeButtons = RANGES.map((r) =>
    h("button", {
      type: "button",
      class: "ghost range",
      text: r.label,
      "aria-pressed": String(r.ms === rangeMs),
      onclick: (ev) => {
        rangeMs = r.ms;
        S.trendRange = r.label;
        for (const b of rangeButtons) b.setAttribute("aria-pressed", String(b === ev.currentTarget));
        loadTrends();
      },
    }),
  );

  paint();
  return {
    name: "device",
    node: h(
      "section",
      {},
      h("h1", { text: id }),
      h(
        "div",
        { class: "meta toolbar" },
        h("span", { text: `${d.type || "device"} · bus ${d.bus} · unit ${d.unit}` }),
        state,
        seen,
        isAdmin()
          ? h("a", { class: "button", href: `#/inspector?device=${encodeURIComponent(id)}`, text: "Inspect registers" })
          : null,
      ),
      h("div", { class: "toolbar ranges", role: "group", "aria-label": "Trend range" }, ...rangeButtons),
      list,
    ),
    update(kind, data) {
      if (kind === "telemetry" && data.deviceId === id) {
        for (const [pid, x] of Object.entries(data.points)) {
          const r = rows.get(pid);
          if (r?.trend) r.trend.push(Date.parse(data.ts), num(x.v), x.q === "good");
        }
        paint();
      } else if (kind === "devices" && data.includes(id)) paint();
    },
    redraw() {
      for (const r of rows.values()) if (r.trend) r.trend.draw();
    },
  };
}

/** The write control of a writable point: a value, a confirmation showing old → new, the result. */
function writeControl({ conn, S, confirmDialog }, d, p) {
  const inputId = `w-${d.id}-${p.id}`;
  const input =
    p.type === "bool"
      ? h(
          "select",
          { id: inputId },
          h("option", { value: "true", text: "ON" }),
          h("option", { value: "false", text: "OFF" }),
        )
      : h("input", {
          id: inputId,
          type: p.type === "string" ? "text" : "number",
          step: "any",
          inputmode: p.type === "string" ? "text" : "decimal",
          required: true,
        });
  if (p.type === "bool") {
    // The selector starts at what the device holds, not at ON.
    const now = S.live.get(d.id)?.points.get(p.id)?.value;
    if (typeof now === "boolean") input.value = String(now);
  }
  const result = h("span", { class: "result", role: "status" });
  const button = h("button", { type: "submit", text: "Write…" });
  return h(
    "form",
    {
      class: "write",
      onsubmit: async (ev) => {
        ev.preventDefault();
        const raw = input.value;
        let value;
        if (p.type === "bool") value = raw === "true";
        else if (p.type === "string") value = raw;
        else {
          value = Number(raw);
          const refused = raw === "" || !Number.isFinite(value) ? "Enter a number." : outsideRange(p, value);
          if (refused) {
            setText(result, refused);
            setClass(result, "result err");
            return;
          }
        }
        const current = S.live.get(d.id)?.points.get(p.id)?.value;
        const unit = p.unit ? ` ${p.unit}` : "";
        const ok = await confirmDialog(
          `Write ${d.id} / ${p.id}`,
          `${fmtValue(current)}${unit} → ${fmtValue(value)}${unit}`,
        );
        if (!ok) return;
        button.disabled = true;
        setText(result, "Writing…");
        setClass(result, "result");
        try {
          const r = await conn.call("device.write", { deviceId: d.id, pointId: p.id, value });
          // What the device holds now, read back, rather than what was asked.
          setText(
            result,
            r.readBack == null
              ? `Written: ${fmtValue(r.old)} → ${fmtValue(r.value)}${unit} (not read back)`
              : `Written: ${fmtValue(r.old)} → ${fmtValue(r.readBack)}${unit}, read back from the device`,
          );
          setClass(result, "result ok");
        } catch (e) {
          setText(result, `Not written (${e.code}): ${e.message}`);
          setClass(result, "result err");
        } finally {
          button.disabled = false;
        }
      },
    },
    h("div", {}, h("label", { for: inputId, text: `New ${p.id}${p.unit ? ` (${p.unit})` : ""}` }), input),
    button,
    result,
  );
}

/** Why the point cannot hold `v` (its type, scale and steps), in plain words; null when it can. */
function outsideRange(p, v) {
  const r = p.writeRange;
  if (!r) return null;
  const unit = p.unit ? ` ${p.unit}` : "";
  const decimals = r.step && r.step < 1 ? Math.min(12, Math.ceil(-Math.log10(r.step))) : 0;
  const num = (x) =>
    Math.abs(x) >= 1e15
      ? x.toExponential(3)
      : x.toLocaleString(undefined, { maximumFractionDigits: Math.max(decimals, 6) });
  const span = `between ${num(r.min)} and ${num(r.max)}${unit}`;
  if (r.step) {
    const k = (v - (p.offset || 0)) / r.step;
    if (Math.abs(k - Math.round(k)) > 1e-6 * Math.max(1, Math.abs(k)))
      return `${p.id} takes steps of ${num(r.step)}${unit} ${span}.`;
  }
  if (v < r.min || v > r.max) return `${p.id} takes values ${span}.`;
  return null;
}
