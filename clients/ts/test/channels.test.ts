// Channels (docs/PROTOCOL.md, section 6c): the client's ordering rule against a scripted
// server, byte for byte, then everything against the real Rust server
// (examples/interop_peer.rs: `chat:` keeps 5 publications, with presence and join/leave
// events, publications up to 1 KiB; `news:` only the server publishes; `live:` keeps no
// history), over TCP and WebSocket, encrypted and plain.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  type ChannelEvent,
  Client,
  type Position,
  type Subscription,
  type Transport,
  type TransportEvents,
  ZserverError,
} from "@zserver/client";

import { encodeFrame, FrameReader, Kind } from "../dist/frame.js";
import { connectVia, sleep, type Via } from "./connect.js";
import { type Addr, type Peer, startPeer } from "./servers.js";

const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);
const hex = (s: string) => Uint8Array.from(s.trim().split(/\s+/).map((h) => parseInt(h, 16)));
const isKind = (kind: string, message?: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ZserverError, `not a ZserverError: ${e}`);
  assert.equal(e.kind, kind, `${e.kind}: ${e.message}`);
  if (message) assert.match(e.message, message);
  return true;
};

/** The next `n` events of `sub` (each within 5 s). */
async function take(sub: Subscription, n: number): Promise<ChannelEvent[]> {
  const out: ChannelEvent[] = [];
  for (let i = 0; i < n; i++) {
    const e = await sub.next(5_000);
    assert.ok(e, `the subscription to ${sub.channel} ended after ${i} of ${n} events`);
    out.push(e);
  }
  return out;
}

/** The publications among `events` as `offset:from:data`. */
function pubs(events: ChannelEvent[]): string[] {
  return events.map((e) => {
    assert.equal(e.type, "publication", `not a publication: ${JSON.stringify(e, (_, v) => (typeof v === "bigint" ? `${v}n` : v))}`);
    const p = (e as Extract<ChannelEvent, { type: "publication" }>).publication;
    return `${p.offset}:${p.from}:${text(p.data)}`;
  });
}

/** Nothing more arrives on `sub` within `ms`. */
async function quiet(sub: Subscription, ms = 150): Promise<void> {
  await assert.rejects(sub.next(ms), isKind("timeout"));
}

/** A transport whose far end is a script: it sees the client's frames and answers with bytes. */
class ScriptedServer implements Transport {
  readonly kind = "scripted";
  private events: TransportEvents | undefined;
  private readonly frames = new FrameReader(1 << 20);
  private preambleLeft = 8;
  private readonly waiting: ((f: ReturnType<FrameReader["next"]>) => void)[] = [];
  private readonly got: NonNullable<ReturnType<FrameReader["next"]>>[] = [];
  /** Every byte the client wrote after its preamble. */
  readonly written: number[] = [];

  start(events: TransportEvents): void {
    this.events = events;
    // The server's preamble: plain (trusted link), version 1.
    queueMicrotask(() => events.data(Uint8Array.of(0x5a, 0x53, 0x52, 0x56, 1, 0, 0, 0)));
  }
  write(data: Uint8Array): void {
    let b = data;
    if (this.preambleLeft > 0) {
      const n = Math.min(this.preambleLeft, b.length);
      this.preambleLeft -= n;
      b = b.subarray(n);
    }
    this.written.push(...b);
    this.frames.push(b.slice());
    for (let f = this.frames.next(); f; f = this.frames.next()) {
      const w = this.waiting.shift();
      if (w) w(f);
      else this.got.push(f);
    }
  }
  pause(): void {}
  resume(): void {}
  close(): void {
    this.events?.close();
  }
  /** The client's next frame. */
  frame(): Promise<NonNullable<ReturnType<FrameReader["next"]>>> {
    const f = this.got.shift();
    if (f) return Promise.resolve(f);
    return new Promise((r) => this.waiting.push((f) => r(f!)));
  }
  /** Bytes from the server, all in one chunk. */
  send(...chunks: Uint8Array[]): void {
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let at = 0;
    for (const c of chunks) {
      all.set(c, at);
      at += c.length;
    }
    this.events!.data(all);
  }
}

