// The chat demo end to end in a real browser: Debian's headless Chromium (driven through
// playwright-core, no browser download) loads the page from `zserver serve --web`, two
// pages log in as two users over WebSocket and push to each other, and the Rust CLI (over
// TCP, and over WebSocket, pinning the same key) pushes to browser users and receives a
// browser user's push.
// A page logging in gets the messages stored while its user was away; a page logging in
// as a user who is already on another page gets that page kicked; a page pinning the
// wrong key is refused. Rooms (the server's `chat:` channels): a page joins the lobby at
// login, more rooms by name, one tab each; pages see members come and go and earlier
// messages, a post reaches its room only. A 1 MB word does not widen the page; the page
// fits a 390 px phone; when the server is killed the page says it is reconnecting and
// comes back by itself once the server is started again where it was. Screenshots land
// in target/e2e/ at the repository root (their paths are printed).
//
// Needs target/debug/zserver (built by `cargo build -p zserver-cli`; ZSERVER_BIN overrides)
// and /usr/bin/chromium (CHROMIUM overrides); run `npm run build:demo` first (`npm test`
// does).

import { spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import {
  artifacts,
  chromiumBin,
  here,
  killServer,
  launchBrowser,
  startServer,
  STEP_MS,
  stopAll,
  track,
  zserver,
  zserverBin,
} from "./harness.mjs";

const web = join(here, "dist");

let server; // { child, tcp, ws, pin, ... }: the server most tests share
let browser;
let scratch;

/** `zserver client` arguments for `user` reaching the server `via` these options, pinning its key. */
function clientArgs(via, user, action) {
  return ["client", ...via, "--user", user, "--password", `${user}-pw`, "--pin", server.pin, ...action];
}

/** `zserver client` arguments for `user`, over TCP. */
const cli = (user, ...action) => clientArgs(["--server", server.tcp], user, action);

/** `zserver client` arguments for `user`, over WebSocket. */
const cliWs = (user, ...action) => clientArgs(["--ws", "--server", server.ws], user, action);

/** A fresh browser context with the chat page of `at` open (pinning `pin`, with `query` added). */
async function openPage(pin = server.pin, query = "", { viewport = { width: 900, height: 560 }, at = server } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`http://${at.ws}/?pin=${pin}${query}`);
  return page;
}

/** Takes a screenshot of `page` into target/e2e/NAME.png and prints where. */
async function shot(page, name, options = {}) {
  const path = join(artifacts, `${name}.png`);
  await page.screenshot({ path, ...options });
  console.log(`screenshot: ${path}`);
}

/** How wide `page`'s document is, and its viewport. */
const widths = (page) =>
  page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, body: document.body.scrollWidth, viewport: innerWidth }));

/** Asserts that `page` does not scroll sideways. */
async function assertNoSideScroll(page, what) {
  const w = await widths(page);
  assert.ok(w.scroll <= w.viewport && w.body <= w.viewport, `${what}: the page is ${w.scroll} px wide in a ${w.viewport} px viewport`);
}

