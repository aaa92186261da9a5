// The register inspector and commissioning on a live bus (admin): raw registers of any unit on
// a configured bus decoded in every type and order, a scan for the units that answer, and a
// decoded value turned into a point of a new or existing device — applied to the config, or
// copied as TOML. The bus task does every read and probe between its polls.

import { h, setText, field } from "./dom.js";
import { ORDERS, TYPES, ascii, decode, show } from "./decode.js";
import { addPointForm } from "./addpoint.js";

/** `env`: { conn, S, confirmDialog, scans } — `scans.listener` gets each `push.scan`. */
export function inspectorView(env, deviceId) {
  const { conn, S } = env;
  const first = S.desc.get(deviceId) || S.desc.get(S.order[0]);
  const device = h(
    "select",
    { id: "i-device" },
    h("option", { value: "", text: "(any unit)" }),
    ...S.order.map((id) => h("option", { value: id, text: id })),
  );
  const bus = h("select", { id: "i-bus" }, ...S.buses.map((b) => h("option", { value: b, text: b })));
  const unit = h("input", {
    id: "i-unit",
    type: "number",
    min: 1,
    max: 247,
    value: 1,
    required: true,
    inputmode: "numeric",
  });
  const table = h(
    "select",
    { id: "i-table" },
    ...["holding", "input", "coil", "discrete"].map((t) => h("option", { value: t, text: t })),
  );
  const address = h("input", {
    id: "i-address",
    type: "number",
    min: 0,
    max: 65535,
    value: 0,
    required: true,
    inputmode: "numeric",
  });
  const count = h("input", {
    id: "i-count",
    type: "number",
    min: 1,
    max: 125,
    value: 4,
    required: true,
    inputmode: "numeric",
  });
  const out = h("div", { "aria-live": "polite" });
  // What is counted, said: registers here, bits on a coil or discrete table (the CLI's
  // `--count` counts values of a type).
  const countField = field("Registers", count);
  const countLabel = countField.querySelector("label");
  table.addEventListener("change", () => {
    const bits = table.value === "coil" || table.value === "discrete";
    setText(countLabel, bits ? "Bits" : "Registers");
    count.max = bits ? 2000 : 125;
  });

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
    if (p) {
      table.value = p.table;
      address.value = p.address;
      table.dispatchEvent(new Event("change"));
    }
  }

  async function read() {
    setText(out, "Reading…");
    const at = { bus: bus.value, unit: Number(unit.value), table: table.value, address: Number(address.value) };
    try {
      const r = await conn.call("registers.read", { ...at, count: Number(count.value) });
      out.replaceChildren(r.bits ? bitsOut(env, r, at) : registersOut(env, r, S.desc.get(device.value), at));
    } catch (e) {
      out.replaceChildren(h("p", { class: "error", text: `Read failed (${e.code}): ${e.message}` }));
    }
  }

  const form = h(
    "form",
    {
      class: "toolbar",
      onsubmit: (ev) => {
        ev.preventDefault();
        read();
      },
    },
    field("Device", device),
    field("Bus", bus),
    field("Unit id", unit),
    field("Table", table),
    field("Address", address),
    countField,
    h("button", { type: "submit", class: "primary", text: "Read" }),
  );

  return {
    name: "inspector",
    node: h(
      "section",
      {},
      h("h1", { text: "Register inspector" }),
      h("p", {
        class: "small",
        text: "Reads raw registers of any unit on a bus, in the bus's turn between polls, and decodes them in every type, byte order and word order, so the right combination can be picked on the spot — and added as a point.",
      }),
      form,
      out,
      scanPanel(env, bus, unit, read),
    ),
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
  const cancel = h("button", {
    type: "button",
    text: "Cancel scan",
    hidden: true,
    onclick: () => conn.call("bus.scanCancel", { bus: bus.value }).catch(() => {}),
  });

  function foundButton(u, exception) {
    return h("button", {
      type: "button",
      class: "ghost",
      text: `Unit ${u}${exception ? ` (${exception})` : ""}`,
      onclick: () => {
        unit.value = u;
        unit.dispatchEvent(new Event("change"));
        read();
      },
    });
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
      const r = await conn.call(
        "bus.scan",
        { bus: bus.value, fromUnit: a, toUnit: b, timeoutMs: Number(wait.value) },
        600000,
      );
      found.replaceChildren(...r.found.map((x) => foundButton(x.unit, x.exception)));
      const said = r.everyId
        ? `unit ${r.units[0]} ${r.note}`
        : `${r.units.length ? `units ${r.units.join(", ")} answered` : "no unit answered"}${r.note ? ` (${r.note})` : ""}`;
      setText(progress, `${r.cancelled ? "Cancelled" : "Done"}: ${said}.`);
    } catch (e) {
      setText(progress, `Scan failed (${e.code}): ${e.message}`);
    } finally {
      env.scans.listener = null;
      start.disabled = false;
      cancel.hidden = true;
    }
  }

  return h(
    "section",
    {},
    h("h2", { text: "Scan the bus" }),
    h("p", {
      class: "small",
      text: "Probes each unit id with one short read between the polls; configured devices keep their rate. A unit that answers with an exception is there too, but a gateway's 0A/0B says no device is behind that id.",
    }),
    h(
      "form",
      {
        class: "toolbar",
        onsubmit: (ev) => {
          ev.preventDefault();
          scan();
        },
      },
      field("From unit", from),
      field("To unit", to),
      field("Wait per unit (ms)", wait),
      start,
      cancel,
    ),
    progress,
    found,
  );
}

