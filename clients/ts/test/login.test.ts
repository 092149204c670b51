// The typed login API against the real login server (`zserver serve`, fresh data dir):
// register, login, push both ways, who, offline messages, kicked (past the most sessions), files.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { blake3 } from "@noble/hashes/blake3.js";

import { type LoginClient, ZserverError } from "@zserver/client";

import { loginVia, type Via } from "./connect.js";
import { type LoginServer, startLoginServer } from "./servers.js";

const VIAS: Via[] = ["tcp", "websocket"];

for (const via of VIAS) {
  describe(`the login server over ${via}`, { timeout: 120_000 }, () => {
    let server: LoginServer;
    const open: LoginClient[] = [];
    const connect = async () => {
      const addr = via === "tcp" ? server.addr : server.ws!;
      const c = await loginVia(via, addr, server.fingerprint);
      open.push(c);
      return c;
    };
    before(async () => {
      server = await startLoginServer({ ws: via === "websocket" });
    });
    after(async () => {
      for (const c of open) c.close();
      await server?.stop();
    });

    test("two clients push to each other; who lists them", async () => {
      const ann = await connect();
      const bob = await connect();
      await ann.register("ann", "ann-password");
      await bob.register("bob", "bob-password");
      assert.deepEqual(await ann.login("ann", "ann-password"), []);
      assert.deepEqual(await bob.login("bob", "bob-password"), []);
      const online = await ann.who();
      assert.ok(online.includes("ann") && online.includes("bob"), `who: ${online}`);
      const heard: string[] = [];
      bob.on("message", (m) => heard.push(`${m.from}: ${m.text}`));
      const report = await ann.push(["bob"], "hello bob");
      assert.deepEqual(report.delivered, ["bob"]);
      assert.equal(report.deliveredCount, 1);
      assert.deepEqual(await bob.nextEvent(5_000), { type: "message", message: { from: "ann", text: "hello bob" } });
      assert.deepEqual(heard, ["ann: hello bob"]);
      await bob.push(["ann"], "hi ann ✓");
      assert.deepEqual(await ann.nextEvent(5_000), { type: "message", message: { from: "bob", text: "hi ann ✓" } });
      const all = await ann.pushAll("to everyone");
      assert.ok(all.deliveredCount >= 2);
      assert.deepEqual(await bob.nextEvent(5_000), { type: "message", message: { from: "ann", text: "to everyone" } });
      assert.deepEqual(await ann.nextEvent(5_000), { type: "message", message: { from: "ann", text: "to everyone" } });
      const page = await ann.whoPage(undefined, 1);
      assert.equal(page.users.length, 1);
      assert.ok(page.more && page.online >= 2);
    });

    test("a message to an offline user is delivered at the next login", async () => {
      const dan = await connect();
      await dan.register("dan", "dan-password");
      await dan.login("dan", "dan-password");
      const eve = await connect();
      await eve.register("eve", "eve-password");
      const report = await dan.push(["eve"], "while you were away");
      assert.deepEqual(report.stored, ["eve"]);
      assert.equal(report.storedCount, 1);
      assert.deepEqual(report.unconfirmed, []);
      assert.deepEqual(await eve.login("eve", "eve-password"), [{ from: "dan", text: "while you were away" }]);
    });

    test("a login past the most sessions (8) kicks the oldest", async () => {
      const first = await connect();
      await first.register("fay", "fay-password");
      await first.login("fay", "fay-password");
      const others = [];
      for (let i = 0; i < 8; i++) {
        const next = await connect();
        await next.login("fay", "fay-password");
        others.push(next);
      }
      const event = await first.nextEvent(5_000);
      assert.equal(event?.type, "kicked");
      assert.ok(event?.type === "kicked" && event.reason.length > 0);
      const why = await first.client.closed;
      assert.ok(why === undefined || why.kind === "closed", String(why));
    });

    test("files: put with progress, ls, stat, get (and resume), rm", async () => {
      const gus = await connect();
      await gus.register("gus", "gus-password");
      await gus.login("gus", "gus-password");
      const data = randomBytes(1_500_000);
      let last = 0;
      assert.equal(await gus.put("notes.bin", data, { onProgress: (done) => (last = done) }), data.length);
      assert.equal(last, data.length);
      assert.deepEqual(await gus.ls(), [{ name: "notes.bin", size: data.length }]);
      assert.deepEqual(await gus.stat("notes.bin"), { name: "notes.bin", size: data.length });
      const d = await gus.get("notes.bin");
      assert.equal(d.total, data.length);
      assert.deepEqual(Buffer.from(await d.readAll()), data);
      const resumed = await gus.get("notes.bin", { offset: 1_000_000 });
      // The server states the hash of the part a resumed download keeps.
      assert.deepEqual(resumed.prefixHash, blake3(data.subarray(0, 1_000_000)));
      const whole = await gus.get("notes.bin");
      assert.equal(whole.prefixHash, undefined);
      whole.cancel();
      const tail = await resumed.readAll();
      assert.deepEqual(Buffer.from(tail), data.subarray(1_000_000));
      await gus.rm("notes.bin");
      assert.deepEqual(await gus.ls(), []);
      await assert.rejects(gus.rm("notes.bin"), (e: unknown) => e instanceof ZserverError && e.kind === "remote");
      await assert.rejects(gus.put("../escape", data.subarray(0, 10)), ZserverError);
    });

    test("files: an upload that broke off goes on with putResumable, checked by hash", async () => {
      const ivy = await connect();
      await ivy.register("ivy", "ivy-password");
      await ivy.login("ivy", "ivy-password");
      const data = randomBytes(1_500_000);
      // The source fails after 600,000 bytes: the client aborts, the server keeps them.
      const breakOff = async (bytes: Uint8Array) => {
        async function* source() {
          yield bytes.subarray(0, 600_000);
          throw new Error("the source broke off");
        }
        await assert.rejects(ivy.client.upload("put", "big.bin", source(), { total: bytes.length }));
        for (let i = 0; i < 200; i++) {
          const partial = await ivy.partialUpload("big.bin");
          if (partial !== undefined) return partial;
          await new Promise((r) => setTimeout(r, 20));
        }
        assert.fail("no partial upload was kept");
      };
      const partial = await breakOff(data);
      assert.ok(partial.size > 0 && partial.size <= 600_000, String(partial.size));
      assert.deepEqual(partial.hash, blake3(data.subarray(0, partial.size)));
      const put = await ivy.putResumable("big.bin", data);
      assert.deepEqual(put, { written: data.length - partial.size, resumedFrom: partial.size, restarted: false });
      assert.deepEqual(Buffer.from(await (await ivy.get("big.bin")).readAll()), data);
      assert.equal(await ivy.partialUpload("big.bin"), undefined);
      // A partial that is not the start of what is uploaded now: it starts over.
      await breakOff(data);
      const changed = Buffer.from(data);
      changed[10] ^= 1;
      const again = await ivy.putResumable("big.bin", new Blob([changed]));
      assert.deepEqual(again, { written: data.length, resumedFrom: 0, restarted: true });
      assert.deepEqual(Buffer.from(await (await ivy.get("big.bin")).readAll()), changed);
    });

    test("errors: a wrong password, a duplicate account, a push without login", async () => {
      const hal = await connect();
      await hal.register("hal", "hal-password");
      await assert.rejects(hal.register("hal", "other"), ZserverError);
      await assert.rejects(hal.login("hal", "wrong"), (e: unknown) => e instanceof ZserverError && e.kind === "remote");
      await assert.rejects(hal.push(["ann"], "x"), ZserverError);
    });
  });
}

