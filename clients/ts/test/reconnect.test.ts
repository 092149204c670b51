// The reconnecting client against the real login server (`zserver serve`), over TCP and
// WebSocket: a server restart on the same address and data directory (logged in again,
// resubscribed, the publications missed while away recovered), a crash, a hung server
// (SIGSTOP) noticed within two heartbeats, and connect errors that say what happened
// (nothing listening, a WebSocket to the TCP port, a refused origin, kicked by the server).
// Loopback only; every wait is bounded.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import WebSocketImpl from "ws";

import {
  backoffDelay,
  backoffPause,
  type ChannelEvent,
  type ConnectionState,
  NothingListeningError,
  NotWebSocketError,
  OriginRefusedError,
  type ReconnectingClient,
  ServerClosedError,
  type StateChange,
  type Subscription,
  type WebSocketConstructor,
  type WebSocketLike,
  ZserverError,
} from "@zserver/client";
import { connect, connectLogin, connectWebSocketNode, LoginClient, reconnecting } from "@zserver/client/node";

import { sleep, type Via } from "./connect.js";
import { type LoginServer, startLoginServer } from "./servers.js";

const text = (b: Uint8Array) => new TextDecoder().decode(b);
/** Cheap password hashes: the tests log in often. */
const FAST_HASH = ["--argon2-memory-kib", "1024", "--argon2-iterations", "1"];