function bitsOut(env, r, at) {
  const offset = h(
    "select",
    { id: "i-offset" },
    ...r.bits.map((_, i) => h("option", { value: i, text: `${r.address + i}` })),
  );
  return h(
    "div",
    {},
    h("div", { class: "regs" }, ...r.bits.map((b, i) => h("span", { text: `${r.address + i}: ${b ? 1 : 0}` }))),
    h("div", { class: "toolbar" }, field("Bit", offset)),
    addPointForm(env, r.bits, offset, at, null, true),
  );
}

/** The device's points in what was read, each with the order it is configured in: a device's
 * points may differ (a meter's floats CDAB, its counters ABCD). */
function pointsHere(desc, r, at) {
  if (!desc) return [];
  return desc.points
    .filter((p) => p.table === at.table && p.address >= r.address && p.address < r.address + r.registers.length)
    .map((p) => ({ ...p, order: ORDERS.find((o) => o.byteOrder === p.byteOrder && o.wordOrder === p.wordOrder) }));
}

function registersOut(env, r, desc, at) {
  const regs = r.registers;
  const offset = h(
    "select",
    { id: "i-offset" },
    ...regs.map((_, i) => h("option", { value: i, text: `${r.address + i}` })),
  );
  const body = h("tbody", {});
  const here = pointsHere(desc, r, at);
  // The order marked: that of the point at the chosen register, if one is configured there.
  const configuredAt = () => here.find((p) => p.address === r.address + Number(offset.value))?.order || null;
  const heads = ORDERS.map((o) =>
    h("th", { scope: "col", title: `bytes ${o.byteOrder}, words ${o.wordOrder}`, text: o.name }),
  );

  function paint() {
    const mark = configuredAt();
    for (const [i, o] of ORDERS.entries()) setText(heads[i], o.name + (mark === o ? " ✓" : ""));
    const from = regs.slice(Number(offset.value));
    const lines = TYPES.map(({ type, regs: n }) =>
      h(
        "tr",
        {},
        h("th", { scope: "row", text: type }),
        ...ORDERS.map((o) =>
          h("td", { text: from.length >= n ? show(decode(from, type, o.byteOrder, o.wordOrder)) : "—" }),
        ),
      ),
    );
    lines.push(
      h(
        "tr",
        {},
        h("th", { scope: "row", text: "text" }),
        ...ORDERS.map((o) => h("td", { text: o.wordOrder === "big" ? ascii(from, o.byteOrder) : "" })),
      ),
    );
    body.replaceChildren(...lines);
  }
  offset.addEventListener("change", paint);
  paint();

  return h(
    "div",
    {},
    h("h2", { text: "Raw registers" }),
    h(
      "div",
      { class: "regs" },
      ...regs.map((v, i) => h("span", { text: `${r.address + i}: ${v} (0x${v.toString(16).padStart(4, "0")})` })),
    ),
    h("h2", { text: "Decoded" }),
    h("div", { class: "toolbar" }, field("Starting at register", offset)),
    here.length
      ? h(
          "ul",
          { class: "small configured-here" },
          ...here.map((p) =>
            h("li", {
              text: `${p.address}: ${p.id}, ${p.type}${p.order ? ` ${p.order.name} (bytes ${p.order.byteOrder}, words ${p.order.wordOrder})` : ""}`,
            }),
          ),
        )
      : null,
    h(
      "div",
      { class: "scroll" },
      h("table", { class: "decoded" }, h("thead", {}, h("tr", {}, h("th", { text: "type" }), ...heads)), body),
    ),
    addPointForm(env, regs, offset, at, configuredAt() || here[0]?.order || null),
  );
}
