// The session: the login form, a session resumed after a reconnect, everything read again after
// a login (or a reload seen on an open socket), and the logout.

import { $, h, setText } from "./dom.js";

/** `env`: { conn, S, isAdmin, mount, route, live, alarms }. */
export function session(env) {
  const { conn, S } = env;

  async function onOpen() {
    if (S.token) {
      try {
        const d = await conn.call("auth.resume", { token: S.token });
        await afterLogin(d);
        return;
      } catch (e) {
        if (e.code === -1) return; // the link went down again; the next open retries
        sessionStorage.removeItem("edge.token");
        S.token = null;
      }
    }
    if (!$("form.login")) showLogin();
  }

  /** After a login, a reconnect, or a reload seen on an open socket (`reloaded`): everything read
   * again; a reload leaves a view with a form or a result being read (Configure, the inspector)
   * as it is. */
  async function afterLogin(d, reloaded = false) {
    const again = S.everLoggedIn; // a reconnect: pushes may have been missed meanwhile
    S.everLoggedIn = true;
    S.role = d.role;
    S.user = d.user;
    S.loggedIn = true;
    document.body.classList.toggle("admin", env.isAdmin());
    $("#top").hidden = false;
    $("#status-bar").hidden = false;
    setText($("#who"), `${d.user} (${d.role})`);
    const [desc, list, alarms, stats] = await Promise.all([
      conn.call("devices.describe"),
      conn.call("devices.list"),
      conn.call("alarms.active"),
      conn.call("system.stats"),
    ]);
    S.order = desc.devices.map((x) => x.id);
    S.buses = desc.buses || [...new Set(desc.devices.map((x) => x.bus))];
    S.desc = new Map(desc.devices.map((x) => [x.id, x]));
    // Afresh: a reload may have removed devices, which must not linger in the counts.
    S.live = new Map();
    env.live.applyDevices(list.devices);
    // After a reconnect an emergency raised meanwhile is news: banner and tone.
    env.alarms.set(alarms.alarms, again, alarms.shelved);
    setText($("#gw-title"), `edge-gateway · ${stats.gatewayId}`);
    $("#interval").value = stats.pushIntervalMs / 1000;
    if (!(reloaded && S.view && ["configure", "inspector"].includes(S.view.name))) env.route();
    if (again) env.live.recoverMissed();
    // For the browser test: a reload's reconnect is over once this counts up.
    window.__edgeLogins = (window.__edgeLogins || 0) + 1;
  }

  function showLogin(message) {
    S.loggedIn = false;
    S.view = null;
    $("#banner").hidden = true;
    $("#top").hidden = true;
    $("#status-bar").hidden = true;
    document.body.classList.remove("admin");
    const err = h("p", { class: "error", role: "alert", text: message || "" });
    const user = h("input", { id: "username", name: "username", autocomplete: "username", required: true });
    const pass = h("input", {
      id: "password",
      name: "password",
      type: "password",
      autocomplete: "current-password",
      required: true,
    });
    const button = h("button", { type: "submit", class: "primary", text: "Log in" });
    const form = h(
      "form",
      {
        class: "login",
        onsubmit: async (ev) => {
          ev.preventDefault();
          button.disabled = true;
          setText(err, "");
          try {
            const d = await conn.call("auth.login", { username: user.value, password: pass.value });
            S.token = d.token;
            sessionStorage.setItem("edge.token", d.token);
            await afterLogin(d);
          } catch (e) {
            setText(
              err,
              e.code === 401
                ? "Wrong user name or password."
                : e.code === 429
                  ? "Too many attempts; wait a minute."
                  : `Cannot log in: ${e.message}`,
            );
          } finally {
            button.disabled = false;
          }
        },
      },
      h("h1", { text: "edge-gateway" }),
      h("label", { for: "username", text: "User" }),
      user,
      h("label", { for: "password", text: "Password" }),
      pass,
      button,
      err,
    );
    env.mount(form);
    user.focus();
  }

  $("#logout").addEventListener("click", async () => {
    try {
      await conn.call("auth.logout");
    } catch {
      /* the session ends either way */
    }
    sessionStorage.removeItem("edge.token");
    S.token = null;
    showLogin();
  });

  return { onOpen, afterLogin, showLogin };
}
