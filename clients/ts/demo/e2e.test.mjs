// The chat demo end to end in a real browser: Debian's headless Chromium (driven through
// playwright-core, no browser download) loads the page from `zserver serve --web`, two
// pages log in as two users over WebSocket and push to each other, and the Rust CLI (over
// TCP, and over WebSocket, pinning the same key) pushes to browser users and receives a
// browser user's push.
// A page logging in gets the messages stored while its user was away; a page logging in
// as a user who is already on another page gets that page kicked; a page pinning the
// wrong key is refused. Rooms (the server's `chat:` channels): pages join one, see its
// members come and go and its earlier messages, and post to it. Screenshots land in target/e2e/ at the repository root.
//
// Needs target/debug/zserver (built by `cargo build -p zserver-cli`; ZSERVER_BIN overrides)
// and /usr/bin/chromium (CHROMIUM overrides); run `npm run build:demo` first (`npm test`
// does).

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../..");
const zserverBin = process.env.ZSERVER_BIN ?? join(root, "target/debug/zserver");
const chromiumBin = process.env.CHROMIUM ?? "/usr/bin/chromium";
const web = join(here, "dist");
const artifacts = join(root, "target/e2e");
/** How long any one step may take. */
const STEP_MS = 15_000;

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

let server; // { child, tcp, ws, pin }
let browser;
let scratch;
const children = new Set();

/** Runs `zserver` with `args`; resolves with its stdout once it exits with status 0. */
function zserver(args, { env } = {}) {
  return new Promise((resolveRun, reject) => {
    const child = spawn(zserverBin, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), STEP_MS);
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolveRun(out);
      else reject(new Error(`zserver ${args.join(" ")} exited with ${code}:\n${out}${err}`));
    });
  });
}

