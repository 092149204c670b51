// `npm run bench`: the TypeScript client in Node against the Rust client, side by side in
// one run, on one interop peer (examples/interop_peer.rs): pipelined echo calls/s (64
// calls of 64 bytes in flight on one connection) and one encrypted upload's MiB/s.
// Rounds alternate between the two clients; medians are printed with the ratio.
// Options (env): BENCH_SECS (3), BENCH_MIB (256), BENCH_ROUNDS (3), BENCH_VIA (tcp,websocket).
import { spawnSync } from "node:child_process";
import { join } from "node:path";

import type { Client } from "@zserver/client";

import { connectVia, type Via } from "./connect.js";
import { type Addr, startPeer, workspaceBinary } from "./servers.js";

const SECS = Number(process.env.BENCH_SECS ?? 3);
const MIB = Number(process.env.BENCH_MIB ?? 256);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const VIAS = (process.env.BENCH_VIA ?? "tcp,websocket").split(",") as Via[];

interface Figures {
  calls_per_s: number;
  bulk_mib_per_s: number;
}

async function pipelined(client: Client, secs: number): Promise<number> {
  const payload = new Uint8Array(64).fill(0xa5);
  const warmUntil = performance.now() + 300;
  let start = 0;
  let end = Infinity;
  let calls = 0;
  await new Promise<void>((resolve, reject) => {
    let inFlight = 0;
    const launch = () => {
      inFlight++;
      client.call("echo", payload).then((reply) => {
        inFlight--;
        if (reply.length !== 64) return reject(new Error("bad echo"));
        const now = performance.now();
        if (start === 0 && now >= warmUntil) {
          start = now;
          end = now + secs * 1000;
        } else if (start !== 0 && now < end) {
          calls++;
        }
        if (now < end) launch();
        else if (inFlight === 0) resolve();
      }, reject);
    };
    for (let i = 0; i < 64; i++) launch();
  });
  return calls / secs;
}

async function bulk(client: Client, mib: number): Promise<number> {
  const block = new Uint8Array(1 << 20).fill(0x5a);
  function* source() {
    for (let i = 0; i < mib; i++) yield block;
  }
  const t0 = performance.now();
  const reply = await client.upload("bulk", "", source(), { total: mib << 20 });
  const secs = (performance.now() - t0) / 1000;
  const n = Number(new DataView(reply.buffer, reply.byteOffset, 8).getBigUint64(0, true));
  if (n !== mib << 20) throw new Error(`bulk: the server counted ${n} bytes`);
  return mib / secs;
}

async function typescript(via: Via, addr: Addr, pin: string): Promise<Figures> {
  const client = await connectVia(via, addr, { pin });
  const calls = await pipelined(client, SECS);
  const mibs = await bulk(client, MIB);
  client.close();
  return { calls_per_s: calls, bulk_mib_per_s: mibs };
}

function rust(via: Via, addr: Addr, pin: string): Figures {
  const peer = workspaceBinary("INTEROP_PEER", join("examples", "interop_peer"));
  const out = spawnSync(
    peer,
    ["bench", via === "tcp" ? `${addr.host}:${addr.port}` : `ws://${addr.host}:${addr.port}/`, pin, "--secs", String(SECS), "--bulk-mib", String(MIB)],
    { encoding: "utf8", timeout: 300_000 },
  );
  if (out.status !== 0) throw new Error(`interop_peer bench failed: ${out.stderr}`);
  return JSON.parse(out.stdout.trim().split("\n").pop()!);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const peer = await startPeer();
  try {
    console.log(`# TypeScript client (Node ${process.version}) vs Rust client, ${SECS} s of calls, ${MIB} MiB upload, ${ROUNDS} rounds`);
    console.log("| transport | measure | Rust client | TypeScript client | TS / Rust |");
    console.log("| --- | --- | ---: | ---: | ---: |");
    for (const via of VIAS) {
      const addr = via === "tcp" ? peer.encrypted : peer.encryptedWs;
      const r: Figures[] = [];
      const t: Figures[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        r.push(rust(via, addr, peer.fingerprint));
        t.push(await typescript(via, addr, peer.fingerprint));
      }
      for (const [key, label] of [
        ["calls_per_s", "pipelined echo calls/s"],
        ["bulk_mib_per_s", "encrypted upload MiB/s"],
      ] as const) {
        const rm = median(r.map((f) => f[key]));
        const tm = median(t.map((f) => f[key]));
        console.log(`| ${via} | ${label} | ${rm.toFixed(0)} | ${tm.toFixed(0)} | ${(tm / rm).toFixed(2)} |`);
      }
      console.log(`<!-- raw ${via}: rust ${JSON.stringify(r)} ts ${JSON.stringify(t)} -->`);
    }
  } finally {
    await peer.stop();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
