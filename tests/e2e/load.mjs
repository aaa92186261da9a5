// Dashboard load benchmark: 200 devices × 30 points (four bench simulators of 50 units), the
// snapshot pushed every second and telemetry on change, the overview open in headless
// Chromium. Prints the time to first full render, long tasks (> 50 ms: jank) and the frame
// rate while the pushes arrive.
// Run: `scripts/bench-dashboard` (builds the release binary, then runs this).
// Env: EDGE_BIN, CHROMIUM (default /usr/bin/chromium), SECONDS (default 30).

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const bin = process.env.EDGE_BIN;
const seconds = Number(process.env.SECONDS || 30);
const DEVICES = 200,
  POINTS = 30,
  PER_SIM = 50;

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });

const children = [];
const dir = mkdtempSync(join(tmpdir(), "edge-load-"));
let config = `[gateway]\nid = "load"\ndata_dir = "${dir}/data"\n[http]\nlisten = "127.0.0.1:${await freePort()}"\n`;
const hash = execFileSync(bin, ["hash-password"], { input: "admin\n" }).toString().trim();
config += `[[users]]\nname = "admin"\nrole = "admin"\npassword_hash = "${hash}"\n[push]\ninterval_ms = 1000\n`;
for (let s = 0; s < DEVICES / PER_SIM; s++) {
  const port = await freePort();
  children.push(spawn(bin, ["simulate", "--listen", `127.0.0.1:${port}`, "--profile", "bench"], { stdio: "ignore" }));
  config += `[[buses]]\nname = "sim${s}"\nkind = "tcp"\naddress = "127.0.0.1:${port}"\n`;
  for (let u = 1; u <= PER_SIM; u++) {
    const points = Array.from(
      { length: POINTS },
      (_, i) => `{ id = "p${i}", table = "holding", address = ${i}, type = "u16", unit = "u" }`,
    );
    config += `[[devices]]\nid = "dev-${s}-${u}"\ntype = "bench"\nbus = "sim${s}"\nunit = ${u}\npoll_interval_ms = 1000\npoints = [${points.join(", ")}]\n`;
  }
}
writeFileSync(join(dir, "g.toml"), config);
const url = `http://${config.match(/listen = "([^"]+)"/)[1]}/`;
const gw = spawn(bin, ["run", "--config", join(dir, "g.toml")], {
  stdio: "ignore",
  env: { ...process.env, RUST_LOG: "warn" },
});
children.push(gw);
await new Promise((r) => setTimeout(r, 3000));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.addInitScript(() => {
    window.__long = [];
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) window.__long.push(e.duration);
    }).observe({ type: "longtask", buffered: true });
  });
  await page.goto(url);
  await page.getByLabel("User").fill("admin");
  await page.getByLabel("Password").fill("admin");
  const t0 = Date.now();
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForFunction((n) => document.querySelectorAll("#devices article[data-device]").length === n, DEVICES, {
    timeout: 60000,
  });
  const firstRender = Date.now() - t0;
  await page.evaluate(() => {
    window.__long = [];
  });
  const frames = await page.evaluate(
    (ms) =>
      new Promise((resolve) => {
        let n = 0;
        const end = performance.now() + ms;
        const tick = () => {
          n++;
          if (performance.now() < end) requestAnimationFrame(tick);
          else resolve(n);
        };
        requestAnimationFrame(tick);
      }),
    seconds * 1000,
  );
  const long = await page.evaluate(() => window.__long);
  const shown = await page.$$eval("#devices .value", (v) => v.length);
  // A device of 30 points: every trend gets its hour of history (no request refused).
  await page.goto(`${url}#/device/dev-0-1`);
  await page.waitForFunction((n) => document.querySelectorAll("[data-history]").length === n, POINTS, {
    timeout: 30000,
  });
  const refused = await page.$$eval("[data-history^=error]", (e) =>
    e.map((x) => `${x.dataset.point}: ${x.dataset.history}`),
  );
  if (refused.length) throw new Error(`history refused: ${refused.join(", ")}`);
  console.log(
    `dashboard load: ${DEVICES} devices × ${POINTS} points (${shown} values on the overview), snapshot every 1 s + telemetry`,
  );
  console.log(`  login → all ${DEVICES} cards rendered: ${firstRender} ms`);
  console.log(
    `  over ${seconds} s of pushes: ${(frames / seconds).toFixed(1)} frames/s, ${long.length} long tasks (> 50 ms)${long.length ? `, longest ${Math.max(...long).toFixed(0)} ms` : ""}`,
  );
} finally {
  await browser.close();
  for (const c of children) c.kill("SIGTERM");
}
