// The Alarms view: active and unacknowledged alarms (acknowledge one, a device's or all, with a
// comment; shelve one), the Shelved list, and the event log with filters and paging.

import { h, setText, setClass } from "./dom.js";
import { fmtValue, fmtTime, fmtStamp, eventKind } from "./format.js";
import { shelveControl, shelvedSection } from "./shelving.js";

/** Every event type, for the log's filter. */
const EVENT_TYPES = [
  "device_online",
  "device_offline",
  "device_abnormal",
  "threshold_exceeded",
  "threshold_cleared",
  "data_point_reached",
  "bus_offline",
  "bus_online",
  "config_applied",
  "alarm_shelved",
  "alarm_unshelved",
];

export function alarmsView(env) {
  const { conn, S, isAdmin } = env;
  const refreshAlarms = env.alarms.refresh;
  const list = h("ul", { class: "list", id: "alarm-list", "aria-live": "polite" });
  const empty = h("li", { class: "small", text: "No active or unacknowledged alarms." });
  const rowsById = new Map(); // alarm key → { li, paint(alarm) }: rows are updated in place
  const shelf = h("div", {});
  const comment = h("input", {
    id: "a-comment",
    type: "text",
    maxlength: 500,
    autocomplete: "off",
    placeholder: "optional",
  });
  const ackAll = h("button", {
    type: "button",
    class: "ack-all",
    text: "Acknowledge all",
    onclick: () => ack({ eventIds: S.alarms.filter((a) => !a.ackedBy).map((a) => a.id) }, ackAll),
  });
  const tools = isAdmin()
    ? h(
        "div",
        { class: "toolbar" },
        h("div", {}, h("label", { for: "a-comment", text: "Comment (kept with the acknowledgement)" }), comment),
        ackAll,
      )
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
    const li = h(
      "li",
      { "data-event": a.id },
      prio,
      h(
        "div",
        { class: "text" },
        // A bus's own alarm (`bus_offline`) links to the diagnostics, where the bus is.
        h(
          "div",
          {},
          h("a", {
            class: "device-link",
            href: S.desc.has(a.deviceId) ? `#/device/${encodeURIComponent(a.deviceId)}` : "#/diagnostics",
            text: a.deviceId,
          }),
          " — ",
          h("strong", { text: a.message }),
        ),
        detail,
      ),
      actions,
    );
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
        setText(
          detail,
          `${x.state === "active" ? "ACTIVE" : "CLEARED, awaiting acknowledgement"} · since ${fmtTime(x.ts)}${x.value != null ? ` · value ${fmtValue(x.value)}` : ""}${times}`,
        );
        const others = S.alarms.filter((o) => o.deviceId === x.deviceId && !o.ackedBy).length;
        const shown = `${x.ackedBy || ""}|${isAdmin()}|${others > 1}`;
        if (shown === acked) return;
        acked = shown;
        const shelve = isAdmin() ? shelveControl(conn, x, refreshAlarms) : "";
        if (x.ackedBy) {
          actions.replaceChildren(
            h("span", { class: "small", text: `acknowledged by ${x.ackedBy} at ${fmtTime(x.ackedAt)}` }),
            shelve,
          );
        } else if (isAdmin()) {
          const one = h("button", {
            type: "button",
            class: "ack",
            text: "Acknowledge",
            "aria-label": `Acknowledge ${x.message} on ${x.deviceId}`,
          });
          one.addEventListener("click", () => ack({ eventId: cur.id }, one));
          const all =
            others > 1
              ? h("button", { type: "button", class: "ack-device ghost", text: `All of ${x.deviceId}` })
              : null;
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
  const fDevice = h(
    "select",
    { id: "e-device" },
    h("option", { value: "", text: "All devices" }),
    ...S.order.map((id) => h("option", { value: id, text: id })),
  );
  const fType = h(
    "select",
    { id: "e-type" },
    h("option", { value: "", text: "All types" }),
    ...EVENT_TYPES.map((t) => h("option", { value: t, text: t.replace(/_/g, " ") })),
  );
  const fPrio = h(
    "select",
    { id: "e-prio" },
    ...["normal", "high", "emergency"].map((p) => h("option", { value: p, text: `≥ ${p}` })),
  );
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
      rows.replaceChildren(
        h("tr", {}, h("td", { colspan: 5, class: "error", text: `Cannot load events: ${e.message}` })),
      );
    }
  }

  function eventRow(e) {
    return h(
      "tr",
      {},
      h("td", { "data-label": "Time", class: "when", text: fmtStamp(e.ts) }),
      h("td", { "data-label": "Device", text: e.deviceId }),
      h("td", { "data-label": "Type", text: eventKind(e) }),
      h("td", { "data-label": "Priority" }, h("span", { class: `prio prio-${e.priority}`, text: e.priority })),
      h("td", { "data-label": "Message", text: `${e.message}${e.value != null ? ` (${fmtValue(e.value)})` : ""}` }),
    );
  }

  const form = h(
    "form",
    {
      class: "toolbar",
      onsubmit: (ev) => {
        ev.preventDefault();
        load(false);
      },
    },
    h("div", {}, h("label", { for: "e-device", text: "Device" }), fDevice),
    h("div", {}, h("label", { for: "e-type", text: "Type" }), fType),
    h("div", {}, h("label", { for: "e-prio", text: "Priority" }), fPrio),
    h("div", {}, h("label", { for: "e-since", text: "Since" }), fSince),
    h("button", { type: "submit", text: "Show" }),
  );
  more.addEventListener("click", () => load(true));

  paintAlarms();
  load(false);
  let reload = null;
  return {
    name: "alarms",
    node: h(
      "section",
      {},
      h("h1", { text: "Alarms" }),
      tools,
      list,
      shelf,
      h("h2", { text: "Event log" }),
      form,
      h(
        "table",
        { class: "events" },
        h(
          "thead",
          {},
          h("tr", {}, ...["Time", "Device", "Type", "Priority", "Message"].map((t) => h("th", { text: t }))),
        ),
        rows,
      ),
      more,
    ),
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