/** Starts `zserver serve` on free loopback ports; resolves once it printed its addresses and key. */
function startServer(data) {
  const args = ["serve", "--listen", "127.0.0.1:0", "--listen-ws", "127.0.0.1:0", "--web", web, "--data", data];
  const child = spawn(zserverBin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  children.add(child);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  return new Promise((resolveStart, reject) => {
    const seen = {};
    const timer = setTimeout(() => reject(new Error(`zserver serve did not start:\n${stderr}`)), STEP_MS);
    child.on("exit", (code) => reject(new Error(`zserver serve exited with ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const tcp = line.match(/^zserver listening on (\S+)/);
      const ws = line.match(/^WebSocket on ws:\/\/([^/\s]+)\//);
      const pin = line.match(/^server key fingerprint: ([0-9a-f]{64})$/);
      if (tcp) seen.tcp = tcp[1];
      if (ws) seen.ws = ws[1];
      if (pin) seen.pin = pin[1];
      if (seen.tcp && seen.ws && seen.pin) {
        clearTimeout(timer);
        resolveStart({ child, ...seen });
      }
    });
  });
}

/** `zserver client` arguments for `user` reaching the server `via` these options, pinning its key. */
function clientArgs(via, user, action) {
  return ["client", ...via, "--user", user, "--password", `${user}-pw`, "--pin", server.pin, ...action];
}

/** `zserver client` arguments for `user`, over TCP. */
const cli = (user, ...action) => clientArgs(["--server", server.tcp], user, action);

/** `zserver client` arguments for `user`, over WebSocket. */
const cliWs = (user, ...action) => clientArgs(["--ws", "--server", server.ws], user, action);

/** A fresh browser context with the chat page open (pinning `pin`, with `query` added). */
async function openPage(pin = server.pin, query = "") {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`http://${server.ws}/?pin=${pin}${query}`);
  return page;
}

/** Registers (or logs in) `user` on `page` and waits until the page shows the session. */
async function enter(page, user, { register = true } = {}) {
  await page.fill("#user", user);
  await page.fill("#password", `${user}-pw`);
  await page.click(register ? "#register" : "#login");
  await page.waitForSelector('#status[data-state="online"]');
}

/** Waits until `page` lists `user` as online (the page asks `who` every 3 s; Refresh asks now). */
async function waitOnline(page, user) {
  await page.click("#refresh");
  await page.locator("#online li", { hasText: new RegExp(`^${user}$`) }).waitFor();
}

/** Pushes `text` to `to` from `page` and waits for the push report. */
async function push(page, to, text) {
  await page.fill("#to", to);
  await page.fill("#text", text);
  await page.click("#send");
  await page.locator("#messages li.sent", { hasText: text }).waitFor();
  return page.textContent("#report");
}

/** Waits until `page` shows a message from `from` with `text`; its class. */
async function received(page, from, text) {
  const item = page.locator("#messages li", { hasText: text }).filter({ has: page.locator(".from", { hasText: from }) });
  await item.waitFor();
  return item.getAttribute("class");
}

/** Joins the room `name` on `page` and waits until the page shows it with its user a member. */
async function joinRoom(page, name, user) {
  await page.fill("#room", name);
  await page.click("#join-room");
  await page.locator("#room-name", { hasText: new RegExp(`^${name}$`) }).waitFor();
  await member(page, user).waitFor();
}

/** The member `user` in the room members `page` shows. */
const member = (page, user) => page.locator("#room-members .member", { hasText: new RegExp(`^${user}(, )?$`) });

/** Posts `text` to the room of `page`. */
async function post(page, text) {
  await page.fill("#room-text", text);
  await page.click("#room-post");
}

/** The message from `from` with `text` in the room `page` shows. */
const roomMessage = (page, from, text) =>
  page.locator("#room-messages li", { hasText: text }).filter({ has: page.locator(".from", { hasText: from }) });

before(async () => {
  assert.ok(existsSync(zserverBin), `${zserverBin} is missing: run \`cargo build -p zserver-cli\` first`);
  assert.ok(existsSync(join(web, "index.html")), `${web} is missing: run \`npm run build:demo\` first`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} is missing: apt-get install chromium`);
  scratch = mkdtempSync(join(tmpdir(), "zserver-e2e-"));
  mkdirSync(artifacts, { recursive: true });
  server = await startServer(join(scratch, "data"));
  browser = await chromium.launch({ executablePath: chromiumBin, headless: true, args: CHROMIUM_FLAGS });
});

after(async () => {
  await browser?.close();
  for (const child of children) child.kill("SIGINT");
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("browser users and a Rust user push to each other through one server", async () => {
  const ann = await openPage();
  const bob = await openPage();
  await enter(ann, "ann");
  await enter(bob, "bob");

  // Browser to browser, over WebSocket.
  await waitOnline(ann, "bob");
  assert.match(await push(ann, "bob", "hello bob, from ann's browser"), /delivered to bob/);
  assert.equal(await received(bob, "ann", "hello bob, from ann's browser"), "received");
  assert.match(await push(bob, "ann", "hi ann, bob here"), /delivered to ann/);
  await received(ann, "bob", "hi ann, bob here");

  // The Rust CLI over TCP (pinning the same key) pushes to a browser user.
  await zserver(cli("carol", "register"));
  const out = await zserver(cli("carol", "push", "ann", "hello ann, from the Rust CLI"));
  assert.match(out, /delivered to `ann`/);
  await received(ann, "carol", "hello ann, from the Rust CLI");
  // The Rust CLI over WebSocket too (`--ws`, the page's own port).
  assert.match(await zserver(cliWs("carol", "push", "bob", "hello bob, from Rust over WebSocket")), /delivered to `bob`/);
  await received(bob, "carol", "hello bob, from Rust over WebSocket");

  // A browser user pushes to the Rust user: stored while carol is offline, printed at her
  // next login; then live, to `zserver client listen`.
  assert.match(await push(bob, "carol", "while you were away, carol"), /stored for carol/);
  assert.match(await zserver(cli("carol", "login")), /bob: while you were away, carol/);
  const listen = spawn(zserverBin, cli("carol", "listen"), { stdio: ["ignore", "pipe", "inherit"] });
  children.add(listen);
  const heard = new Promise((resolveHeard) =>
    createInterface({ input: listen.stdout }).on("line", (line) => {
      if (line.includes("live to carol")) resolveHeard(line);
    }),
  );
  await waitOnline(ann, "carol");
  assert.match(await push(ann, "carol", "live to carol, from ann's browser"), /delivered to carol/);
  assert.equal(await heard, "message from ann: live to carol, from ann's browser");
  listen.kill("SIGINT");

  // A page logging in gets the messages stored while its user was offline.
  await zserver(cli("dave", "register"));
  assert.match(await zserver(cli("carol", "push", "dave", "for dave, sent while away")), /stored for their next login/);
  const dave = await openPage(server.pin, "&shown=1");
  await enter(dave, "dave", { register: false });
  assert.equal(await received(dave, "carol", "for dave, sent while away"), "offline");
  // That page lists one name (`?shown=1`: one `who` page of one) and counts the others.
  // (carol's `listen` has just gone: wait for the count to settle, refreshed every 3 s.)
  await dave.waitForFunction(() => document.querySelector("#online-count")?.textContent === "(3)");
  assert.deepEqual(await dave.locator("#online li").allTextContents(), ["ann", "and 2 more"]);
  await dave.screenshot({ path: join(artifacts, "offline.png") });

  await ann.screenshot({ path: join(artifacts, "chat.png") });
  await bob.screenshot({ path: join(artifacts, "chat-bob.png") });

  // A second login of bob elsewhere kicks the first page.
  const bob2 = await openPage();
  await enter(bob2, "bob", { register: false });
  await bob.waitForSelector('#status[data-state="kicked"]');
  assert.match(await bob.textContent("#kicked"), /logged in from another connection/);
  assert.equal(await bob.isVisible("#chat"), false);
  await bob.screenshot({ path: join(artifacts, "kicked.png") });
});

test("a page that pins another key is refused before logging in", async () => {
  const page = await openPage("00".repeat(32));
  await page.fill("#user", "mallory");
  await page.fill("#password", "mallory-pw");
  await page.click("#register");
  await page.waitForSelector('#status[data-state="error"]');
  assert.match(await page.textContent("#status"), /key|fingerprint|pin/i);
  await page.screenshot({ path: join(artifacts, "refused.png") });
  // Nothing reached the server: the account does not exist.
  await assert.rejects(zserver(cli("mallory", "login")), /wrong user name or password/);
});

test("rooms: members come and go, earlier messages, posts reach the room", async () => {
  const erin = await openPage();
  const frank = await openPage();
  await enter(erin, "erin");
  await enter(frank, "frank");
  await joinRoom(erin, "lobby", "erin");
  await post(erin, "first in the lobby");
  await roomMessage(erin, "erin", "first in the lobby").waitFor();

  // Joining later: the earlier message from the room's history, and both members.
  await joinRoom(frank, "lobby", "frank");
  const earlier = roomMessage(frank, "erin", "first in the lobby");
  await earlier.waitFor();
  assert.equal(await earlier.getAttribute("class"), "earlier");
  await member(frank, "erin").waitFor();
  // erin's page saw frank join.
  await member(erin, "frank").waitFor();

  // A post reaches everyone in the room, the poster included, once.
  await post(frank, "hello lobby, frank here");
  await roomMessage(erin, "frank", "hello lobby, frank here").waitFor();
  await roomMessage(frank, "frank", "hello lobby, frank here").waitFor();
  assert.equal(await erin.locator("#room-messages li").count(), 2);
  // Another room is another channel: nothing of the lobby there.
  const gina = await openPage();
  await enter(gina, "gina");
  await joinRoom(gina, "garden", "gina");
  assert.equal(await gina.locator("#room-messages li").count(), 0);
  assert.equal(await gina.locator("#room-members .member").count(), 1);
  await erin.screenshot({ path: join(artifacts, "rooms.png") });

  // frank leaves: erin's page sees it.
  await frank.click("#leave-room");
  await frank.locator("#room-report", { hasText: "left lobby" }).waitFor();
  await member(erin, "frank").waitFor({ state: "detached" });
  assert.equal(await erin.locator("#room-members .member").count(), 1);
});