/** A port nothing listens on (bound by the OS, then closed). */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** Records a reconnecting client's state changes, with when each came. */
function record(rc: ReconnectingClient): { changes: (StateChange & { at: number })[]; until(f: (s: StateChange) => boolean, ms: number): Promise<StateChange & { at: number }> } {
  const changes: (StateChange & { at: number })[] = [];
  const waiting: { f: (s: StateChange) => boolean; resolve: (s: StateChange & { at: number }) => void }[] = [];
  rc.on("state", (s) => {
    const c = { ...s, at: performance.now() };
    changes.push(c);
    for (const w of [...waiting]) {
      if (w.f(c)) {
        waiting.splice(waiting.indexOf(w), 1);
        w.resolve(c);
      }
    }
  });
  return {
    changes,
    until(f, ms) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no such state change within ${ms} ms: ${states(changes)}`)), ms);
        waiting.push({ f, resolve: (s) => (clearTimeout(timer), resolve(s)) });
      });
    },
  };
}

const states = (changes: StateChange[]) =>
  changes.map((c) => `${c.state}${c.error ? `(${c.error.kind}: ${c.error.message})` : ""}`).join(" → ");

/** The next `n` events of `sub`, each within 5 s. */
async function take(sub: Subscription, n: number): Promise<ChannelEvent[]> {
  const out: ChannelEvent[] = [];
  for (let i = 0; i < n; i++) {
    const e = await sub.next(5_000);
    assert.ok(e, `${sub.channel} ended after ${i} of ${n} events`);
    out.push(e);
  }
  return out;
}

const pub = (e: ChannelEvent) => {
  assert.equal(e.type, "publication", `not a publication: ${e.type}`);
  const p = (e as Extract<ChannelEvent, { type: "publication" }>).publication;
  return `${p.offset}:${p.from}:${text(p.data)}`;
};

test("back-off: grows by its factor to the cap; jitter only shortens", () => {
  const b = { initialMs: 100, maxMs: 10_000, factor: 2, jitter: 0 };
  assert.deepEqual([0, 1, 2, 3, 6, 7, 1000].map((n) => backoffDelay(b, n)), [100, 200, 400, 800, 6400, 10_000, 10_000]);
  assert.equal(backoffDelay({ ...b, factor: 0.5 }, 5), 100);
  assert.equal(backoffDelay({ ...b, factor: NaN }, 3), 100);
  assert.equal(backoffDelay({ ...b, initialMs: 0 }, 9), 0);
  const j = { ...b, jitter: 0.5 };
  for (let n = 0; n < 10; n++) {
    for (let i = 0; i < 100; i++) {
      const p = backoffPause(j, n);
      assert.ok(p <= backoffDelay(j, n) && p >= backoffDelay(j, n) / 2, `${p} for retry ${n}`);
    }
  }
  assert.equal(backoffPause({ ...b, jitter: 7 }, 0, () => 1), 0);
  assert.equal(backoffPause(j, 0, () => 0), 100);
});

for (const via of ["tcp", "websocket"] as Via[]) {
  describe(`reconnecting over ${via}`, { timeout: 120_000 }, () => {
    let server: LoginServer;
    const address = () => (via === "tcp" ? `${server.addr.host}:${server.addr.port}` : `ws://${server.ws!.host}:${server.ws!.port}/`);
    const open: { close(): unknown }[] = [];
    // `chat:` keeps its history in the store (the default), `mem:` in memory: lost at a restart.
    const configDir = mkdtempSync(join(tmpdir(), "zserver-ts-config-"));
    const config = join(configDir, "zserver.toml");
    writeFileSync(config, "[channels.chat]\n[channels.mem]\ndurable = false\n");
    before(async () => {
      server = await startLoginServer({ ws: true, extra: [...FAST_HASH, "--config", config] });
      const setup = await connectLogin(`${server.addr.host}:${server.addr.port}`, { pin: server.fingerprint });
      await setup.register("ann", "ann-password");
      await setup.register("bob", "bob-password");
      setup.close();
    });
    after(async () => {
      for (const c of open) await c.close();
      await server?.stop();
      rmSync(configDir, { recursive: true, force: true });
    });

    test("a restarted server: reconnecting → connected, logged in again, resubscribed with what was missed", async () => {
      const rc = reconnecting(address(), {
        pin: server.fingerprint,
        heartbeatMs: 2_000,
        backoff: { initialMs: 50, maxMs: 400 },
      });
      open.push(rc);
      const log = record(rc);
      const ann = new LoginClient(rc);
      await rc.connected(5_000);
      assert.deepEqual(await ann.login("ann", "ann-password"), []);
      const channel = `chat:restart-${via}`;
      const sub = await rc.subscribe(channel);
      await rc.publish(channel, "one");
      await rc.publish(channel, "two");
      assert.deepEqual((await take(sub, 2)).map(pub), ["1:ann:one", "2:ann:two"]);

      // Hold the next login until bob has published and pushed while ann is away.
      let openGate!: () => void;
      const gate = new Promise<void>((r) => (openGate = r));
      const relogin = rc.onLogin!;
      let dialedAt = 0;
      rc.onLogin = async (client) => {
        dialedAt ||= performance.now();
        await gate;
        await relogin(client);
      };

      const down = log.until((s) => s.state === "disconnected", 10_000);
      const restarted = server.restart({ downMs: 300 });
      const lost = await down;
      assert.ok(lost.error instanceof ServerClosedError, `${lost.error}`);
      assert.match(lost.error.message, /shutting down or restarting \(it sent GoAway\)/);
      assert.equal(lost.retrying, true);
      await restarted;
      const upAt = performance.now();

      // Away: calls fail at once, nothing sent.
      await assert.rejects(rc.call("who"), (e: unknown) => e instanceof ZserverError && e.kind === "disconnected");
      const bob = await connectLogin(address(), { pin: server.fingerprint });
      await bob.login("bob", "bob-password");
      await bob.client.publish(channel, "three");
      await bob.client.publish(channel, "four");
      await bob.push(["ann"], "while you were away");
      bob.close();
      const back = log.until((s) => s.state === "connected", 10_000);
      const gateAt = performance.now();
      openGate();
      const connectedAt = (await back).at;

      const [again, ...missed] = await take(sub, 3);
      assert.equal(again.type, "resubscribed");
      assert.equal((again as { recovered: boolean }).recovered, true);
      assert.deepEqual(missed.map(pub), ["3:bob:three", "4:bob:four"]);
      assert.deepEqual(await ann.nextEvent(5_000), { type: "message", message: { from: "bob", text: "while you were away" } });
      await rc.publish(channel, "five"); // logged in again: publishing is allowed
      assert.deepEqual((await take(sub, 1)).map(pub), ["5:ann:five"]);
      assert.equal(rc.reconnects, 1);

      const seen = log.changes.map((c) => c.state);
      const from = seen.indexOf("disconnected");
      assert.deepEqual([...new Set(seen.slice(from))], ["disconnected", "reconnecting", "connected"] as ConnectionState[]);
      assert.ok(
        log.changes.some((c) => c.state === "reconnecting" && c.error instanceof NothingListeningError),
        `an attempt while nothing listened says so: ${states(log.changes)}`,
      );
      console.log(
        `# ${via}: connection back ${Math.round(dialedAt - upAt)} ms after the restarted server listened; ` +
          `connected (logged in, resubscribed, 2 recovered) ${Math.round(connectedAt - Math.max(gateAt, dialedAt))} ms after both it was back and the test let the login go on`,
      );
      await rc.close();
      assert.equal(rc.state, "disconnected");
      await assert.rejects(rc.call("who"), (e: unknown) => e instanceof ZserverError && e.kind === "closed");
    });

    test("a history lost in the restart: resubscribed with recovered false, then what is new", async () => {
      const rc = reconnecting(address(), { pin: server.fingerprint, heartbeatMs: 2_000, backoff: { initialMs: 50, maxMs: 200 } });
      open.push(rc);
      const log = record(rc);
      const ann = new LoginClient(rc);
      await rc.connected(5_000);
      await ann.login("ann", "ann-password");
      const channel = `mem:lost-${via}`;
      const sub = await rc.subscribe(channel);
      const resubscribed: boolean[] = [];
      sub.on("resubscribed", ({ recovered }) => resubscribed.push(recovered));
      await rc.publish(channel, "before");
      assert.deepEqual((await take(sub, 1)).map(pub), ["1:ann:before"]);
      await server.restart();
      await log.until((s) => s.state === "connected", 10_000);
      assert.deepEqual(resubscribed, [false], "the app is told to reload");
      assert.equal(sub.recovered, false);
      await rc.publish(channel, "after");
      const [next] = await take(sub, 1);
      assert.match(pub(next), /:ann:after$/);
      await rc.close();
    });

    test("a crashed server (SIGKILL): back within the back-off once it listens again", async () => {
      const rc = reconnecting(address(), {
        pin: server.fingerprint,
        heartbeatMs: 2_000,
        backoff: { initialMs: 50, maxMs: 200 },
      });
      open.push(rc);
      const log = record(rc);
      const ann = new LoginClient(rc);
      await rc.connected(5_000);
      await ann.login("ann", "ann-password");
      const down = log.until((s) => s.state === "disconnected", 10_000);
      await server.kill("SIGKILL");
      const lost = await down;
      assert.equal(lost.retrying, true);
      await server.start();
      const upAt = performance.now();
      const back = await log.until((s) => s.state === "connected", 10_000);
      const ms = back.at - upAt;
      console.log(`# ${via}: back ${Math.round(ms)} ms after the crashed server listened again (${lost.error?.message})`);
      assert.ok(ms < 1_000, `${ms} ms`);
      assert.deepEqual(await ann.who(), ["ann"]);
      await rc.close();
    });

    test("a hung server (SIGSTOP) is given up within two heartbeats, and reconnected once it goes on", async () => {
      const heartbeatMs = 300;
      const rc = reconnecting(address(), {
        pin: server.fingerprint,
        heartbeatMs,
        handshakeTimeoutMs: 1_000,
        timeoutMs: 1_000,
        backoff: { initialMs: 50, maxMs: 200 },
      });
      open.push(rc);
      const log = record(rc);
      await rc.connected(5_000);
      await rc.ping();
      const down = log.until((s) => s.state === "disconnected", 5_000);
      const stoppedAt = performance.now();
      process.kill(server.pid, "SIGSTOP");
      let lost;
      try {
        lost = await down;
      } finally {
        process.kill(server.pid, "SIGCONT");
      }
      const ms = lost.at - stoppedAt;
      console.log(`# ${via}: hung server noticed after ${Math.round(ms)} ms (heartbeat ${heartbeatMs} ms): ${lost.error?.message}`);
      assert.equal(lost.error?.kind, "idleTimeout");
      assert.match(lost.error!.message, /nothing heard from the server for \d+ ms.*hung/);
      assert.ok(ms <= 2 * heartbeatMs + 200, `${ms} ms`);
      await log.until((s) => s.state === "connected", 10_000);
      await rc.ping();
      await rc.close();
    });

    test("kicked by the server: its reason in the event, and no coming back", async () => {
      const rc = reconnecting(address(), { pin: server.fingerprint, backoff: { initialMs: 50 } });
      open.push(rc);
      const log = record(rc);
      const ann = new LoginClient(rc);
      await rc.connected(5_000);
      await ann.login("ann", "ann-password");
      const down = log.until((s) => s.state === "disconnected", 10_000);
      // Logins elsewhere until the server ends this, the oldest session (it keeps a few
      // sessions per user at most).
      const others: LoginClient[] = [];
      while (!rc.isClosed && others.length < 32) {
        const other = await connectLogin(address(), { pin: server.fingerprint });
        others.push(other);
        await other.login("ann", "ann-password");
        await sleep(20);
      }
      const lost = await down;
      assert.ok(lost.error instanceof ServerClosedError, `${lost.error}`);
      assert.equal(lost.error.retry, false);
      assert.match(lost.error.message, /^the server closed the connection: kicked: logged in from another connection/);
      assert.equal(lost.retrying, false);
      assert.equal(rc.isClosed, true);
      const kicked = await ann.nextEvent(1_000);
      assert.equal(kicked?.type, "kicked");
      assert.equal(`kicked: ${(kicked as { reason: string }).reason}`, lost.error.reason);
      await sleep(200);
      assert.equal(rc.attempts, 1, "no attempt after being kicked");
      for (const o of others) o.close();
    });
  });
}

