// Users: the Users view (admin) lists each user with their role and open sessions, adds one,
// changes a role, resets a password, removes one; "Change password" (anyone, from the menu).
// Each change is the config file's [[users]] entry written and applied like any config change
// (a version, an audit row); a user removed, or whose role or password changed, is logged out.

import { h, field } from "./dom.js";

const RULES = "At least 10 characters, not the user name, not a common password.";

/** A password field and a repeat of it; `value()` is the password once both match. */
function passwordPair(id, label) {
  const a = h("input", { id, type: "password", autocomplete: "new-password", minlength: 10, required: true });
  const b = h("input", { id: `${id}-again`, type: "password", autocomplete: "new-password", required: true });
  return {
    nodes: [field(label, a), field(`${label} again`, b), h("p", { class: "small", text: RULES })],
    value() {
      if (a.value !== b.value) throw new Error("the two passwords differ");
      return a.value;
    },
    clear() {
      a.value = "";
      b.value = "";
    },
  };
}

/** `env`: { conn, S, confirmDialog }. */
export function usersView(env) {
  const { conn, confirmDialog } = env;
  const said = h("p", { role: "status", class: "result" });
  const rows = h("tbody", {});
  const view = { name: "users", node: null, update() {} };

  async function act(service, params, done) {
    said.className = "result";
    said.textContent = "Applying…";
    try {
      const r = await conn.call(service, params);
      said.textContent = `${done} (version ${r.id}).`;
      setTimeout(load, 500);
      return true;
    } catch (e) {
      said.className = "result error";
      said.textContent = e.message;
      return false;
    }
  }

  function row(u) {
    const role = h(
      "select",
      { "aria-label": `Role of ${u.username}` },
      ...["admin", "viewer"].map((r) => h("option", { value: r, text: r, selected: r === u.role })),
    );
    role.addEventListener("change", () =>
      act("users.setRole", { username: u.username, role: role.value }, `${u.username} is now ${role.value}`),
    );
    const cell = h("td", {});
    const reset = h("button", {
      type: "button",
      class: "ghost",
      text: `Reset password of ${u.username}`,
      onclick() {
        const pw = h("input", {
          type: "password",
          autocomplete: "new-password",
          "aria-label": `New password for ${u.username}`,
          minlength: 10,
          required: true,
        });
        const set = h(
          "form",
          {
            class: "inline",
            async onsubmit(ev) {
              ev.preventDefault();
              if (
                await act(
                  "users.resetPassword",
                  { username: u.username, password: pw.value },
                  `Password of ${u.username} reset`,
                )
              )
                set.remove();
            },
          },
          pw,
          h("button", { type: "submit", text: "Set" }),
        );
        cell.append(set);
        pw.focus();
      },
    });
    const remove = h("button", {
      type: "button",
      class: "ghost",
      text: `Remove ${u.username}`,
      async onclick() {
        if (await confirmDialog("Remove a user", `${u.username} can no longer log in; their open sessions end.`)) {
          await act("users.remove", { username: u.username }, `${u.username} removed`);
        }
      },
    });
    const tr = h(
      "tr",
      { "data-user": u.username },
      h("th", { scope: "row", text: u.username }),
      h("td", {}, role),
      h("td", { text: String(u.sessions) }),
      cell,
    );
    cell.append(reset, remove);
    return tr;
  }

  async function load() {
    if (env.S.view !== view) return;
    try {
      const d = await conn.call("users.list");
      rows.replaceChildren(...d.users.map(row));
    } catch (e) {
      said.className = "result error";
      said.textContent = e.message;
    }
  }

  const name = h("input", { id: "u-name", autocomplete: "off", required: true, pattern: "[A-Za-z0-9._-]{1,64}" });
  const newRole = h(
    "select",
    { id: "u-role" },
    h("option", { value: "viewer", text: "viewer" }),
    h("option", { value: "admin", text: "admin" }),
  );
  const pw = passwordPair("u-password", "Password");
  const add = h(
    "form",
    {
      class: "form",
      async onsubmit(ev) {
        ev.preventDefault();
        let password;
        try {
          password = pw.value();
        } catch (e) {
          said.className = "result error";
          said.textContent = e.message;
          return;
        }
        if (await act("users.add", { username: name.value, role: newRole.value, password }, `${name.value} added`)) {
          name.value = "";
          pw.clear();
        }
      },
    },
    h("h2", { text: "Add a user" }),
    field("User name", name),
    field("Role", newRole),
    ...pw.nodes,
    h("button", { type: "submit", class: "primary", text: "Add user" }),
  );

  view.node = h(
    "section",
    {},
    h("h1", { text: "Users" }),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "diag" },
        h("thead", {}, h("tr", {}, ...["user", "role", "sessions", ""].map((x) => h("th", { scope: "col", text: x })))),
        rows,
      ),
    ),
    said,
    add,
  );
  setTimeout(load, 0);
  return view;
}

/** "Change password": the current one, the new one twice; the session ends once it is applied. */
export function changePasswordView(env) {
  const { conn } = env;
  const old = h("input", { id: "cp-old", type: "password", autocomplete: "current-password", required: true });
  const pw = passwordPair("cp-new", "New password");
  const said = h("p", { role: "status", class: "result" });
  const form = h(
    "form",
    {
      class: "form",
      async onsubmit(ev) {
        ev.preventDefault();
        said.className = "result";
        try {
          said.textContent = "Changing…";
          await conn.call("auth.changePassword", { old: old.value, new: pw.value() });
          said.textContent = "Password changed: log in with the new one.";
        } catch (e) {
          said.className = "result error";
          said.textContent = e.message;
        }
      },
    },
    field("Current password", old),
    ...pw.nodes,
    h("button", { type: "submit", class: "primary", text: "Change password" }),
    said,
  );
  return { name: "password", node: h("section", {}, h("h1", { text: "Change password" }), form), update() {} };
}
