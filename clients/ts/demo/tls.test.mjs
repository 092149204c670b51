// `wss://` without a proxy, in a real browser: `zserver serve --tls-cert --tls-key` serves the
// chat page over `https://` and the protocol over `wss://` on the same port (the page picks
// `wss:` because it was loaded over `https:`), and the server API and admin page over
// `https://`, with a certificate this test makes (openssl). Chromium trusts that
// certificate alone, by its public key's hash (`--ignore-certificate-errors-spki-list`); a
// browser without that trust is refused. A page logs in over `wss://` and gets a push from
// the Rust CLI (over TCP); the admin page logs in over `https://` and its session cookie is
// Secure and HttpOnly. Screenshot: target/e2e/tls-chat.png.
//
// Needs target/debug/zserver, /usr/bin/chromium and openssl; run `npm run build:demo`
// first (`npm test` does).

import { createHash, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { artifacts, chromiumBin, here, launchBrowser, run, startServer, STEP_MS, stopAll, zserver, zserverBin } from "./harness.mjs";

const web = join(here, "dist");
const KEY = "tls-test-api-key-0123456789";

let server; // { child, tcp, ws, pin, api, ... }
let browser; // trusting the test certificate
let scratch;

/** The base64 SHA-256 of the certificate's public key (SPKI), as Chromium's flag takes it. */
function spkiHash(certPem) {
  const spki = new X509Certificate(certPem).publicKey.export({ type: "spki", format: "der" });
  return createHash("sha256").update(spki).digest("base64");
}

before(async () => {
  assert.ok(existsSync(zserverBin), `${zserverBin} is missing: run \`cargo build -p zserver-cli\` first`);
  assert.ok(existsSync(join(web, "index.html")), `${web} is missing: run \`npm run build:demo\` first`);
  assert.ok(existsSync(chromiumBin), `${chromiumBin} is missing: apt-get install chromium`);
  scratch = mkdtempSync(join(tmpdir(), "zserver-tls-"));
  mkdirSync(artifacts, { recursive: true });
  const [cert, key, keyFile] = ["cert.pem", "key.pem", "api.key"].map((f) => join(scratch, f));
  // A P-256 certificate for 127.0.0.1, valid two days (the key in PKCS#8).
  await run("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
    "-addext", "subjectAltName=IP:127.0.0.1",
  ]);
  writeFileSync(keyFile, KEY);
  const extra = ["--tls-cert", cert, "--tls-key", key, "--api", "127.0.0.1:0", "--api-key-file", keyFile];
  server = await startServer({ web, data: join(scratch, "data"), extra });
  browser = await launchBrowser([`--ignore-certificate-errors-spki-list=${spkiHash(readFileSync(cert))}`]);
});

after(async () => {
  await browser?.close();
  stopAll();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("the chat page over https:// talks to the server over wss://", async () => {
  const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  await page.goto(`https://${server.ws}/?pin=${server.pin}`);
  assert.equal(await page.evaluate(() => location.protocol), "https:");
  assert.equal(await page.inputValue("#ws"), `wss://${server.ws}/`);
  await page.fill("#user", "ann");
  await page.fill("#password", "ann-pw");
  await page.click("#register");
  await page.waitForSelector('#status[data-state="online"]');

  // The Rust CLI over TCP pushes to the browser user on wss://.
  const cli = (user, ...action) => ["client", "--server", server.tcp, "--pin", server.pin, "--user", user, "--password", `${user}-pw`, ...action];
  await zserver(cli("carol", "register"));
  assert.match(await zserver(cli("carol", "push", "ann", "hello ann, over wss")), /delivered to `ann`/);
  await page
    .locator("#messages li", { hasText: "hello ann, over wss" })
    .filter({ has: page.locator(".from", { hasText: "carol" }) })
    .waitFor();
  const path = join(artifacts, "tls-chat.png");
  await page.screenshot({ path });
  console.log(`screenshot: ${path}`);
  await context.close();
});

test("a browser that does not trust the certificate is refused", async () => {
  const untrusting = await launchBrowser();
  try {
    const page = await untrusting.newPage();
    await assert.rejects(page.goto(`https://${server.ws}/`), /ERR_CERT/);
  } finally {
    await untrusting.close();
  }
});

test("the admin page over https:// sets a Secure, HttpOnly session cookie", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  await page.goto(`https://${server.api}/admin`);
  await page.fill("#key", KEY);
  await page.click("#login-form button[type=submit]");
  await page.locator("#dashboard").waitFor();
  const cookies = await context.cookies(`https://${server.api}/`);
  assert.equal(cookies.length, 1, JSON.stringify(cookies));
  assert.ok(cookies[0].secure && cookies[0].httpOnly, JSON.stringify(cookies));
  assert.equal(cookies[0].sameSite, "Strict");
  await context.close();
});
