/**
 * Frames (PROTOCOL.md sections 3 and 4): `length: u32 LE`, a postcard header
 * `{kind, flags, id, command}`, then the payload.
 * @module
 */

import { protocolError, ZserverError } from "./errors.js";
import { PostcardReader, varintSize } from "./postcard.js";

/** Frame kinds (the header's first field). */
export const Kind = {
  Call: 0,
  Send: 1,
  Reply: 2,
  Error: 3,
  Ping: 4,
  Pong: 5,
  GoAway: 6,
  Data: 7,
  End: 8,
  Abort: 9,
  Credit: 10,
  Stop: 11,
} as const;

/** Header flag: the frame belongs to the upload of call `id`. */
export const UPLOAD = 0x01;
/** Header flag: the frame belongs to the download of call `id`. */
export const DOWNLOAD = 0x02;
/** Header flag: the payload is encoded with the negotiated codec (never used by this client). */
export const COMPRESSED = 0x80;

/** The default (and zserver's) largest frame: 4 MiB. */
export const DEFAULT_MAX_FRAME = 4 * 1024 * 1024;

/** A request id: a number, or a bigint for the (unusual) ids past 2^53 a peer may use. */
export type Id = number | bigint;

/** One decoded frame. */
export interface Frame {
  /** One of {@link Kind}. */
  kind: number;
  /** Flag bits ({@link UPLOAD}, {@link DOWNLOAD}; reserved bits are ignored). */
  flags: number;
  /** The request id. */
  id: Id;
  /** The command name, or an `Error` frame's code. */
  command: string;
  /** The payload (a view into the received bytes). */
  payload: Uint8Array;
}

const encoder = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/** A command name as bytes, checked (1..=255 bytes, as zserver requires). */
export function commandBytes(command: string): Uint8Array {
  const b = encoder.encode(command);
  if (b.length === 0 || b.length > 255) {
    throw new ZserverError("badRequest", `command name of ${b.length} bytes (1..=255 allowed)`);
  }
  return b;
}

/**
 * Encodes one frame into `out` at `at` (or a new buffer) and returns it. `command` is
 * the name's bytes (empty for answers and stream frames). `payload` may be several parts.
 */
export function encodeFrame(
  kind: number,
  flags: number,
  id: Id,
  command: Uint8Array,
  payload: Uint8Array | readonly Uint8Array[],
): Uint8Array {
  const parts = payload instanceof Uint8Array ? [payload] : payload;
  let payloadLen = 0;
  for (const p of parts) payloadLen += p.length;
  const headerLen = 2 + varintSize(id) + varintSize(command.length) + command.length;
  const body = headerLen + payloadLen;
  const out = new Uint8Array(4 + body);
  const view = new DataView(out.buffer);
  view.setUint32(0, body, true);
  let i = 4;
  out[i++] = kind;
  out[i++] = flags;
  i = putVarint(out, i, id);
  i = putVarint(out, i, command.length);
  out.set(command, i);
  i += command.length;
  for (const p of parts) {
    out.set(p, i);
    i += p.length;
  }
  return out;
}

function putVarint(out: Uint8Array, i: number, v: Id): number {
  if (typeof v === "number" && v <= 0xffffffff) {
    while (v >= 0x80) {
      out[i++] = (v & 0x7f) | 0x80;
      v = Math.floor(v / 128);
    }
    out[i++] = v;
    return i;
  }
  let b = BigInt(v);
  while (b >= 0x80n) {
    out[i++] = Number(b & 0x7fn) | 0x80;
    b >>= 7n;
  }
  out[i++] = Number(b);
  return i;
}

/** Decodes a frame body (everything after the length). Malformed headers throw `protocol`. */
export function decodeBody(body: Uint8Array): Frame {
  const r = new PostcardReader(body);
  try {
    const kind = r.varintAny(5);
    if (typeof kind !== "number" || kind > Kind.Stop) throw protocolError(`unknown frame kind ${kind}`);
    const flags = r.u8();
    const id = r.varintAny(10);
    const n = r.varintAny(10);
    if (typeof n !== "number" || n > r.remaining) throw protocolError("command runs past the frame");
    const command = strictUtf8.decode(r.raw(n));
    return { kind, flags, id, command, payload: body.subarray(r.pos) };
  } catch (e) {
    if (e instanceof ZserverError && e.kind === "protocol") throw e;
    throw protocolError(`malformed frame header: ${e instanceof Error ? e.message : e}`);
  }
}

/**
 * Cuts a byte stream into frames. Lengths over `maxFrame` fail before any buffer is
 * allocated; at most one frame's bytes (plus the chunk being added) are held.
 */
export class FrameReader {
  private chunks: Uint8Array[] = [];
  private held = 0;
  private head = 0; // offset into chunks[0]

  /** @param maxFrame the largest body length accepted. */
  constructor(private readonly maxFrame: number) {}

  /** Bytes held and not yet returned as frames. */
  get buffered(): number {
    return this.held;
  }

  /** Adds received bytes. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.held += chunk.length;
  }

  /** The next complete frame, or `undefined` until more bytes arrive. */
  next(): Frame | undefined {
    if (this.held < 4) return undefined;
    const len = this.peekU32();
    if (len < 4) throw protocolError(`frame length ${len} is below the 4-byte minimum`);
    if (len > this.maxFrame) {
      throw protocolError(`frame of ${len} bytes exceeds the limit of ${this.maxFrame} bytes`);
    }
    if (this.held < 4 + len) return undefined;
    this.skip(4);
    return decodeBody(this.take(len));
  }

  private peekU32(): number {
    const first = this.chunks[0];
    if (first.length - this.head >= 4) {
      const h = this.head;
      return (first[h] | (first[h + 1] << 8) | (first[h + 2] << 16)) + first[h + 3] * 0x1000000;
    }
    const b = this.copy(4, false);
    return (b[0] | (b[1] << 8) | (b[2] << 16)) + b[3] * 0x1000000;
  }

  private skip(n: number): void {
    this.copy(n, true);
  }

  private take(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first.length - this.head >= n) {
      // The common case: the frame lies within one chunk; hand out a view.
      const out = first.subarray(this.head, this.head + n);
      this.advance(n);
      return out;
    }
    return this.copy(n, true);
  }

  private advance(n: number): void {
    this.head += n;
    this.held -= n;
    if (this.head === this.chunks[0].length) {
      this.chunks.shift();
      this.head = 0;
    }
  }

  private copy(n: number, consume: boolean): Uint8Array {
    const out = new Uint8Array(n);
    let got = 0;
    let ci = 0;
    let off = this.head;
    while (got < n) {
      const c = this.chunks[ci];
      const k = Math.min(n - got, c.length - off);
      out.set(c.subarray(off, off + k), got);
      got += k;
      off += k;
      if (off === c.length) {
        ci++;
        off = 0;
      }
    }
    if (consume) {
      this.chunks.splice(0, ci);
      this.head = off;
      this.held -= n;
    }
    return out;
  }
}
