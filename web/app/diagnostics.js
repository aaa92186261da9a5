// The Diagnostics view (any role; admins also see addresses and sink errors): per bus the link
// and the last 5 minutes' requests, per device the last good read and the last error, the
// sinks, the alarm notifiers (admins: a test message), the OPC UA server's sessions, the store
// against its cap, and the gateway. Refreshed every 5 s while on screen.

import { h } from "./dom.js";

const REFRESH_MS = 5000;

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((Date.now() - new Date(ts).getTime()) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ts).toLocaleString();
}

const n = (x) => Number(x).toLocaleString();
const dur = (s) =>
  s < 60
    ? `${s} s`
    : s < 3600
      ? `${Math.round(s / 60)} min`
      : s < 86400
        ? `${(s / 3600).toFixed(1)} h`
        : `${(s / 86400).toFixed(1)} days`;
const mib = (b) => `${(b / 1048576).toLocaleString(undefined, { maximumFractionDigits: 1 })} MiB`;

/** A bus's bytes each way, CRC errors and gaps, and on a serial line its share of the wire. */
function wireText(w) {
  if (!w) return "—";
  const kb = (x) => `${(x / 1024).toLocaleString(undefined, { maximumFractionDigits: 1 })} KiB`;
  const share = w.utilisation == null ? "" : `, ${(w.utilisation * 100).toFixed(1)} % busy`;
  return `${kb(w.bytesSent)} out, ${kb(w.bytesReceived)} in${share}; CRC errors ${n(w.crcErrors)}, gaps ${n(w.frameGaps)}`;
}

function table(caption, head, rows) {
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      { class: "diag" },
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, ...head.map((x) => h("th", { scope: "col", text: x })))),
      h("tbody", {}, ...rows),
    ),
  );
}

/** Each notifier's queue and outcomes; an admin can send a test message through it. */
function notifiersPart(list, env) {
  if (!list.length) return h("p", { class: "small", text: "No alarm notifiers configured." });
  const admin = env.S.role === "admin";
  return table(
    "Alarm notifiers",
    ["notifier", "state", "backlog", "sent", "failed", "shelved", "last success", ""],
    list.map((x) => {
      const said = h("span", { class: "small", role: "status" });
      const test = admin
        ? h("button", {
            type: "button",
            text: "Send test",
            "aria-label": `Send a test message through ${x.name}`,
            async onclick(ev) {
              ev.target.disabled = true;
              said.textContent = " sending…";
              try {
                const r = await env.conn.call("notify.test", { notifier: x.name });
                said.textContent = ` ${r.ok ? "✓" : "✗"} ${r.message}`;
              } catch (e) {
                said.textContent = ` ✗ ${e.message}`;
              }
              ev.target.disabled = false;
            },
          })
        : null;
      const failing = x.lastErrorAt && (!x.lastSuccess || x.lastErrorAt > x.lastSuccess);
      return h(
        "tr",
        { "data-notifier": x.name },
        h("th", { scope: "row", text: `${x.name} (${x.kind})` }),
        h("td", {
          class: failing ? "bad" : "ok",
          text: failing ? `FAILING${x.lastError ? `: ${x.lastError}` : ""}` : "ok",
        }),
        h("td", { text: n(x.backlog) }),
        h("td", { text: n(x.sent) }),
        h("td", { text: n(x.failed) }),
        h("td", { text: n(x.shelved) }),
        h("td", { text: ago(x.lastSuccess) }),
        h("td", {}, test, said),
      );
    }),
  );
}

