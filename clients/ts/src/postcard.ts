/**
 * A small postcard encoder and decoder: enough for zserver's frame headers, stream heads
 * and typed payloads (the login server's commands). Postcard writes struct fields in
 * order with no tags; integers wider than a byte are LEB128 varints (signed ones
 * zigzagged); strings and byte arrays are a varint length then the bytes; `Option` is
 * `00` or `01` and the value; a sequence is a varint count then the items; an enum is a
 * varint variant index then its fields.
 * @module
 */

import { ZserverError } from "./errors.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** Bytes a varint of `n` takes. */
export function varintSize(n: number | bigint): number {
  if (typeof n === "number" && n < 0x80) return 1;
  let v = BigInt(n);
  let size = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    size++;
  }
  return size;
}

/** Builds a postcard payload. Methods chain: `new PostcardWriter().string("a").u64(1).finish()`. */
export class PostcardWriter {
  private buf: Uint8Array;
  private len = 0;

  /** @param capacity initial bytes (grows as needed). */
  constructor(capacity = 64) {
    this.buf = new Uint8Array(capacity);
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.len + n));
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** One raw byte (`u8`). */
  u8(v: number): this {
    this.room(1);
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  /** A `bool`: `00` or `01`. */
  bool(v: boolean): this {
    return this.u8(v ? 1 : 0);
  }

  /** An unsigned varint (`u16`, `u32`, `u64`, `usize`, enum variant indexes). */
  varint(v: number | bigint): this {
    if (typeof v === "number") {
      if (!Number.isSafeInteger(v) || v < 0) {
        throw new ZserverError("codec", `${v} is not an unsigned integer`);
      }
      if (v < 0x80) return this.u8(v);
      if (v <= 0xffffffff) {
        this.room(5);
        while (v >= 0x80) {
          this.buf[this.len++] = (v & 0x7f) | 0x80;
          v = Math.floor(v / 128);
        }
        this.buf[this.len++] = v;
        return this;
      }
      v = BigInt(v);
    }
    if (v < 0n || v >= 1n << 64n) throw new ZserverError("codec", `${v} is not a u64`);
    this.room(10);
    while (v >= 0x80n) {
      this.buf[this.len++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    this.buf[this.len++] = Number(v);
    return this;
  }

  /** A `u32` (varint). */
  u32(v: number): this {
    return this.varint(v);
  }

  /** A `u64` (varint). */
  u64(v: number | bigint): this {
    return this.varint(v);
  }

  /** A signed integer (`i16`..`i64`): zigzag, then varint. */
  i64(v: number | bigint): this {
    const b = BigInt(v);
    return this.varint(b >= 0n ? b << 1n : ((-b) << 1n) - 1n);
  }

  /** Bytes as they are, with no length (for the end of a frame, say). */
  raw(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** A byte array (`Vec<u8>`, `&[u8]`): varint length, then the bytes. */
  bytes(b: Uint8Array): this {
    return this.varint(b.length).raw(b);
  }

  /** A `String`: varint byte length, then UTF-8. */
  string(s: string): this {
    return this.bytes(encoder.encode(s));
  }

  /** An `Option<T>`: `00` for `undefined`/`null`, else `01` and `write(value)`. */
  option<T>(v: T | undefined | null, write: (w: this, value: T) => void): this {
    if (v === undefined || v === null) return this.u8(0);
    this.u8(1);
    write(this, v);
    return this;
  }

  /** A sequence (`Vec<T>`): varint count, then each item. */
  seq<T>(items: readonly T[], write: (w: this, item: T) => void): this {
    this.varint(items.length);
    for (const item of items) write(this, item);
    return this;
  }

  /** The bytes written (a view of them; the writer is done). */
  finish(): Uint8Array {
    return this.buf.subarray(0, this.len);
  }
}

/** Reads a postcard payload field by field; every read checks the bounds. */
export class PostcardReader {
  /** Where the next read starts. */
  pos = 0;

  /** @param buf the payload. */
  constructor(readonly buf: Uint8Array) {}

  private fail(what: string): never {
    throw new ZserverError("codec", `postcard: ${what} at byte ${this.pos}`);
  }

  /** Bytes left. */
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  /** One raw byte. */
  u8(): number {
    if (this.pos >= this.buf.length) this.fail("hit the end of the buffer");
    return this.buf[this.pos++];
  }

  /** A `bool` (only `00` and `01` are valid). */
  bool(): boolean {
    const b = this.u8();
    if (b > 1) this.fail(`bad bool ${b}`);
    return b === 1;
  }

  /**
   * An unsigned varint of at most `maxBytes` bytes (10 for a u64, 5 for a u32), as a
   * number when it is a safe integer, else a bigint.
   */
  varintAny(maxBytes = 10): number | bigint {
    let n = 0;
    let mul = 1;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.u8();
      if (i === maxBytes - 1) {
        const top = maxBytes === 10 ? 0x01 : 0x0f;
        if (b > top) this.fail("varint overflows");
      }
      n += (b & 0x7f) * mul;
      if (!(b & 0x80)) {
        if (Number.isSafeInteger(n)) return n;
        return this.exact(i + 1);
      }
      mul *= 128;
    }
    return this.fail("varint too long");
  }

  /** Re-reads the last `len` bytes as an exact bigint (for values past 2^53). */
  private exact(len: number): bigint {
    let v = 0n;
    for (let i = len - 1; i >= 0; i--) {
      v = (v << 7n) | BigInt(this.buf[this.pos - len + i] & 0x7f);
    }
    return v;
  }

  /** A `u32`. */
  u32(): number {
    return this.varintAny(5) as number;
  }

  /** A `u64` as a number; fails past 2^53 (use {@link varintAny} for those). */
  u64(): number {
    const v = this.varintAny(10);
    if (typeof v !== "number") this.fail(`${v} is too large for a JavaScript number`);
    return v;
  }

  /** A `usize` length, which cannot exceed the bytes left (each item takes at least one). */
  private length(): number {
    const n = this.varintAny(10);
    if (typeof n !== "number" || n > this.remaining) this.fail(`length ${n} runs past the end`);
    return n;
  }

  /** A signed integer (zigzag varint) as a number. */
  i64(): number {
    const z = this.varintAny(10);
    const b = BigInt(z);
    const v = b & 1n ? -((b + 1n) >> 1n) : b >> 1n;
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      this.fail(`${v} is too large for a JavaScript number`);
    }
    return Number(v);
  }

  /** `n` raw bytes (a view into the buffer). */
  raw(n: number): Uint8Array {
    if (n > this.remaining) this.fail(`${n} bytes run past the end`);
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A byte array: varint length, then the bytes (a view into the buffer). */
  bytes(): Uint8Array {
    return this.raw(this.length());
  }

  /** A `String` (invalid UTF-8 fails). */
  string(): string {
    const b = this.bytes();
    try {
      return decoder.decode(b);
    } catch {
      return this.fail("string is not UTF-8");
    }
  }

  /** An `Option<T>`. */
  option<T>(read: (r: this) => T): T | undefined {
    const tag = this.u8();
    if (tag === 0) return undefined;
    if (tag !== 1) this.fail(`bad option tag ${tag}`);
    return read(this);
  }

  /** A sequence (`Vec<T>`); its count is bounded by the bytes left. */
  seq<T>(read: (r: this) => T): T[] {
    const n = this.length();
    const out: T[] = [];
    for (let i = 0; i < n; i++) out.push(read(this));
    return out;
  }

  /** Fails unless every byte was read (postcard payloads have no trailing bytes). */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes`);
  }
}

/** Decodes `buf` with `read` and checks that nothing is left over. */
export function decodeAll<T>(buf: Uint8Array, read: (r: PostcardReader) => T): T {
  const r = new PostcardReader(buf);
  const v = read(r);
  r.end();
  return v;
}

/** A postcard `String` on its own (what a typed command taking a `String` expects). */
export function encodeString(s: string): Uint8Array {
  return new PostcardWriter(s.length + 4).string(s).finish();
}

/** Decodes a postcard `String` on its own. */
export function decodeString(buf: Uint8Array): string {
  return decodeAll(buf, (r) => r.string());
}
