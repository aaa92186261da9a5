// The Configure view's calculated-point form: device, point id, expression and unit, with a
// live preview of the value the expression gives from the current data (`calc.preview`, the
// gateway's own parser: a problem shows its column), saved through `config.edit` like the
// other forms.

import { h, setText } from "./dom.js";
import { entryForm, editAndApply } from "./forms.js";

/** How often the preview is asked again while the form is open. */
const PREVIEW_EVERY_MS = 2000;

/**
 * `raw`: the entry as the file has it (null: a new one). `ctx`: { conn, text, apply, general,
 * devices: [{ id, points: [{ id, unit }] }] }.
 */
export function calculatedForm(raw, ctx) {
  const id = raw ? `${raw.device}.${raw.point}` : null;
  const preview = h("p", {
    class: "calc-preview",
    role: "status",
    "aria-live": "polite",
    text: "Type an expression to see its value.",
  });
  const names = h("p", { class: "small" });
  const f = entryForm(
    {
      name: "calculated",
      title: raw ? `Edit calculated point ${id}` : "New calculated point",
      saveText: raw ? `Save calculated point ${id}` : "Add calculated point",
      raw,
      fields: [
        { key: "device", label: "Device", options: ctx.devices.map((d) => d.id), required: true },
        { key: "point", label: "Point id", required: true, placeholder: "efficiency" },
        { key: "expr", label: "Expression", required: true, placeholder: "heat_out / max(gas_in * 10.5, 0.001) * 100" },
        { key: "unit", label: "Unit", placeholder: "%" },
      ],
      extra: h("div", {}, preview, names),
      save: (calculated, mark) =>
        editAndApply(
          ctx,
          { op: "setCalculated", calculated, ...(id ? { calculatedId: id } : {}) },
          id ? `Calculated point ${id}` : "New calculated point",
          mark,
        ),
    },
    ctx,
  );

  let asked = 0;
  let shown = false;
  /** The value the expression gives now; answers that come back out of order are dropped. The
   * asking stops once the form is taken off the page. */
  async function ask() {
    if (f.form.isConnected) shown = true;
    else if (shown) {
      clearInterval(timer);
      return;
    }
    const v = f.values();
    const dev = ctx.devices.find((d) => d.id === v.device);
    setText(
      names,
      dev ? `Names: ${dev.points.map((p) => p.id).join(", ")}, or device.point for another device's.` : "",
    );
    if (!v.device || !v.expr) {
      setText(preview, "Type an expression to see its value.");
      return;
    }
    const n = ++asked;
    try {
      const r = await ctx.conn.call("calc.preview", { deviceId: String(v.device), expr: String(v.expr) });
      if (n !== asked) return;
      if (r.problems.length) {
        preview.className = "calc-preview error";
        setText(preview, r.problems.join("; "));
        return;
      }
      preview.className = r.quality === "good" ? "calc-preview" : "calc-preview error";
      const value = r.value === null ? "no value" : `${r.value}${v.unit ? ` ${v.unit}` : ""}`;
      const at = r.ts ? ` at ${new Date(r.ts).toLocaleTimeString()}` : "";
      setText(preview, `= ${value} (${r.quality}${at})${r.error ? `: ${r.error}` : ""}`);
    } catch (e) {
      if (n === asked) setText(preview, `No preview (${e.code}): ${e.message}`);
    }
  }
  let typing = null;
  for (const { c } of f.controls) {
    c.addEventListener("input", () => {
      clearTimeout(typing);
      typing = setTimeout(ask, 250);
    });
    c.addEventListener("change", ask);
  }
  const timer = setInterval(ask, PREVIEW_EVERY_MS);
  ask();
  return f.form;
}
