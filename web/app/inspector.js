// The register inspector and commissioning on a live bus (admin): raw registers of any unit on
// a configured bus decoded in every type and order, a scan for the units that answer, and a
// decoded value turned into a point of a new or existing device — applied to the config, or
// copied as TOML. The bus task does every read and probe between its polls.

import { h, setText, setClass, field, problemText } from "./dom.js";
import { ORDERS, TYPES, ascii, decode, show } from "./decode.js";

/** `env`: { conn, S, confirmDialog, scans } — `scans.listener` gets each `push.scan`. */
export function inspectorView(env, deviceId) {
  const { conn, S } = env;
  const first = S.desc.get(deviceId) || S.desc.get(S.order[0]);
  const device = h("select", { id: "i-device" },
    h("option", { value: "", text: "(any unit)" }),
    ...S.order.map((id) => h("option", { value: id, text: id })));
  const bus = h("select", { id: "i-bus" }, ...S.buses.map((b) => h("option", { value: b, text: b })));
  const unit = h("input", { id: "i-unit", type: "number", min: 1, max: 247, value: 1, required: true, inputmode: "numeric" });
  const table = h("select", { id: "i-table" }, ...["holding", "input", "coil", "discrete"].map((t) => h("option", { value: t, text: t })));
  const address = h("input", { id: "i-address", type: "number", min: 0, max: 65535, value: 0, required: true, inputmode: "numeric" });
  const count = h("input", { id: "i-count", type: "number", min: 1, max: 125, value: 4, required: true, inputmode: "numeric" });
  const out = h("div", { "aria-live": "polite" });

  function pickDevice() {
    const d = S.desc.get(device.value);
    if (!d) return;
    bus.value = d.bus;
    unit.value = d.unit;
  }
  device.addEventListener("change", pickDevice);
  // Another unit than the chosen device's: the read is of that unit, not of the device.
  for (const e of [bus, unit]) {
    e.addEventListener("change", () => {
      const d = S.desc.get(device.value);
      if (d && (d.bus !== bus.value || String(d.unit) !== unit.value)) device.value = "";
    });
  }
  if (first) {
    device.value = first.id;
    pickDevice();
    const p = first.points.find((x) => x.table === "holding" || x.table === "input") || first.points[0];
    if (p) { table.value = p.table; address.value = p.address; }
  }

  async function read() {
    setText(out, "Reading…");
    const at = { bus: bus.value, unit: Number(unit.value), table: table.value, address: Number(address.value) };
    try {
      const r = await conn.call("registers.read", { ...at, count: Number(count.value) });
      out.replaceChildren(r.bits
        ? bitsOut(r)
        : registersOut(env, r, S.desc.get(device.value), at));
    } catch (e) {
      out.replaceChildren(h("p", { class: "error", text: `Read failed (${e.code}): ${e.message}` }));
    }
  }

  const form = h("form", { class: "toolbar", onsubmit: (ev) => { ev.preventDefault(); read(); } },
    field("Device", device), field("Bus", bus), field("Unit id", unit),
    field("Table", table), field("Address", address), field("Count", count),
    h("button", { type: "submit", class: "primary", text: "Read" }));

  return {
    name: "inspector",
    node: h("section", {},
      h("h1", { text: "Register inspector" }),
      h("p", { class: "small", text: "Reads raw registers of any unit on a bus, in the bus's turn between polls, and decodes them in every type, byte order and word order, so the right combination can be picked on the spot — and added as a point." }),
      form, out, scanPanel(env, bus, unit, read)),
    update() {},
  };
}

