// The package as an app gets it, following clients/ts/README.md: `npm pack` makes
// zserver-client-0.1.0.tgz (ES modules and type declarations in dist/, the README, the
// vendor tool), a fresh app installs the tarball, imports both entry points from Node and
// type-checks a small TypeScript file against the declarations; then serves the chat page
// through an import map, the package and its dependencies copied by the package's own
// `npx zserver-client-vendor` into web/vendor/ (no node_modules in the web root), and
// headless Chromium logs in and posts through it.
//
// Needs npm (and the npm registry, or its cache, for the package's dependencies),
// clients/ts/node_modules (TypeScript), target/debug/zserver and /usr/bin/chromium.

import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { buildPage } from "./build.mjs";
import { artifacts, here, launchBrowser, run, startServer, STEP_MS, stopAll } from "./harness.mjs";

const lib = resolve(here, "..");
const libJson = JSON.parse(readFileSync(join(lib, "package.json"), "utf8"));
const tarballName = `${libJson.name.replace(/^@/, "").replace("/", "-")}-${libJson.version}.tgz`;
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const quiet = ["--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"];

let scratch;
let app;
let tarball;

before(async () => {
  scratch = mkdtempSync(join(tmpdir(), "zserver-pack-"));
  app = join(scratch, "app");
  mkdirSync(app);
  // `npm pack` builds first (prepack) and prints the tarball's name last.
  const out = await run(npm, ["pack", "--pack-destination", scratch, "--loglevel=error"], { cwd: lib });
  assert.equal(out.trim().split("\n").at(-1), tarballName);
  tarball = join(scratch, tarballName);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "tiny-app", private: true, type: "module" }, null, 2));
  await run(npm, ["install", ...quiet, tarball], { cwd: app });
});

