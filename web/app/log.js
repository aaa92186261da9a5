// The Log view (admin): the gateway's last log lines from memory (`system.log`), newest at
// the bottom, refreshed every few seconds while the view is open.

import { h } from "./dom.js";

const REFRESH_MS = 3000;
const LINES = 200;

/** `env`: { conn, S }. */
export function logView(env) {
  const { conn, S } = env;
  const pre = h("pre", { class: "log", tabindex: "0", "aria-label": "Log lines" });
  const note = h("p", { class: "small", text: "Loading…" });
  const view = {
    name: "log",
    node: h("section", {}, h("h1", { text: "Log" }), note, pre),
    update() {},
  };
  async function load() {
    if (S.view !== view) return; // left the view: stop refreshing
    try {
      const d = await conn.call("system.log", { lines: LINES });
      // Kept at the bottom while the reader is there; left alone while they scroll up.
      const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = d.lines.join("\n");
      note.textContent = `The last ${d.lines.length} lines the gateway logged (kept in memory, up to 1,000; the system journal has them all).`;
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    } catch (e) {
      if (e.code !== -1) note.textContent = `No log (${e.code}): ${e.message}`;
    }
    setTimeout(load, REFRESH_MS);
  }
  setTimeout(load, 0);
  return view;
}
