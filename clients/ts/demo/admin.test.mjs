// The admin page (`zserver serve --api ... --api-key-file F`, docs/API.md) in headless
// Chromium: a wrong key is refused and the right one logs in (an HttpOnly cookie the
// page's script cannot read; no key in the URL); the page shows live counts of a user
// logged in twice through the Rust CLI, finds that user and their two sessions, publishes
// to a channel one of them is subscribed to (the CLI prints it), disconnects one session,
// then the other (each CLI told `disconnected by the server`), and the counts fall.
// Screenshots land in target/e2e/ at the repository root (admin-*.png; paths printed).
//
// Needs target/debug/zserver and /usr/bin/chromium, as e2e.test.mjs does.

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { artifacts, chromiumBin, here, launchBrowser, startServer, STEP_MS, stopAll, track, zserver, zserverBin } from "./harness.mjs";

const KEY = "admin-page-test-key-0123456789";

let server;
let browser;
let scratch;

/** Starts `zserver client ... ACTION` as `user`, kept running; resolves with a way to wait for its output lines. */
function cliChild(user, action) {
  const args = ["client", "--server", server.tcp, "--pin", server.pin, "--user", user, "--password", `${user}-pw`, ...action];
  const child = spawn(zserverBin, args, { stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  const lines = [];
  const waiting = [];
  const onLine = (line) => {
    lines.push(line);
    for (const w of waiting.splice(0)) w();
  };
  createInterface({ input: child.stdout }).on("line", onLine);
  createInterface({ input: child.stderr }).on("line", onLine);
  /** Waits until a line containing `text` was printed. */
  const saw = async (text) => {
    const deadline = Date.now() + STEP_MS;
    while (!lines.some((l) => l.includes(text))) {
      assert.ok(Date.now() < deadline, `${action[0]} never printed ${JSON.stringify(text)}; it printed:\n${lines.join("\n")}`);
      await new Promise((r) => {
        waiting.push(r);
        setTimeout(r, 200);
      });
    }
  };
  return { child, saw };
}

/** Takes a screenshot of `page` into target/e2e/NAME.png and prints where. */
async function shot(page, name) {
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
}

/** Waits until the element `selector` shows exactly `text`. */
async function shows(page, selector, text) {
  await page.waitForFunction(([s, t]) => document.querySelector(s)?.textContent.trim() === t, [selector, text], { timeout: STEP_MS });
}

before(async () => {
  assert.ok(existsSync(zserverBin), `${zserverBin} is missing: run \`cargo build -p zserver-cli\` first`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} is missing: apt-get install chromium`);
  scratch = mkdtempSync(join(tmpdir(), "zserver-admin-"));
  mkdirSync(artifacts, { recursive: true });
  const keyFile = join(scratch, "api.key");
  writeFileSync(keyFile, `${KEY}\n`);
  const extra = ["--api", "127.0.0.1:0", "--api-key-file", keyFile];
  server = await startServer({ web: join(here, "dist"), data: join(scratch, "data"), extra });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  stopAll();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("the admin page: log in with the key, live counts, find a user, publish, disconnect", async () => {
  await zserver(["client", "--server", server.tcp, "--pin", server.pin, "--user", "ann", "--password", "ann-pw", "register"]);
  const listener = cliChild("ann", ["listen"]);
  const subscriber = cliChild("ann", ["sub", "chat:news"]);
  await subscriber.saw("subscribed to `chat:news`");

  const context = await browser.newContext({ viewport: { width: 1000, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(`http://${server.api}/admin`);
  await page.locator("#login-form").waitFor();
  assert.equal(await page.isVisible("#dashboard"), false);

  // A wrong key: refused, still the form.
  await page.fill("#key", "not-the-key");
  await page.click("#login-form button[type=submit]");
  await shows(page, "#login-error", "wrong API key");
  assert.equal(await page.isVisible("#dashboard"), false);

  // The right key: the dashboard, a session cookie the page's script cannot read, no key
  // in the URL.
  await page.fill("#key", KEY);
  await page.click("#login-form button[type=submit]");
  await page.locator("#dashboard").waitFor();
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "zserver_admin");
  assert.ok(session, `a session cookie: ${JSON.stringify(cookies)}`);
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie), "");
  assert.ok(!page.url().includes(KEY), page.url());

  // Live counts: ann logged in twice (two connections), one user, the channel held.
  await shows(page, "#total-connections", "2");
  await shows(page, "#total-users", "1");
  await page.waitForFunction(() => Number(document.querySelector("#total-channels").textContent) >= 1);
  assert.equal(await page.locator("#nodes tbody tr").count(), 1);

  // Publish to the channel ann's subscriber listens to.
  await page.fill("#publish-channel", "chat:news");
  await page.fill("#publish-data", "hello from the admin page");
  await page.click("#publish-form button[type=submit]");
  await shows(page, "#publish-result", "published to chat:news at offset 1");
  await subscriber.saw("hello from the admin page");
  // The rate counts it (publications per second over the last seconds).
  await page.waitForFunction(() => Number(document.querySelector("#total-rate").textContent) > 0);
  // A channel of no namespace: the API's error, shown.
  await page.fill("#publish-channel", "nowhere:x");
  await page.fill("#publish-data", "lost");
  await page.click("#publish-form button[type=submit]");
  await page.locator("#publish-result.error", { hasText: "no namespace" }).waitFor();

  // Find ann: two sessions. An unknown user: said so.
  await page.fill("#find-user", "nobody");
  await page.click("#find-form button[type=submit]");
  await shows(page, "#user-status", "no user `nobody`");
  await page.fill("#find-user", "ann");
  await page.click("#find-form button[type=submit]");
  await shows(page, "#user-status", "ann: 2 session(s)");
  assert.equal(await page.locator("#sessions tr.session").count(), 2);
  await shot(page, "admin-dashboard");

  // Disconnect one session, then the rest.
  await page.locator("#sessions tr.session button.disconnect").first().click();
  await shows(page, "#user-status", "ann: disconnected 1 session(s)");
  assert.equal(await page.locator("#sessions tr.session").count(), 1);
  await shows(page, "#total-connections", "1");
  await page.click("#disconnect-all");
  await shows(page, "#user-status", "ann: disconnected 1 session(s)");
  await listener.saw("kicked: disconnected by the server");
  await shows(page, "#total-users", "0");
  await shows(page, "#total-connections", "0");
  await page.click("#find-form button[type=submit]");
  await shows(page, "#user-status", "ann is not logged in");
  await shot(page, "admin-after-disconnect");

  // Log out: back to the form, and the cookie no longer opens the API.
  await page.click("#logout");
  await page.locator("#login-form").waitFor();
  const after = await page.evaluate(async () => (await fetch("/api/info", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).status);
  assert.equal(after, 401);
  assert.deepEqual(errors, []);
  await context.close();
});
