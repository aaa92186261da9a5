// The technicians' dashboard, wired: the connection and the environment every room takes, the
// routes and what is mounted, the theme and the status bar. The rooms are their own modules:
// the session (session.js), live updates (live.js), the alarms the page keeps (alarmstate.js),
// the overview (overview.js), and the views (device.js, alarms.js, inspector.js, configure.js
// …). It speaks only the gateway's WebSocket protocol and updates only the DOM nodes whose
// values changed.

import { Conn } from "./conn.js";
import { $, setText, setClass } from "./dom.js";
import { session } from "./session.js";
import { liveUpdates } from "./live.js";
import { alarmState } from "./alarmstate.js";
import { overviewView } from "./overview.js";
import { confirmDialog } from "./dialog.js";
import { inspectorView } from "./inspector.js";
import { configureView } from "./configure.js";
import { diagnosticsView } from "./diagnostics.js";
import { auditView } from "./audit.js";
import { usersView, changePasswordView } from "./users.js";
import { logView } from "./log.js";
import { alarmsView } from "./alarms.js";
import { deviceView } from "./device.js";

// The page's state, shared by every room.
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

// What every room takes. Each room is made with it and reaches the others through it (never by
// importing them), so no two modules import each other.
const env = {
  S,
  confirmDialog,
  scans: { listener: null },
  isAdmin: () => S.role === "admin",
  mount,
  route,
};
env.conn = new Conn({
  onPush: (service, data) => env.live.onPush(service, data),
  onState,
  onOpen: () => env.session.onOpen(),
});
env.alarms = alarmState(env);
env.live = liveUpdates(env);
env.session = session(env);
// This page applied a config, answered once it runs: everything is read again.
env.reloaded = () => env.session.afterLogin({ user: S.user, role: S.role }, true);
// For the browser test: `window.__edgeDrop = (service, data) => bool` drops matching pushes as
// if the network had lost them; `__edgeDropped` counts them.
window.__edgeConn = env.conn;
window.__edgeDropped = 0;

$("#theme").addEventListener("click", () => {
  const root = document.documentElement;
  const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = dark ? "light" : "dark";
  localStorage.setItem("edge.theme", root.dataset.theme);
  if (S.view?.redraw) S.view.redraw();
});
if (localStorage.getItem("edge.theme")) document.documentElement.dataset.theme = localStorage.getItem("edge.theme");

function onState(state, waitMs) {
  const c = $("#conn");
  setClass(c, `conn ${state}`);
  setText(
    c,
    state === "online"
      ? "Connected"
      : state === "connecting"
        ? "Connecting…"
        : `Connection lost — retrying in ${Math.ceil(waitMs / 1000)} s`,
  );
}

$("#interval-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const ms = Math.round(Number($("#interval").value) * 1000);
  try {
    const d = await env.conn.call("push.setInterval", { intervalMs: ms });
    setText($("#interval-msg"), `Live values refresh every ${d.intervalMs / 1000} s`);
  } catch (e) {
    setText($("#interval-msg"), `Not changed: ${e.message}`);
  }
});

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
  if (parts[0] === "device" && parts[1]) view = deviceView(decodeURIComponent(parts[1]), env);
  else if (parts[0] === "alarms") view = alarmsView(env);
  else if (parts[0] === "inspector" && env.isAdmin()) view = inspectorView(env, params.get("device"));
  else if (parts[0] === "configure" && env.isAdmin()) view = configureView(env);
  else if (parts[0] === "diagnostics") view = diagnosticsView(env);
  else if (parts[0] === "audit" && env.isAdmin()) view = auditView(env);
  else if (parts[0] === "users" && env.isAdmin()) view = usersView(env);
  else if (parts[0] === "password") view = changePasswordView(env);
  else if (parts[0] === "log" && env.isAdmin()) view = logView(env);
  else view = overviewView(env, params.get("state"));
  S.view = view;
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view.name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  mount(view.node);
}
window.addEventListener("hashchange", route);

env.conn.connect();
if (!S.token) env.session.showLogin();
