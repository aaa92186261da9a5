// What the dashboard's browser scenarios share: the demo and a pymodbus device started, a login
// as a person does it, a config applied and its reload waited out, a point added from the
// inspector, the upstream forms, and the page checked for width and contrast.

import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export function step(name) {
  console.log(`-- ${name}`);
}

/** Starts the demo (`bin`; over https when `TLS`) on a free port; resolves with its dashboard URL and simulator address. */
export function startDemo(bin, TLS) {
  const data = mkdtempSync(join(tmpdir(), "edge-e2e-"));
  const child = spawn(bin, ["demo", "--listen", "127.0.0.1:0", "--data", data, ...(TLS ? ["--tls"] : [])], {
    env: { ...process.env, RUST_LOG: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`demo did not start: ${out}`)), 30000);
    child.stdout.on("data", (b) => {
      out += b;
      const url = out.match(/dashboard:\s+(\S+)/);
      const sim = out.match(/simulator:\s+modbus tcp (\S+)/);
      if (url && sim) {
        clearTimeout(timer);
        resolve({ child, url: url[1], sim: sim[1] });
      }
    });
    child.on("exit", (c) => reject(new Error(`demo exited with ${c}: ${out}`)));
  });
}

/** pymodbus (tests/interop/pymodbus_server.py) on `port` (0: a free one); resolves with the port. */
export function startPymodbus(port = 0) {
  const python = process.env.EDGE_PYMODBUS_PYTHON;
  if (!python) throw new Error("EDGE_PYMODBUS_PYTHON is not set");
  const child = spawn(python, ["../interop/pymodbus_server.py", "tcp", String(port)], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`pymodbus did not start: ${out}`)), 30000);
    child.stdout.on("data", (b) => {
      out += b;
      const m = out.match(/serving tcp (\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, port: Number(m[1]) });
      }
    });
    child.on("exit", (c) => reject(new Error(`pymodbus exited with ${c}: ${out}`)));
  });
}

/** Confirms the dialog and waits for the reload that an applied config causes to reconnect. */
export async function confirmApplied(page) {
  const logins = await page.evaluate(() => window.__edgeLogins);
  await page.locator("#confirm-ok").click();
  try {
    await page.getByText(/Applied as version \d+|Rolled back: applied as version/).waitFor({ timeout: 30000 });
  } catch (_e) {
    // What the page said instead: the reason is in it.
    const said = await page.$$eval(".error, .result, [role=status]", (es) =>
      es.map((x) => x.textContent).filter(Boolean),
    );
    throw new Error(`no "Applied as version": the page says ${JSON.stringify(said)}`);
  }
  // The reload keeps the socket open; the snapshot the moved socket gets shows the new
  // structure, and the page reads everything again, as after a login.
  await page.waitForFunction((n) => window.__edgeLogins > n, logins, { timeout: 30000 });
}

/** One point from the inspector's "Add as point" form, read at `address` on bus py, unit 1. */
export async function addPoint(page, url, { address, count, register, type, order, scale, unit, id, device }) {
  await page.goto(`${url}#/inspector`);
  await page.getByLabel("Bus", { exact: true }).selectOption("py");
  await page.getByLabel("Unit id").fill("1");
  await page.getByLabel("Table", { exact: true }).selectOption("holding");
  await page.getByLabel("Address", { exact: true }).fill(String(address));
  await page.getByLabel("Registers", { exact: true }).fill(String(count));
  await page.getByRole("button", { name: "Read", exact: true }).click();
  await page.waitForSelector("table.decoded");
  await page.getByLabel("Starting at register").selectOption({ label: String(register) });
  await page.getByLabel("Type", { exact: true }).selectOption(type);
  await page.getByLabel("Byte/word order").selectOption(order);
  await page.getByLabel("Scale").fill(String(scale));
  await page.getByLabel("Engineering unit").fill(unit);
  await page.getByLabel("Point id").fill(id);
  if (device.existing) {
    await page.getByLabel("To device").selectOption(device.existing);
  } else {
    await page.getByLabel("To device").selectOption("");
    await page.getByLabel("New device id").fill(device.id);
    await page.getByLabel("Device type").fill(device.type);
  }
  const preview = await page.textContent(".preview");
  await page.getByRole("button", { name: "Add as point" }).click();
  await confirmApplied(page);
  return preview;
}

/** Both upstreams from their forms: a wrong login and a dead port said so by the test, the
 * right ones tested and turned on. Against the machine's MariaDB and Mosquitto. */