after(() => {
  stopAll();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("the tarball holds the built ES modules, their declarations, the README and the vendor tool", async () => {
  const files = (await run("tar", ["-tzf", tarball])).split("\n").filter(Boolean);
  for (const f of ["dist/index.js", "dist/index.d.ts", "dist/node.js", "dist/node.d.ts", "README.md", "package.json", "bin/zserver-client-vendor.mjs"]) {
    assert.ok(files.includes(`package/${f}`), `${f} is in the tarball`);
  }
  assert.deepEqual(files.filter((f) => /dist-test|\/test\/|node_modules/.test(f)), [], "no tests or node_modules");
});

test("engines and the README name the same Node version, and this Node satisfies it", () => {
  const wanted = libJson.engines?.node;
  assert.match(wanted, /^>=\d+\.\d+$/, "engines.node is '>=MAJOR.MINOR'");
  const version = wanted.slice(2);
  const readme = readFileSync(join(lib, "README.md"), "utf8");
  assert.ok(readme.includes(`Node ≥ ${version}`), `the README says "Node ≥ ${version}"`);
  for (const other of readme.matchAll(/Node ≥ (\d+(?:\.\d+)?)/g)) {
    assert.equal(other[1], version, `the README says Node ≥ ${other[1]} somewhere`);
  }
  const [major, minor] = process.versions.node.split(".").map(Number);
  const [wantMajor, wantMinor] = version.split(".").map(Number);
  assert.ok(major > wantMajor || (major === wantMajor && minor >= wantMinor), `Node ${process.versions.node} is at least ${version}`);
});

test("an app imports both entry points from Node", async () => {
  writeFileSync(
    join(app, "check.mjs"),
    `import * as web from "@zserver/client";
import * as node from "@zserver/client/node";
const names = (m, want) => want.filter((n) => typeof m[n] !== "function");
const missing = [...names(web, ["connectWebSocket", "LoginClient", "Client", "ZserverError", "PostcardWriter"]),
  ...names(node, ["connect", "connectTcp", "connectWebSocketNode", "connectLogin", "LoginClient"])];
if (missing.length) throw new Error("missing exports: " + missing.join(", "));
console.log("ok", Object.keys(web).length, Object.keys(node).length);
`,
  );
  assert.match(await run(process.execPath, ["check.mjs"], { cwd: app }), /^ok \d+ \d+/);
});

test("a TypeScript file type-checks against the declarations (browser and Node entries)", async () => {
  writeFileSync(
    join(app, "app.ts"),
    `import { connectWebSocket, LoginClient, type Message, type Publication, ZserverError } from "@zserver/client";
import { connect, connectTcp } from "@zserver/client/node";

export async function chat(url: string, pin: string): Promise<string[]> {
  const login = new LoginClient(await connectWebSocket(url, { pin }));
  login.on("message", (m: Message) => console.log(m.from, m.text));
  const offline: Message[] = await login.login("ann", "pw");
  const lobby = await login.client.subscribe("chat:lobby");
  lobby.on("publication", (p: Publication) => console.log(p.offset + 1n, p.from));
  await login.client.publish("chat:lobby", "hi");
  return offline.map((m) => m.text);
}

export async function fromNode(pin: string): Promise<number> {
  const client = await connectTcp("127.0.0.1", 7100, { pin });
  const other = await connect("ws://127.0.0.1:7180", { pin });
  other.close();
  try {
    return await client.ping();
  } catch (e) {
    if (e instanceof ZserverError && e.kind === "timeout") return -1;
    throw e;
  }
}
`,
  );
  // Nothing skipped: the package's declarations and its dependencies' are checked too.
  /** A tsconfig for `file`, nothing skipped: the package's declarations and its
   * dependencies' are checked too. */
  const tsconfig = (file) =>
    JSON.stringify({
      compilerOptions: {
        target: "ES2022",
        module: "NodeNext",
        moduleResolution: "NodeNext",
        lib: ["ES2022", "DOM"],
        types: [],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
      },
      files: [file],
    });
  writeFileSync(join(app, "tsconfig.json"), tsconfig("app.ts"));
  const tsc = join(lib, "node_modules", ".bin", "tsc");
  await run(tsc, ["-p", "."], { cwd: app });
  // A Node app's settings: no DOM, Node's types (which have Blob), from this package's
  // own @types/node.
  const nodeConfig = JSON.parse(tsconfig("app.ts"));
  nodeConfig.compilerOptions.lib = ["ES2022"];
  nodeConfig.compilerOptions.types = ["node"];
  nodeConfig.compilerOptions.typeRoots = [join(lib, "node_modules", "@types")];
  writeFileSync(join(app, "tsconfig.node.json"), JSON.stringify(nodeConfig));
  await run(tsc, ["-p", "tsconfig.node.json"], { cwd: app });
  // And a wrong use is caught: the declarations are really used.
  writeFileSync(join(app, "wrong.ts"), `import { connectWebSocket } from "@zserver/client";\nawait connectWebSocket(42);\n`);
  writeFileSync(join(app, "tsconfig.wrong.json"), tsconfig("wrong.ts"));
  await assert.rejects(run(tsc, ["-p", "tsconfig.wrong.json"], { cwd: app }), /TS2345/);
});

test("the chat page through an import map: the package's own vendor tool, no node_modules in the web root", async () => {
  // The web root an app serves: its page, its own script (the library left out of it) and
  // the modules `npx zserver-client-vendor web/vendor --html web/index.html` copies.
  const web = join(app, "web");
  await buildPage(web, { external: true });
  const map = JSON.parse(await run("npx", ["--no-install", "zserver-client-vendor", "web/vendor", "--html", "web/index.html"], { cwd: app }));
  assert.equal(map.imports["@zserver/client"], "/vendor/@zserver/client/dist/index.js");
  assert.ok(readFileSync(join(web, "index.html"), "utf8").includes('<script type="importmap">'));
  assert.ok(!existsSync(join(web, "node_modules")));
  assert.ok(existsSync(join(web, "vendor", "importmap.json")));
  assert.ok(!readFileSync(join(web, "demo.js"), "utf8").includes("Noise_XX"), "the page's script does not bundle the library");

  const server = await startServer({ web, data: join(scratch, "data") });
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext({ viewport: { width: 900, height: 560 } });
    const page = await context.newPage();
    page.setDefaultTimeout(STEP_MS);
    const requested = [];
    const failed = [];
    const errors = [];
    page.on("request", (r) => requested.push(new URL(r.url()).pathname));
    page.on("requestfailed", (r) => failed.push(r.url()));
    page.on("response", (r) => r.status() >= 400 && failed.push(`${r.status()} ${r.url()}`));
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://${server.ws}/?pin=${server.pin}`);
    await page.fill("#user", "nina");
    await page.fill("#password", "nina-pw");
    await page.click("#register");
    await page.waitForSelector('#status[data-state="online"]');
    await page.locator('#room-tabs button[data-room="lobby"]').waitFor();
    await page.fill("#room-text", "hello through the import map");
    await page.click("#room-post");
    await page.locator("ol.room-messages li", { hasText: "hello through the import map" }).waitFor();
    const shot = join(artifacts, "importmap.png");
    mkdirSync(artifacts, { recursive: true });
    await page.screenshot({ path: shot });
    console.log(`screenshot: ${shot}`);
    assert.deepEqual(failed, [], "every request was answered");
    assert.deepEqual(errors, [], "no page errors");
    assert.ok(requested.includes("/vendor/@zserver/client/dist/index.js"), "the library came from /vendor/");
    assert.ok(requested.includes("/vendor/@noble/curves/ed25519.js"), "its dependencies too");
    assert.deepEqual(requested.filter((p) => p.includes("node_modules")), []);
  } finally {
    await browser.close();
  }
});
