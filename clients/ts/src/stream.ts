/**
 * Big streams (PROTOCOL.md section 5b): uploads this client sends and downloads it
 * receives, under the receiver's credit, closed by `End` with the BLAKE3 hash of every
 * `Data` payload.
 * @module
 */

import { protocolError, ZserverError } from "./errors.js";
import { Kind, type Id } from "./frame.js";
import { createHasher, type Hasher } from "./hash.js";
import { PostcardReader, PostcardWriter } from "./postcard.js";

/** Credit every stream starts with: 256 KiB. */
export const INITIAL_CREDIT = 256 * 1024;
/** Most bytes in one `Data` frame this client sends: 64 KiB (as zserver). */
export const CHUNK = 64 * 1024;
/** Bytes of an `End` payload (a BLAKE3 hash). */
export const HASH_LEN = 32;

/** `(bytes done, total if known)`, called as a stream moves. */
export type Progress = (done: number, total: number | undefined) => void;

/** What a stream needs from its connection. */
export interface StreamHost {
  /** Queues one frame of this stream. */
  frame(kind: number, flags: number, id: Id, payload: Uint8Array): void;
  /** Resolves when the write queue has room (back-pressure). */
  writable(): Promise<void>;
  /** The receiver gave the stream up: it is no longer known by its id. */
  forget(id: Id): void;
}

/**
 * The stream head: postcard `{ total: Option<u64>, meta: bytes }`, and, for a stream that
 * goes on from an offset (a resumed upload), `prefix`: `Some` BLAKE3 hash of the bytes before it.
 */
export function encodeHead(total: number | undefined, meta: Uint8Array, prefix?: Uint8Array): Uint8Array {
  const w = new PostcardWriter(meta.length + 46)
    .option(total, (w, t) => w.u64(t))
    .bytes(meta);
  if (prefix !== undefined) {
    if (prefix.length !== 32) throw new RangeError(`a prefix hash has 32 bytes, not ${prefix.length}`);
    w.option(prefix, (w, p) => w.raw(p));
  }
  return w.finish();
}

/** Decodes a stream head, with a resumed download's `prefix` (the BLAKE3 hash of the sender's bytes before the offset) when it follows; later bytes are ignored. */
export function decodeHead(payload: Uint8Array): { total: number | undefined; meta: Uint8Array; prefix: Uint8Array | undefined } {
  const r = new PostcardReader(payload);
  const total = r.option((r) => r.u64());
  const meta = r.bytes();
  const prefix = r.remaining > 0 ? r.option((r) => r.raw(32)) : undefined;
  return { total, meta, prefix };
}

/** A download request: postcard `{ offset: u64, meta: bytes }`. */
export function encodeDownloadRequest(offset: number, meta: Uint8Array): Uint8Array {
  return new PostcardWriter(meta.length + 12).u64(offset).bytes(meta).finish();
}

/** Anything an upload can read from. */
export type UploadSource = Uint8Array | Blob | AsyncIterable<Uint8Array> | Iterable<Uint8Array>;

/** The length of `source` if it can be known up front. */
export function sourceLength(source: UploadSource): number | undefined {
  if (source instanceof Uint8Array) return source.length;
  if (typeof Blob !== "undefined" && source instanceof Blob) return source.size;
  return undefined;
}

/** The BLAKE3 hash of everything `source` gives. */
export async function hashOf(source: UploadSource): Promise<Uint8Array> {
  const hasher = await createHasher();
  for await (const chunk of chunksOf(source)) hasher.update(chunk);
  return hasher.digest();
}

async function* chunksOf(source: UploadSource): AsyncIterable<Uint8Array> {
  if (source instanceof Uint8Array) {
    yield source;
  } else if (typeof Blob !== "undefined" && source instanceof Blob) {
    const reader = source.stream().getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } else {
    yield* source as AsyncIterable<Uint8Array>;
  }
}

/** An upload in progress: sends `Data` while it has credit, then `End`. */
export class Outbound {
  private credit = INITIAL_CREDIT;
  private wake: (() => void) | undefined;
  /** Set once the peer answered or stopped the stream: sending ends. */
  finished: string | undefined;

