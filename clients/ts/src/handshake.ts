/**
 * The start of a connection (PROTOCOL.md sections 2 and 2b): the 8-byte preambles, then
 * on an encrypted connection the Noise XX handshake with server key pinning.
 * @module
 */

import { ZserverError } from "./errors.js";
import { type HandshakeResult, type Keypair, NoiseInitiator } from "./noise.js";

/** Longest handshake message accepted. */
const MAX_MESSAGE = 1024;
const MAGIC = [0x5a, 0x53, 0x52, 0x56]; // "ZSRV"

/** This client's preamble: `ZSRV`, version 1, the mode, and no codecs offered. */
export function preamble(encrypted: boolean): Uint8Array {
  return Uint8Array.of(...MAGIC, 1, 0, encrypted ? 1 : 0, 0);
}

/** Lower-case hex. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Parses a 64-digit hex fingerprint (as `zserver serve` prints it) into 32 bytes. */
export function parseFingerprint(hex: string): Uint8Array {
  const t = hex.trim();
  if (!/^[0-9a-fA-F]{64}$/.test(t)) {
    throw new ZserverError("handshake", `\`${hex}\` is not a 64-digit hex key`);
  }
  const out = new Uint8Array(32);
  for (let i = 0; i < 32; i++) out[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Bytes received before the record layer starts, read in exact amounts. */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  private held = 0;
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;

  /** Bytes held. */
  get buffered(): number {
    return this.held;
  }

  /** Adds received bytes. */
  push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.held += chunk.length;
    this.poke();
  }

  /** Makes every pending and later read fail with `e`. */
  fail(e: Error): void {
    this.failure ??= e;
    this.poke();
  }

  private poke(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Exactly `n` bytes, waiting for them. */
  async read(n: number): Promise<Uint8Array> {
    while (this.held < n) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      const k = Math.min(n - got, c.length);
      out.set(c.subarray(0, k), got);
      got += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    this.held -= n;
    return out;
  }

  /** Whatever is left (handed to the record or frame layer). */
  rest(): Uint8Array[] {
    const r = this.chunks;
    this.chunks = [];
    this.held = 0;
    return r;
  }
}

/** How to talk to the server's side of the start. */
export interface Wire {
  /** Sends bytes. */
  write(b: Uint8Array): void;
  /** Received bytes. */
  read: ByteQueue;
}

/** Sends our preamble and checks the server's; returns both (the Noise prologue). */
export async function exchangePreambles(
  wire: Wire,
  encrypted: boolean,
): Promise<{ ours: Uint8Array; theirs: Uint8Array }> {
  const ours = preamble(encrypted);
  wire.write(ours);
  const theirs = await wire.read.read(8);
  if (!MAGIC.every((b, i) => theirs[i] === b)) {
    throw new ZserverError("protocol", `not a zserver preamble: ${toHex(theirs)}`);
  }
  const version = theirs[4] | (theirs[5] << 8);
  if (version !== 1) throw new ZserverError("protocol", `the server speaks protocol version ${version}, not 1`);
  const mode = theirs[6];
  if (mode !== ours[6]) {
    throw new ZserverError(
      "handshake",
      encrypted
        ? "this side is encrypted (Noise XX) but the server is plain (trusted link)"
        : "this side is plain (trusted link) but the server is encrypted (Noise XX)",
    );
  }
  // Flags bit 0 (codecs) only matters if we offer codecs too; we never do.
  return { ours, theirs };
}

/** Runs Noise XX as the initiator; refuses a server whose key is not `pin` before message 3. */
export async function noiseHandshake(
  wire: Wire,
  prologue: Uint8Array,
  local: Keypair,
  pin: Uint8Array | undefined,
): Promise<HandshakeResult> {
  const noise = new NoiseInitiator(local, prologue);
  wire.write(lengthPrefixed(noise.writeMessage1()));
  const lenBytes = await wire.read.read(2);
  const len = lenBytes[0] | (lenBytes[1] << 8);
  if (len > MAX_MESSAGE) {
    throw new ZserverError("handshake", `handshake message of ${len} bytes exceeds ${MAX_MESSAGE}`);
  }
  const serverKey = noise.readMessage2(await wire.read.read(len));
  if (pin && !pin.every((b, i) => serverKey[i] === b)) {
    throw new ZserverError(
      "keyMismatch",
      `the server's key ${toHex(serverKey)} is not the pinned ${toHex(pin)}`,
    );
  }
  const { message, result } = noise.writeMessage3();
  wire.write(lengthPrefixed(message));
  return result;
}

function lengthPrefixed(msg: Uint8Array): Uint8Array {
  const out = new Uint8Array(2 + msg.length);
  out[0] = msg.length & 0xff;
  out[1] = msg.length >> 8;
  out.set(msg, 2);
  return out;
}
