// The Configure view's forms besides the device's: a bus (TCP, RTU on one of the box's serial
// ports, RTU over TCP), a rule (every kind, its thresholds drawn on the point's last hour as
// they are typed) and the MySQL and MQTT upstreams (with a connection test). Each sends only
// what changed to `config.edit`, which edits the file with its comments kept; problems come
// back by key path and are shown next to their field.

import { h, setText } from "./dom.js";
import { read } from "./devform.js";
import { Trend } from "./chart.js";

const RTU = (v) => v.kind === "rtu";
const NOT_RTU = (v) => v.kind !== "rtu";
const BAUDS = ["1200", "2400", "4800", "9600", "19200", "38400", "57600", "115200"];
const RULE_KINDS = ["above", "below", "outside", "equals", "rate", "stale"];

/**
 * A form over one entry's keys. `spec`: { name (unique on the page, for the ids), title, fields: [{ key, label, options?, number?,
 * list?, when?(values), placeholder?, required? }], raw (the entry as the file has it, or
 * null), save(changes, mark) (`mark` takes the edit's { problems, devicePath } before it is
 * applied), extra? (nodes under the fields),
 * buttons? (more buttons) }. A field hidden by `when` is taken out of the file on save.
 */
export function entryForm(spec, ctx) {
  const raw = spec.raw || {};
  const controls = spec.fields.map((f) => {
    const id = `ef-${spec.name}-${f.key}`;
    let c;
    if (f.options) {
      const opts = f.required ? f.options : ["", ...f.options];
      c = h(
        "select",
        { id, "data-key": f.key },
        ...opts.map((o) =>
          h("option", { value: o, text: o === "" ? "(default)" : o, selected: String(raw[f.key] ?? "") === o }),
        ),
      );
    } else {
      c = h("input", {
        id,
        "data-key": f.key,
        value: raw[f.key] ?? "",
        autocomplete: "off",
        placeholder: f.placeholder || "",
      });
      if (f.list) {
        c.setAttribute("list", `${id}-list`);
      }
    }
    if (f.number) c.dataset.kind = "number";
    const wrap = h(
      "div",
      { class: "df-field" },
      h("label", { for: id, text: f.label }),
      c,
      f.list ? h("datalist", { id: `${id}-list` }, ...f.list().map((o) => h("option", { value: o }))) : null,
    );
    return { f, c, wrap };
  });
  const values = () => Object.fromEntries(controls.map(({ f, c }) => [f.key, read(c)]));
  function showWhich() {
    const v = values();
    for (const { f, wrap } of controls) wrap.hidden = f.when ? !f.when(v) : false;
  }
  for (const { c } of controls) {
    c.addEventListener("change", showWhich);
    c.addEventListener("input", showWhich);
  }
  showWhich();
  const general = h("div", { role: "status" });
  const form = h(
    "form",
    {
      class: "entry-form",
      onsubmit: (e) => {
        e.preventDefault();
        submit();
      },
    },
    h("h3", { text: spec.title }),
    h("div", { class: "toolbar" }, ...controls.map((x) => x.wrap)),
    spec.extra || null,
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "submit", class: "primary", text: spec.saveText }),
      ...(spec.buttons || []),
    ),
    general,
  );

  /** What the file should change: keys that differ, and keys of hidden fields taken out. */
  function changes() {
    const out = {};
    for (const { f, c, wrap } of controls) {
      const was = spec.raw ? (spec.raw[f.key] ?? null) : null;
      const v = wrap.hidden ? null : read(c);
      if (v !== was && !(v === null && was === null)) out[f.key] = v;
    }
    return out;
  }

  function mark(problems, prefix) {
    for (const e of form.querySelectorAll(".field-problem")) e.remove();
    for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    const rest = [];
    for (const p of problems) {
      const key = prefix && p.path?.startsWith(`${prefix}.`) ? p.path.slice(prefix.length + 1) : null;
      const hit = key && controls.find((x) => x.f.key === key.split(/[.[]/)[0] && !x.wrap.hidden);
      if (!hit) {
        rest.push(p);
        continue;
      }
      hit.c.setAttribute("aria-invalid", "true");
      hit.c.after(h("span", { class: "field-problem error", text: p.message }));
    }
    ctx.general(rest);
  }

  async function submit() {
    try {
      await spec.save(changes(), (r) => mark(r.problems, r.devicePath));
    } catch (e) {
      general.replaceChildren(h("p", { class: "error", text: `Not saved (${e.code}): ${e.message}` }));
    }
  }
  return { form, values, controls, general };
}