function paint(d, env) {
  const buses = table(
    `Buses (last ${Math.round(d.windowS / 60) || "<1"} min)`,
    ["bus", "link", "utilisation", "requests/s", "ok", "timeouts", "exceptions", "errors", "on the wire (since start)"],
    d.buses.map((b) =>
      h(
        "tr",
        { "data-bus": b.name },
        h("th", { scope: "row", text: b.at ? `${b.name} (${b.kind} ${b.at})` : `${b.name} (${b.kind})` }),
        h("td", { class: b.link === "up" ? "ok" : "bad", text: b.link === "up" ? "up" : `DOWN: ${b.cause}` }),
        h("td", { text: `${(b.utilisation * 100).toFixed(1)} %` }),
        h("td", { text: b.requestsPerS.toFixed(1) }),
        h("td", { text: n(b.requests.ok) }),
        h("td", { text: n(b.requests.timeout) }),
        h("td", { text: n(b.requests.exception) }),
        h("td", { text: n(b.requests.error) }),
        h("td", { class: b.wire && (b.wire.crcErrors || b.wire.frameGaps) ? "bad" : "", text: wireText(b.wire) }),
      ),
    ),
  );
  const devices = table(
    "Devices",
    ["device", "bus / unit", "state", "last good read", "last error", "ok", "timeouts", "exceptions"],
    d.devices.map((x) =>
      h(
        "tr",
        { "data-device": x.id },
        h("th", { scope: "row", text: x.id }),
        h("td", { text: `${x.bus} / ${x.unit}` }),
        h("td", { class: x.online ? "ok" : "bad", text: x.online ? "online" : "OFFLINE" }),
        h("td", { text: ago(x.lastGoodRead) }),
        h("td", { text: x.lastError ? `${x.lastError.message} (${ago(x.lastError.at)})` : "—" }),
        h("td", { text: n(x.requests.ok) }),
        h("td", { text: n(x.requests.timeout) }),
        h("td", { text: n(x.requests.exception) }),
      ),
    ),
  );
  const sinks = d.sinks.length
    ? table(
        "Upstream",
        ["sink", "state", "backlog"],
        d.sinks.map((s) =>
          h(
            "tr",
            {},
            h("th", { scope: "row", text: s.name }),
            h("td", {
              class: s.connected ? "ok" : "bad",
              text: s.connected ? "connected" : `FAILING${s.lastError ? `: ${s.lastError}` : ""}`,
            }),
            h("td", { text: `${n(s.backlog)} rows` }),
          ),
        ),
      )
    : h("p", { class: "small", text: "No upstream sinks configured." });
  const st = d.store;
  const g = d.gateway;
  return [
    buses,
    devices,
    sinks,
    notifiersPart(d.notifiers ?? [], env),
    opcuaPart(d.opcua),
    modbusServerPart(d.modbusServer),
    h("h2", { text: "Store and gateway" }),
    h(
      "ul",
      { class: "facts" },
      h("li", {
        text: `Store: ${mib(st.dbBytes + st.walBytes)} of ${mib(st.capBytes)} (database ${mib(st.dbBytes)}, WAL ${mib(st.walBytes)})${st.healthy ? "" : " — NOT WRITING"}`,
      }),
      h("li", { text: `Gateway ${g.id}, version ${g.version}, up ${dur(g.uptimeS)}` }),
      h("li", {
        text: `Clock: ${g.clockSynchronised === true ? "synchronised (NTP)" : g.clockSynchronised === false ? "NOT synchronised: timestamps may be wrong" : "cannot be told here"}`,
      }),
    ),
  ];
}

/** The OPC UA server's open sessions; nothing while the server is off. */
function opcuaPart(o) {
  if (!o) return h("span", {});
  if (!o.sessions.length) return h("p", { class: "small", text: "OPC UA server: no sessions." });
  return table(
    "OPC UA sessions",
    ["user", "client", "security", "monitored items"],
    o.sessions.map((x) =>
      h(
        "tr",
        {},
        h("th", { scope: "row", text: x.user }),
        h("td", { text: x.client ?? "—" }),
        h("td", { text: x.security }),
        h("td", { text: n(x.monitoredItems) }),
      ),
    ),
  );
}

/** The Modbus TCP server's connections and requests per unit; nothing while it is off. */
function modbusServerPart(m) {
  if (!m) return h("span", {});
  const head = h("p", {
    class: "small",
    text: `Modbus TCP server on ${m.listen}: ${n(m.connections)} of ${n(m.maxConnections)} connections; ${n(m.refused)} refused at accept, ${n(m.closedGarbage)} closed for garbage.`,
  });
  if (!m.units.length) return head;
  return h(
    "div",
    {},
    head,
    table(
      "Modbus server units",
      ["unit", "device", "layout", "requests", "exceptions"],
      m.units.map((u) =>
        h(
          "tr",
          {},
          h("th", { scope: "row", text: String(u.unit) }),
          h("td", { text: u.device }),
          h("td", { text: u.layout }),
          h("td", { text: n(u.requests) }),
          h("td", { class: u.exceptions ? "bad" : "", text: n(u.exceptions) }),
        ),
      ),
    ),
  );
}

/** `env`: { conn, S }. */
export function diagnosticsView(env) {
  const { conn, S } = env;
  const body = h("div", { "aria-live": "off" }, h("p", { text: "Loading…" }));
  const view = { name: "diagnostics", node: h("section", {}, h("h1", { text: "Diagnostics" }), body), update() {} };
  async function load() {
    if (S.view !== view) return; // left the view: stop refreshing
    try {
      const d = await conn.call("system.diagnostics");
      // A test's outcome on screen is not wiped by the refresh while it is being read.
      if (!body.contains(document.activeElement) || !document.activeElement.closest("[data-notifier]")) {
        body.replaceChildren(...paint(d, env));
      }
    } catch (e) {
      if (e.code !== -1)
        body.replaceChildren(h("p", { class: "error", text: `No diagnostics (${e.code}): ${e.message}` }));
    }
    setTimeout(load, REFRESH_MS);
  }
  setTimeout(load, 0);
  return view;
}
