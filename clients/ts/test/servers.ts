// Real Rust servers for the tests, as child processes on loopback ports picked by the OS:
// the interop peer (examples/interop_peer.rs) and the login server (`zserver serve`).
// Binaries: $ZSERVER_BIN / $INTEROP_PEER, else the workspace's target/debug.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const workspace = resolve(here, "..", "..", "..");

/** A binary of the workspace: `$env` if set, else target/debug/`rel`. */
export function workspaceBinary(env: string, rel: string): string {
  const path = process.env[env] ?? join(workspace, "target", "debug", rel);
  if (!existsSync(path)) {
    throw new Error(
      `${path} is missing: build it first (cargo build -p zserver-cli for zserver, cargo build -p zserver --example interop_peer for the peer), or set ${env}`,
    );
  }
  return path;
}

/** An address a client connects to. */
export interface Addr {
  host: string;
  port: number;
}

function parseAddr(s: string): Addr {
  const at = s.lastIndexOf(":");
  return { host: s.slice(0, at).replace(/^\[|\]$/g, ""), port: Number(s.slice(at + 1)) };
}

/** Reads the child's stdout lines until `done` says it has what it needs (bounded in time). */
function readUntil(child: ChildProcess, done: (line: string) => boolean, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const timer = setTimeout(() => reject(new Error(`${what} did not start within 20 s`)), 20_000);
    let stderr = "";
    child.stderr?.on("data", (d) => {
      if (stderr.length < 10_000) stderr += d;
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}) before it was ready: ${stderr}`));
    });
    lines.on("line", (line) => {
      if (done(line)) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

function stopChild(child: ChildProcess, signal: NodeJS.Signals | "stdin"): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill("SIGKILL"), 5_000);
    child.once("exit", () => {
      clearTimeout(kill);
      resolve();
    });
    if (signal === "stdin") child.stdin?.end();
    else child.kill(signal);
  });
}

/** The interop peer: every test command, encrypted and plain. */
export interface Peer {
  encrypted: Addr;
  plain: Addr;
  /** The same servers' WebSocket listeners. */
  encryptedWs: Addr;
  plainWs: Addr;
  fingerprint: string;
  stop(): Promise<void>;
}

/** Starts `interop_peer serve` (with `--rekey-records N` if given). */
export async function startPeer(options: { rekeyRecords?: number } = {}): Promise<Peer> {
  const args = ["serve"];
  if (options.rekeyRecords) args.push("--rekey-records", String(options.rekeyRecords));
  const child = spawn(workspaceBinary("INTEROP_PEER", join("examples", "interop_peer")), args, {
    stdio: ["pipe", "pipe", "pipe"],
  });
  let info: { encrypted: string; plain: string; encrypted_ws?: string; plain_ws?: string; fingerprint: string } | undefined;
  await readUntil(child, (line) => {
    if (!line.startsWith("{")) return false;
    info = JSON.parse(line);
    return true;
  }, "interop_peer");
  if (!info!.encrypted_ws || !info!.plain_ws) throw new Error("interop_peer was built without WebSocket");
  return {
    encrypted: parseAddr(info!.encrypted),
    plain: parseAddr(info!.plain),
    encryptedWs: parseAddr(info!.encrypted_ws),
    plainWs: parseAddr(info!.plain_ws),
    fingerprint: info!.fingerprint,
    stop: () => stopChild(child, "stdin"),
  };
}

/** A login server (`zserver serve`) with a fresh data directory. */
export interface LoginServer {
  addr: Addr;
  /** The WebSocket address, when started with `ws: true`. */
  ws?: Addr;
  fingerprint: string;
  /** The server process's id (to SIGSTOP it: a hung server). */
  readonly pid: number;
  /**
   * Stops the server (`SIGINT`: a graceful shutdown with `GoAway`; `SIGKILL`: a crash) and
   * starts it again on the same addresses and data directory (so the same key, accounts
   * and durable channel history), after `downMs` with nothing listening.
   */
  restart(options?: { signal?: NodeJS.Signals; downMs?: number }): Promise<void>;
  /** Stops the process and keeps the data directory ({@link restart} starts it again). */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** Starts it again after {@link kill}, on the same addresses and data directory. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts `zserver serve --listen 127.0.0.1:0` on a fresh temporary data directory. */
export async function startLoginServer(options: { ws?: boolean; extra?: string[] } = {}): Promise<LoginServer> {
  const data = mkdtempSync(join(tmpdir(), "zserver-ts-"));
  let child: ChildProcess;
  let listen = "127.0.0.1:0";
  let listenWs = "127.0.0.1:0";
  let addr: Addr | undefined;
  let ws: Addr | undefined;
  let fingerprint: string | undefined;
  const spawnServer = async () => {
    const args = ["serve", "--listen", listen, "--data", data, ...(options.extra ?? [])];
    if (options.ws) args.push("--listen-ws", listenWs);
    child = spawn(workspaceBinary("ZSERVER_BIN", "zserver"), args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    addr = ws = fingerprint = undefined;
    await readUntil(child, (line) => {
      let m = /^zserver listening on (\S+)/.exec(line);
      if (m) addr = parseAddr(m[1]);
      m = /^WebSocket on ws:\/\/([^\s/]+)/.exec(line);
      if (m) ws = parseAddr(m[1]);
      m = /^server key fingerprint: ([0-9a-f]{64})/.exec(line);
      if (m) fingerprint = m[1];
      return addr !== undefined && fingerprint !== undefined && (!options.ws || ws !== undefined);
    }, "zserver serve");
    // A restart listens where the first start did.
    listen = `${addr!.host}:${addr!.port}`;
    const w = ws as Addr | undefined;
    if (w) listenWs = `${w.host}:${w.port}`;
  };
  await spawnServer();
  const kill = async (signal: NodeJS.Signals = "SIGINT") => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGCONT");
    await stopChild(child, signal);
  };
  const server: LoginServer = {
    get addr() {
      return addr!;
    },
    get ws() {
      return ws;
    },
    get fingerprint() {
      return fingerprint!;
    },
    get pid() {
      return child.pid!;
    },
    kill,
    start: spawnServer,
    restart: async ({ signal = "SIGINT", downMs = 0 } = {}) => {
      await kill(signal);
      if (downMs > 0) await new Promise((r) => setTimeout(r, downMs));
      await spawnServer();
    },
    stop: async () => {
      await kill("SIGINT");
      rmSync(data, { recursive: true, force: true });
    },
  };
  return server;
}
