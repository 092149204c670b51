/**
 * Records (PROTOCOL.md section 2b): `length: u32 LE | kind: u8 | ciphertext | tag: 16`,
 * AES-256-GCM with the 5 header bytes as associated data and nonce = 4 zero bytes + the
 * per-key record counter as u64 **little-endian**. Kind `01` means "the sender switches to
 * its next key after this record" (Noise's REKEY). Each direction rekeys on its own.
 * @module
 */

import { type Aead, type AeadProvider, makeAead } from "./aead.js";
import { protocolError, ZserverError } from "./errors.js";

/** Bytes of a record header. */
export const RECORD_HEADER = 5;
/** Bytes of a GCM tag. */
export const TAG = 16;
/** Largest plaintext of one record: 4 MiB + 64 KiB. */
export const MAX_RECORD_PLAINTEXT = 4 * 1024 * 1024 + 64 * 1024;
/** Size a sender aims for when it groups frames into records. */
export const RECORD_TARGET = 1024 * 1024;

/** When this side replaces its sending key (whichever limit comes first). */
export interface RekeyPolicy {
  /** Plaintext bytes sealed under one key (zserver: 1 GiB). */
  bytes: number;
  /** Records sealed under one key (zserver: 2^24). */
  records: number;
  /** Milliseconds a key is used for, checked when a record is sealed (zserver: 120 s). */
  intervalMs: number;
}

/** zserver's defaults: 1 GiB, 2^24 records or 120 s. */
export const DEFAULT_REKEY: RekeyPolicy = { bytes: 2 ** 30, records: 2 ** 24, intervalMs: 120_000 };

const REKEY_NONCE = Uint8Array.of(0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

/** Noise's REKEY: the first 32 bytes of encrypting 32 zero bytes under nonce 2^64 - 1. */
export async function nextKey(aead: Aead): Promise<Uint8Array> {
  const sealed = await aead.seal(REKEY_NONCE, new Uint8Array(0), new Uint8Array(32));
  return sealed.subarray(0, 32);
}

/** One direction's key and record counter. */
class KeyState {
  counter = 0;
  private readonly nonceBuf = new Uint8Array(12);
  private readonly nonceView = new DataView(this.nonceBuf.buffer);

  private constructor(
    readonly aead: Aead,
    private readonly provider: AeadProvider | undefined,
  ) {}

  static async create(key: Uint8Array, provider?: AeadProvider): Promise<KeyState> {
    return new KeyState(await makeAead(key, provider), provider);
  }

  /** The nonce for the current counter, then the counter moves on. */
  nonce(): Uint8Array {
    this.nonceView.setBigUint64(4, BigInt(this.counter), true);
    this.counter++;
    return this.nonceBuf.slice();
  }

  async rekey(): Promise<KeyState> {
    return KeyState.create(await nextKey(this.aead), this.provider);
  }
}

/** Seals outgoing plaintext into records and rekeys by policy. */
export class Sealer {
  private key!: KeyState;
  private bytesUnderKey = 0;
  private keyedAt: number;
  /** Keys replaced so far. */
  rekeys = 0;

  private constructor(
    private readonly policy: RekeyPolicy,
    now: number,
  ) {
    this.keyedAt = now;
  }

  /** A sealer with `key`, its clock starting now. */
  static async create(key: Uint8Array, policy: RekeyPolicy, provider?: AeadProvider): Promise<Sealer> {
    const s = new Sealer(policy, Date.now());
    s.key = await KeyState.create(key, provider);
    return s;
  }

  /** One record holding `plaintext` (at most {@link MAX_RECORD_PLAINTEXT} bytes). */
  async seal(plaintext: Uint8Array): Promise<Uint8Array[]> {
    const now = Date.now();
    this.bytesUnderKey += plaintext.length;
    const last =
      this.bytesUnderKey >= this.policy.bytes ||
      this.key.counter + 1 >= this.policy.records ||
      now - this.keyedAt >= this.policy.intervalMs;
    const header = new Uint8Array(RECORD_HEADER);
    new DataView(header.buffer).setUint32(0, plaintext.length + TAG, true);
    header[4] = last ? 1 : 0;
    const sealed = await this.key.aead.seal(this.key.nonce(), header, plaintext);
    if (last) {
      this.key = await this.key.rekey();
      this.bytesUnderKey = 0;
      this.keyedAt = now;
      this.rekeys++;
    }
    return [header, sealed];
  }
}

/** Opens incoming records, following the sender's rekeys. */
export class Opener {
  private key!: KeyState;
  private chunks: Uint8Array[] = [];
  private held = 0;
  /** Keys replaced so far, following the peer. */
  rekeys = 0;

  private constructor() {}

  /** An opener with the peer's sending key. */
  static async create(key: Uint8Array, provider?: AeadProvider): Promise<Opener> {
    const o = new Opener();
    o.key = await KeyState.create(key, provider);
    return o;
  }

  /** Sealed bytes waiting for the rest of their record. */
  get buffered(): number {
    return this.held;
  }

  /** Adds received bytes. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.held += chunk.length;
  }

  /**
   * The plaintext of the next complete record, or `undefined` until more bytes arrive.
   * A bad length or kind fails before the body is buffered; a bad tag fails with `auth`.
   */
  async next(): Promise<Uint8Array | undefined> {
    if (this.held < RECORD_HEADER) return undefined;
    const header = this.peek(RECORD_HEADER);
    const len = (header[0] | (header[1] << 8) | (header[2] << 16)) + header[3] * 0x1000000;
    if (len < TAG || len > MAX_RECORD_PLAINTEXT + TAG) {
      throw protocolError(`record length ${len} is out of range`);
    }
    const kind = header[4];
    if (kind > 1) throw protocolError(`unknown record kind ${kind}`);
    if (this.held < RECORD_HEADER + len) return undefined;
    const record = this.take(RECORD_HEADER + len);
    const counter = this.key.counter;
    let plain: Uint8Array;
    try {
      plain = await this.key.aead.open(this.key.nonce(), header, record.subarray(RECORD_HEADER));
    } catch {
      throw new ZserverError(
        "auth",
        `record ${counter} failed authentication (tampered, replayed or reordered)`,
      );
    }
    if (kind === 1) {
      this.key = await this.key.rekey();
      this.rekeys++;
    }
    return plain;
  }

  private peek(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first.length >= n) return first.subarray(0, n).slice();
    return this.gather(n, false);
  }

  private take(n: number): Uint8Array {
    const first = this.chunks[0];
    if (first.length === n) {
      this.chunks.shift();
      this.held -= n;
      return first;
    }
    if (first.length > n) {
      this.chunks[0] = first.subarray(n);
      this.held -= n;
      return first.subarray(0, n);
    }
    return this.gather(n, true);
  }

  private gather(n: number, consume: boolean): Uint8Array {
    const out = new Uint8Array(n);
    let got = 0;
    let i = 0;
    while (got < n) {
      const c = this.chunks[i];
      const k = Math.min(n - got, c.length);
      out.set(c.subarray(0, k), got);
      got += k;
      if (consume) {
        if (k === c.length) {
          i++;
        } else {
          this.chunks[i] = c.subarray(k);
        }
      } else {
        i++;
      }
    }
    if (consume) {
      this.chunks.splice(0, i);
      this.held -= n;
    }
    return out;
  }
}
