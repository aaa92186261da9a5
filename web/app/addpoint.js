// Inspector → point: a value read off a live unit made a point of a new or existing device —
// type, order, scale and offset picked with a live preview; writable, deadband (with what it
// costs the SD card) and the valid range — applied through `config.edit`, or copied as TOML.

import { h, setText, field, problemText } from "./dom.js";
import { ORDERS, TYPES, decode, show } from "./decode.js";

/** Bytes the store writes per recorded value (BENCHMARKS.md's measured figure). */
const BYTES_PER_ROW = 14;
/** `report_every_s`'s default: a quiet value is still recorded this often. */
const REPORT_EVERY_S = 60;

/** TOML for a value: strings quoted, numbers as they are. */
function tomlValue(v) {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/** The point as the config's inline table, defaults left out. */
function pointToml(p) {
  const parts = [
    `id = ${tomlValue(p.id)}`,
    `table = ${tomlValue(p.table)}`,
    `address = ${p.address}`,
    `type = ${tomlValue(p.type)}`,
  ];
  if (p.byteOrder !== "big") parts.push(`byte_order = ${tomlValue(p.byteOrder)}`);
  if (p.wordOrder !== "big") parts.push(`word_order = ${tomlValue(p.wordOrder)}`);
  if (p.scale !== 1) parts.push(`scale = ${p.scale}`);
  if (p.offset !== 0) parts.push(`offset = ${p.offset}`);
  if (p.unit) parts.push(`unit = ${tomlValue(p.unit)}`);
  if (p.deadband) parts.push(`deadband = ${p.deadband}`);
  if (p.min !== null) parts.push(`min = ${p.min}`);
  if (p.max !== null) parts.push(`max = ${p.max}`);
  if (p.writable) parts.push("writable = true");
  return `{ ${parts.join(", ")} }`;
}

/** A float's deadband by default: 0.1 % of its range (or of the value now), as a round number.
 * Integers and bits record every change: each is a real step. */
export function defaultDeadband(type, value, min, max) {
  if (type !== "f32" && type !== "f64") return 0;
  const span = min !== null && max !== null && max > min ? max - min : Math.abs(value);
  if (!(span > 0) || !Number.isFinite(span)) return 0.01;
  return Number((10 ** Math.floor(Math.log10(span / 1000))).toPrecision(1));
}

/** What a point costs the store, for a person: rows an hour and bytes a day, at worst and when
 * the value holds still. */
export function costText(pollMs, deadband) {
  const most = Math.round(3600000 / pollMs);
  const mb = (n) => ((n * 24 * BYTES_PER_ROW) / 1e6).toFixed(n * 24 * BYTES_PER_ROW < 1e6 ? 2 : 1);
  const least = Math.round(3600 / REPORT_EVERY_S);
  return deadband > 0
    ? `Recorded when it moves more than ±${deadband}: ${least} rows/h while it holds (${mb(least)} MB a day), at most ${most} rows/h (${mb(most)} MB a day) if it swings at every poll.`
    : `Deadband 0 records every change: a drifting value costs ${most} rows/h (${mb(most)} MB a day on the SD card, and as many rows upstream).`;
}

/** `env`: { conn, S, confirmDialog, reloaded }. `regs` the registers read (or `bits`, for a
 * coil or discrete input), `offset` the select of the start register, `at` the read's bus,
 * unit, table and address, `configured` the order the device's point there has. */
export function addPointForm(env, regs, offset, at, configured, bits = false) {
  const { conn, S, confirmDialog } = env;
  const type = h(
    "select",
    { id: "p-type" },
    ...(bits
      ? [h("option", { value: "bool", text: "bool" })]
      : TYPES.map((t) => h("option", { value: t.type, text: t.type }))),
  );
  const order = h("select", { id: "p-order" }, ...ORDERS.map((o) => h("option", { value: o.name, text: o.name })));
  if (configured) order.value = configured.name;
  const num = (id, value, attrs = {}) =>
    h("input", { id, type: "number", step: "any", value, inputmode: "decimal", ...attrs });
  const scale = num("p-scale", 1);
  const shift = num("p-offset", 0);
  const deadband = num("p-deadband", "", { min: 0, placeholder: "0" });
  const min = num("p-min", "", { placeholder: "none" });
  const max = num("p-max", "", { placeholder: "none" });
  const writable = h("input", { id: "p-writable", type: "checkbox" });
  const canWrite = at.table === "holding" || at.table === "coil";
  writable.disabled = !canWrite;
  const eng = h("input", { id: "p-unit", type: "text", placeholder: "°C, V, kWh…", autocomplete: "off" });
  const id = h("input", {
    id: "p-id",
    type: "text",
    required: true,
    autocomplete: "off",
    pattern: "[A-Za-z0-9_.\\-]+",
  });
  const target = h(
    "select",
    { id: "p-device" },
    h("option", { value: "", text: "New device…" }),
    ...S.order.map((d) => h("option", { value: d, text: d })),
  );
  const newId = h("input", { id: "p-new-id", type: "text", autocomplete: "off" });
  const newType = h("input", { id: "p-new-type", type: "text", autocomplete: "off", placeholder: "meter, drive…" });
  const newFields = h("div", { class: "toolbar" }, field("New device id", newId), field("Device type", newType));
  const preview = h("p", { class: "preview", role: "status" });
  const cost = h("p", { class: "small", id: "p-cost" });
  const result = h("div", { role: "status" });
  const same = S.order.find((d) => S.desc.get(d).bus === at.bus && S.desc.get(d).unit === at.unit);
  if (same) target.value = same;
  // The deadband follows the type and range until the technician types one.
  let deadbandTyped = false;
  deadband.addEventListener("input", () => {
    deadbandTyped = deadband.value !== "";
  });

  const optNum = (e) => (e.value.trim() === "" ? null : Number(e.value));
  function point() {
    const o = ORDERS.find((x) => x.name === order.value);
    return {
      id: id.value.trim(),
      table: at.table,
      address: at.address + Number(offset.value),
      type: type.value,
      byteOrder: bits ? "big" : o.byteOrder,
      wordOrder: bits ? "big" : o.wordOrder,
      scale: bits ? 1 : Number(scale.value) || 1,
      offset: bits ? 0 : Number(shift.value) || 0,
      unit: eng.value.trim(),
      deadband: Number(deadband.value) || 0,
      min: optNum(min),
      max: optNum(max),
      writable: canWrite && writable.checked,
    };
  }
  function value(p) {
    if (bits) return regs[Number(offset.value)];
    const raw = decode(regs.slice(Number(offset.value)), p.type, p.byteOrder, p.wordOrder);
    if (raw === null) return null;
    return { raw, v: typeof raw === "bigint" ? Number(raw) * p.scale + p.offset : raw * p.scale + p.offset };
  }
  function paint() {
    newFields.hidden = target.value !== "";
    let p = point();
    const got = value(p);
    if (bits) {
      setText(preview, `${at.table} ${p.address}: ${got ? "ON (1)" : "OFF (0)"}`);
    } else if (got === null) {
      setText(preview, "Too few registers read for this type.");
    } else {
      setText(
        preview,
        `Register ${p.address}: ${show(got.raw)} × ${p.scale} + ${p.offset} = ${show(got.v)}${p.unit ? ` ${p.unit}` : ""}`,
      );
      if (!deadbandTyped) {
        const d = defaultDeadband(p.type, got.v, p.min, p.max);
        deadband.value = d ? String(d) : "";
        p = point();
      }
    }
    const desc = S.desc.get(target.value);
    setText(cost, costText(desc?.pollIntervalMs || 1000, p.deadband));
  }
  for (const e of [type, order, scale, shift, eng, target, offset, deadband, min, max])
    e.addEventListener("input", paint);
  for (const e of [type, order, target, offset]) e.addEventListener("change", paint);
  paint();

  function toml() {
    const p = point();
    if (target.value) return `# in [[devices]] id = ${tomlValue(target.value)}: add to its points\n${pointToml(p)},`;
    return [
      "[[devices]]",
      `id = ${tomlValue(newId.value.trim())}`,
      newType.value.trim() ? `type = ${tomlValue(newType.value.trim())}` : null,
      `bus = ${tomlValue(at.bus)}`,
      `unit = ${at.unit}`,
      "points = [",
      `  ${pointToml(p)},`,
      "]",
    ]
      .filter((x) => x !== null)
      .join("\n");
  }

  async function add() {
    const p = point();
    if (!p.id) {
      result.replaceChildren(h("p", { class: "error", text: "Give the point an id." }));
      return;
    }
    const params = { op: "addPoints", points: [p] };
    if (target.value) params.deviceId = target.value;
    else params.newDevice = { id: newId.value.trim(), bus: at.bus, unit: at.unit, type: newType.value.trim() };
    try {
      const e = await conn.call("config.edit", params);
      if (e.problems.length) {
        result.replaceChildren(
          h("p", { class: "error", text: "Not added: the config would have these problems:" }),
          h("ul", { class: "problems" }, ...e.problems.map((x) => h("li", { text: problemText(x) }))),
        );
        return;
      }
      const what = bits ? `${p.id} (bool)` : `${p.id} (${p.type} ${order.value})`;
      if (!(await confirmDialog("Add to the config and apply", `${e.summary}: ${what} at ${p.table} ${p.address}`)))
        return;
      const r = await conn.call("config.apply", { text: e.text }, 60000);
      env.reloaded();
      result.replaceChildren(
        h("p", { class: "result ok", text: `Applied as version ${r.id} (${r.summary}); the gateway reloads.` }),
      );
    } catch (err) {
      result.replaceChildren(h("p", { class: "error", text: `Not added (${err.code}): ${err.message}` }));
    }
  }

  function copy() {
    const text = toml();
    result.replaceChildren(h("pre", { class: "toml", text }));
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  }

  const check = h("label", { class: "check", for: "p-writable" }, writable, " Writable");
  return h(
    "section",
    { class: "add-point" },
    h("h2", { text: "Add as point" }),
    bits
      ? h("div", { class: "toolbar" }, field("Type", type), field("Engineering unit", eng))
      : h(
          "div",
          { class: "toolbar" },
          field("Type", type),
          field("Byte/word order", order),
          field("Scale", scale),
          field("Offset", shift),
          field("Engineering unit", eng),
        ),
    preview,
    bits
      ? h("div", { class: "toolbar" }, check)
      : h(
          "div",
          { class: "toolbar" },
          field("Deadband", deadband),
          field("Min (valid range)", min),
          field("Max", max),
          check,
        ),
    bits ? null : cost,
    h("div", { class: "toolbar" }, field("Point id", id), field("To device", target)),
    newFields,
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "button", class: "primary", text: "Add as point", onclick: add }),
      h("button", { type: "button", text: "Copy as TOML", onclick: copy }),
    ),
    result,
  );
}
