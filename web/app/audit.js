// The Audit view (admin): every write (who, when, which point, old → new, how it went) and
// every config apply, newest first, from the store's audit table, fifty at a time.

import { h } from "./dom.js";
import { fmtTime, fmtValue } from "./format.js";

const PAGE = 50;

function row(e) {
  const config = e.pointId === "config" && !e.old;
  const what = config ? "config file" : `${e.deviceId} / ${e.pointId}`;
  const change = config ? String(e.value) : `${fmtValue(e.old)} → ${fmtValue(e.value)}`;
  const ok = e.result === "ok";
  return h(
    "tr",
    { "data-audit": e.id },
    h("td", { "data-label": "Time", text: fmtTime(e.ts) }),
    h("td", { "data-label": "User", text: `${e.user || "—"} (${e.source})` }),
    h("td", { "data-label": "Point", text: what }),
    h("td", { "data-label": "Change", text: change }),
    h("td", { "data-label": "Result", class: ok ? "ok" : "bad", text: ok ? "ok" : `FAILED: ${e.result}` }),
  );
}

/** `env`: { conn }. */
export function auditView(env) {
  const { conn } = env;
  const rows = h("tbody", {});
  const more = h("button", { type: "button", text: "Load older entries", hidden: true });
  let next = null;

  async function load(append) {
    const params = { limit: PAGE };
    if (append && next) params.before = next;
    try {
      const d = await conn.call("audit.query", params);
      next = d.next;
      more.hidden = !next;
      const trs = d.entries.map(row);
      if (append) rows.append(...trs);
      else rows.replaceChildren(...trs);
      if (!append && !trs.length)
        rows.replaceChildren(h("tr", {}, h("td", { colspan: 5, text: "No writes or config changes yet." })));
    } catch (e) {
      rows.replaceChildren(
        h("tr", {}, h("td", { colspan: 5, class: "error", text: `Cannot load the audit: ${e.message}` })),
      );
    }
  }
  more.addEventListener("click", () => load(true));
  load(false);

  return {
    name: "audit",
    node: h(
      "section",
      {},
      h("h1", { text: "Audit" }),
      h("p", {
        class: "small",
        text: "Writes to devices (from this dashboard, MQTT or the API) and config changes, newest first.",
      }),
      h(
        "table",
        { class: "events audit" },
        h("thead", {}, h("tr", {}, ...["Time", "User", "Point", "Change", "Result"].map((t) => h("th", { text: t })))),
        rows,
      ),
      more,
    ),
    update() {},
  };
}
