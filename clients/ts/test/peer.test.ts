// The client against the real Rust engine (examples/interop_peer.rs): handshake and
// pinning, calls and sends both ways, rekeying both ways, streams. Over TCP, and over
// WebSocket when the peer offers it.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { blake3 } from "@noble/hashes/blake3.js";
import { PostcardReader, PostcardWriter, ZserverError } from "@zserver/client";

import { connectVia, type Via } from "./connect.js";
import { type Peer, startPeer } from "./servers.js";

const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);
const isKind = (kind: string) => (e: unknown) => e instanceof ZserverError && e.kind === kind;

/** What `blob` sends: byte i is (i * 7 + i / 256) mod 256. */
function blob(from: number, to: number): Uint8Array {
  const out = new Uint8Array(to - from);
  for (let i = from; i < to; i++) out[i - from] = (i * 7 + Math.floor(i / 256)) & 0xff;
  return out;
}

const VIAS: Via[] = ["tcp", "websocket"];

for (const via of VIAS) {
  describe(`against the Rust engine over ${via}`, { timeout: 120_000 }, () => {
    let peer: Peer;
    let rekeying: Peer;
    // The addresses of this transport.
    const enc = (p: Peer) => (via === "tcp" ? p.encrypted : p.encryptedWs);
    const plainOf = (p: Peer) => (via === "tcp" ? p.plain : p.plainWs);
    before(async () => {
      peer = await startPeer();
      rekeying = await startPeer({ rekeyRecords: 3 });
    });
    after(async () => {
      await peer?.stop();
      await rekeying?.stop();
    });

    test("handshake: the pinned server is accepted, another key is refused", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
      assert.equal(client.fingerprint, peer.fingerprint);
      assert.equal(await client.console("hello", "pinned"), "hello, pinned");
      client.close();
      assert.equal(await client.closed, undefined);
      // The other peer's key is a valid key, just not this server's.
      await assert.rejects(connectVia(via, enc(peer), { pin: rekeying.fingerprint }), (e: unknown) => {
        assert.ok(isKind("keyMismatch")(e), String(e));
        assert.match((e as Error).message, new RegExp(peer.fingerprint));
        return true;
      });
      await assert.rejects(connectVia(via, enc(peer), { pin: "not hex" }), isKind("handshake"));
    });

    test("calls: stream, console, typed, errors with their kinds", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
      for (const n of [0, 1, 1000, 100_000, 3_000_000]) {
        const payload = randomBytes(n);
        assert.deepEqual(Buffer.from(await client.call("echo", payload)), payload, `echo of ${n} bytes`);
      }
      assert.equal(await client.console("hello", "wörld"), "hello, wörld");
      const sum = await client.call("add", new PostcardWriter().i64(2).i64(-3).finish());
      assert.equal(new PostcardReader(sum).i64(), -1);
      await assert.rejects(client.console("fail", ""), (e: unknown) => {
        assert.ok(isKind("remote")(e));
        assert.match((e as Error).message, /always fails/);
        return true;
      });
      await assert.rejects(client.call("nope"), (e: unknown) => isKind("unknownCommand")(e) && /nope/.test(String(e)));
      await assert.rejects(client.call("add", utf8("x")), isKind("badRequest"));
      // Larger than the frame limit: refused locally, and the connection stays up.
      await assert.rejects(client.call("echo", new Uint8Array(4 * 1024 * 1024)), isKind("frameTooLarge"));
      // Many calls in flight at once, answers matched by id.
      const replies = await Promise.all(
        Array.from({ length: 500 }, (_, i) => client.console("hello", String(i))),
      );
      replies.forEach((r, i) => assert.equal(r, `hello, ${i}`));
      assert.ok((await client.ping()) >= 0);
      client.close();
    });

    test("one-way sends arrive in order before a later call", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
      const before = new PostcardReader(await client.call("count")).u64();
      for (let i = 0; i < 300; i++) await client.send("sink", utf8(`m${i}`));
      const after = new PostcardReader(await client.call("count")).u64();
      assert.equal(after - before, 300);
      client.close();
    });

    test("the server calls and pushes to handlers the client registered", async () => {
      const notes: string[] = [];
      let noted: () => void = () => {};
      const gotNote = new Promise<void>((r) => (noted = r));
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint }, {
        note: (payload, ctx) => {
          assert.equal(ctx.oneWay, true);
          notes.push(text(payload));
          noted();
        },
      });
      client.handleConsole("whoami", (t, ctx) => {
        assert.equal(ctx.oneWay, false);
        return `a TypeScript client (${t})`;
      });
      client.handle("refuse", () => {
        throw new ZserverError("denied", "not you");
      });
      client.handle("crash", () => {
        throw new Error("handler bug");
      });
      assert.equal(await client.console("call-me-back", "whoami"), "client answered: a TypeScript client (from the server)");
      assert.match(await client.console("call-me-back", "missing"), /client failed: .*missing/);
      assert.match(await client.console("call-me-back", "refuse"), /client failed: .*not you/);
      assert.match(await client.console("call-me-back", "crash"), /client failed: .*handler bug/);
      await client.console("push-me", "pushed text");
      await gotNote;
      assert.deepEqual(notes, ["pushed text"]);
      client.close();
    });

    test("plain trusted-link mode, and a mode mismatch is refused", async () => {
      const plain = await connectVia(via, plainOf(peer), { encrypted: false });
      assert.equal(plain.fingerprint, undefined);
      assert.equal(await plain.console("hello", "plain"), "hello, plain");
      plain.close();
      await assert.rejects(connectVia(via, plainOf(peer), {}), isKind("handshake"));
      await assert.rejects(connectVia(via, enc(peer), { encrypted: false }), isKind("handshake"));
    });

    test("rekeying: the client rekeys by its own limits and the server follows", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint, rekey: { records: 3 } });
      for (let i = 0; i < 40; i++) assert.equal(await client.console("hello", `${i}`), `hello, ${i}`);
      const sent = client.stats().rekeysSent;
      assert.ok(sent >= 12, `client rekeyed ${sent} times`);
      const [followed] = readPair(await client.call("rekeys"));
      assert.ok(followed >= sent - 1, `server followed ${followed} of ${sent} rekeys`);
      client.close();
    });

    test("rekeying: the client follows the server's rekeys", async () => {
      const client = await connectVia(via, enc(rekeying), { pin: rekeying.fingerprint });
      for (let i = 0; i < 40; i++) assert.equal(await client.console("hello", `${i}`), `hello, ${i}`);
      const [, serverRekeys] = readPair(await client.call("rekeys"));
      const followed = client.stats().rekeysReceived;
      assert.ok(serverRekeys >= 12, `server rekeyed ${serverRekeys} times`);
      assert.ok(followed >= serverRekeys, `client followed ${followed} of ${serverRekeys}`);
      // Big transfers across rekeys too.
      const payload = randomBytes(2_000_000);
      assert.deepEqual(Buffer.from(await client.call("echo", payload)), payload);
      client.close();
    });

    test("upload: credit, progress and the server's BLAKE3 check", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
      const data = randomBytes(5 * 1024 * 1024 + 123);
      const seen: number[] = [];
      const reply = await client.upload("store", "meta", data, { onProgress: (done, total) => {
        assert.equal(total, data.length);
        seen.push(done);
      } });
      assert.deepEqual(reply.subarray(0, 32), blake3(data));
      assert.equal(Number(new DataView(reply.buffer, reply.byteOffset + 32, 8).getBigUint64(0, true)), data.length);
      assert.equal(seen.at(-1), data.length);
      assert.ok(seen.every((v, i) => i === 0 || v > seen[i - 1]), "progress only grows");
      // From an async iterable, length unknown up front.
      async function* parts() {
        for (let i = 0; i < 40; i++) yield new Uint8Array(50_000).fill(i);
      }
      const r2 = await client.upload("store", "", parts());
      assert.equal(Number(new DataView(r2.buffer, r2.byteOffset + 32, 8).getBigUint64(0, true)), 2_000_000);
      // A source shorter than announced is aborted, not ended.
      await assert.rejects(client.upload("store", "", utf8("short"), { total: 10 }), isKind("streamAborted"));
      // A stream to a plain command is refused by the server.
      await assert.rejects(client.upload("echo", "", utf8("x")), isKind("badRequest"));
      assert.equal(await client.console("hello", "still up"), "hello, still up");
      client.close();
    });

    test("download: progress, resume from an offset, hash checked", async () => {
      const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
      const n = 3 * 1024 * 1024 + 5;
      let last = 0;
      const d = await client.download("blob", String(n), { onProgress: (done, total) => {
        assert.equal(total, n);
        last = done;
      } });
      assert.equal(d.total, n);
      assert.deepEqual(await d.readAll(), blob(0, n));
      assert.equal(last, n);
      const tail = await (await client.download("blob", String(n), { offset: 1_000_000 })).readAll();
      assert.deepEqual(tail, blob(1_000_000, n));
      // Read chunk by chunk, stopping early: the rest is cancelled and the connection lives.
      const big = await client.download("blob", String(20 * 1024 * 1024));
      let got = 0;
      for await (const chunk of big) {
        got += chunk.length;
        if (got > 1_000_000) break;
      }
      assert.equal(await client.console("hello", "after"), "hello, after");
      await assert.rejects(client.download("blob", "not a number"), isKind("badRequest"));
      await assert.rejects(client.download("echo", ""), isKind("badRequest"));
      client.close();
    });

    test("back-to-back downloads never stall (records split across messages in one task)", async () => {
      // A regression test: bytes completing a record arrived while the client was still
      // looking at the incomplete one, and waited for the next heartbeat (30 s).
      for (let round = 0; round < 20; round++) {
        const client = await connectVia(via, enc(peer), { pin: peer.fingerprint });
        const n = 1024 * 1024 + round;
        const read = (await client.download("blob", String(n))).readAll();
        let timer: ReturnType<typeof setTimeout> | undefined;
        const stall = new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`round ${round} stalled`)), 5_000);
        });
        assert.equal((await Promise.race([read, stall])).length, n);
        clearTimeout(timer);
        client.close();
      }
    });
  });
}

function readPair(b: Uint8Array): [number, number] {
  const r = new PostcardReader(b);
  const pair: [number, number] = [r.u64(), r.u64()];
  r.end();
  return pair;
}