const delivery = (channel: string, offset: number, from: string, data: string) => {
  const c = utf8(channel);
  const f = utf8(from);
  const d = utf8(data);
  // offset < 128 in these tests: one varint byte.
  const payload = Uint8Array.of(c.length, ...c, offset, f.length, ...f, d.length, ...d);
  return encodeFrame(Kind.Send, 0, 0, utf8("$ch.p"), payload);
};

describe("channels against a scripted server", () => {
  test("the documented example, and deliveries racing the answer are held, then deduplicated", async () => {
    const server = new ScriptedServer();
    const client = await Client.connect(server, { encrypted: false, heartbeatMs: 0, idleTimeoutMs: 0 });
    const subscribing = client.subscribe("chat:a", { since: { epoch: 7n, offset: 2n } });
    const call = await server.frame();
    // Section 6c's example Call, byte for byte.
    assert.deepEqual(
      Uint8Array.from(server.written.slice(0, 25)),
      hex("15 00 00 00 00 00 01 07 24 63 68 2e 73 75 62 06 63 68 61 74 3a 61 01 07 02"),
    );
    assert.equal(call.command, "$ch.sub");
    // Before the answer: a repeat of what the answer recovers (3), a newer one (5, after
    // the answer's position 4), a join; then the answer (the example's reply, but
    // recovering 3 and 4 and at position 4); then 5 again and 6.
    const member = Uint8Array.of(6, ...utf8("chat:a"), 9, 3, ...utf8("bob"), 1, 0x42);
    const answer = Uint8Array.of(1, 7, 4, 1, 2, 3, 3, ...utf8("ann"), 1, ...utf8("x"), 4, 3, ...utf8("ann"), 1, ...utf8("y"));
    server.send(
      delivery("chat:a", 3, "ann", "x"),
      delivery("chat:a", 5, "ann", "z"),
      encodeFrame(Kind.Send, 0, 0, utf8("$ch.join"), member),
      delivery("chat:other", 9, "ann", "not subscribed: ignored"),
    );
    await sleep(20);
    server.send(encodeFrame(Kind.Reply, 0, call.id, new Uint8Array(0), answer));
    server.send(delivery("chat:a", 5, "ann", "z"), delivery("chat:a", 4, "ann", "y"), delivery("chat:a", 6, "ann", "w"));
    const sub = await subscribing;
    assert.equal(sub.recovered, true);
    assert.deepEqual(sub.position, { epoch: 7n, offset: 2n }, "nothing taken yet");
    const events = await take(sub, 5);
    assert.deepEqual(pubs([events[0], events[1], events[2]]), ["3:ann:x", "4:ann:y", "5:ann:z"]);
    assert.equal(events[3].type, "join");
    const joined = (events[3] as Extract<ChannelEvent, { type: "join" }>).member;
    assert.deepEqual({ ...joined, info: [...joined.info] }, { client: 9n, user: "bob", info: [0x42] });
    assert.deepEqual(pubs([events[4]]), ["6:ann:w"]);
    await quiet(sub);
    assert.deepEqual(sub.position, { epoch: 7n, offset: 6n });

    // The example's reply and send bytes decode as documented.
    const again = client.subscribe("chat:b", { since: { epoch: 7n, offset: 2n } });
    const call2 = await server.frame();
    const reply = hex("10 00 00 00 02 00 01 00 01 07 03 01 01 03 03 61 6e 6e 01 78");
    reply[6] = Number(call2.id); // the example's id is 1; this call's is 2
    const send = hex("17 00 00 00 01 00 00 05 24 63 68 2e 70 06 63 68 61 74 3a 61 04 03 61 6e 6e 01 79");
    send[19] = "b".charCodeAt(0); // the example's channel is chat:a
    server.send(reply, send);
    const b = await again;
    assert.deepEqual(pubs(await take(b, 2)), ["3:ann:x", "4:ann:y"]);
    assert.deepEqual(b.position, { epoch: 7n, offset: 4n });

    // A second subscription to a channel already subscribed is refused here.
    await assert.rejects(client.subscribe("chat:a"), isKind("badRequest"));
    // The server ends one: the last event, and the iteration ends.
    server.send(encodeFrame(Kind.Send, 0, 0, utf8("$ch.unsubscribed"), Uint8Array.of(6, ...utf8("chat:a"), 4, ...utf8("kick"))));
    assert.deepEqual(await sub.next(1000), { type: "unsubscribed", reason: "kick" });
    assert.equal(await sub.next(1000), undefined);
    assert.equal(sub.ended, true);
    client.close();
    assert.equal(await b.next(1000), undefined, "the connection closed: the subscription ends");
  });

  test("listeners get what came before them, and an event type with a listener is not queued", async () => {
    const server = new ScriptedServer();
    const client = await Client.connect(server, { encrypted: false, heartbeatMs: 0, idleTimeoutMs: 0 });
    const subscribing = client.subscribe("live:x");
    const call = await server.frame();
    // No history: no position, offsets 0, nothing deduplicated.
    server.send(
      delivery("live:x", 0, "", "early"),
      encodeFrame(Kind.Reply, 0, call.id, new Uint8Array(0), Uint8Array.of(0, 1, 0)),
      delivery("live:x", 0, "", "late"),
      delivery("live:x", 0, "", "late"),
    );
    const sub = await subscribing;
    assert.equal(sub.position, null);
    const seen: string[] = [];
    sub.on("publication", (p) => seen.push(text(p.data)));
    assert.deepEqual(seen, ["early", "late", "late"]);
    server.send(delivery("live:x", 0, "", "more"));
    assert.deepEqual(seen, ["early", "late", "late", "more"]);
    await quiet(sub);
    const unsubscribing = sub.unsubscribe();
    const unsub = await server.frame();
    assert.equal(unsub.command, "$ch.unsub");
    assert.deepEqual([...unsub.payload], [6, ...utf8("live:x")]);
    server.send(encodeFrame(Kind.Reply, 0, unsub.id, new Uint8Array(0), new Uint8Array(0)));
    await unsubscribing;
    server.send(delivery("live:x", 0, "", "after"));
    assert.deepEqual(seen, ["early", "late", "late", "more"]);
    client.close();
  });
});