export async function upstreams(page) {
  const mysql = process.env.EDGE_TEST_MYSQL_URL;
  const mqtt = process.env.EDGE_TEST_MQTT_ADDR;
  if (!mysql || !mqtt) {
    if (process.env.CI) throw new Error("EDGE_TEST_MYSQL_URL and EDGE_TEST_MQTT_ADDR must be set in CI");
    console.log(
      "SKIPPED the upstream forms: EDGE_TEST_MYSQL_URL / EDGE_TEST_MQTT_ADDR not set (./scripts/test sets them)",
    );
    return;
  }
  const tested = async (form, url, want) => {
    await form.getByLabel("URL").fill(url);
    await form.getByRole("button", { name: "Test connection" }).click();
    try {
      await form.getByText(want).waitFor({ timeout: 15000 });
    } catch {
      throw new Error(
        `testing ${url}: the form says ${JSON.stringify(await form.locator("[role=status]").first().textContent())}, not ${want}`,
      );
    }
  };
  const my = page.locator("form.entry-form", { hasText: "MySQL / MariaDB upstream" });
  const wrong = new URL(mysql);
  wrong.password = "wrong-password";
  await tested(my, wrong.toString(), /✗ .*refused the user or password/);
  await tested(my, mysql, /✓ connected to .* and logged in/);
  await my.getByRole("button", { name: "Turn MySQL on" }).click();
  await confirmApplied(page);
  // The view reads the file again: its forms are then those of the new text.
  await my.getByRole("button", { name: "Turn MySQL off" }).waitFor({ timeout: 15000 });
  const mq = page.locator("form.entry-form", { hasText: "MQTT upstream" });
  await tested(mq, "mqtt://127.0.0.1:1", /✗ cannot reach 127\.0\.0\.1:1/);
  await tested(mq, `mqtt://${mqtt}`, /✓ connected to .*accepted/);
  await mq.getByLabel("Topic prefix").fill("edge-e2e");
  await mq.getByRole("button", { name: "Turn MQTT on" }).click();
  await confirmApplied(page);
  await page.waitForFunction(
    () => {
      const t = document.querySelector("#c-text")?.value || "";
      return (
        t.includes("[mysql]") &&
        t.includes("[mqtt]") &&
        t.includes('url = "mqtt://') &&
        t.includes('topic_prefix = "edge-e2e"')
      );
    },
    null,
    { timeout: 15000 },
  );
}

/** Logs in as a person would: a login refused for a moment (a reload under way) is tried
 * again; one still refused names why. */
export async function login(page, url, user) {
  await page.goto(url);
  for (let i = 0; ; i++) {
    await page.getByLabel("User").fill(user);
    await page.getByLabel("Password").fill(user);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.waitForFunction(
      () =>
        document.querySelector("#devices article[data-device]") || document.querySelector(".login .error")?.textContent,
      null,
      { timeout: 30000 },
    );
    if (!(await page.locator("form.login").count())) break;
    const why = await page.locator(".login .error").textContent();
    if (i === 3) throw new Error(`login as ${user} refused: ${why}`);
    await page.waitForTimeout(1000);
  }
  await page.waitForSelector("#devices article[data-device]");
}

/** The page is no wider than its viewport: nothing to scroll sideways. */
export async function fits(page, where) {
  const { scroll, width } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    width: window.innerWidth,
  }));
  if (scroll > width) throw new Error(`${where}: page is ${scroll}px wide in a ${width}px viewport`);
}

/**
 * Text whose contrast against its background is below WCAG AA (4.5:1, or 3:1 for large text),
 * computed from the rendered colours.
 */
async function lowContrast(page) {
  return page.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (c) => {
        const v = c / 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (e) => {
      for (; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const out = [];
    for (const e of document.querySelectorAll("body *")) {
      const own = [...e.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!own || e.offsetParent === null || e.closest("[hidden], dialog:not([open]), option")) continue;
      const st = getComputedStyle(e);
      const fg = rgb(st.color).slice(0, 3);
      const [a, b] = [lum(fg), lum(background(e))].sort((x, y) => y - x);
      const ratio = (a + 0.05) / (b + 0.05);
      const size = parseFloat(st.fontSize),
        bold = Number(st.fontWeight) >= 700;
      const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
      if (ratio < need)
        out.push(
          `${e.tagName.toLowerCase()}.${e.className} "${e.textContent.trim().slice(0, 30)}" ${ratio.toFixed(2)}`,
        );
    }
    return out;
  });
}

export async function contrastOk(page, where) {
  const bad = await lowContrast(page);
  if (bad.length) throw new Error(`${where}: contrast under WCAG AA: ${bad.join(" | ")}`);
}