/** An HS256 token, minted as docs/LOGIN.md section 5b says a back end does (no JWT library). */
function mint(secret: string, claims: Record<string, unknown>): string {
  const b64 = (data: string | Buffer) => Buffer.from(data).toString("base64url");
  const head = `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify(claims))}`;
  return `${head}.${b64(createHmac("sha256", secret).update(head).digest())}`;
}

describe("token logins", { timeout: 120_000 }, () => {
  const secret = "0123456789abcdef0123456789abcdef";
  const dir = mkdtempSync(join(tmpdir(), "zserver-ts-token-"));
  let server: LoginServer;
  const open: LoginClient[] = [];
  const connect = async () => {
    const c = await loginVia("tcp", server.addr, server.fingerprint);
    open.push(c);
    return c;
  };
  before(async () => {
    writeFileSync(join(dir, "token.secret"), `${secret}\n`);
    server = await startLoginServer({ extra: ["--token-secret-file", join(dir, "token.secret")] });
  });
  after(async () => {
    for (const c of open) c.close();
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const now = () => Math.floor(Date.now() / 1000);

  test("loginToken, refreshToken, a forged token refused, expiry kicks", async () => {
    const ann = await connect();
    assert.deepEqual(await ann.loginToken(mint(secret, { sub: "ann", exp: now() + 3600 })), []);
    assert.deepEqual(await ann.who(), ["ann"]);
    await ann.refreshToken(mint(secret, { sub: "ann", exp: now() + 7200 }));
    const bob = await connect();
    const forged = mint("not the server's secret at all!!", { sub: "bob", exp: now() + 3600 });
    await assert.rejects(bob.loginToken(forged), (e: unknown) => e instanceof ZserverError && /invalid token: bad signature/.test(e.message));
    // Expired at once (past the server's 5 s of leeway): refused.
    await assert.rejects(bob.loginToken(mint(secret, { sub: "bob", exp: now() - 60 })), /invalid token: expired/);
    // One second left (plus the leeway): the session ends, told why.
    await bob.loginToken(mint(secret, { sub: "bob", exp: now() + 1 }));
    assert.deepEqual(await bob.nextEvent(15_000), { type: "kicked", reason: "token expired" });
  });
});
