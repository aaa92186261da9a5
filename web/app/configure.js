// The Configure view (admin): the running config's buses, devices, calculated points and rules;
// a device added, edited field by field (devform.js) or removed; a bus, a rule and the upstreams
// by form (forms.js), a calculated point with a live preview (calcform.js); the file itself edited, checked by the gateway's own validator (problems by line
// and key path) and applied as a reload; every applied version listed with who and what, to
// roll back.

import { h, setText, field, problemText } from "./dom.js";
import { deviceForm } from "./devform.js";
import { busForm, ruleForm, upstreamForm } from "./forms.js";
import { calculatedForm } from "./calcform.js";

/** `env`: { conn, S, confirmDialog }. */
export function configureView(env) {
  const { conn, confirmDialog, S } = env;
  const summary = h("div", { "aria-live": "polite" }, h("p", { text: "Loading…" }));
  const text = h("textarea", { id: "c-text", rows: 18, spellcheck: false, autocapitalize: "off", autocomplete: "off" });
  const problems = h("div", { role: "status" });
  const history = h("div", {});
  const formBox = h("div", {});
  let loaded = "";
  let file = null; // the file as written (templates not expanded), from config.get
  let serialPorts = [];
  const upstreams = h("div", {});

  function showProblems(list, ok) {
    if (!list.length) {
      problems.replaceChildren(h("p", { class: "result ok", text: ok }));
      return;
    }
    problems.replaceChildren(
      h("p", { class: "error", text: `${list.length} problem(s):` }),
      h("ul", { class: "problems" }, ...list.map((p) => h("li", { text: problemText(p) }))),
    );
  }

  /** Applies a text after a confirmation naming what changes; the gateway then reloads. */
  async function apply(newText, what) {
    try {
      const v = await conn.call("config.validate", { text: newText });
      if (v.problems.length) {
        showProblems(v.problems, "");
        return;
      }
      if (!(await confirmDialog("Apply the config", `${what} The gateway reloads; this page stays connected.`))) return;
      const r = await conn.call("config.apply", { text: newText }, 60000);
      env.reloaded();
      problems.replaceChildren(h("p", { class: "result ok", text: `Applied as version ${r.id}: ${r.summary}.` }));
      // The file and the structure as they are now: the next form edits this text.
      formBox.replaceChildren();
      await load();
    } catch (e) {
      if (e.data?.problems) showProblems(e.data.problems, "");
      else problems.replaceChildren(h("p", { class: "error", text: `Not applied (${e.code}): ${e.message}` }));
    }
  }

  /** Opens the form for a device of the file (or a new one) under the structure. */
  function openForm(id) {
    const raw = id ? (file?.devices || []).find((d) => d.id === id) : null;
    formBox.replaceChildren(
      deviceForm(raw, {
        conn,
        buses: (file?.buses || []).map((b) => b.name),
        templates: file?.templates || {},
        text: () => loaded,
        apply,
        general: (list) => showProblems(list, ""),
      }),
    );
    formBox.scrollIntoView({ block: "start" });
  }

  /** What the bus, rule and upstream forms share. */
  function formCtx() {
    return {
      conn,
      text: () => loaded,
      apply,
      general: (list) => showProblems(list, ""),
      serialPorts,
      devices: S.order.map((id) => S.desc.get(id)).filter(Boolean),
    };
  }

  function openBus(name) {
    const raw = name ? (file?.buses || []).find((b) => b.name === name) : null;
    formBox.replaceChildren(busForm(raw, formCtx()));
    formBox.scrollIntoView({ block: "start" });
  }

  function openRule(id) {
    const raw = id ? (file?.rules || []).find((r) => r.id === id) : null;
    formBox.replaceChildren(ruleForm(raw, formCtx()));
    formBox.scrollIntoView({ block: "start" });
  }

  function openCalculated(id) {
    const raw = id ? (file?.calculated || []).find((k) => `${k.device}.${k.point}` === id) : null;
    formBox.replaceChildren(calculatedForm(raw, formCtx()));
    formBox.scrollIntoView({ block: "start" });
  }

  /** A bus or rule taken out of the file (a bus's devices stay: the validator names them). */
  async function removeEntry(op, params, what) {
    try {
      const e = await conn.call("config.edit", { op, ...params, text: loaded });
      if (e.problems.length) {
        showProblems(e.problems, "");
        return;
      }
      await apply(e.text, `${what}: ${e.summary}.`);
    } catch (err) {
      problems.replaceChildren(h("p", { class: "error", text: `Not removed (${err.code}): ${err.message}` }));
    }
  }

  function paintUpstreams() {
    upstreams.replaceChildren(
      h("h2", { text: "Upstreams" }),
      h("p", {
        class: "small",
        text: "Off while absent. The test connects and logs in with the URL in the form, before anything is saved.",
      }),
      upstreamForm("mysql", file?.mysql || null, formCtx()),
      upstreamForm("mqtt", file?.mqtt || null, formCtx()),
    );
  }

  function paintStructure(c) {
    const byBus = (name) => c.devices.filter((d) => d.bus === name);
    const inFile = (id) => (file?.devices || []).some((d) => d.id === id);
    summary.replaceChildren(
      h("h2", { text: "Buses and devices" }),
      ...c.buses.map((b) =>
        h(
          "section",
          { class: "bus", "data-bus": b.name },
          h("h3", { text: `${b.name} · ${b.kind} ${b.at}` }),
          file
            ? h(
                "div",
                { class: "toolbar" },
                h("button", {
                  type: "button",
                  class: "ghost",
                  text: `Edit bus ${b.name}`,
                  onclick: () => openBus(b.name),
                }),
                h("button", {
                  type: "button",
                  class: "ghost",
                  text: `Remove bus ${b.name}`,
                  onclick: () => removeEntry("removeBus", { busName: b.name }, `Bus ${b.name} removed`),
                }),
              )
            : null,
          byBus(b.name).length
            ? h(
                "ul",
                { class: "devices" },
                ...byBus(b.name).map((d) =>
                  h(
                    "li",
                    { "data-device": d.id },
                    h("span", {
                      text: `${d.id} (unit ${d.unit}${d.type ? `, ${d.type}` : ""}): ${d.points.map((p) => p.id).join(", ")}`,
                    }),
                    inFile(d.id)
                      ? h("button", {
                          type: "button",
                          class: "ghost",
                          text: `Edit ${d.id}`,
                          onclick: () => openForm(d.id),
                        })
                      : null,
                    h("button", {
                      type: "button",
                      class: "ghost",
                      text: `Remove ${d.id}`,
                      onclick: () => remove(d.id),
                    }),
                  ),
                ),
              )
            : h("p", { class: "small", text: "No devices yet: scan it from the Inspector." }),
        ),
      ),
      file
        ? h(
            "div",
            { class: "toolbar" },
            h("button", { type: "button", text: "Add a bus", onclick: () => openBus(null) }),
            h("button", { type: "button", text: "Add a device", onclick: () => openForm(null) }),
            h("button", { type: "button", text: "Add a rule", onclick: () => openRule(null) }),
            h("button", { type: "button", text: "Add a calculated point", onclick: () => openCalculated(null) }),
          )
        : null,
      formBox,
      h("h2", { text: "Calculated points" }),
      c.calculated.length
        ? h(
            "ul",
            { class: "calculated" },
            ...c.calculated.map((k) => {
              const id = `${k.device}.${k.point}`;
              return h(
                "li",
                { "data-calculated": id },
                h("span", { text: `${id} = ${k.expr}${k.unit ? ` (${k.unit})` : ""}` }),
                file
                  ? h("button", {
                      type: "button",
                      class: "ghost",
                      text: `Edit ${id}`,
                      onclick: () => openCalculated(id),
                    })
                  : null,
                file
                  ? h("button", {
                      type: "button",
                      class: "ghost",
                      text: `Remove ${id}`,
                      onclick: () =>
                        removeEntry("removeCalculated", { calculatedId: id }, `Calculated point ${id} removed`),
                    })
                  : null,
              );
            }),
          )
        : h("p", {
            class: "small",
            text: "None: a point computed from others (an efficiency, a total) is added here.",
          }),
      h("h2", { text: "Rules" }),
      c.rules.length
        ? h(
            "ul",
            { class: "rules" },
            ...c.rules.map((r) =>
              h(
                "li",
                { "data-rule": r.id },
                h("span", { text: `${r.id} on ${r.device}` }),
                file
                  ? h("button", {
                      type: "button",
                      class: "ghost",
                      text: `Edit rule ${r.id}`,
                      onclick: () => openRule(r.id),
                    })
                  : null,
                file
                  ? h("button", {
                      type: "button",
                      class: "ghost",
                      text: `Remove rule ${r.id}`,
                      onclick: () => removeEntry("removeRule", { ruleId: r.id }, `Rule ${r.id} removed`),
                    })
                  : null,
              ),
            ),
          )
        : h("p", { class: "small", text: "No rules." }),
      upstreams,
    );
    paintUpstreams();
  }

  async function remove(id) {
    try {
      const e = await conn.call("config.edit", { op: "removeDevice", deviceId: id, text: loaded });
      if (e.problems.length) {
        showProblems(e.problems, "");
        return;
      }
      await apply(e.text, `${e.summary}.${e.note ? ` ${e.note}.` : ""}`);
    } catch (err) {
      problems.replaceChildren(h("p", { class: "error", text: `Not removed (${err.code}): ${err.message}` }));
    }
  }

  async function paintHistory() {
    try {
      const r = await conn.call("config.history");
      history.replaceChildren(
        h(
          "ol",
          { class: "versions" },
          ...r.versions.map((v, i) =>
            h(
              "li",
              { "data-version": v.id },
              h("span", {
                text: `#${v.id} · ${new Date(v.at).toLocaleString()} · ${v.user} · ${v.summary}${i === 0 ? " (current)" : ""}`,
              }),
              i === 0
                ? null
                : h("button", {
                    type: "button",
                    class: "ghost",
                    text: `Roll back to #${v.id}`,
                    onclick: () => rollback(v),
                  }),
            ),
          ),
        ),
      );
    } catch (e) {
      history.replaceChildren(h("p", { class: "error", text: `No history (${e.code}): ${e.message}` }));
    }
  }

  async function rollback(v) {
    if (
      !(await confirmDialog(
        `Roll back to version ${v.id}`,
        `${v.summary} (${v.user}). The gateway reloads; this page stays connected.`,
      ))
    )
      return;
    try {
      const r = await conn.call("config.rollback", { id: v.id }, 60000);
      env.reloaded();
      problems.replaceChildren(
        h("p", { class: "result ok", text: `Rolled back: applied as version ${r.id} (${r.summary}).` }),
      );
    } catch (e) {
      problems.replaceChildren(h("p", { class: "error", text: `Not rolled back (${e.code}): ${e.message}` }));
    }
  }

  async function load() {
    try {
      const c = await conn.call("config.get");
      loaded = c.text;
      file = c.file;
      serialPorts = c.serialPorts || [];
      text.value = c.text;
      setText(pathNote, `The file ${c.path}, as on disk: comments and layout are kept as you write them.`);
      paintStructure(c.config);
    } catch (e) {
      summary.replaceChildren(h("p", { class: "error", text: `Cannot read the config (${e.code}): ${e.message}` }));
    }
    paintHistory();
  }

  const pathNote = h("p", { class: "small" });
  const node = h(
    "section",
    {},
    h("h1", { text: "Configure" }),
    summary,
    h("h2", { text: "The config file" }),
    pathNote,
    field("Config (TOML)", text),
    h(
      "div",
      { class: "toolbar" },
      h("button", {
        type: "button",
        text: "Check",
        onclick: async () => {
          try {
            showProblems((await conn.call("config.validate", { text: text.value })).problems, "No problems.");
          } catch (e) {
            showProblems([{ message: e.message }], "");
          }
        },
      }),
      h("button", {
        type: "button",
        class: "primary",
        text: "Apply",
        onclick: () => apply(text.value, "Your edited file replaces the running config."),
      }),
    ),
    problems,
    h("h2", { text: "Versions" }),
    history,
  );
  load();
  return { name: "configure", node, update() {} };
}
