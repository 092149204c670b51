// A hostile or broken server: garbage, oversized lengths, tampered records, silence. The
// client must fail with a clear error, never hang or buffer without bound.
import assert from "node:assert/strict";
import { createServer, type Server, type Socket, connect as netConnect } from "node:net";
import { after, before, describe, test } from "node:test";

import { Client, type Transport, ZserverError } from "@zserver/client";
import { connectTcp, connectWebSocketNode, openTcp } from "@zserver/client/node";
import { type WebSocket, WebSocketServer } from "ws";

import { encodeFrame } from "../dist/frame.js";
import { sleep } from "./connect.js";
import { type Peer, startPeer } from "./servers.js";

const PLAIN = Uint8Array.of(0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 0);
const ENCRYPTED = Uint8Array.of(0x5a, 0x53, 0x52, 0x56, 1, 0, 1, 0);
const isKind = (kind: string, message?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ZserverError, `not a ZserverError: ${e}`);
  assert.equal(e.kind, kind, `${e.kind}: ${e.message}`);
  if (message) assert.match(e.message, message);
  return true;
};

/** A TCP server on 127.0.0.1 that runs `script` on each connection; resolves with its port. */
async function fake(script: (s: Socket) => void): Promise<{ port: number; server: Server }> {
  const server = createServer((s) => {
    s.on("error", () => {});
    script(s);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { port: (server.address() as { port: number }).port, server };
}

/** Collects what a socket receives. */
function received(s: Socket): { bytes: () => Buffer } {
  const parts: Buffer[] = [];
  s.on("data", (d) => parts.push(d));
  return { bytes: () => Buffer.concat(parts) };
}

describe("a hostile server", { timeout: 60_000 }, () => {
  const servers: Server[] = [];
  const serve = async (script: (s: Socket) => void) => {
    const f = await fake(script);
    servers.push(f.server);
    return f.port;
  };
  let peer: Peer;
  before(async () => {
    peer = await startPeer();
  });
  after(async () => {
    for (const s of servers) s.close();
    await peer?.stop();
  });

  test("garbage instead of a preamble", async () => {
    const port = await serve((s) => s.end("HTTP/1.1 400 Bad Request\r\n\r\n"));
    await assert.rejects(connectTcp("127.0.0.1", port), isKind("protocol", /not a zserver preamble/));
  });

  test("another protocol version", async () => {
    const port = await serve((s) => s.write(Uint8Array.of(0x5a, 0x53, 0x52, 0x56, 2, 0, 1, 0)));
    await assert.rejects(connectTcp("127.0.0.1", port), isKind("protocol", /version 2/));
  });

  test("a handshake message longer than the limit", async () => {
    const port = await serve((s) => s.write(Buffer.concat([ENCRYPTED, Buffer.from([0xff, 0xff])])));
    await assert.rejects(connectTcp("127.0.0.1", port), isKind("handshake", /exceeds 1024/));
  });

  test("a forged handshake message 2", async () => {
    const port = await serve((s) => {
      s.write(ENCRYPTED);
      s.write(Buffer.concat([Buffer.from([96, 0]), Buffer.alloc(96, 0x41)]));
    });
    await assert.rejects(connectTcp("127.0.0.1", port), isKind("handshake"));
  });

  test("a server that closes during the handshake", async () => {
    const port = await serve((s) => s.end(ENCRYPTED));
    await assert.rejects(connectTcp("127.0.0.1", port), isKind("handshake", /closed/));
  });

  test("a silent server: the handshake times out", async () => {
    const port = await serve(() => {});
    await assert.rejects(connectTcp("127.0.0.1", port, { handshakeTimeoutMs: 300 }), isKind("timeout"));
  });

  test("an oversized frame length closes the connection, failing the call", async () => {
    const port = await serve((s) => {
      s.write(PLAIN);
      s.once("data", () => s.write(Uint8Array.of(0xff, 0xff, 0xff, 0xff)));
    });
    const client = await connectTcp("127.0.0.1", port, { encrypted: false });
    await assert.rejects(client.call("x"), isKind("closed", /exceeds the limit/));
    assert.ok(isKind("protocol")(await client.closed));
  });

  test("an unknown frame kind and a bad stream frame are protocol errors", async () => {
    for (const frame of [
      [4, 0, 0, 0, 12, 0, 0, 0], // kind 12
      [4, 0, 0, 0, 7, 3, 1, 0], // Data with both direction flags
      [5, 0, 0, 0, 10, 2, 1, 0, 1], // Credit of 1 byte
    ]) {
      const port = await serve((s) => {
        s.write(PLAIN);
        s.write(Uint8Array.from(frame));
      });
      const client = await connectTcp("127.0.0.1", port, { encrypted: false });
      assert.ok(isKind("protocol")(await client.closed));
    }
  });

  test("pings are answered; a silent server is pinged, then dropped as idle", async () => {
    let got: { bytes: () => Buffer } | undefined;
    const port = await serve((s) => {
      got = received(s);
      s.write(PLAIN);
      s.write(Uint8Array.of(4, 0, 0, 0, 4, 0, 5, 0)); // Ping id 5
    });
    const client = await connectTcp("127.0.0.1", port, { encrypted: false, heartbeatMs: 100, idleTimeoutMs: 600 });
    const why = await client.closed;
    assert.ok(isKind("idleTimeout")(why));
    const bytes = got!.bytes();
    assert.deepEqual([...bytes.subarray(0, 8)], [...PLAIN]);
    assert.deepEqual([...bytes.subarray(8, 16)], [4, 0, 0, 0, 5, 0, 5, 0], "Pong with id 5");
    assert.deepEqual([...bytes.subarray(16, 24)], [4, 0, 0, 0, 4, 0, 0, 0], "heartbeat Ping with id 0");
  });

  test("a flood of calls runs at most maxHandlers handlers at once; the rest wait unread", async () => {
    const calls = 1000;
    let answered = 0;
    let allAnswered: () => void = () => {};
    const done = new Promise<void>((r) => (allAnswered = r));
    const port = await serve((s) => {
      s.write(PLAIN);
      const frames = [];
      for (let id = 1; id <= calls; id++) frames.push(encodeFrame(0, 0, id, new TextEncoder().encode("slow"), new Uint8Array(0)));
      s.write(Buffer.concat(frames));
      let got = Buffer.alloc(0);
      s.on("data", (d) => {
        got = Buffer.concat([got, d]);
        // Count Reply frames (kind 2) after the 8-byte preamble.
        let at = answered === 0 && got.length >= 8 && got[0] === 0x5a ? 8 : 0;
        while (got.length - at >= 4 && got.length - at >= 4 + got.readUInt32LE(at)) {
          if (got[at + 4] === 2) answered++;
          at += 4 + got.readUInt32LE(at);
        }
        got = got.subarray(at);
        if (answered === calls) allAnswered();
      });
    });
    const waiting: (() => void)[] = [];
    let started = 0;
    const client = await connectTcp("127.0.0.1", port, { encrypted: false, maxHandlers: 16 }, {
      slow: () => {
        started++;
        return new Promise<void>((r) => waiting.push(r));
      },
    });
    await sleep(200);
    assert.equal(started, 16, "only maxHandlers handlers run");
    while (answered < calls) {
      for (const release of waiting.splice(0)) release();
      await sleep(5);
    }
    await done;
    assert.equal(started, calls);
    client.close();
  });

  /** A proxy to the real peer that hands the server's bytes to `tamper` after the handshake. */
  async function proxy(tamper: (chunk: Buffer, offset: number) => Buffer): Promise<number> {
    const handshake = 8 + 2 + 96; // preamble and message 2 from the server
    return serve((client) => {
      const upstream = netConnect(peer.encrypted.port, peer.encrypted.host);
      upstream.on("error", () => client.destroy());
      let seen = 0;
      client.on("data", (d) => upstream.write(d));
      upstream.on("data", (d: Buffer) => {
        const start = seen;
        seen += d.length;
        if (seen <= handshake) return void client.write(d);
        const cut = Math.max(0, handshake - start);
        client.write(d.subarray(0, cut));
        client.write(tamper(d.subarray(cut), start + cut - handshake));
      });
      client.on("close", () => upstream.destroy());
      upstream.on("close", () => client.destroy());
    });
  }

  test("a tampered record fails authentication and closes the connection", async () => {
    const port = await proxy((chunk, offset) => {
      const out = Buffer.from(chunk);
      if (offset <= 8 && offset + out.length > 8) out[8 - offset] ^= 0x01; // inside the first record's ciphertext
      return out;
    });
    const client = await connectTcp("127.0.0.1", port, { pin: peer.fingerprint });
    await assert.rejects(client.console("hello", "x"), isKind("closed", /failed authentication/));
    assert.ok(isKind("auth")(await client.closed));
  });

  test("an impossible record length is refused before buffering", async () => {
    const port = await proxy((chunk, offset) => (offset === 0 ? Buffer.from([0xff, 0xff, 0xff, 0x7f, 0]) : chunk.subarray(0, 0)));
    const client = await connectTcp("127.0.0.1", port, { pin: peer.fingerprint });
    await assert.rejects(client.console("hello", "x"), isKind("closed", /record length/));
  });

  test("bytes that complete a record while the client looks at it are not left waiting", async () => {
    // Each chunk is handed over in two synchronous halves (as a WebSocket delivers several
    // messages in one task): the second half lands while the first one's record is checked.
    const inner = await openTcp(peer.encrypted.host, peer.encrypted.port);
    const halves: Transport = {
      kind: "halves",
      start: (events) =>
        inner.start({
          data: (chunk) => {
            const mid = chunk.length >> 1;
            events.data(chunk.subarray(0, mid));
            events.data(chunk.subarray(mid));
          },
          close: (e) => events.close(e),
        }),
      write: (d) => inner.write(d),
      pause: () => inner.pause(),
      resume: () => inner.resume(),
      close: () => inner.close(),
    };
    const client = await Client.connect(halves, { pin: peer.fingerprint });
    for (let i = 0; i < 20; i++) {
      const answer = client.console("hello", `${i}`, { timeoutMs: 5_000 });
      assert.equal(await answer, `hello, ${i}`);
    }
    client.close();
  });

  test("the real peer still serves after all that", async () => {
    const client = await connectTcp(peer.encrypted.host, peer.encrypted.port, { pin: peer.fingerprint });
    assert.equal(await client.console("hello", "ok"), "hello, ok");
    client.close();
    await sleep(10);
  });
});

describe("a hostile WebSocket server", { timeout: 30_000 }, () => {
  let server: WebSocketServer;
  let script: (ws: WebSocket) => void = () => {};
  let url = "";
  before(async () => {
    server = new WebSocketServer({ host: "127.0.0.1", port: 0 });
    server.on("connection", (ws) => script(ws));
    await new Promise<void>((r) => server.once("listening", () => r()));
    url = `ws://127.0.0.1:${(server.address() as { port: number }).port}/`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  test("a text message is refused", async () => {
    script = (ws) => ws.send("ZSRV hello");
    await assert.rejects(connectWebSocketNode(url), isKind("handshake", /text WebSocket message/));
  });

  test("garbage in binary messages is refused", async () => {
    script = (ws) => ws.send(Buffer.from("GET / HTTP/1.1\r\n"));
    await assert.rejects(connectWebSocketNode(url), isKind("protocol", /not a zserver preamble/));
  });

  test("the preamble in one-byte messages is reassembled (boundaries carry no meaning)", async () => {
    script = (ws) => {
      for (const b of PLAIN) ws.send(Uint8Array.of(b));
      for (const b of [4, 0, 0, 0, 4, 0, 9, 0]) ws.send(Uint8Array.of(b)); // Ping id 9
      ws.on("message", (d: Buffer) => {
        if (d.length >= 8 && d.subarray(-8).equals(Buffer.from([4, 0, 0, 0, 5, 0, 9, 0]))) ws.close(1000);
      });
    };
    const client = await connectWebSocketNode(url, { encrypted: false });
    // The server closes cleanly once it got the Pong for its Ping.
    const why = await client.closed;
    assert.ok(why?.kind === "closed", String(why));
  });
});
