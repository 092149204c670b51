// What the browser tests share: where things are, `zserver serve` started and stopped,
// headless Chromium from Debian (through playwright-core, no browser download).
import { spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

export const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, "../../..");
export const zserverBin = process.env.ZSERVER_BIN ?? join(root, "target/debug/zserver");
export const chromiumBin = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** Screenshots, for people to look at. */
export const artifacts = join(root, "target/e2e");
/** How long any one step may take. */
export const STEP_MS = 15_000;

export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** Every process started here, stopped by {@link stopAll}. */
const children = new Set();

/** Runs `command args` in `cwd`; resolves with its stdout once it exits with status 0. */
export function run(command, args, { cwd, env, timeoutMs = 120_000 } = {}) {
  return new Promise((resolveRun, reject) => {
    const child = spawn(command, args, { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    children.add(child);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) resolveRun(out);
      else reject(new Error(`${command} ${args.join(" ")} exited with ${code}:\n${out}${err}`));
    });
  });
}

/** Runs `zserver` with `args`; resolves with its stdout once it exits with status 0. */
export const zserver = (args, { env } = {}) => run(zserverBin, args, { env, timeoutMs: STEP_MS });

/**
 * Starts `zserver serve --web WEB --data DATA`, on free loopback ports unless `tcp` and
 * `ws` name them (the same again, to restart a server where it was), with `extra`
 * arguments; resolves once it
 * printed its addresses and key: `{ child, tcp, ws, pin, web, data, exited }` (and `api`,
 * the server API's address, with `--api` in `extra`).
 */
export function startServer({ web, data, tcp = "127.0.0.1:0", ws = "127.0.0.1:0", extra = [] }) {
  const args = ["serve", "--listen", tcp, "--listen-ws", ws, "--web", web, "--data", data, ...extra];
  const child = spawn(zserverBin, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  children.add(child);
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise((resolveExit) => child.on("exit", (code, signal) => resolveExit({ code, signal })));
  exited.then(() => children.delete(child));
  return new Promise((resolveStart, reject) => {
    const seen = {};
    const timer = setTimeout(() => reject(new Error(`zserver serve did not start:\n${stderr}`)), STEP_MS);
    exited.then(({ code }) => reject(new Error(`zserver serve exited with ${code}:\n${stderr}`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const tcpSeen = line.match(/^zserver listening on (\S+)/);
      const wsSeen = line.match(/^WebSocket on wss?:\/\/([^/\s]+)\//);
      const pin = line.match(/^server key fingerprint: ([0-9a-f]{64})$/);
      const apiSeen = line.match(/^server API on https?:\/\/([^/\s]+)\//);
      if (tcpSeen) seen.tcp = tcpSeen[1];
      if (wsSeen) seen.ws = wsSeen[1];
      if (pin) seen.pin = pin[1];
      if (apiSeen) seen.api = apiSeen[1];
      if (seen.tcp && seen.ws && seen.pin && (seen.api || !extra.includes("--api"))) {
        clearTimeout(timer);
        resolveStart({ child, ...seen, web, data, exited });
      }
    });
  });
}

/** Kills a server started by {@link startServer} at once (SIGKILL: no goodbye to anyone). */
export async function killServer(server) {
  server.child.kill("SIGKILL");
  await server.exited;
}

/** Keeps track of a child started elsewhere, for {@link stopAll}. */
export const track = (child) => children.add(child);

/** Stops every process started here that is still running. */
export function stopAll() {
  for (const child of children) child.kill("SIGINT");
}

/** Launches headless Chromium (with `extraArgs` beside the usual flags). */
export async function launchBrowser(extraArgs = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: chromiumBin, headless: true, args: [...CHROMIUM_FLAGS, ...extraArgs] });
}
