// ISA-18.2 shelving in the Alarms view (admin): an alarm set aside for a while from its row,
// with a duration and a comment, and the Shelved list with who, until when, why, and Unshelve.

import { h, setText } from "./dom.js";
import { fmtTime } from "./format.js";

const DURATIONS = [
  ["15 min", 900],
  ["1 h", 3600],
  ["2 h", 7200],
  ["4 h", 14400],
  ["8 h (a shift)", 28800],
];

/** A "Shelve…" button that opens a duration and a comment under it; `done` after a shelving. */
export function shelveControl(conn, alarm, done) {
  const button = h("button", {
    type: "button",
    class: "ghost shelve",
    text: "Shelve…",
    "aria-label": `Shelve ${alarm.message} on ${alarm.deviceId}`,
  });
  const id = `sh-${alarm.id}`;
  const duration = h("select", { id: `${id}-d` }, ...DURATIONS.map(([t, s]) => h("option", { value: s, text: t })));
  const comment = h("input", {
    id: `${id}-c`,
    type: "text",
    maxlength: 500,
    autocomplete: "off",
    placeholder: "why (kept with it)",
  });
  const said = h("span", { class: "small", role: "status" });
  const go = h("button", { type: "button", text: "Shelve" });
  const form = h(
    "div",
    { class: "toolbar shelve-form", hidden: true },
    h("div", {}, h("label", { for: duration.id, text: "For" }), duration),
    h("div", {}, h("label", { for: comment.id, text: "Comment" }), comment),
    go,
    said,
  );
  button.addEventListener("click", () => {
    form.hidden = !form.hidden;
  });
  go.addEventListener("click", async () => {
    go.disabled = true;
    try {
      await conn.call("alarms.shelve", {
        eventId: alarm.id,
        durationS: Number(duration.value),
        comment: comment.value.trim(),
      });
      done();
    } catch (e) {
      setText(said, `Not shelved (${e.code}): ${e.message}`);
    } finally {
      go.disabled = false;
    }
  });
  return h("span", {}, button, form);
}

/** The Shelved section: each alarm set aside, by whom, until when and why; `admin` can take
 * one back. `done` after an unshelving. */
export function shelvedSection(conn, shelved, admin, done) {
  if (!shelved.length) return h("section", { id: "shelved" });
  return h(
    "section",
    { id: "shelved" },
    h("h2", { text: `Shelved (${shelved.length})` }),
    h(
      "ul",
      { class: "list" },
      ...shelved.map((a) => {
        const back = admin ? h("button", { type: "button", class: "ghost", text: "Unshelve" }) : null;
        if (back) {
          back.addEventListener("click", async () => {
            back.disabled = true;
            try {
              await conn.call("alarms.unshelve", a.shelvedAs);
              done();
            } catch (e) {
              back.textContent = `Failed: ${e.message}`;
            }
          });
        }
        return h(
          "li",
          { class: `alarm-item shelved p-${a.priority}`, "data-event": a.id },
          h("span", { class: `prio prio-${a.priority}`, text: a.priority }),
          h(
            "div",
            { class: "text" },
            h("div", {}, h("strong", { text: a.deviceId }), " — ", a.message),
            h("div", {
              class: "small",
              text: `shelved by ${a.shelvedBy} until ${fmtTime(a.shelvedUntil)}${a.shelvedComment ? `: ${a.shelvedComment}` : ""}`,
            }),
          ),
          h("div", { class: "actions" }, back),
        );
      }),
    ),
  );
}
