// The overview: a card per device (state, last read, its first points), filtered by text and
// state, repainted only where a push changed something.

import { h, setText, setClass } from "./dom.js";
import { fmtValue, fmtAgo, QUALITY_TEXT } from "./format.js";

/** How many points a card shows: the first ones in config order. */
const CARD_POINTS = 6;

export function overviewView(env, initialState) {
  const { S } = env;
  const text = h("input", { id: "f-text", type: "search", placeholder: "device, type or point", autocomplete: "off" });
  const state = h(
    "select",
    { id: "f-state" },
    h("option", { value: "", text: "All" }),
    h("option", { value: "online", text: "Online" }),
    h("option", { value: "offline", text: "Offline" }),
    h("option", { value: "alarm", text: "In alarm" }),
  );
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
      list.append(
        h("li", { "data-point": p.id }, h("span", { class: "name", text: p.id }), h("span", {}, alarm, value, q)),
      );
      pts.set(p.id, { value, q, alarm, unit: p.unit });
    }
    const card = h(
      "article",
      { class: "card", "data-device": id, "aria-label": `device ${id}` },
      h("h2", {}, h("a", { href: `#/device/${encodeURIComponent(id)}`, text: id })),
      h("div", { class: "meta" }, h("span", { text: d.type || "—" }), state, seen, flag),
      list,
    );
    grid.append(card);
    cards.set(id, {
      card,
      state,
      seen,
      flag,
      pts,
      haystack: [id, d.type, ...d.points.map((p) => p.id)].join(" ").toLowerCase(),
    });
  }

  function paint(id, alarmed) {
    const c = cards.get(id),
      l = S.live.get(id);
    if (!c || !l) return;
    setClass(c.card, `card${l.online ? "" : " offline"}${alarmed.has(id) ? " in-alarm" : ""}`);
    setClass(c.state, `state ${l.online ? "on" : "off"}`);
    setText(c.state, l.online ? "● Online" : "○ Offline");
    setText(c.seen, `last read ${fmtAgo(l.lastSeen)}`);
    setText(c.flag, alarmed.has(id) ? "IN ALARM" : "");
    const pointsInAlarm = new Set(
      S.alarms.filter((a) => a.deviceId === id && a.state === "active" && a.pointId).map((a) => a.pointId),
    );
    for (const [pid, e] of c.pts) {
      const p = l.points.get(pid);
      if (!p) continue;
      setText(e.value, `${fmtValue(p.value)}${e.unit ? ` ${e.unit}` : ""}`);
      setClass(e.value, `value ${p.quality}`);
      setText(e.alarm, pointsInAlarm.has(pid) ? "ALARM" : "");
      setClass(e.q, `q q-${p.quality}`);
      setText(e.q, QUALITY_TEXT[p.quality] || "");
    }
  }

  function filter() {
    const t = text.value.trim().toLowerCase();
    const s = state.value;
    const alarmed = env.alarms.inAlarm();
    for (const [id, c] of cards) {
      const l = S.live.get(id) || {};
      const ok =
        (!t || c.haystack.includes(t)) &&
        (!s || (s === "online" && l.online) || (s === "offline" && !l.online) || (s === "alarm" && alarmed.has(id)));
      c.card.hidden = !ok;
    }
  }
  text.addEventListener("input", filter);
  state.addEventListener("change", filter);

  const alarmed = env.alarms.inAlarm();
  for (const id of S.order) paint(id, alarmed);
  filter();

  return {
    name: "overview",
    node: h(
      "section",
      {},
      h("h1", { text: "Devices" }),
      h(
        "div",
        { class: "toolbar", role: "search" },
        h("div", {}, h("label", { for: "f-text", text: "Filter" }), text),
        h("div", {}, h("label", { for: "f-state", text: "State" }), state),
      ),
      grid,
    ),
    update(kind, data) {
      const alarmed = env.alarms.inAlarm();
      if (kind === "devices") for (const id of data) paint(id, alarmed);
      else if (kind === "telemetry") paint(data.deviceId, alarmed);
      else if (kind === "alarms") for (const id of S.order) paint(id, alarmed);
      if (kind !== "event") filter();
    },
  };
}
