// The byte-exact parts without a server: postcard, frames (PROTOCOL.md section 9's
// examples), records and rekeying, stream integrity.
import assert from "node:assert/strict";
import { test } from "node:test";

import { PostcardReader, PostcardWriter, ZserverError } from "@zserver/client";
import { decodeBody, encodeFrame, FrameReader, Kind } from "../dist/frame.js";
import { Opener, Sealer } from "../dist/record.js";
import { Inbound, encodeHead } from "../dist/stream.js";
import { createHasher } from "../dist/hash.js";
import { blake3 } from "@noble/hashes/blake3.js";

const hex = (s: string) => Uint8Array.from(s.replace(/[^0-9a-f]/g, "").match(/../g)!.map((b) => parseInt(b, 16)));
const utf8 = (s: string) => new TextEncoder().encode(s);

test("varints match the protocol's table", () => {
  const cases: [number | bigint, string][] = [
    [0, "00"],
    [1, "01"],
    [127, "7f"],
    [128, "80 01"],
    [255, "ff 01"],
    [300, "ac 02"],
    [2n ** 64n - 1n, "ff ff ff ff ff ff ff ff ff 01"],
  ];
  for (const [v, bytes] of cases) {
    const enc = new PostcardWriter().varint(v).finish();
    assert.deepEqual(enc, hex(bytes), `encode ${v}`);
    assert.equal(BigInt(new PostcardReader(enc).varintAny()), BigInt(v), `decode ${v}`);
  }
  // Too long, and a 10th byte over 01, are malformed.
  assert.throws(() => new PostcardReader(hex("ff ff ff ff ff ff ff ff ff 02")).varintAny(), ZserverError);
  assert.throws(() => new PostcardReader(hex("80 80 80 80 80 80 80 80 80 80 01")).varintAny(), ZserverError);
});

test("postcard values match the protocol's examples", () => {
  assert.deepEqual(new PostcardWriter().i64(2).i64(-3).finish(), hex("04 05"));
  assert.deepEqual(new PostcardWriter().i64(-1).finish(), hex("01"));
  assert.deepEqual(new PostcardWriter().string("hi").finish(), hex("02 68 69"));
  const r = new PostcardReader(hex("04 05"));
  assert.equal(r.i64(), 2);
  assert.equal(r.i64(), -3);
  r.end();
  // A sequence count larger than the bytes left fails before looping.
  assert.throws(() => new PostcardReader(hex("ff ff ff ff 0f")).seq((r) => r.string()), /runs past the end/);
  assert.deepEqual(encodeHead(5, utf8("a")), hex("01 05 01 61"));
});

test("frames are the exact bytes of PROTOCOL.md section 9", () => {
  const frame = (k: number, f: number, id: number, cmd: string, p: string | Uint8Array = "") =>
    encodeFrame(k, f, id, utf8(cmd), typeof p === "string" ? utf8(p) : p);
  assert.deepEqual(frame(Kind.Call, 0, 1, "echo", "hi"), hex("0a 00 00 00 | 00 | 00 | 01 | 04 65 63 68 6f | 68 69"));
  assert.deepEqual(frame(Kind.Reply, 0, 1, "", "hi"), hex("06 00 00 00 02 00 01 00 68 69"));
  assert.deepEqual(frame(Kind.Ping, 0, 3, ""), hex("04 00 00 00 04 00 03 00"));
  assert.deepEqual(frame(Kind.Send, 0, 0, "log", "x"), hex("08 00 00 00 01 00 00 03 6c 6f 67 78"));
  assert.deepEqual(frame(Kind.Call, 0, 300, "a"), hex("06 00 00 00 00 00 ac 02 01 61"));
  assert.deepEqual(frame(Kind.Call, 1, 7, "put", encodeHead(5, utf8("a"))), hex("0b 00 00 00 00 01 07 03 70 75 74 01 05 01 61"));
  const err = decodeBody(hex("03 00 02 01 32 6e 6f 70 65"));
  assert.equal(err.kind, Kind.Error);
  assert.equal(err.id, 2);
  assert.equal(err.command, "2");
  assert.deepEqual(err.payload, utf8("nope"));
});