/** Sends one `config.edit`; its problems marked on the form (`mark`), or, with none, the text
 * applied. */
export async function editAndApply(ctx, params, what, mark = () => {}) {
  const r = await ctx.conn.call("config.edit", { ...params, text: ctx.text() });
  mark(r);
  if (!r.problems.length) await ctx.apply(r.text, `${what}: ${r.summary || "no change to the running config"}.`);
}

/**
 * `raw`: the bus as the file has it (null: a new one). `ctx`: { conn, text, apply, general,
 * serialPorts }.
 */
export function busForm(raw, ctx) {
  const { form } = entryForm(
    {
      name: "bus",
      title: raw ? `Edit bus ${raw.name}` : "New bus",
      saveText: raw ? `Save bus ${raw.name}` : "Add bus",
      raw,
      fields: [
        { key: "name", label: "Bus name", required: true },
        { key: "kind", label: "Kind", options: ["tcp", "rtu", "rtu_over_tcp"], required: true },
        { key: "address", label: "Address (host:port)", when: NOT_RTU, placeholder: "192.168.10.20:502" },
        {
          key: "port",
          label: "Serial port",
          when: RTU,
          list: () => ctx.serialPorts,
          placeholder: ctx.serialPorts[0] || "/dev/ttyUSB0",
        },
        { key: "baud", label: "Baud", when: RTU, options: BAUDS, number: true },
        { key: "parity", label: "Parity", when: RTU, options: ["none", "even", "odd"] },
        { key: "stop_bits", label: "Stop bits", when: RTU, options: ["1", "2"], number: true },
        { key: "timeout_ms", label: "Timeout (ms)", number: true, placeholder: "500" },
        { key: "retries", label: "Retries", number: true, placeholder: "2" },
        {
          key: "inter_request_delay_ms",
          label: "Silence between requests (ms)",
          when: RTU,
          number: true,
          placeholder: "0",
        },
      ],
      save: (bus, mark) =>
        editAndApply(
          ctx,
          { op: "setBus", bus, ...(raw ? { busName: raw.name } : {}) },
          raw ? `Bus ${raw.name}` : "New bus",
          mark,
        ),
    },
    ctx,
  );
  return form;
}

/**
 * `raw`: the rule as the file has it (null: a new one). `ctx`: { conn, text, apply, general,
 * devices: [{ id, points: [{ id, type, unit }] }] } (as `devices.describe` gives them).
 */
export function ruleForm(raw, ctx) {
  const devices = ctx.devices.map((d) => d.id);
  const pointsOf = (id) => (ctx.devices.find((d) => d.id === id)?.points || []).map((p) => p.id);
  const canvas = h("canvas", {
    "aria-label": "the point's last hour with the rule's thresholds",
    role: "img",
    class: "rule-trend",
  });
  const note = h("p", { class: "small" });
  let trend = null;
  let shown = "";
  const f = entryForm(
    {
      name: "rule",
      title: raw ? `Edit rule ${raw.id}` : "New rule",
      saveText: raw ? `Save rule ${raw.id}` : "Add rule",
      raw,
      fields: [
        { key: "id", label: "Rule id", required: true },
        { key: "device", label: "Device", options: devices, required: true },
        { key: "point", label: "Point", list: () => [], required: true, placeholder: "point id" },
        { key: "kind", label: "Kind", options: RULE_KINDS, required: true },
        {
          key: "threshold",
          label: "Threshold",
          number: true,
          when: (v) => ["above", "below", "equals"].includes(v.kind),
        },
        {
          key: "clear",
          label: "Clears at",
          number: true,
          when: (v) => ["above", "below", "outside"].includes(v.kind),
          placeholder: "the threshold",
        },
        { key: "low", label: "Low", number: true, when: (v) => v.kind === "outside" },
        { key: "high", label: "High", number: true, when: (v) => v.kind === "outside" },
        { key: "per_s", label: "Change per second", number: true, when: (v) => v.kind === "rate" },
        { key: "for_ms", label: "Holds for (ms)", number: true, placeholder: "0" },
        {
          key: "clear_for_ms",
          label: "Clear holds for (ms)",
          number: true,
          when: (v) => ["above", "below", "outside"].includes(v.kind),
          placeholder: "0",
        },
        { key: "priority", label: "Priority", options: ["normal", "high", "emergency"] },
        { key: "message", label: "Message", placeholder: "the kind's" },
      ],
      extra: h("div", {}, canvas, note),
      save: (rule, mark) =>
        editAndApply(
          ctx,
          { op: "setRule", rule, ...(raw ? { ruleId: raw.id } : {}) },
          raw ? `Rule ${raw.id}` : "New rule",
          mark,
        ),
    },
    ctx,
  );
  const pointInput = f.controls.find((x) => x.f.key === "point").c;
  const pointList = f.form.querySelector(`#${pointInput.getAttribute("list")}`);

  /** The point's last hour, once per point; the thresholds redrawn at each keystroke. */
  async function paint() {
    const v = f.values();
    pointList.replaceChildren(...pointsOf(v.device).map((p) => h("option", { value: p })));
    const lines = [];
    const line = (value, label, kind) => {
      if (typeof value === "number") lines.push({ value, label, kind });
    };
    line(v.threshold, "threshold", "threshold");
    line(v.clear, "clears", "clear");
    line(v.low, "low", "threshold");
    line(v.high, "high", "threshold");
    const key = `${v.device}/${v.point}`;
    const point = ctx.devices.find((d) => d.id === v.device)?.points.find((p) => p.id === v.point);
    if (!point) {
      canvas.hidden = true;
      setText(note, "");
      return;
    }
    canvas.hidden = false;
    if (!trend || key !== shown) {
      shown = key;
      trend = new Trend(canvas, { unit: point.unit, lines });
      const until = Date.now();
      try {
        const hst = await ctx.conn.call("points.history", {
          deviceId: v.device,
          pointId: v.point,
          since: until - 3600000,
          until,
          buckets: 120,
        });
        if (key !== shown) return;
        trend.set(
          hst.buckets.map((b) => ({ t: Date.parse(b.lastTs), min: b.min, max: b.max, v: b.v, gap: b.gap })),
          3600000,
          until,
        );
        setText(note, `${v.point}'s last hour, with the rule's lines as typed.`);
      } catch (e) {
        setText(note, `No history for ${v.point} (${e.message}).`);
      }
      return;
    }
    trend.opts.lines = lines;
    trend.draw();
  }
  for (const { c } of f.controls) {
    c.addEventListener("input", paint);
    c.addEventListener("change", paint);
  }
  paint();
  return f.form;
}

