// The alarms the page keeps: the active list in priority order, the emergency banner and tone,
// and the header's counts.

import { $, h, setText, setClass } from "./dom.js";

const PRIORITY_RANK = { normal: 0, high: 1, emergency: 2 };

/** `env`: { conn, S, isAdmin }. */
export function alarmState(env) {
  const { conn, S } = env;
  let audio = null;

  let timer = null;
  function refresh() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      try {
        const d = await conn.call("alarms.active");
        set(d.alarms, true, d.shelved);
      } catch {
        /* the next event or reconnect refreshes */
      }
    }, 150);
  }

  function set(alarms, announce, shelved) {
    S.shelved = shelved || [];
    S.alarms = alarms
      .slice()
      .sort(
        (a, b) => PRIORITY_RANK[b.priority] - PRIORITY_RANK[a.priority] || (b.ts < a.ts ? -1 : b.ts > a.ts ? 1 : 0),
      );
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
    const open = S.alarms.some(
      (a) => a.priority === "emergency" && (env.isAdmin() ? !a.ackedBy : a.state === "active"),
    );
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
      audio ??= new AudioContext();
      const ctx = audio;
      const o = ctx.createOscillator(),
        g = ctx.createGain();
      o.frequency.value = 880;
      g.gain.value = 0.2;
      o.connect(g).connect(ctx.destination);
      o.start();
      o.stop(ctx.currentTime + 0.6);
    } catch {
      /* no audio: the banner remains */
    }
  }

  /** The header's counts; one alarm figure everywhere (listed: active or not yet acknowledged),
   * with the active ones named, and neutral colours at zero. */
  function updateCounts() {
    let on = 0,
      off = 0;
    for (const l of S.live.values()) l.online ? on++ : off++;
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

  function inAlarm() {
    return new Set(S.alarms.filter((a) => a.state === "active").map((a) => a.deviceId));
  }

  return { refresh, set, cue, updateCounts, inAlarm };
}