test("the frame reader bounds lengths and refuses bad headers", () => {
  const r = new FrameReader(1024);
  r.push(hex("01 04 00 00")); // 1025 bytes announced
  assert.throws(() => r.next(), /exceeds the limit/);
  const kind = new FrameReader(1024);
  kind.push(hex("04 00 00 00 0c 00 00 00")); // kind 12
  assert.throws(() => kind.next(), /unknown frame kind/);
  const short = new FrameReader(1024);
  short.push(hex("03 00 00 00 00 00 00"));
  assert.throws(() => short.next(), /below the 4-byte minimum/);
  const cmd = new FrameReader(1024);
  cmd.push(hex("05 00 00 00 00 00 01 09 61")); // command of 9 bytes in a 5-byte body
  assert.throws(() => cmd.next(), /command runs past the frame|malformed/);
  // A frame split across many pushes comes out whole.
  const whole = encodeFrame(Kind.Call, 0, 1, utf8("echo"), new Uint8Array(300).fill(7));
  const split = new FrameReader(1024);
  for (const b of whole) {
    assert.equal(split.next(), undefined);
    split.push(Uint8Array.of(b));
  }
  const f = split.next()!;
  assert.equal(f.command, "echo");
  assert.equal(f.payload.length, 300);
});

for (const provider of ["webcrypto", "noble"] as const) {
  test(`records round-trip, rekey in step and refuse tampering (${provider})`, async () => {
    const key = new Uint8Array(32).fill(3);
    const policy = { bytes: 100_000, records: 5, intervalMs: 60_000 };
    const sealer = await Sealer.create(key, policy, provider);
    const opener = await Opener.create(key, provider);
    for (let i = 0; i < 40; i++) {
      const msg = new Uint8Array(30_000 * (1 + (i % 3))).fill(i);
      for (const part of await sealer.seal(msg)) opener.push(part);
      const plain = await opener.next();
      assert.deepEqual(plain, msg);
    }
    assert.ok(sealer.rekeys >= 10, `${sealer.rekeys} rekeys`);
    assert.equal(opener.rekeys, sealer.rekeys);
    // A flipped bit fails authentication; so does a replayed record.
    const [h, body] = await sealer.seal(utf8("two"));
    const replay = [h, body.slice()];
    body[0] ^= 1;
    opener.push(h);
    opener.push(body);
    await assert.rejects(opener.next(), (e: ZserverError) => e.kind === "auth");
    const fresh = await Opener.create(key, provider);
    const [h1, b1] = await (await Sealer.create(key, policy, provider)).seal(utf8("one"));
    fresh.push(h1);
    fresh.push(b1);
    assert.deepEqual(await fresh.next(), utf8("one"));
    fresh.push(h1);
    fresh.push(b1);
    await assert.rejects(fresh.next(), (e: ZserverError) => e.kind === "auth");
    void replay;
  });
}

test("record lengths and kinds are checked before the body is buffered", async () => {
  const o = await Opener.create(new Uint8Array(32));
  o.push(hex("ff ff ff ff 00"));
  await assert.rejects(o.next(), /record length 4294967295 is out of range/);
  const k = await Opener.create(new Uint8Array(32));
  k.push(hex("10 00 00 00 09"));
  await assert.rejects(k.next(), /unknown record kind 9/);
});

test("a download whose End hash or length does not match fails with integrity", async () => {
  const sent: number[] = [];
  const host = { frame: (kind: number) => void sent.push(kind), writable: async () => {}, forget: () => {} };
  const bad = new Inbound(host, 1, 1 << 20, await createHasher());
  bad.onData(utf8("hello"));
  bad.onEnd(new Uint8Array(32));
  assert.deepEqual(await bad.next(), utf8("hello"));
  await assert.rejects(bad.next(), (e: ZserverError) => e.kind === "integrity");
  const short = new Inbound(host, 2, 1 << 20, await createHasher());
  short.total = 6;
  short.onData(utf8("hello"));
  short.onEnd(blake3(utf8("hello")));
  await short.next();
  await assert.rejects(short.next(), /not the announced 6/);
  const good = new Inbound(host, 3, 1 << 20, await createHasher());
  good.onData(utf8("hello"));
  good.onEnd(blake3(utf8("hello")));
  assert.deepEqual(await good.next(), utf8("hello"));
  assert.equal(await good.next(), undefined);
  // More data than the credit allows breaks the protocol.
  const greedy = new Inbound(host, 4, 1 << 20, await createHasher());
  assert.throws(() => greedy.onData(new Uint8Array(256 * 1024 + 1)), /beyond the window/);
});

test("error codes keep their kind both ways, rate limits (code 9) among them", () => {
  const limited = ZserverError.fromWire("9", "rate limited, retry after 250 ms");
  assert.equal(limited.kind, "rateLimited");
  assert.equal(limited.code, 9);
  assert.equal(ZserverError.fromWire("8", "x").kind, "limit");
  assert.equal(ZserverError.fromWire("42", "x").kind, "remote");
});