/**
 * `section`: "mysql" or "mqtt"; `raw`: that section as the file has it (null: off). `ctx`:
 * { conn, text, apply, general }.
 */
export function upstreamForm(section, raw, ctx) {
  const mysql = section === "mysql";
  const result = h("p", { role: "status", class: "small" });
  const test = h("button", { type: "button", text: "Test connection" });
  const off = h("button", { type: "button", text: mysql ? "Turn MySQL off" : "Turn MQTT off", hidden: !raw });
  const f = entryForm(
    {
      name: section,
      title: mysql ? "MySQL / MariaDB upstream" : "MQTT upstream",
      saveText: raw ? "Save" : `Turn ${mysql ? "MySQL" : "MQTT"} on`,
      raw,
      fields: mysql
        ? [
            { key: "url", label: "URL", required: true, placeholder: "mysql://edge:PASSWORD@db.plant:3306/plant" },
            { key: "batch_size", label: "Rows per batch", number: true, placeholder: "500" },
          ]
        : [
            { key: "url", label: "URL", required: true, placeholder: "mqtt://broker.plant:1883" },
            { key: "topic_prefix", label: "Topic prefix", placeholder: "edge" },
            { key: "qos", label: "QoS", options: ["0", "1", "2"], number: true },
            { key: "format", label: "Format", options: ["json", "sparkplug_b"] },
            { key: "group_id", label: "Sparkplug group id", when: (v) => v.format === "sparkplug_b" },
          ],
      extra: result,
      buttons: [test, off],
      save: (keys, mark) =>
        editAndApply(ctx, { op: "setUpstream", section, keys }, mysql ? "MySQL" : "MQTT", (r) =>
          mark({ ...r, devicePath: section }),
        ),
    },
    ctx,
  );
  test.addEventListener("click", async () => {
    const url = f.values().url;
    if (!url) {
      setText(result, "Give a URL first.");
      return;
    }
    setText(result, "Testing…");
    try {
      const r = await ctx.conn.call("upstream.test", { kind: section, url }, 15000);
      setText(result, `${r.ok ? "✓" : "✗"} ${r.message}`);
      result.className = r.ok ? "small result ok" : "small error";
    } catch (e) {
      setText(result, `Not tested (${e.code}): ${e.message}`);
    }
  });
  off.addEventListener("click", () =>
    editAndApply(ctx, { op: "setUpstream", section, keys: null }, mysql ? "MySQL off" : "MQTT off").catch((e) =>
      setText(result, `Not saved (${e.code}): ${e.message}`),
    ),
  );
  return f.form;
}
