// Small DOM helpers shared by the dashboard's views.

export const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: attrs may hold `class`, `text`, `on<event>` handlers and attributes. */
export function h(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k in e && typeof v !== "string") e[k] = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) e.append(c);
  return e;
}

/** Sets text only when it differs: no layout work for values that did not change. */
export function setText(e, text) {
  if (e.textContent !== text) e.textContent = text;
}

export function setClass(e, cls) {
  if (e.className !== cls) e.className = cls;
}

/** A labelled field: the label above its control, as the toolbars lay them out. */
export function field(label, control) {
  return h("div", {}, h("label", { for: control.id, text: label }), control);
}

/** A config problem as one line: `line 12: devices[0].unit: …`. */
export function problemText(p) {
  return `${p.line ? `line ${p.line}: ` : ""}${p.path ? `${p.path}: ` : ""}${p.message}`;
}