const VIAS: Via[] = ["tcp", "websocket"];
const MODES = ["encrypted", "plain"] as const;

describe("channels against the Rust server", { timeout: 180_000 }, () => {
  let peer: Peer;
  before(async () => {
    peer = await startPeer();
  });
  after(async () => {
    await peer?.stop();
  });

  for (const via of VIAS) {
    for (const mode of MODES) {
      describe(`over ${via}, ${mode}`, () => {
        const addr = (): Addr =>
          mode === "encrypted"
            ? via === "tcp"
              ? peer.encrypted
              : peer.encryptedWs
            : via === "tcp"
              ? peer.plain
              : peer.plainWs;
        const connect = () =>
          connectVia(via, addr(), mode === "encrypted" ? { pin: peer.fingerprint } : { encrypted: false });
        // Channel names unique per case, so the cases share one server.
        const name = (ns: string, what: string) => `${ns}${what}-${via}-${mode}`;
        /** A client identified (for presence and as an author) as `user`. */
        const as = async (user: string, info = "") => {
          const c = await connect();
          await c.console("identify", info ? `${user} ${info}` : user);
          return c;
        };

        test("subscribe, publish, unsubscribe", async () => {
          const ann = await as("ann");
          const bob = await as("bob");
          const room = name("chat:", "room");
          const sub = await ann.subscribe(room);
          assert.equal(sub.recovered, true);
          const start = sub.position!;
          assert.ok(start && start.offset === 0n && typeof start.epoch === "bigint");
          assert.deepEqual(await bob.publish(room, "hello"), { epoch: start.epoch, offset: 1n });
          assert.deepEqual(await bob.publish(room, Uint8Array.of(0, 255)), { epoch: start.epoch, offset: 2n });
          const [first, second] = await take(sub, 2);
          assert.deepEqual(pubs([first]), ["1:bob:hello"]);
          assert.deepEqual([...(second as Extract<ChannelEvent, { type: "publication" }>).publication.data], [0, 255]);
          assert.deepEqual(sub.position, { epoch: start.epoch, offset: 2n });
          // The server's own publications carry no author.
          assert.equal(await ann.console("ch-publish", `${room} from the server`), `${start.epoch}:3`);
          assert.deepEqual(pubs(await take(sub, 1)), ["3::from the server"]);
          // The publisher gets its own publications when subscribed too.
          const own = await bob.subscribe(room);
          const [join] = await take(sub, 1);
          assert.equal(join.type === "join" && join.member.user, "bob");
          await bob.publish(room, "mine");
          assert.deepEqual(pubs(await take(own, 1)), ["4:bob:mine"]);
          assert.deepEqual(pubs(await take(sub, 1)), ["4:bob:mine"]);
          await sub.unsubscribe();
          assert.equal(sub.ended, true);
          assert.equal(await sub.next(1000), undefined);
          await bob.publish(room, "after");
          const [leave, after] = await take(own, 2);
          assert.equal(leave.type === "leave" && leave.member.user, "ann");
          assert.deepEqual(pubs([after]), ["5:bob:after"]);
          // Subscribed again from where it stopped: what it missed, once.
          const back = await ann.subscribe(room, { since: sub.position });
          assert.equal(back.recovered, true);
          assert.deepEqual(pubs(await take(back, 1)), ["5:bob:after"]);
          await quiet(back);
          // A channel without history: offsets 0, no positions.
          const live = name("live:", "x");
          const l = await ann.subscribe(live);
          assert.equal(l.position, null);
          const cid = await as("cid");
          assert.equal(await cid.publish(live, "now"), null);
          assert.deepEqual(pubs(await take(l, 1)), ["0:cid:now"]);
          assert.equal(l.position, null);
          ann.close();
          bob.close();
          cid.close();
        });

        test("presence, join and leave", async () => {
          const ann = await as("ann", "ann-info");
          const bob = await as("bob", "bob-info");
          const room = name("chat:", "presence");
          const a = await ann.subscribe(room);
          const b = await bob.subscribe(room);
          const [joined] = await take(a, 1);
          assert.equal(joined.type, "join");
          const member = (joined as Extract<ChannelEvent, { type: "join" }>).member;
          assert.equal(member.user, "bob");
          assert.equal(text(member.info), "bob-info");
          assert.equal(typeof member.client, "bigint");
          const members = (await bob.presence(room)).map((m) => `${m.user}/${text(m.info)}`).sort();
          assert.deepEqual(members, ["ann/ann-info", "bob/bob-info"]);
          await quiet(b, 100); // no join event for one's own subscription (nor for those before it)
          await b.unsubscribe();
          const [left] = await take(a, 1);
          assert.equal(left.type, "leave");
          assert.equal((left as Extract<ChannelEvent, { type: "leave" }>).member.user, "bob");
          assert.equal((left as Extract<ChannelEvent, { type: "leave" }>).member.client, member.client);
          assert.deepEqual((await ann.presence(room)).map((m) => m.user), ["ann"]);
          // A connection that closes leaves too; listeners see the events.
          const joins: string[] = [];
          const leaves: string[] = [];
          a.on("join", (m) => joins.push(m.user)).on("leave", (m) => leaves.push(m.user));
          const cid = await as("cid");
          await cid.subscribe(room);
          cid.close();
          for (let i = 0; i < 100 && leaves.length === 0; i++) await sleep(20);
          assert.deepEqual(joins, ["cid"]);
          assert.deepEqual(leaves, ["cid"]);
          assert.deepEqual((await ann.presence(room)).map((m) => m.user), ["ann"]);
          // Presence where the namespace has none: denied.
          await assert.rejects(ann.presence(name("live:", "p")), isKind("denied", /no presence/));
          ann.close();
          bob.close();
        });

        test("history", async () => {
          const ann = await as("ann");
          const room = name("chat:", "history");
          const empty = await ann.history(room, { limit: 10 });
          assert.deepEqual(empty.publications, []);
          let position: Position | null = null;
          for (let i = 1; i <= 7; i++) position = await ann.publish(room, `m${i}`);
          assert.equal(position!.offset, 7n);
          // Five are kept: 3 to 7.
          const page = await ann.history(room, { limit: 10 });
          assert.deepEqual(page.position, position);
          assert.deepEqual(pubs(page.publications.map((p) => ({ type: "publication", publication: p }))), [
            "3:ann:m3",
            "4:ann:m4",
            "5:ann:m5",
            "6:ann:m6",
            "7:ann:m7",
          ]);
          const asText = (ps: { offset: bigint; data: Uint8Array }[]) => ps.map((p) => `${p.offset}:${text(p.data)}`);
          assert.deepEqual(asText((await ann.history(room, { limit: 2 })).publications), ["3:m3", "4:m4"]);
          const since = { epoch: position!.epoch, offset: 5n };
          assert.deepEqual(asText((await ann.history(room, { since, limit: 10 })).publications), ["6:m6", "7:m7"]);
          assert.deepEqual((await ann.history(room, { since: position, limit: 10 })).publications, []);
          // Another epoch: from the oldest kept.
          const other = { epoch: position!.epoch + 1n, offset: 5n };
          assert.equal((await ann.history(room, { since: other, limit: 10 })).publications.length, 5);
          // Where the namespace keeps none: denied.
          await assert.rejects(ann.history(name("live:", "h"), { limit: 1 }), isKind("denied", /no history/));
          await assert.rejects(ann.history(room, { limit: -1 }), isKind("codec"));
          ann.close();
        });

        test("recovery after reconnecting: exactly what was missed, or recovered false", async () => {
          const bob = await as("bob");
          const room = name("chat:", "recovery");
          let ann = await as("ann");
          let sub = await ann.subscribe(room);
          await bob.publish(room, "1");
          await bob.publish(room, "2");
          assert.deepEqual(pubs(await take(sub, 2)), ["1:bob:1", "2:bob:2"]);
          const kept = sub.position!;
          assert.equal(kept.offset, 2n);
          ann.close();
          await sub.next(1000); // ends with the connection
          for (const m of ["3", "4", "5"]) await bob.publish(room, m);
          ann = await as("ann");
          sub = await ann.subscribe(room, { since: kept });
          assert.equal(sub.recovered, true);
          await bob.publish(room, "6");
          assert.deepEqual(pubs(await take(sub, 4)), ["3:bob:3", "4:bob:4", "5:bob:5", "6:bob:6"]);
          await quiet(sub);
          const at6 = sub.position!;
          assert.equal(at6.offset, 6n);
          ann.close();
          // Seven more while away: 8 to 13 are kept, 7 is lost.
          for (let i = 7; i <= 13; i++) await bob.publish(room, String(i));
          ann = await as("ann");
          sub = await ann.subscribe(room, { since: at6 });
          assert.equal(sub.recovered, false);
          assert.deepEqual(sub.position, { epoch: at6.epoch, offset: 13n });
          await bob.publish(room, "14");
          assert.deepEqual(pubs(await take(sub, 1)), ["14:bob:14"]);
          await sub.unsubscribe();
          // Another epoch, or an offset beyond the channel's: not recovered.
          let top = 14n;
          for (const since of [
            { epoch: at6.epoch ^ 1n, offset: 13n },
            { epoch: at6.epoch, offset: 99n },
          ]) {
            const s = await ann.subscribe(room, { since });
            assert.equal(s.recovered, false);
            assert.deepEqual(s.position, { epoch: at6.epoch, offset: top++ });
            await bob.publish(room, "next");
            const [e] = await take(s, 1);
            assert.equal((e as Extract<ChannelEvent, { type: "publication" }>).publication.offset, s.position!.offset);
            await s.unsubscribe();
          }
          ann.close();
          bob.close();
        });

        test("a subscription racing a flood of publications gets each once, in order", async () => {
          const ann = await as("ann");
          const bob = await as("bob");
          for (let round = 0; round < 5; round++) {
            const room = name("chat:", `race${round}`);
            await bob.publish(room, "before");
            const [last, sub] = await Promise.all([
              bob.console("ch-flood", `${room} 5000`),
              sleep(round + 1).then(() => ann.subscribe(room, { since: round % 2 ? { epoch: 0n, offset: 0n } : undefined })),
            ]);
            const top = BigInt(last.split(":")[1]);
            let expect = sub.position!.offset + 1n;
            const start = expect;
            while (expect <= top) {
              const e = await sub.next(5_000);
              assert.ok(e && e.type === "publication", `event ${String(e?.type)}`);
              assert.equal(e.publication.offset, expect, `round ${round}: started at ${start}`);
              expect++;
            }
            await quiet(sub, 50);
            await sub.unsubscribe();
          }
          ann.close();
          bob.close();
        });

        test("refusals: no namespace (7), not allowed (7), too large (8), bad names (3)", async () => {
          const ann = await as("ann");
          await assert.rejects(ann.subscribe("nowhere:x"), (e: unknown) => {
            isKind("denied", /no namespace/)(e);
            assert.equal((e as ZserverError).code, 7);
            return true;
          });
          // The refused subscription left nothing behind: the same name can be tried again.
          await assert.rejects(ann.subscribe("nowhere:x"), isKind("denied"));
          await assert.rejects(ann.publish("nowhere:x", "x"), isKind("denied"));
          const news = name("news:", "n");
          await assert.rejects(ann.publish(news, "x"), isKind("denied", /may not publish/));
          const n = await ann.subscribe(news);
          assert.equal(await ann.console("ch-publish", `${news} headline`), `${n.position!.epoch}:1`);
          assert.deepEqual(pubs(await take(n, 1)), ["1::headline"]);
          const room = name("chat:", "limits");
          await assert.rejects(ann.publish(room, new Uint8Array(1025)), (e: unknown) => {
            isKind("limit", /at most 1024 bytes/)(e);
            assert.equal((e as ZserverError).code, 8);
            return true;
          });
          assert.equal((await ann.publish(room, new Uint8Array(1024)))!.offset, 1n);
          await assert.rejects(ann.subscribe(""), isKind("badRequest"));
          await assert.rejects(ann.subscribe(`chat:${"x".repeat(251)}`), isKind("badRequest"));
          // The connection is still fine.
          const s = await ann.subscribe(room);
          await ann.publish(room, "ok");
          assert.deepEqual(pubs(await take(s, 1)), ["2:ann:ok"]);
          ann.close();
        });

        test("the server ends a subscription", async () => {
          const ann = await as("ann");
          const room = name("chat:", "kick");
          const sub = await ann.subscribe(room);
          const ended = new Promise<string | undefined>((r) => sub.onEnd(r));
          assert.equal(await ann.console("ch-kick", `${room} you are out`), "true");
          assert.deepEqual(await sub.next(5_000), { type: "unsubscribed", reason: "you are out" });
          assert.equal(await sub.next(1000), undefined);
          assert.equal(await ended, "you are out");
          assert.equal(await ann.console("ch-kick", `${room} again`), "false");
          // It may subscribe again.
          const again = await ann.subscribe(room);
          await ann.publish(room, "back");
          assert.deepEqual(pubs(await take(again, 1)), ["1:ann:back"]);
          ann.close();
        });
      });
    }
  }
});
