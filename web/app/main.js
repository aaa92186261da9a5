// The technicians' dashboard: login, overview, alarms and events, device detail with trends and
// writes, the register inspector, and the status bar. It speaks only the gateway's WebSocket
// protocol and updates only the DOM nodes whose values changed.

import { Conn } from "./conn.js";
import { Trend } from "./chart.js";
import { $, h, setText, setClass } from "./dom.js";
import { inspectorView } from "./inspector.js";
import { configureView } from "./configure.js";
import { diagnosticsView } from "./diagnostics.js";
import { auditView } from "./audit.js";
import { logView } from "./log.js";
import { shelveControl, shelvedSection } from "./shelving.js";
import { fmtValue, fmtAgo, fmtTime, fmtStamp, eventKind } from "./format.js";

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

const PRIORITY_RANK = { normal: 0, high: 1, emergency: 2 };
const EVENT_TYPES = [
  "device_online", "device_offline", "device_abnormal",
  "threshold_exceeded", "threshold_cleared", "data_point_reached",
  "bus_offline", "bus_online", "config_applied", "alarm_shelved", "alarm_unshelved",
];

const QUALITY_TEXT = { good: "", bad: "BAD", stale: "STALE" };

/** The trend ranges, from a look at the last minutes to a week. */
const RANGES = [
  { label: "10 min", ms: 600_000 }, { label: "1 h", ms: 3_600_000 }, { label: "8 h", ms: 28_800_000 },
  { label: "24 h", ms: 86_400_000 }, { label: "7 d", ms: 604_800_000 },
];

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

const S = {
  token: sessionStorage.getItem("edge.token"),
  role: null,
  user: null,
  order: [], // device ids, config order
  desc: new Map(), // id → devices.describe entry
  buses: [], // bus names, config order (also those without devices)
  live: new Map(), // id → { online, lastSeen, type, points: Map(pid → {value, quality, unit, ts}) }
  alarms: [],
  view: null, // { name, update(kind, data) } of the view on screen
  alerted: new Set(), // emergency alarm ids already announced
  loggedIn: false,
  // Missed pushes: each device's last deviceSeq and the newest event time seen; a deviceSeq
  // that jumps, or a reconnect, makes the page re-read what it missed.
  devSeq: new Map(),
  lastEventTs: null,
  seen: new Set(), // ids of events already handled (bounded)
  everLoggedIn: false,
};

const conn = new Conn({ onPush, onState, onOpen });
// What the inspector and Configure views (their own modules) need of the page.
// `reloaded`: this page applied a config, answered once it runs: everything is read again.
const env = { conn, S, confirmDialog, scans: { listener: null }, reloaded: () => afterLogin({ user: S.user, role: S.role }, true) };
// For the browser test: `window.__edgeDrop = (service, data) => bool` drops matching pushes as
// if the network had lost them; `__edgeDropped` counts them.
window.__edgeConn = conn;
window.__edgeDropped = 0;

function isAdmin() {
  return S.role === "admin";
}

// ---------------------------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------------------------

async function onOpen() {
  if (S.token) {
    try {
      const d = await conn.call("auth.resume", { token: S.token });
      await afterLogin(d);
      return;
    } catch (e) {
      if (e.code === -1) return; // the link went down again; the next open retries
      sessionStorage.removeItem("edge.token");
      S.token = null;
    }
  }
  if (!$("form.login")) showLogin();
}

/** After a login, a reconnect, or a reload seen on an open socket (`reloaded`): everything read
 * again; a reload leaves a view with a form or a result being read (Configure, the inspector)
 * as it is. */
async function afterLogin(d, reloaded = false) {
  const again = S.everLoggedIn; // a reconnect: pushes may have been missed meanwhile
  S.everLoggedIn = true;
  S.role = d.role;
  S.user = d.user;
  S.loggedIn = true;
  document.body.classList.toggle("admin", isAdmin());
  $("#top").hidden = false;
  $("#status-bar").hidden = false;
  setText($("#who"), `${d.user} (${d.role})`);
  const [desc, list, alarms, stats] = await Promise.all([
    conn.call("devices.describe"),
    conn.call("devices.list"),
    conn.call("alarms.active"),
    conn.call("system.stats"),
  ]);
  S.order = desc.devices.map((x) => x.id);
  S.buses = desc.buses || [...new Set(desc.devices.map((x) => x.bus))];
  S.desc = new Map(desc.devices.map((x) => [x.id, x]));
  // Afresh: a reload may have removed devices, which must not linger in the counts.
  S.live = new Map();
  applyDevices(list.devices);
  // After a reconnect an emergency raised meanwhile is news: banner and tone.
  setAlarms(alarms.alarms, again, alarms.shelved);
  setText($("#gw-title"), `edge-gateway · ${stats.gatewayId}`);
  $("#interval").value = stats.pushIntervalMs / 1000;
  if (!(reloaded && S.view && ["configure", "inspector"].includes(S.view.name))) route();
  if (again) recoverMissed();
  // For the browser test: a reload's reconnect is over once this counts up.
  window.__edgeLogins = (window.__edgeLogins || 0) + 1;
}

