// The device form of the Configure view: a device's keys and its own points, field by field
// (a template's points are shown, not expanded into the device). Saving sends only what
// changed to `config.edit` `setDevice`, which edits the file with its comments kept; problems
// come back by key path and are shown next to their field.

import { h } from "./dom.js";

const TABLES = ["holding", "input", "coil", "discrete"];
const TYPES = ["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool", "string"];

/** What a field holds, as the file would: a number where it reads as one, null when empty. */
export function read(input) {
  if (input.type === "checkbox") return input.checked ? true : null;
  const v = input.value.trim();
  if (v === "") return null;
  if (input.dataset.kind === "number" && v !== "" && !Number.isNaN(Number(v))) return Number(v);
  return v;
}

export function input(key, value, attrs = {}) {
  return h("input", { "data-key": key, value: value ?? "", autocomplete: "off", ...attrs });
}

export function select(key, value, options) {
  return h(
    "select",
    { "data-key": key },
    ...options.map((o) => h("option", { value: o, text: o, selected: o === value })),
  );
}

/** The keys of `inputs` whose value differs from `orig`'s (for a new item, every one set). */
export function changes(inputs, orig) {
  const out = {};
  for (const i of inputs) {
    const k = i.dataset.key;
    const v = read(i);
    const was = orig ? (orig[k] ?? null) : null;
    if (orig ? v !== was : v !== null) out[k] = v;
  }
  return out;
}

/**
 * `raw`: the device as the file has it (null for a new one); `ctx`: { conn, buses (names),
 * templates (the file's), text (the loaded file), apply(text, what), general(problems) }.
 */
export function deviceForm(raw, ctx) {
  const d = raw || {};
  const n = (_p, label, key, attrs) => {
    const c = input(key, d[key], { id: `df-${key}`, ...attrs });
    return h("div", { class: "df-field" }, h("label", { for: c.id, text: label }), c);
  };
  const busSelect = select("bus", d.bus || ctx.buses[0], ctx.buses);
  busSelect.id = "df-bus";
  const head = h(
    "div",
    { class: "toolbar df-device" },
    n(d, "Device id", "id", { required: true }),
    n(d, "Type", "type"),
    h("div", { class: "df-field" }, h("label", { for: "df-bus", text: "Bus" }), busSelect),
    n(d, "Unit id", "unit", { "data-kind": "number", inputmode: "numeric" }),
    n(d, "Poll every (ms)", "poll_interval_ms", { "data-kind": "number", inputmode: "numeric", placeholder: "1000" }),
  );
  const template = d.template && ctx.templates[d.template];
  const rows = h("tbody", {});
  function pointRow(p) {
    const cells = [
      input("id", p?.id, { "aria-label": "Point id" }),
      select("table", p?.table || "holding", TABLES),
      input("address", p?.address, { "data-kind": "number", inputmode: "numeric", "aria-label": "Address", size: 6 }),
      select("type", p?.type || "u16", TYPES),
      input("scale", p?.scale, {
        "data-kind": "number",
        inputmode: "decimal",
        "aria-label": "Scale",
        placeholder: "1",
        size: 6,
      }),
      input("unit", p?.unit, { "aria-label": "Engineering unit", size: 5 }),
      h("input", { type: "checkbox", "data-key": "writable", checked: !!p?.writable, "aria-label": "Writable" }),
      input("poll_interval_ms", p?.poll_interval_ms, {
        "data-kind": "number",
        inputmode: "numeric",
        "aria-label": "Own poll rate (ms)",
        placeholder: "device's",
        size: 7,
      }),
    ];
    cells[1].setAttribute("aria-label", "Table");
    cells[3].setAttribute("aria-label", "Type");
    const tr = h(
      "tr",
      { "data-was": p?.id ?? "" },
      ...cells.map((c) => h("td", {}, c)),
      h("td", {}, h("button", { type: "button", class: "ghost", text: "Remove", onclick: () => tr.remove() })),
    );
    tr.orig = p || null;
    return tr;
  }
  for (const p of d.points || []) rows.append(pointRow(p));
  const general = h("div", { role: "status" });
  const form = h(
    "form",
    {
      class: "device-form",
      onsubmit: (e) => {
        e.preventDefault();
        save();
      },
    },
    h("h3", { text: raw ? `Edit ${d.id}` : "New device" }),
    head,
    template
      ? h("p", {
          class: "small",
          text: `From template ${d.template} (edit [templates.${d.template}] in the file): ${(template.points || []).map((p) => p.id).join(", ")}`,
        })
      : null,
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "points-form" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ...["Point id", "Table", "Address", "Type", "Scale", "Unit", "Writable", "Own poll (ms)", ""].map((t) =>
              h("th", { text: t }),
            ),
          ),
        ),
        rows,
      ),
    ),
    h(
      "div",
      { class: "toolbar" },
      h("button", { type: "button", text: "Add a point", onclick: () => rows.append(pointRow(null)) }),
      h("button", { type: "submit", class: "primary", text: raw ? `Save ${d.id}` : "Add device" }),
    ),
    general,
  );

  /** Each problem next to its field (by key path under this device), the rest below. */
  function mark(problems, prefix) {
    for (const e of form.querySelectorAll(".field-problem")) e.remove();
    for (const e of form.querySelectorAll("[aria-invalid]")) e.removeAttribute("aria-invalid");
    const rest = [];
    for (const p of problems) {
      const m = prefix && p.path?.startsWith(`${prefix}.`) ? p.path.slice(prefix.length + 1) : null;
      const pm = m?.match(/^points\[(\d+)\]\.(\w+)/);
      const el = pm
        ? rows.children[Number(pm[1])]?.querySelector(`[data-key="${pm[2]}"]`)
        : m
          ? head.querySelector(`[data-key="${m}"]`)
          : null;
      if (!el) {
        rest.push(p);
        continue;
      }
      el.setAttribute("aria-invalid", "true");
      el.after(h("span", { class: "field-problem error", text: p.message }));
    }
    ctx.general(rest);
  }

  async function save() {
    const device = changes(head.querySelectorAll("[data-key]"), raw);
    const points = [...rows.children].map((tr) => ({
      was: tr.dataset.was || null,
      set: changes(tr.querySelectorAll("[data-key]"), tr.orig),
    }));
    try {
      const params = { op: "setDevice", text: ctx.text(), device, points };
      if (raw) params.deviceId = raw.id;
      const r = await ctx.conn.call("config.edit", params);
      mark(r.problems, r.devicePath);
      if (!r.problems.length) await ctx.apply(r.text, `${r.summary || "No change to the running config"}.`);
    } catch (e) {
      general.replaceChildren(h("p", { class: "error", text: `Not saved (${e.code}): ${e.message}` }));
    }
  }
  return form;
}
