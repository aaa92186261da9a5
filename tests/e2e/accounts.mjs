// The dashboard's account and notification steps, run by dashboard.mjs with its pages: a
// webhook notifier added in the file editor and tested from Diagnostics against a receiver that
// checks the signature; users added in the Users view, a password changed by its owner.

import { createServer } from "node:http";
import { createHmac } from "node:crypto";

/** `ctx`: { desk (admin page), viewer (viewer page), demo, step, confirmApplied }. */
export async function notifierSendTest({ desk, viewer, demo, step, confirmApplied }) {
  step(
    "a webhook notifier added in the file editor; Send test on Diagnostics reaches a receiver that checks its signature",
  );
  const hooks = [];
  const receiver = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const mac = createHmac("sha256", "e2e-secret").update(body).digest("hex");
      hooks.push({ signed: req.headers["x-edge-signature"] === `sha256=${mac}`, body: JSON.parse(body.toString()) });
      res.writeHead(204).end();
    });
  });
  await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
  try {
    await desk.goto(`${demo.url}#/configure`);
    const editor = desk.getByLabel("Config (TOML)");
    await desk.waitForFunction(() => document.querySelector("#c-text").value.includes("[gateway]"));
    const hook = `\n[[notifiers]]\nname = "shift"\nkind = "webhook"\nurl = "http://127.0.0.1:${receiver.address().port}/hook"\nsecret = "e2e-secret"\n`;
    await editor.fill((await editor.inputValue()) + hook);
    await desk.getByRole("button", { name: "Apply", exact: true }).click();
    await confirmApplied(desk);
    await desk.goto(`${demo.url}#/diagnostics`);
    await desk.getByRole("button", { name: "Send a test message through shift" }).click();
    await desk.locator('tr[data-notifier="shift"]', { hasText: "✓ delivered" }).waitFor();
    const test = hooks.find((x) => x.body.notification === "test");
    if (!test?.signed || test.body.by !== "admin") throw new Error(`the receiver got ${JSON.stringify(hooks)}`);
    if (
      await viewer
        .goto(`${demo.url}#/diagnostics`)
        .then(() => viewer.waitForSelector('tr[data-notifier="shift"]'))
        .then(() => viewer.getByRole("button", { name: /Send a test message/ }).count())
    )
      throw new Error("a viewer can send a test");
  } finally {
    receiver.close();
  }
}

/** `ctx`: { browser, desk (admin page), demo, step, TLS }. */
export async function usersAndPasswords({ browser, desk, demo, step, TLS }) {
  step(
    "users: an admin adds a technician in the Users view; the technician logs in, changes the password, is logged out, logs in with the new one",
  );
  await desk.goto(`${demo.url}#/users`);
  await desk.waitForSelector('tr[data-user="viewer"]');
  await desk.getByLabel("User name").fill("tech1");
  await desk.getByLabel("Role", { exact: true }).selectOption("viewer");
  await desk.getByLabel("Password", { exact: true }).fill("valve-room-12");
  await desk.getByLabel("Password again").fill("valve-room-12");
  await desk.getByRole("button", { name: "Add user" }).click();
  await desk.locator('tr[data-user="tech1"]').waitFor({ timeout: 30000 });
  const tech = await browser.newPage({ ignoreHTTPSErrors: TLS, viewport: { width: 1280, height: 900 } });
  const techLogin = async (pw) => {
    await tech.getByLabel("User").fill("tech1");
    await tech.getByLabel("Password").fill(pw);
    await tech.getByRole("button", { name: "Log in" }).click();
    await tech.waitForSelector("#devices article[data-device]");
  };
  await tech.goto(demo.url);
  await techLogin("valve-room-12");
  if (await tech.locator('#nav a[data-view="users"]').isVisible()) throw new Error("a viewer sees Users");
  await tech.goto(`${demo.url}#/password`);
  await tech.getByLabel("Current password").fill("valve-room-12");
  await tech.getByLabel("New password", { exact: true }).fill("valve-room-13");
  await tech.getByLabel("New password again").fill("valve-room-13");
  await tech.getByRole("button", { name: "Change password" }).click();
  await tech.getByText("log in again").waitFor({ timeout: 30000 });
  // The session ends as the reload begins; the new password holds once it has run: a login
  // sent in between is refused, as a person typing fast would see, and tried again.
  for (let i = 0; ; i++) {
    await tech.getByLabel("User").fill("tech1");
    await tech.getByLabel("Password").fill("valve-room-13");
    await tech.getByRole("button", { name: "Log in" }).click();
    // In: the login form gives way to the view the page was on (Change password).
    await tech.waitForFunction(
      () => !document.querySelector("form.login") || document.querySelector(".login .error")?.textContent,
      null,
      { timeout: 30000 },
    );
    if (!(await tech.locator("form.login").count())) break;
    if (i === 5) throw new Error(`the new password is refused: ${await tech.locator(".login .error").textContent()}`);
    await tech.waitForTimeout(500);
  }
  await tech.close();
}