describe("connect errors say what happened", { timeout: 60_000 }, () => {
  let server: LoginServer;
  before(async () => {
    server = await startLoginServer({ ws: true });
  });
  after(async () => {
    await server?.stop();
  });
  const ws = () => `ws://${server.ws!.host}:${server.ws!.port}/`;
  const tcpAsWs = () => `ws://${server.addr.host}:${server.addr.port}/`;

  /** A `ws` WebSocket sending an `Origin` header, as a page from elsewhere would. */
  const fromOrigin = (origin: string) =>
    class extends (WebSocketImpl as unknown as new (url: string, options: object) => WebSocketLike) {
      constructor(url: string) {
        super(url, { origin });
      }
    } as unknown as WebSocketConstructor;

  /** A WebSocket that fails as a browser's does: an error event that says nothing. */
  const browserLike = (Base: WebSocketConstructor) =>
    class {
      private readonly ws: WebSocketLike;
      onopen: ((ev: unknown) => void) | null = null;
      onmessage: ((ev: { data: unknown }) => void) | null = null;
      onclose: ((ev: { code?: number; reason?: string; wasClean?: boolean }) => void) | null = null;
      onerror: ((ev: unknown) => void) | null = null;
      constructor(url: string) {
        this.ws = new Base(url);
        this.ws.onopen = (ev) => this.onopen?.(ev);
        this.ws.onmessage = (ev) => this.onmessage?.(ev);
        this.ws.onclose = (ev) => this.onclose?.({ code: ev.code, reason: "", wasClean: ev.wasClean });
        this.ws.onerror = () => this.onerror?.({ type: "error" });
      }
      get binaryType() {
        return this.ws.binaryType;
      }
      set binaryType(t: string) {
        this.ws.binaryType = t;
      }
      get readyState() {
        return this.ws.readyState;
      }
      get bufferedAmount() {
        return this.ws.bufferedAmount;
      }
      send(d: Uint8Array) {
        this.ws.send(d);
      }
      close(code?: number, reason?: string) {
        this.ws.close(code, reason);
      }
    } as unknown as WebSocketConstructor;

  const is = (Class: new (...a: never[]) => ZserverError, kind: string, message: RegExp) => (e: unknown) => {
    assert.ok(e instanceof Class, `not a ${Class.name}: ${e}`);
    assert.equal((e as ZserverError).kind, kind);
    assert.match((e as Error).message, message);
    return true;
  };

  test("nothing listening: TCP and WebSocket, and a reconnecting client that gives up", async () => {
    const port = await freePort();
    const nothing = is(NothingListeningError, "nothingListening", new RegExp(`^nothing is listening at \\S*127\\.0\\.0\\.1:${port}\\S* \\(connection refused\\): is the server running`));
    await assert.rejects(connect(`127.0.0.1:${port}`), nothing);
    await assert.rejects(connect(`ws://127.0.0.1:${port}/`), nothing);
    const rc = reconnecting(`127.0.0.1:${port}`, { backoff: { initialMs: 20, giveUpAfter: 3 } });
    const log = record(rc);
    const end = await log.until((s) => s.state === "disconnected", 5_000);
    assert.equal(end.retrying, false);
    assert.match(end.error!.message, /gave up after 3 failed attempts: nothing is listening at 127\.0\.0\.1:/);
    assert.deepEqual(log.changes.map((c) => c.state), ["connecting", "connecting", "connecting", "disconnected"]);
    assert.ok(log.changes[1].error instanceof NothingListeningError);
    assert.equal(rc.attempts, 3);
    await rc.close();
  });

  test("a WebSocket to the TCP port: not a WebSocket port", async () => {
    await assert.rejects(
      connectWebSocketNode(tcpAsWs(), { pin: server.fingerprint }),
      is(NotWebSocketError, "notWebSocket", /did not answer as a WebSocket server \(its answer is not HTTP.*\): is it the server's --listen \(TCP\) port rather than its --listen-ws one\?/),
    );
  });

  test("a page from another origin: refused with 403, and what to do", async () => {
    await assert.rejects(
      connectWebSocketNode(ws(), { pin: server.fingerprint, WebSocket: fromOrigin("http://elsewhere.example") }),
      is(OriginRefusedError, "originRefused", /refused this page's origin with HTTP 403: start the server with --allowed-origin/),
    );
    // Allowed from its own origin (host and port as the Host header).
    const own = await connectWebSocketNode(ws(), { pin: server.fingerprint, WebSocket: fromOrigin(`http://${server.ws!.host}:${server.ws!.port}`) });
    own.close();
  });

  test("a WebSocket that says nothing (a browser's): the address asked over HTTP tells which", async () => {
    const mute = browserLike(fromOrigin("http://elsewhere.example"));
    await assert.rejects(
      connectWebSocketNode(ws(), { WebSocket: mute }),
      is(OriginRefusedError, "originRefused", /the browser gives no reason; an HTTP server answers there/),
    );
    const port = await freePort();
    await assert.rejects(connectWebSocketNode(`ws://127.0.0.1:${port}/`, { WebSocket: mute }), is(NothingListeningError, "nothingListening", /nothing is listening/));
    await assert.rejects(connectWebSocketNode(tcpAsWs(), { WebSocket: mute }), is(NotWebSocketError, "notWebSocket", /not a WebSocket|did not answer as a WebSocket/));
    await assert.rejects(connectWebSocketNode(ws(), { WebSocket: mute, diagnose: false }), is(ZserverError, "io", /failed \(no reason given\)/));
  });
});