  /** @param host the connection; @param id the call's id. */
  constructor(
    private readonly host: StreamHost,
    private readonly id: Id,
  ) {}

  /** A `Credit` frame for this stream. */
  onCredit(payload: Uint8Array): void {
    if (payload.length !== 8) throw protocolError(`credit payload of ${payload.length} bytes (8 expected)`);
    const more = new DataView(payload.buffer, payload.byteOffset, 8).getBigUint64(0, true);
    this.credit = Math.min(this.credit + Number(more), Number.MAX_SAFE_INTEGER);
    this.poke();
  }

  /** The peer stopped the stream, answered the call, or the connection closed. */
  stop(why: string): void {
    this.finished ??= why;
    this.poke();
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /**
   * Sends `source` as `Data` frames and `End` (or `Abort` if its length differs from
   * `total`, or reading it fails). Returns early once {@link stop} was called.
   */
  async pump(source: UploadSource, total: number | undefined, progress?: Progress): Promise<void> {
    const hash = await createHasher();
    let done = 0;
    try {
      for await (const piece of chunksOf(source)) {
        for (let at = 0; at < piece.length; ) {
          while (this.credit === 0 && this.finished === undefined) {
            await new Promise<void>((resolve) => (this.wake = resolve));
          }
          if (this.finished !== undefined) return;
          const n = Math.min(piece.length - at, CHUNK, this.credit);
          const chunk = piece.subarray(at, at + n);
          at += n;
          this.credit -= n;
          hash.update(chunk);
          this.host.frame(Kind.Data, UPLOAD_FLAG, this.id, chunk);
          done += n;
          progress?.(done, total);
          await this.host.writable();
          if (this.finished !== undefined) return;
        }
      }
    } catch (e) {
      if (this.finished === undefined) {
        this.host.frame(Kind.Abort, UPLOAD_FLAG, this.id, new TextEncoder().encode(`reading the upload failed: ${e}`));
      }
      throw e;
    }
    if (total !== undefined && done !== total) {
      const why = `the upload source gave ${done} bytes, not the announced ${total}`;
      this.host.frame(Kind.Abort, UPLOAD_FLAG, this.id, new TextEncoder().encode(why));
      throw new ZserverError("streamAborted", why);
    }
    this.host.frame(Kind.End, UPLOAD_FLAG, this.id, hash.digest());
  }
}

const UPLOAD_FLAG = 0x01;
const DOWNLOAD_FLAG = 0x02;

/** A download being received: chunks queue up to the granted credit. */
export class Inbound {
  private queue: Uint8Array[] = [];
  private received = 0;
  private allowed = INITIAL_CREDIT;
  private consumed = 0;
  private end: { ok: true } | { ok: false; error: ZserverError } | undefined;
  private wake: (() => void) | undefined;
  /** The announced total, once the head arrived. */
  total: number | undefined;

  /** @param window most bytes buffered (the credit granted ahead of the consumer). */
  constructor(
    private readonly host: StreamHost,
    private readonly id: Id,
    private readonly window: number,
    private readonly hash: Hasher,
  ) {}

  /** Bytes received so far. */
  get bytesReceived(): number {
    return this.received;
  }

  /** A `Data` frame. Beyond the credit, or after the end, breaks the protocol. */
  onData(data: Uint8Array): void {
    if (this.end) throw protocolError("stream data after the end of the stream");
    if (this.received + data.length > this.allowed) {
      throw protocolError(
        `stream data beyond the window: ${this.allowed} bytes allowed, ${this.received + data.length} sent`,
      );
    }
    this.received += data.length;
    if (data.length > 0) {
      this.hash.update(data);
      this.queue.push(data);
      this.poke();
    }
  }