function showLogin(message) {
  S.loggedIn = false;
  S.view = null;
  $("#banner").hidden = true;
  $("#top").hidden = true;
  $("#status-bar").hidden = true;
  document.body.classList.remove("admin");
  const err = h("p", { class: "error", role: "alert", text: message || "" });
  const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
  const pass = h("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const button = h("button", { type: "submit", class: "primary", text: "Log in" });
  const form = h(
    "form",
    {
      class: "login",
      onsubmit: async (ev) => {
        ev.preventDefault();
        button.disabled = true;
        setText(err, "");
        try {
          const d = await conn.call("auth.login", { username: user.value, password: pass.value });
          S.token = d.token;
          sessionStorage.setItem("edge.token", d.token);
          await afterLogin(d);
        } catch (e) {
          setText(err, e.code === 401 ? "Wrong user name or password." : e.code === 429 ? "Too many attempts; wait a minute." : `Cannot log in: ${e.message}`);
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", { text: "edge-gateway" }),
    h("label", { for: "username", text: "User" }), user,
    h("label", { for: "password", text: "Password" }), pass,
    button, err,
  );
  mount(form);
  user.focus();
}

$("#logout").addEventListener("click", async () => {
  try { await conn.call("auth.logout"); } catch { /* the session ends either way */ }
  sessionStorage.removeItem("edge.token");
  S.token = null;
  showLogin();
});

$("#theme").addEventListener("click", () => {
  const root = document.documentElement;
  const dark = root.dataset.theme
    ? root.dataset.theme === "dark"
    : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  localStorage.setItem("edge.theme", root.dataset.theme);
  if (S.view && S.view.redraw) S.view.redraw();
});
if (localStorage.getItem("edge.theme")) document.documentElement.dataset.theme = localStorage.getItem("edge.theme");

function onState(state, waitMs) {
  const c = $("#conn");
  setClass(c, `conn ${state}`);
  setText(c, state === "online" ? "Connected" : state === "connecting" ? "Connecting…" : `Connection lost — retrying in ${Math.ceil(waitMs / 1000)} s`);
}

$("#interval-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const ms = Math.round(Number($("#interval").value) * 1000);
  try {
    const d = await conn.call("push.setInterval", { intervalMs: ms });
    setText($("#interval-msg"), `Live values refresh every ${d.intervalMs / 1000} s`);
  } catch (e) {
    setText($("#interval-msg"), `Not changed: ${e.message}`);
  }
});

// ---------------------------------------------------------------------------------------------
// Live data
// ---------------------------------------------------------------------------------------------

function applyDevices(devices) {
  const changed = [];
  for (const d of devices) {
    let l = S.live.get(d.id);
    if (!l) {
      l = { points: new Map() };
      S.live.set(d.id, l);
    }
    l.type = d.type;
    l.online = d.online;
    l.lastSeen = d.lastSeen;
    for (const p of d.points) l.points.set(p.id, { value: p.value, quality: p.quality, unit: p.unit, ts: p.ts });
    changed.push(d.id);
  }
  updateCounts();
  if (S.view) S.view.update("devices", changed);
}

/** Whether a snapshot's devices and their points differ from the structure drawn. */
function structureChanged(devices) {
  if (!S.desc || devices.length !== S.desc.size) return true;
  return devices.some((d) => {
    const known = S.desc.get(d.id);
    if (!known || known.points.length !== d.points.length) return true;
    const ids = new Set(known.points.map((p) => p.id));
    return d.points.some((p) => !ids.has(p.id));
  });
}

function onPush(service, data) {
  if (window.__edgeDrop && window.__edgeDrop(service, data)) {
    window.__edgeDropped++;
    return;
  }
  if (service === "push.session") {
    // Logged out elsewhere, expired, or the user changed in the config: back to the login.
    S.token = null;
    sessionStorage.removeItem("edge.token");
    const why = { logout: "You were logged out.", expired: "Your session expired." };
    showLogin(why[data.reason] || "Your account was changed; log in again.");
    return;
  }
  if (!S.loggedIn) return;
  if (service === "push.snapshot") {
    // A reload keeps this socket open; a snapshot of other devices or points says the config
    // changed (a reload by someone else): everything is read again, as after a login.
    if (structureChanged(data.devices)) {
      afterLogin({ user: S.user, role: S.role }, true);
    } else applyDevices(data.devices);
  } else if (service === "push.telemetry") {
    const l = S.live.get(data.deviceId);
    if (!l) return;
    for (const [pid, x] of Object.entries(data.points)) {
      const p = l.points.get(pid) || { unit: "" };
      p.value = x.v;
      p.quality = x.q;
      p.ts = data.ts;
      l.points.set(pid, p);
    }
    if (S.view) S.view.update("telemetry", data);
  } else if (service === "push.event") {
    onEvent(data);
  } else if (service === "push.events") {
    for (const e of data.events) onEvent(e);
  } else if (service === "push.scan") {
    if (env.scans.listener) env.scans.listener(data);
  }
}

/** One event, pushed or recovered: a deviceSeq that jumps means pushes were lost. */
function onEvent(data) {
  if (S.seen.has(data.id)) return;
  S.seen.add(data.id);
  if (S.seen.size > 2000) S.seen.delete(S.seen.values().next().value);
  const last = S.devSeq.get(data.deviceId);
  if (last == null || data.deviceSeq > last) S.devSeq.set(data.deviceId, data.deviceSeq);
  if (S.lastEventTs == null || data.ts > S.lastEventTs) S.lastEventTs = data.ts;
  if (last != null && data.deviceSeq > last + 1) recoverMissed();
  if (data.type === "device_online" || data.type === "device_offline") {
    const l = S.live.get(data.deviceId);
    if (l) l.online = data.type === "device_online";
    updateCounts();
    if (S.view) S.view.update("devices", [data.deviceId]);
  }
  if (data.state === "active" || data.state === "cleared") refreshAlarms();
  if (S.view) S.view.update("event", data);
}

/** After a gap or a reconnect: the events since the newest one seen (an emergency among them
 * gets its banner and tone), and the active alarms. */
async function recoverMissed() {
  if (recoverMissed.busy) return;
  recoverMissed.busy = true;
  try {
    const since = S.lastEventTs;
    const [alarms, missed] = await Promise.all([
      conn.call("alarms.active"),
      since ? conn.call("events.query", { since, limit: 1000 }) : { events: [] },
    ]);
    for (const e of missed.events.slice().reverse()) {
      if (S.seen.has(e.id)) continue;
      if (e.priority === "emergency" && e.state === "active" && !S.alerted.has(e.id)) {
        S.alerted.add(e.id);
        cue(e);
      }
      onEvent(e);
    }
    setAlarms(alarms.alarms, true, alarms.shelved);
  } catch { /* the next gap or reconnect tries again */ }
  finally {
    recoverMissed.busy = false;
  }
}

let alarmTimer = null;
function refreshAlarms() {
  clearTimeout(alarmTimer);
  alarmTimer = setTimeout(async () => {
    try {
      const d = await conn.call("alarms.active");
      setAlarms(d.alarms, true, d.shelved);
    } catch { /* the next event or reconnect refreshes */ }
  }, 150);
}

function setAlarms(alarms, announce, shelved) {
  S.shelved = shelved || [];
  S.alarms = alarms.slice().sort((a, b) =>
    (PRIORITY_RANK[b.priority] - PRIORITY_RANK[a.priority]) || (b.ts < a.ts ? -1 : b.ts > a.ts ? 1 : 0));
  for (const a of S.alarms) {
    if (a.priority === "emergency" && a.state === "active" && !S.alerted.has(a.id)) {
      S.alerted.add(a.id);
      if (announce) cue(a);
    }
  }
  keepBanner();
  updateCounts();
  if (S.view) S.view.update("alarms");
}

/** The emergency banner stays while an emergency needs someone: until it is acknowledged (an
 * admin can), or cleared (a viewer cannot acknowledge). */
function keepBanner() {
  const open = S.alarms.some((a) => a.priority === "emergency"
    && (isAdmin() ? !a.ackedBy : a.state === "active"));
  if (!open) $("#banner").hidden = true;
}

/** A new emergency: a banner that flashes, and a tone (where the browser allows sound). */
function cue(a) {
  const b = $("#banner");
  b.hidden = false;
  b.replaceChildren(
    h("span", { text: `EMERGENCY: ${a.deviceId} — ${a.message} ` }),
    h("a", { href: "#/alarms", text: "Show alarms", style: "color:#fff" }),
  );
  try {
    const ctx = cue.ctx || (cue.ctx = new AudioContext());
    const o = ctx.createOscillator(), g = ctx.createGain();
    o.frequency.value = 880;
    g.gain.value = 0.2;
    o.connect(g).connect(ctx.destination);
    o.start();
    o.stop(ctx.currentTime + 0.6);
  } catch { /* no audio: the banner remains */ }
}

/** The header's counts; one alarm figure everywhere (listed: active or not yet acknowledged),
 * with the active ones named, and neutral colours at zero. */
function updateCounts() {
  let on = 0, off = 0;
  for (const l of S.live.values()) (l.online ? on++ : off++);
  const listed = S.alarms.length;
  const active = S.alarms.filter((a) => a.state === "active").length;
  setText($("#count-online"), `${on} online`);
  setText($("#count-offline"), `${off} offline`);
  setClass($("#count-offline"), `pill ${off ? "bad" : "neutral"}`);
  const pill = $("#count-alarms");
  const text = listed ? `${listed} alarm${listed === 1 ? "" : "s"}` : "No alarms";
  const detail = listed ? `\u00a0· ${active} active` : "";
  if (pill.textContent !== text + detail) pill.replaceChildren(text, h("span", { class: "detail", text: detail }));
  setClass($("#count-alarms"), `pill ${listed ? "alarm" : "neutral"}`);
  const badge = $("#nav-alarms");
  setText(badge, String(listed));
  badge.hidden = listed === 0;
}

function devicesInAlarm() {
  return new Set(S.alarms.filter((a) => a.state === "active").map((a) => a.deviceId));
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

function mount(node) {
  const main = $("#main");
  main.replaceChildren(node);
}

function route() {
  if (!S.loggedIn) return;
  const [path, query] = (location.hash.slice(1) || "/overview").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  let view;
  if (parts[0] === "device" && parts[1]) view = deviceView(decodeURIComponent(parts[1]));
  else if (parts[0] === "alarms") view = alarmsView();
  else if (parts[0] === "inspector" && isAdmin()) view = inspectorView(env, params.get("device"));
  else if (parts[0] === "configure" && isAdmin()) view = configureView(env);
  else if (parts[0] === "diagnostics") view = diagnosticsView(env);
  else if (parts[0] === "audit" && isAdmin()) view = auditView(env);
  else if (parts[0] === "log" && isAdmin()) view = logView(env);
  else view = overviewView(params.get("state"));
  S.view = view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  mount(view.node);
}
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------------------------------

/** How many points a card shows: the first ones in config order. */
const CARD_POINTS = 6;

function overviewView(initialState) {
  const text = h("input", { id: "f-text", type: "search", placeholder: "device, type or point", autocomplete: "off" });
  const state = h("select", { id: "f-state" },
    h("option", { value: "", text: "All" }),
    h("option", { value: "online", text: "Online" }),
    h("option", { value: "offline", text: "Offline" }),
    h("option", { value: "alarm", text: "In alarm" }));
  state.value = initialState || "";
  const grid = h("div", { class: "grid", id: "devices" });
  const cards = new Map();

  for (const id of S.order) {
    const d = S.desc.get(id);
    const state = h("span", { class: "state" });
    const seen = h("span", {});
    const flag = h("strong", { class: "alarm-flag" });
    const list = h("ul", { class: "points" });
    const pts = new Map();
    for (const p of d.points.slice(0, CARD_POINTS)) {
      const value = h("span", { class: "value" });
      const q = h("span", { class: "q" });
      const alarm = h("span", { class: "point-alarm" });
      list.append(h("li", { "data-point": p.id }, h("span", { class: "name", text: p.id }), h("span", {}, alarm, value, q)));
      pts.set(p.id, { value, q, alarm, unit: p.unit });
    }
    const card = h("article", { class: "card", "data-device": id, "aria-label": `device ${id}` },
      h("h2", {}, h("a", { href: `#/device/${encodeURIComponent(id)}`, text: id })),
      h("div", { class: "meta" }, h("span", { text: d.type || "—" }), state, seen, flag),
      list);
    grid.append(card);
    cards.set(id, { card, state, seen, flag, pts, haystack: [id, d.type, ...d.points.map((p) => p.id)].join(" ").toLowerCase() });
  }

  function paint(id, alarmed) {
    const c = cards.get(id), l = S.live.get(id);
    if (!c || !l) return;
    setClass(c.card, `card${l.online ? "" : " offline"}${alarmed.has(id) ? " in-alarm" : ""}`);
    setClass(c.state, `state ${l.online ? "on" : "off"}`);
    setText(c.state, l.online ? "● Online" : "○ Offline");
    setText(c.seen, `last read ${fmtAgo(l.lastSeen)}`);
    setText(c.flag, alarmed.has(id) ? "IN ALARM" : "");
    const pointsInAlarm = new Set(S.alarms.filter((a) => a.deviceId === id && a.state === "active" && a.pointId).map((a) => a.pointId));
    for (const [pid, e] of c.pts) {
      const p = l.points.get(pid);
      if (!p) continue;
      setText(e.value, `${fmtValue(p.value)}${e.unit ? " " + e.unit : ""}`);
      setClass(e.value, `value ${p.quality}`);
      setText(e.alarm, pointsInAlarm.has(pid) ? "ALARM" : "");
      setClass(e.q, `q q-${p.quality}`);
      setText(e.q, QUALITY_TEXT[p.quality] || "");
    }
  }

  function filter() {
    const t = text.value.trim().toLowerCase();
    const s = state.value;
    const alarmed = devicesInAlarm();
    for (const [id, c] of cards) {
      const l = S.live.get(id) || {};
      const ok = (!t || c.haystack.includes(t))
        && (!s || (s === "online" && l.online) || (s === "offline" && !l.online) || (s === "alarm" && alarmed.has(id)));
      c.card.hidden = !ok;
    }
  }
  text.addEventListener("input", filter);
  state.addEventListener("change", filter);

  const alarmed = devicesInAlarm();
  for (const id of S.order) paint(id, alarmed);
  filter();

  return {
    name: "overview",
    node: h("section", {},
      h("h1", { text: "Devices" }),
      h("div", { class: "toolbar", role: "search" },
        h("div", {}, h("label", { for: "f-text", text: "Filter" }), text),
        h("div", {}, h("label", { for: "f-state", text: "State" }), state)),
      grid),
    update(kind, data) {
      const alarmed = devicesInAlarm();
      if (kind === "devices") data.forEach((id) => paint(id, alarmed));
      else if (kind === "telemetry") paint(data.deviceId, alarmed);
      else if (kind === "alarms") S.order.forEach((id) => paint(id, alarmed));
      if (kind !== "event") filter();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Alarms and the event log
// ---------------------------------------------------------------------------------------------

function alarmsView() {
  const list = h("ul", { class: "list", id: "alarm-list", "aria-live": "polite" });
  const empty = h("li", { class: "small", text: "No active or unacknowledged alarms." });
  const rowsById = new Map(); // alarm key → { li, paint(alarm) }: rows are updated in place
  const shelf = h("div", {});
  const comment = h("input", { id: "a-comment", type: "text", maxlength: 500, autocomplete: "off", placeholder: "optional" });
  const ackAll = h("button", { type: "button", class: "ack-all", text: "Acknowledge all",
    onclick: () => ack({ eventIds: S.alarms.filter((a) => !a.ackedBy).map((a) => a.id) }, ackAll) });
  const tools = isAdmin()
    ? h("div", { class: "toolbar" }, h("div", {}, h("label", { for: "a-comment", text: "Comment (kept with the acknowledgement)" }), comment), ackAll)
    : null;

  async function ack(params, button) {
    button.disabled = true;
    try {
      const note = comment.value.trim();
      await conn.call("alarms.ack", note ? { ...params, comment: note } : params);
      comment.value = "";
      refreshAlarms();
    } catch (e) {
      button.textContent = `Ack failed: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  }

  function makeRow(a) {
    const prio = h("span", {});
    const detail = h("div", { class: "small" });
    const actions = h("div", { class: "actions" });
    const li = h("li", { "data-event": a.id },
      prio,
      h("div", { class: "text" },
        // A bus's own alarm (`bus_offline`) links to the diagnostics, where the bus is.
        h("div", {}, h("a", { class: "device-link", href: S.desc.has(a.deviceId) ? `#/device/${encodeURIComponent(a.deviceId)}` : "#/diagnostics", text: a.deviceId }), " — ", h("strong", { text: a.message })),
        detail),
      actions);
    let acked = null; // what the actions show, so they are rebuilt only when that changes
    let cur = a; // the alarm as last painted: a re-raise gives it a new event id
    return {
      li,
      paint(x) {
        cur = x;
        li.dataset.event = x.id;
        setClass(li, `alarm-item p-${x.priority}${x.state === "cleared" ? " cleared" : ""}`);
        setClass(prio, `prio prio-${x.priority}`);
        setText(prio, x.priority);
        const times = x.occurrences > 1 ? ` · raised ${x.occurrences} times, first at ${fmtTime(x.firstRaisedAt)}` : "";
        setText(detail, `${x.state === "active" ? "ACTIVE" : "CLEARED, awaiting acknowledgement"} · since ${fmtTime(x.ts)}${x.value != null ? " · value " + fmtValue(x.value) : ""}${times}`);
        const others = S.alarms.filter((o) => o.deviceId === x.deviceId && !o.ackedBy).length;
        const shown = `${x.ackedBy || ""}|${isAdmin()}|${others > 1}`;
        if (shown === acked) return;
        acked = shown;
        const shelve = isAdmin() ? shelveControl(conn, x, refreshAlarms) : "";
        if (x.ackedBy) {
          actions.replaceChildren(h("span", { class: "small", text: `acknowledged by ${x.ackedBy} at ${fmtTime(x.ackedAt)}` }), shelve);
        } else if (isAdmin()) {
          const one = h("button", { type: "button", class: "ack", text: "Acknowledge", "aria-label": `Acknowledge ${x.message} on ${x.deviceId}` });
          one.addEventListener("click", () => ack({ eventId: cur.id }, one));
          const all = others > 1 ? h("button", { type: "button", class: "ack-device ghost", text: `All of ${x.deviceId}` }) : null;
          if (all) all.addEventListener("click", () => ack({ deviceId: x.deviceId }, all));
          actions.replaceChildren(one, all || "", shelve);
        } else {
          actions.replaceChildren(h("span", { class: "small", text: "not acknowledged" }));
        }
      },
    };
  }

  /** Keyed: a row is updated where it is, so nothing moves under a finger about to tap it. */
  function paintAlarms() {
    shelf.replaceChildren(shelvedSection(conn, S.shelved || [], isAdmin(), refreshAlarms));
    ackAll.hidden = !S.alarms.some((a) => !a.ackedBy);
    if (!S.alarms.length) {
      rowsById.clear();
      list.replaceChildren(empty);
      return;
    }
    empty.remove();
    // Keyed by the alarm, not its latest event: raised again, it is the same row.
    const key = (a) => a.alarmKey || a.id;
    const keys = new Set(S.alarms.map(key));
    for (const [k, r] of rowsById) {
      if (!keys.has(k)) {
        r.li.remove();
        rowsById.delete(k);
      }
    }
    let prev = null;
    for (const a of S.alarms) {
      let r = rowsById.get(key(a));
      if (!r) {
        r = makeRow(a);
        rowsById.set(key(a), r);
      }
      r.paint(a);
      const at = prev ? prev.nextSibling : list.firstChild;
      if (at !== r.li) list.insertBefore(r.li, at);
      prev = r.li;
    }
  }

  // The event log, newest first, with filters and paging.
  const fDevice = h("select", { id: "e-device" }, h("option", { value: "", text: "All devices" }), ...S.order.map((id) => h("option", { value: id, text: id })));
  const fType = h("select", { id: "e-type" }, h("option", { value: "", text: "All types" }), ...EVENT_TYPES.map((t) => h("option", { value: t, text: t.replace(/_/g, " ") })));
  const fPrio = h("select", { id: "e-prio" }, ...["normal", "high", "emergency"].map((p) => h("option", { value: p, text: `≥ ${p}` })));
  const fSince = h("input", { id: "e-since", type: "datetime-local" });
  const rows = h("tbody", {});
  const more = h("button", { type: "button", text: "Load older events", hidden: true });
  let next = null;

  async function load(append) {
    const params = { limit: 50, minPriority: fPrio.value };
    if (fDevice.value) params.deviceId = fDevice.value;
    if (fType.value) params.type = fType.value;
    if (fSince.value) params.since = new Date(fSince.value).toISOString();
    if (append && next) params.before = next;
    try {
      const d = await conn.call("events.query", params);
      next = d.next;
      more.hidden = !next;
      const trs = d.events.map(eventRow);
      if (append) rows.append(...trs);
      else rows.replaceChildren(...trs);
      if (!append && !trs.length) rows.replaceChildren(h("tr", {}, h("td", { colspan: 5, text: "No events match." })));
    } catch (e) {
      rows.replaceChildren(h("tr", {}, h("td", { colspan: 5, class: "error", text: `Cannot load events: ${e.message}` })));
    }
  }

  function eventRow(e) {
    return h("tr", {},
      h("td", { "data-label": "Time", class: "when", text: fmtStamp(e.ts) }),
      h("td", { "data-label": "Device", text: e.deviceId }),
      h("td", { "data-label": "Type", text: eventKind(e) }),
      h("td", { "data-label": "Priority" }, h("span", { class: `prio prio-${e.priority}`, text: e.priority })),
      h("td", { "data-label": "Message", text: `${e.message}${e.value != null ? " (" + fmtValue(e.value) + ")" : ""}` }));
  }

  const form = h("form", { class: "toolbar", onsubmit: (ev) => { ev.preventDefault(); load(false); } },
    h("div", {}, h("label", { for: "e-device", text: "Device" }), fDevice),
    h("div", {}, h("label", { for: "e-type", text: "Type" }), fType),
    h("div", {}, h("label", { for: "e-prio", text: "Priority" }), fPrio),
    h("div", {}, h("label", { for: "e-since", text: "Since" }), fSince),
    h("button", { type: "submit", text: "Show" }));
  more.addEventListener("click", () => load(true));

  paintAlarms();
  load(false);
  let reload = null;
  return {
    name: "alarms",
    node: h("section", {},
      h("h1", { text: "Alarms" }), tools, list, shelf,
      h("h2", { text: "Event log" }), form,
      h("table", { class: "events" },
        h("thead", {}, h("tr", {}, ...["Time", "Device", "Type", "Priority", "Message"].map((t) => h("th", { text: t })))),
        rows),
      more),
    update(kind) {
      if (kind === "alarms") paintAlarms();
      if (kind === "event" && !next) {
        // Still on the first page: show new events as they come (batched).
        clearTimeout(reload);
        reload = setTimeout(() => load(false), 300);
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Device detail: every point, its trend, and writes
// ---------------------------------------------------------------------------------------------

function deviceView(id) {
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
    const lines = (p.thresholds || []).map((t) => ({ value: t.value, label: t.clear ? `${t.rule} clears` : t.rule, kind: t.clear ? "clear" : "threshold" }));
    if (p.min != null) lines.push({ value: p.min, label: "min", kind: "limit" });
    if (p.max != null) lines.push({ value: p.max, label: "max", kind: "limit" });
    const trend = canvas ? new Trend(canvas, { unit: p.unit, lines, step: p.type === "bool" || p.writable, bool: p.type === "bool" }) : null;
    const tip = h("output", { class: "small tip" });
    if (trend) trend.onHover = (b) => setText(tip, b ? `${fmtTime(b.t)} · ${fmtValue(b.v)}${p.unit ? " " + p.unit : ""}${b.max > b.min ? ` (${fmtValue(b.min)} … ${fmtValue(b.max)})` : ""}` : "");
    const row = h("section", { class: "point-row", "data-point": p.id },
      h("header", {},
        h("strong", { text: p.id }),
        h("span", {}, value, q),
        ts),
      canvas, canvas ? tip : null);
    if (p.writable && isAdmin()) row.append(writeControl(d, p));
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
      setText(r.value, `${fmtValue(p.value)}${r.unit ? " " + r.unit : ""}`);
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
          const hst = await conn.call("points.history", { deviceId: id, pointId: pid, since: until - rangeMs, until, buckets: columns });
          r.trend.set(hst.buckets.map((b) => ({ t: Date.parse(b.lastTs), min: b.min, max: b.max, v: b.v, gap: b.gap })), rangeMs, until);
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
  const rangeButtons = RANGES.map((r) => h("button", {
    type: "button", class: "ghost range", text: r.label, "aria-pressed": String(r.ms === rangeMs),
    onclick: (ev) => {
      rangeMs = r.ms;
      S.trendRange = r.label;
      for (const b of rangeButtons) b.setAttribute("aria-pressed", String(b === ev.currentTarget));
      loadTrends();
    },
  }));

  paint();
  return {
    name: "device",
    node: h("section", {},
      h("h1", { text: id }),
      h("div", { class: "meta toolbar" },
        h("span", { text: `${d.type || "device"} · bus ${d.bus} · unit ${d.unit}` }), state, seen,
        isAdmin() ? h("a", { class: "button", href: `#/inspector?device=${encodeURIComponent(id)}`, text: "Inspect registers" }) : null),
      h("div", { class: "toolbar ranges", role: "group", "aria-label": "Trend range" }, ...rangeButtons),
      list),
    update(kind, data) {
      if (kind === "telemetry" && data.deviceId === id) {
        for (const [pid, x] of Object.entries(data.points)) {
          const r = rows.get(pid);
          if (r && r.trend) r.trend.push(Date.parse(data.ts), num(x.v), x.q === "good");
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
function writeControl(d, p) {
  const inputId = `w-${d.id}-${p.id}`;
  const input = p.type === "bool"
    ? h("select", { id: inputId }, h("option", { value: "true", text: "ON" }), h("option", { value: "false", text: "OFF" }))
    : h("input", { id: inputId, type: p.type === "string" ? "text" : "number", step: "any", inputmode: p.type === "string" ? "text" : "decimal", required: true });
  if (p.type === "bool") {
    // The selector starts at what the device holds, not at ON.
    const now = S.live.get(d.id)?.points.get(p.id)?.value;
    if (typeof now === "boolean") input.value = String(now);
  }
  const result = h("span", { class: "result", role: "status" });
  const button = h("button", { type: "submit", text: "Write…" });
  return h("form", {
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
      const ok = await confirmDialog(`Write ${d.id} / ${p.id}`, `${fmtValue(current)}${unit} → ${fmtValue(value)}${unit}`);
      if (!ok) return;
      button.disabled = true;
      setText(result, "Writing…");
      setClass(result, "result");
      try {
        const r = await conn.call("device.write", { deviceId: d.id, pointId: p.id, value });
        // What the device holds now, read back, rather than what was asked.
        setText(result, r.readBack == null
          ? `Written: ${fmtValue(r.old)} → ${fmtValue(r.value)}${unit} (not read back)`
          : `Written: ${fmtValue(r.old)} → ${fmtValue(r.readBack)}${unit}, read back from the device`);
        setClass(result, "result ok");
      } catch (e) {
        setText(result, `Not written (${e.code}): ${e.message}`);
        setClass(result, "result err");
      } finally {
        button.disabled = false;
      }
    },
  }, h("div", {}, h("label", { for: inputId, text: `New ${p.id}${p.unit ? " (" + p.unit + ")" : ""}` }), input), button, result);
}

/** Why the point cannot hold `v` (its type, scale and steps), in plain words; null when it can. */
function outsideRange(p, v) {
  const r = p.writeRange;
  if (!r) return null;
  const unit = p.unit ? ` ${p.unit}` : "";
  const decimals = r.step && r.step < 1 ? Math.min(12, Math.ceil(-Math.log10(r.step))) : 0;
  const num = (x) => Math.abs(x) >= 1e15 ? x.toExponential(3) : x.toLocaleString(undefined, { maximumFractionDigits: Math.max(decimals, 6) });
  const span = `between ${num(r.min)} and ${num(r.max)}${unit}`;
  if (r.step) {
    const k = (v - (p.offset || 0)) / r.step;
    if (Math.abs(k - Math.round(k)) > 1e-6 * Math.max(1, Math.abs(k))) return `${p.id} takes steps of ${num(r.step)}${unit} ${span}.`;
  }
  if (v < r.min || v > r.max) return `${p.id} takes values ${span}.`;
  return null;
}

function confirmDialog(title, body) {
  const dlg = $("#confirm");
  setText($("#confirm-title"), title);
  setText($("#confirm-body"), body);
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    $("#confirm-ok").focus();
  });
}

// ---------------------------------------------------------------------------------------------

conn.connect();
if (!S.token) showLogin();