/** Scans a bus for the unit ids that answer; a found unit is one tap from being read. */
function scanPanel(env, bus, unit, read) {
  const { conn } = env;
  const from = h("input", { id: "s-from", type: "number", min: 1, max: 247, value: 1, inputmode: "numeric" });
  const to = h("input", { id: "s-to", type: "number", min: 1, max: 247, value: 247, inputmode: "numeric" });
  const wait = h("input", { id: "s-timeout", type: "number", min: 10, max: 5000, value: 100, inputmode: "numeric" });
  const progress = h("p", { role: "status", class: "small" });
  const found = h("div", { class: "found" });
  const start = h("button", { type: "submit", text: "Scan bus" });
  const cancel = h("button", { type: "button", text: "Cancel scan", hidden: true,
    onclick: () => conn.call("bus.scanCancel", { bus: bus.value }).catch(() => {}) });

  function foundButton(u, exception) {
    return h("button", { type: "button", class: "ghost", text: `Unit ${u}${exception ? ` (${exception})` : ""}`,
      onclick: () => { unit.value = u; unit.dispatchEvent(new Event("change")); read(); } });
  }

  async function scan() {
    const [a, b] = [Number(from.value), Number(to.value)];
    found.replaceChildren();
    start.disabled = true;
    cancel.hidden = false;
    setText(progress, `Scanning ${bus.value}, units ${a}…${b}…`);
    env.scans.listener = (d) => {
      if (d.bus !== bus.value) return;
      setText(progress, `Scanning ${bus.value}: unit ${d.unit} of ${a}…${b}`);
      if (d.found) found.append(foundButton(d.unit, d.exception));
    };
    try {
      const r = await conn.call("bus.scan", { bus: bus.value, fromUnit: a, toUnit: b, timeoutMs: Number(wait.value) }, 600000);
      found.replaceChildren(...r.found.map((x) => foundButton(x.unit, x.exception)));
      setText(progress, `${r.cancelled ? "Cancelled" : "Done"}: ${r.units.length ? `units ${r.units.join(", ")} answered` : "no unit answered"}.`);
    } catch (e) {
      setText(progress, `Scan failed (${e.code}): ${e.message}`);
    } finally {
      env.scans.listener = null;
      start.disabled = false;
      cancel.hidden = true;
    }
  }

  return h("section", {},
    h("h2", { text: "Scan the bus" }),
    h("p", { class: "small", text: "Probes each unit id with one short read between the polls; configured devices keep their rate. A unit that answers with an exception is there too." }),
    h("form", { class: "toolbar", onsubmit: (ev) => { ev.preventDefault(); scan(); } },
      field("From unit", from), field("To unit", to), field("Wait per unit (ms)", wait), start, cancel),
    progress, found);
}

function bitsOut(r) {
  return h("div", { class: "regs" }, ...r.bits.map((b, i) => h("span", { text: `${r.address + i}: ${b ? 1 : 0}` })));
}

function registersOut(env, r, desc, at) {
  const regs = r.registers;
  const offset = h("select", { id: "i-offset" }, ...regs.map((_, i) => h("option", { value: i, text: `${r.address + i}` })));
  const body = h("tbody", {});
  const configured = desc && ORDERS.find((o) => o.byteOrder === desc.byteOrder && o.wordOrder === desc.wordOrder);

  function paint() {
    const from = regs.slice(Number(offset.value));
    const lines = TYPES.map(({ type, regs: n }) =>
      h("tr", {}, h("th", { scope: "row", text: type }),
        ...ORDERS.map((o) => h("td", { text: from.length >= n ? show(decode(from, type, o.byteOrder, o.wordOrder)) : "—" }))));
    lines.push(h("tr", {}, h("th", { scope: "row", text: "text" }),
      ...ORDERS.map((o) => h("td", { text: o.wordOrder === "big" ? ascii(from, o.byteOrder) : "" }))));
    body.replaceChildren(...lines);
  }
  offset.addEventListener("change", paint);
  paint();

  return h("div", {},
    h("h2", { text: "Raw registers" }),
    h("div", { class: "regs" }, ...regs.map((v, i) => h("span", { text: `${r.address + i}: ${v} (0x${v.toString(16).padStart(4, "0")})` }))),
    h("h2", { text: "Decoded" }),
    h("div", { class: "toolbar" }, field("Starting at register", offset)),
    configured ? h("p", { class: "small", text: `This device is configured as ${configured.name} (bytes ${configured.byteOrder}, words ${configured.wordOrder}).` }) : null,
    h("div", { class: "scroll" }, h("table", { class: "decoded" },
      h("thead", {}, h("tr", {}, h("th", { text: "type" }),
        ...ORDERS.map((o) => h("th", { scope: "col", title: `bytes ${o.byteOrder}, words ${o.wordOrder}`, text: o.name + (configured === o ? " ✓" : "") })))),
      body)),
    addPointForm(env, regs, offset, at, configured));
}