  /** An `End` frame: checks the hash and the count. */
  onEnd(payload: Uint8Array): void {
    if (payload.length !== HASH_LEN) throw protocolError(`End payload of ${payload.length} bytes (32 expected)`);
    if (this.end) return;
    const ours = this.hash.digest();
    if (!ours.every((b, i) => b === payload[i])) {
      this.fail(new ZserverError("integrity", "the stream's BLAKE3 hash does not match its data"));
    } else if (this.total !== undefined && this.total !== this.received) {
      this.fail(new ZserverError("integrity", `the stream carried ${this.received} bytes, not the announced ${this.total}`));
    } else {
      this.end = { ok: true };
      this.poke();
    }
  }

  /** The stream failed (`Abort`, a refused call, the connection closed). The first end wins. */
  fail(error: ZserverError): void {
    if (this.end) return;
    this.end = { ok: false, error };
    this.poke();
  }

  /** Whether the stream has ended (either way). */
  get ended(): boolean {
    return this.end !== undefined;
  }

  /** Stops the stream: tells the sender (`Stop`) and fails it locally. */
  cancel(why = "cancelled by the receiver"): void {
    if (this.end) return;
    this.host.frame(Kind.Stop, DOWNLOAD_FLAG, this.id, new Uint8Array(0));
    this.host.forget(this.id);
    this.queue = [];
    this.fail(new ZserverError("streamAborted", why));
  }

  private poke(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  /** The next chunk, or `undefined` at a good end; throws on a failed one. */
  async next(): Promise<Uint8Array | undefined> {
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk) {
        this.consumed += chunk.length;
        this.grant();
        return chunk;
      }
      if (this.end) {
        if (this.end.ok) return undefined;
        throw this.end.error;
      }
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
  }

  /** Grants credit once the consumer freed at least half a window (as zserver). */
  private grant(): void {
    const target = this.consumed + this.window;
    const grant = target - Math.min(this.allowed, target);
    if (grant >= this.window / 2 && !this.end) {
      this.allowed = target;
      const payload = new Uint8Array(8);
      new DataView(payload.buffer).setBigUint64(0, BigInt(grant), true);
      this.host.frame(Kind.Credit, DOWNLOAD_FLAG, this.id, payload);
    }
  }
}

/** A download's answer: its head, then its bytes as an async iterable. */
export class Download implements AsyncIterable<Uint8Array> {
  private done = 0;

  /** @internal */
  constructor(
    private readonly inbound: Inbound,
    /** Bytes the sender announced (from the offset on), if it knows. */
    readonly total: number | undefined,
    /** The head's metadata bytes. */
    readonly meta: Uint8Array,
    private readonly progress?: Progress,
    /**
     * For a download from an offset: the BLAKE3 hash of the sender's bytes before it, if it
     * said. Compare it with the hash of the part you kept before appending to it; if they
     * differ, download again from 0.
     */
    readonly prefixHash?: Uint8Array,
  ) {}

  /** Bytes taken so far. */
  get received(): number {
    return this.done;
  }

  /** The chunks in order; the last step checks the BLAKE3 hash and throws `integrity` if it fails. */
  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    try {
      for (;;) {
        const chunk = await this.inbound.next();
        if (!chunk) return;
        this.done += chunk.length;
        this.progress?.(this.done, this.total);
        yield chunk;
      }
    } finally {
      // A consumer that breaks off early stops the sender.
      if (!this.inbound.ended) this.inbound.cancel();
    }
  }

  /** Every byte in one array; fails if the stream is longer than `limit` (default 256 MiB). */
  async readAll(limit = 256 * 1024 * 1024): Promise<Uint8Array> {
    if (this.total !== undefined && this.total > limit) {
      this.cancel();
      throw new ZserverError("frameTooLarge", `download of ${this.total} bytes exceeds readAll's limit of ${limit}`);
    }
    const parts: Uint8Array[] = [];
    let n = 0;
    for await (const chunk of this) {
      n += chunk.length;
      if (n > limit) throw new ZserverError("frameTooLarge", `download exceeds readAll's limit of ${limit} bytes`);
      parts.push(chunk);
    }
    const out = new Uint8Array(n);
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }

  /** Stops the download (sends `Stop`); reading then fails with `streamAborted`. */
  cancel(): void {
    this.inbound.cancel();
  }
}
