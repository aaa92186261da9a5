// The technicians' dashboard: login, the overview, routing to the other views (alarms.js,
// device.js, inspector.js, configure.js …), pushes and the alarm state they keep, and the status
// bar. It speaks only the gateway's WebSocket
// protocol and updates only the DOM nodes whose values changed.

import { Conn } from "./conn.js";
import { $, h, setText, setClass } from "./dom.js";
import { inspectorView } from "./inspector.js";
import { configureView } from "./configure.js";
import { diagnosticsView } from "./diagnostics.js";
import { auditView } from "./audit.js";
import { usersView, changePasswordView } from "./users.js";
import { logView } from "./log.js";
import { alarmsView } from "./alarms.js";
import { deviceView } from "./device.js";
import { fmtValue, fmtAgo, fmtTime, QUALITY_TEXT } from "./format.js";

// ---------------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------------

const PRIORITY_RANK = { normal: 0, high: 1, emergency: 2 };


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
    const why = { logout: "You were logged out.", expired: "Your session expired.", "user changed": "Your user was changed (role or password): log in again." };
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
  if (parts[0] === "device" && parts[1]) view = deviceView(decodeURIComponent(parts[1]), { conn, S, isAdmin, confirmDialog });
  else if (parts[0] === "alarms") view = alarmsView({ conn, S, isAdmin, refreshAlarms });
  else if (parts[0] === "inspector" && isAdmin()) view = inspectorView(env, params.get("device"));
  else if (parts[0] === "configure" && isAdmin()) view = configureView(env);
  else if (parts[0] === "diagnostics") view = diagnosticsView(env);
  else if (parts[0] === "audit" && isAdmin()) view = auditView(env);
  else if (parts[0] === "users" && isAdmin()) view = usersView(env);
  else if (parts[0] === "password") view = changePasswordView(env);
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
// Confirmation
// ---------------------------------------------------------------------------------------------

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