/** TOML for a value: strings quoted, numbers as they are. */
function tomlValue(v) {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/** The point as the config's inline table, defaults left out. */
function pointToml(p) {
  const parts = [`id = ${tomlValue(p.id)}`, `table = ${tomlValue(p.table)}`, `address = ${p.address}`, `type = ${tomlValue(p.type)}`];
  if (p.byteOrder !== "big") parts.push(`byte_order = ${tomlValue(p.byteOrder)}`);
  if (p.wordOrder !== "big") parts.push(`word_order = ${tomlValue(p.wordOrder)}`);
  if (p.scale !== 1) parts.push(`scale = ${p.scale}`);
  if (p.offset !== 0) parts.push(`offset = ${p.offset}`);
  if (p.unit) parts.push(`unit = ${tomlValue(p.unit)}`);
  return `{ ${parts.join(", ")} }`;
}

/** Inspector → point: type, order, scale and offset picked with a live preview of the value. */
function addPointForm(env, regs, offset, at, configured) {
  const { conn, S, confirmDialog } = env;
  const type = h("select", { id: "p-type" }, ...TYPES.map((t) => h("option", { value: t.type, text: t.type })));
  const order = h("select", { id: "p-order" }, ...ORDERS.map((o) => h("option", { value: o.name, text: o.name })));
  if (configured) order.value = configured.name;
  const scale = h("input", { id: "p-scale", type: "number", step: "any", value: 1, inputmode: "decimal" });
  const shift = h("input", { id: "p-offset", type: "number", step: "any", value: 0, inputmode: "decimal" });
  const eng = h("input", { id: "p-unit", type: "text", placeholder: "°C, V, kWh…", autocomplete: "off" });
  const id = h("input", { id: "p-id", type: "text", required: true, autocomplete: "off", pattern: "[A-Za-z0-9_.\\-]+" });
  const target = h("select", { id: "p-device" },
    h("option", { value: "", text: "New device…" }),
    ...S.order.map((d) => h("option", { value: d, text: d })));
  const newId = h("input", { id: "p-new-id", type: "text", autocomplete: "off" });
  const newType = h("input", { id: "p-new-type", type: "text", autocomplete: "off", placeholder: "meter, drive…" });
  const newFields = h("div", { class: "toolbar" }, field("New device id", newId), field("Device type", newType));
  const preview = h("p", { class: "preview", role: "status" });
  const result = h("div", { role: "status" });
  const same = S.order.find((d) => S.desc.get(d).bus === at.bus && S.desc.get(d).unit === at.unit);
  if (same) target.value = same;

  function point() {
    const o = ORDERS.find((x) => x.name === order.value);
    return {
      id: id.value.trim(), table: at.table, address: at.address + Number(offset.value), type: type.value,
      byteOrder: o.byteOrder, wordOrder: o.wordOrder,
      scale: Number(scale.value) || 1, offset: Number(shift.value) || 0, unit: eng.value.trim(),
    };
  }
  function paint() {
    newFields.hidden = target.value !== "";
    const p = point();
    const raw = decode(regs.slice(Number(offset.value)), p.type, p.byteOrder, p.wordOrder);
    if (raw === null) { setText(preview, "Too few registers read for this type."); return; }
    const v = typeof raw === "bigint" ? Number(raw) * p.scale + p.offset : raw * p.scale + p.offset;
    setText(preview, `Register ${p.address}: ${show(raw)} × ${p.scale} + ${p.offset} = ${show(v)}${p.unit ? ` ${p.unit}` : ""}`);
  }
  for (const e of [type, order, scale, shift, eng, target, offset]) e.addEventListener("input", paint);
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
    ].filter((x) => x !== null).join("\n");
  }

  async function add() {
    const p = point();
    if (!p.id) { result.replaceChildren(h("p", { class: "error", text: "Give the point an id." })); return; }
    const params = { op: "addPoints", points: [p] };
    if (target.value) params.deviceId = target.value;
    else params.newDevice = { id: newId.value.trim(), bus: at.bus, unit: at.unit, type: newType.value.trim() };
    try {
      const e = await conn.call("config.edit", params);
      if (e.problems.length) {
        result.replaceChildren(h("p", { class: "error", text: "Not added: the config would have these problems:" }),
          h("ul", { class: "problems" }, ...e.problems.map((x) => h("li", { text: problemText(x) }))));
        return;
      }
      if (!(await confirmDialog("Add to the config and apply", `${e.summary}: ${p.id} (${p.type} ${order.value}) at ${p.table} ${p.address}`))) return;
      const r = await conn.call("config.apply", { text: e.text }, 60000);
      env.reloaded();
      result.replaceChildren(h("p", { class: "result ok", text: `Applied as version ${r.id} (${r.summary}); the gateway reloads.` }));
    } catch (err) {
      result.replaceChildren(h("p", { class: "error", text: `Not added (${err.code}): ${err.message}` }));
    }
  }

  function copy() {
    const text = toml();
    result.replaceChildren(h("pre", { class: "toml", text }));
    if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
  }

  return h("section", { class: "add-point" },
    h("h2", { text: "Add as point" }),
    h("div", { class: "toolbar" }, field("Type", type), field("Byte/word order", order),
      field("Scale", scale), field("Offset", shift), field("Engineering unit", eng)),
    preview,
    h("div", { class: "toolbar" }, field("Point id", id), field("To device", target)),
    newFields,
    h("div", { class: "toolbar" },
      h("button", { type: "button", class: "primary", text: "Add as point", onclick: add }),
      h("button", { type: "button", text: "Copy as TOML", onclick: copy })),
    result);
}