/** Registers (or logs in) `user` on `page` and waits until the page shows the session. */
async function enter(page, user, { register = true } = {}) {
  await page.fill("#user", user);
  await page.fill("#password", `${user}-pw`);
  await page.click(register ? "#register" : "#login");
  await page.waitForSelector('#status[data-state="online"]');
  // The page joins the lobby at login.
  await page.locator('#room-tabs button[data-room="lobby"]').waitFor();
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

/** The messages of the room `name` on `page` (the room shown when `name` is omitted). */
const roomList = (page, name) => page.locator(name ? `ol.room-messages[data-room="${name}"]` : "ol.room-messages:not([hidden])");

/** The message from `from` with `text` in the room `page` shows (or in the room `name`). */
const roomMessage = (page, from, text, name) =>
  roomList(page, name).locator("li", { hasText: text }).filter({ has: page.locator(".from", { hasText: from }) });

/** The tab of the room `name` on `page`. */
const roomTab = (page, name) => page.locator(`#room-tabs button[data-room="${name}"]`);

before(async () => {
  assert.ok(existsSync(zserverBin), `${zserverBin} is missing: run \`cargo build -p zserver-cli\` first`);
  assert.ok(existsSync(join(web, "index.html")), `${web} is missing: run \`npm run build:demo\` first`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} is missing: apt-get install chromium`);
  scratch = mkdtempSync(join(tmpdir(), "zserver-e2e-"));
  mkdirSync(artifacts, { recursive: true });
  server = await startServer({ web, data: join(scratch, "data") });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  stopAll();
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
  track(listen);
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
  await shot(dave, "offline");

  await shot(ann, "chat");
  await shot(bob, "chat-bob");

  // A user may be logged in on several pages at once: bob on a second page gets pushes too.
  const bob2 = await openPage();
  await enter(bob2, "bob", { register: false });
  assert.match(await push(ann, "bob", "to both of bob's pages"), /delivered to bob/);
  await received(bob, "ann", "to both of bob's pages");
  await received(bob2, "ann", "to both of bob's pages");
});

test("a second login kicks the first page on a server with one session per user; that page stays away", async () => {
  const own = await startServer({ web, data: join(scratch, "single-data"), extra: ["--max-sessions", "1"] });
  const first = await openPage(own.pin, "", { at: own });
  await enter(first, "bob");
  const second = await openPage(own.pin, "", { at: own });
  await enter(second, "bob", { register: false });
  await first.waitForSelector('#status[data-state="kicked"]');
  assert.match(await first.textContent("#kicked"), /logged in from another connection/);
  assert.equal(await first.isVisible("#chat"), false);
  await shot(first, "kicked");
  // The kicked page does not log in again by itself (that would kick the other one back).
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(await first.getAttribute("#status", "data-state"), "kicked");
  assert.equal(await second.getAttribute("#status", "data-state"), "online");
  for (const page of [first, second]) await page.context().close();
  await killServer(own);
});

test("a page that pins another key is refused before logging in", async () => {
  const page = await openPage("00".repeat(32));
  await page.fill("#user", "mallory");
  await page.fill("#password", "mallory-pw");
  await page.click("#register");
  await page.waitForSelector('#status[data-state="error"]');
  assert.match(await page.textContent("#status"), /key|fingerprint|pin/i);
  await shot(page, "refused");
  // Nothing reached the server: the account does not exist.
  await assert.rejects(zserver(cli("mallory", "login")), /wrong user name or password/);
});

test("rooms: the lobby at login, tabs, members come and go, earlier messages, posts stay in their room", async () => {
  const erin = await openPage();
  const frank = await openPage();
  await enter(erin, "erin");
  await enter(frank, "frank");
  // Both are in the lobby, shown at login.
  await member(erin, "erin").waitFor();
  assert.equal(await erin.textContent("#room-name"), "lobby");

  await joinRoom(erin, "kitchen", "erin");
  await post(erin, "first in the kitchen");
  await roomMessage(erin, "erin", "first in the kitchen").waitFor();

  // Joining later: the earlier message from the room's history, and both members.
  await joinRoom(frank, "kitchen", "frank");
  const earlier = roomMessage(frank, "erin", "first in the kitchen");
  await earlier.waitFor();
  assert.equal(await earlier.getAttribute("class"), "earlier");
  await member(frank, "erin").waitFor();
  // erin's page saw frank join.
  await member(erin, "frank").waitFor();

  // A post reaches everyone in the room, the poster included, once.
  await post(frank, "hello kitchen, frank here");
  await roomMessage(erin, "frank", "hello kitchen, frank here").waitFor();
  await roomMessage(frank, "frank", "hello kitchen, frank here").waitFor();
  assert.equal(await roomList(erin, "kitchen").locator("li").count(), 2);

  // erin switches to the lobby tab: the lobby's messages, not the kitchen's; a kitchen post
  // meanwhile lands in the kitchen and counts as unread on its tab.
  await roomTab(erin, "lobby").click();
  assert.equal(await erin.textContent("#room-name"), "lobby");
  assert.equal(await roomList(erin).locator("li", { hasText: "kitchen" }).count(), 0);
  await post(frank, "while erin is in the lobby");
  await roomMessage(erin, "frank", "while erin is in the lobby", "kitchen").waitFor({ state: "attached" });
  await roomTab(erin, "kitchen").locator(".unread", { hasText: "1" }).waitFor();
  assert.equal(await roomList(erin, "lobby").locator("li", { hasText: "while erin" }).count(), 0);
  await post(erin, "erin in the lobby");
  await roomMessage(frank, "erin", "erin in the lobby", "lobby").waitFor({ state: "attached" });
  assert.equal(await roomList(frank, "kitchen").locator("li", { hasText: "erin in the lobby" }).count(), 0);
  await shot(erin, "rooms-lobby");
  await roomTab(erin, "kitchen").click();
  await roomMessage(erin, "frank", "while erin is in the lobby").waitFor();
  assert.equal(await roomTab(erin, "kitchen").locator(".unread").count(), 0);

  // Another room is another channel: nothing of the kitchen there.
  const gina = await openPage();
  await enter(gina, "gina");
  await joinRoom(gina, "garden", "gina");
  assert.equal(await roomList(gina).locator("li").count(), 0);
  assert.equal(await gina.locator("#room-members .member").count(), 1);
  await shot(erin, "rooms");

  // frank leaves the kitchen: erin's page sees it; frank's page shows the lobby again.
  await frank.click("#leave-room");
  await frank.locator("#room-report", { hasText: "left kitchen" }).waitFor();
  assert.equal(await roomTab(frank, "kitchen").count(), 0);
  assert.equal(await frank.textContent("#room-name"), "lobby");
  await member(erin, "frank").waitFor({ state: "detached" });
  assert.equal(await erin.locator("#room-members .member").count(), 1);
  for (const page of [erin, frank, gina]) await page.context().close();
});

test("a 1 MB word wraps: the page gets no wider, in direct messages and in a room", async () => {
  const hal = await openPage();
  const ivy = await openPage();
  await enter(hal, "hal");
  await enter(ivy, "ivy");
  await waitOnline(hal, "ivy");
  const word = "w".repeat(1 << 20);
  // Put into the field as a person pasting it would (fill), pushed, shown on both pages.
  // (No locator names the word: a failing one would print it.)
  await hal.fill("#to", "ivy");
  await hal.fill("#text", word);
  await hal.click("#send");
  await hal.locator("#messages li.sent", { hasText: "you → ivy" }).waitFor();
  assert.match(await hal.textContent("#report"), /delivered to ivy/);
  const got = ivy.locator("#messages li.received").filter({ has: ivy.locator(".from", { hasText: "hal" }) });
  await got.waitFor();
  await assertNoSideScroll(hal, "the sender's page");
  await assertNoSideScroll(ivy, "the receiver's page");
  // Shown cut short, with a button for the rest; all of it shown still wraps.
  const button = got.locator("button.more");
  assert.match(await button.textContent(), /show all 1,048,576 characters/);
  await button.click();
  assert.equal((await got.locator(".text").textContent()).length, 1 << 20);
  await assertNoSideScroll(ivy, "the receiver's page, the whole 1 MB word shown");
  await ivy.evaluate(() => window.scrollTo(0, 0));
  await shot(ivy, "long-word");

  // In a room: publications are at most 64 KiB here, so a 60,000-letter word.
  const long = "r".repeat(60_000);
  await post(hal, long);
  await roomList(ivy, "lobby").locator("li", { hasText: "rrrrrrrrrr" }).waitFor();
  await assertNoSideScroll(ivy, "the room with a 60,000-letter word");
  // And one over the limit is refused, said so on the page.
  await post(hal, "x".repeat(70_000));
  await hal.locator("#room-report", { hasText: /not posted/ }).waitFor();
  for (const page of [hal, ivy]) await page.context().close();
});

test("the page fits a 390 px phone: no sideways scrolling, every field and button on screen", async () => {
  const phone = { width: 390, height: 844 };
  const page = await openPage(server.pin, "", { viewport: phone });
  /** Asserts that every visible input and button lies within the viewport's width. */
  const assertControlsFit = async (what) => {
    await assertNoSideScroll(page, what);
    const outside = await page.evaluate(() =>
      [...document.querySelectorAll("input, button")]
        .filter((el) => el.offsetParent !== null)
        .map((el) => ({ id: el.id || el.textContent, box: el.getBoundingClientRect() }))
        .filter(({ box }) => box.left < 0 || box.right > innerWidth || box.width < 30)
        .map(({ id, box }) => `${id}: ${Math.round(box.left)}..${Math.round(box.right)}`),
    );
    assert.deepEqual(outside, [], `${what}: controls outside the screen`);
  };
  await page.click("summary");
  await assertControlsFit("the login form, server details open");
  await shot(page, "phone-login");
  await enter(page, "jack");
  await assertControlsFit("logged in");
  for (const id of ["#room-text", "#room-post", "#to", "#text", "#send", "#room", "#logout"]) {
    assert.ok(await page.isVisible(id), `${id} is visible`);
  }
  await post(page, "from a phone, a long word: " + "p".repeat(5000));
  await roomList(page).locator("li", { hasText: "from a phone" }).waitFor();
  await assertControlsFit("after a long room message");
  await shot(page, "phone-chat");
  await page.context().close();
});

test("the server is killed: the page says it is reconnecting, and is back by itself once the server is", async () => {
  // A server of its own, restarted where it was (same ports, same data, so the same key).
  const data = join(scratch, "restart-data");
  let own = await startServer({ web, data });
  const kate = await openPage(own.pin, "", { at: own });
  await enter(kate, "kate");
  await member(kate, "kate").waitFor();
  await post(kate, "before the restart");
  await roomMessage(kate, "kate", "before the restart").waitFor();

  await killServer(own);
  await kate.locator('#status[data-state="reconnecting"]').waitFor();
  assert.match(await kate.textContent("#status"), /^reconnecting…/);
  // What was on the page stays while away; sending says why it cannot.
  assert.equal(await kate.isVisible("#chat"), true);
  await roomMessage(kate, "kate", "before the restart").waitFor();
  // Let it fail an attempt or two against the closed port.
  await kate.waitForFunction(() => /attempt [2-9]/.test(document.querySelector("#status")?.textContent ?? ""));
  await shot(kate, "reconnecting");

  // Nobody is shown in the room while away.
  assert.equal(await kate.locator("#room-members .member").count(), 0);

  own = await startServer({ web, data, tcp: own.tcp, ws: own.ws });
  // leo posts to the lobby as soon as the server is back, likely before the page is: the
  // page gets it once, recovered from where its subscription stopped or live.
  const leo = (...action) => ["client", "--server", own.tcp, "--user", "leo", "--password", "leo-pw", "--pin", own.pin, ...action];
  await zserver(leo("register"));
  await zserver(leo("pub", "chat:lobby", "while kate was away"));
  await kate.locator('#status[data-state="online"]').waitFor();
  assert.match(await kate.textContent("#status"), /^connected as kate/);
  // Back in the room (subscribed again from where it stopped), a post goes through.
  await member(kate, "kate").waitFor();
  await post(kate, "after the restart");
  await roomMessage(kate, "kate", "after the restart").waitFor();
  assert.equal(await roomList(kate, "lobby").locator("li", { hasText: "before the restart" }).count(), 1);
  await roomMessage(kate, "leo", "while kate was away").waitFor();
  assert.equal(await roomList(kate, "lobby").locator("li", { hasText: "while kate was away" }).count(), 1);
  // Direct messages too, from a Rust client on the restarted server.
  await zserver(leo("push", "kate", "welcome back"));
  await received(kate, "leo", "welcome back");
  await shot(kate, "reconnected");
  await kate.context().close();
  await killServer(own);
});
