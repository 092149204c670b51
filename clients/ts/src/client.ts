/**
 * A connection to a zserver server: calls and one-way sends both ways, handlers for what
 * the server calls or pushes, pings and heartbeats, uploads and downloads, all over one
 * {@link Transport}, encrypted (Noise XX + AES-256-GCM records) unless asked otherwise.
 * @module
 */

import { type AeadProvider } from "./aead.js";
import {
  Channels,
  type HistoryOptions,
  type HistoryPage,
  type Member,
  type Position,
  type SubscribeOptions,
  type Subscription,
} from "./channels.js";
import { asZserverError, protocolError, ServerClosedError, ZserverError } from "./errors.js";
import {
  commandBytes,
  DEFAULT_MAX_FRAME,
  DOWNLOAD,
  encodeFrame,
  type Frame,
  FrameReader,
  type Id,
  Kind,
  UPLOAD,
} from "./frame.js";
import { ByteQueue, exchangePreambles, noiseHandshake, parseFingerprint, toHex } from "./handshake.js";
import { createHasher } from "./hash.js";
import { generateKeypair, type Keypair } from "./noise.js";
import { DEFAULT_REKEY, MAX_RECORD_PLAINTEXT, Opener, RECORD_TARGET, type RekeyPolicy, Sealer } from "./record.js";
import {
  decodeHead,
  Download,
  encodeDownloadRequest,
  encodeHead,
  Inbound,
  Outbound,
  type Progress,
  sourceLength,
  type StreamHost,
  type UploadSource,
} from "./stream.js";
import type { Transport } from "./transport.js";

/** How to connect. Every field is optional; the defaults match zserver's. */
export interface ClientOptions {
  /** The server's key fingerprint (64 hex digits, as `zserver serve` prints it) or its 32 bytes: any other server is refused with `keyMismatch` before a command is sent. */
  pin?: string | Uint8Array;
  /** `false` for a plain "trusted link" server (`Config::plain_trusted_link()`); default `true`. */
  encrypted?: boolean;
  /** This client's static key pair (the server sees its public key); default: fresh per connection. */
  keypair?: Keypair;
  /** Largest frame accepted and sent (default 4 MiB, as zserver). */
  maxFrame?: number;
  /** When to replace the sending key (default 1 GiB, 2^24 records or 120 s). */
  rekey?: Partial<RekeyPolicy>;
  /** Time for the preamble and handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Ping the server after this long without hearing from it (default 30 s; 0: never). */
  heartbeatMs?: number;
  /** Close after this long without hearing from the server (default 90 s; 0: never). */
  idleTimeoutMs?: number;
  /** Calls and sends wait while this many bytes are queued unwritten (default 8 MiB). */
  maxPendingWrite?: number;
  /** Most handlers of the server's calls and sends running at once before reading pauses (default 256). */
  maxHandlers?: number;
  /** Bytes a download may buffer ahead of its reader (default 1 MiB). */
  streamWindow?: number;
  /** Which AES-GCM implementation seals records (default: WebCrypto where available). */
  aead?: AeadProvider;
}

/** What a handler learns besides its payload. */
export interface HandlerContext {
  /** The client the server called. */
  client: Client;
  /** The command's name. */
  command: string;
  /** `true` for a one-way `Send` (the return value is dropped), `false` for a `Call`. */
  oneWay: boolean;
}

/** Handles a command the server calls or sends: bytes in, bytes (or nothing) out. Throw a {@link ZserverError} to answer with its kind's code, anything else answers code 1. */
export type Handler = (
  payload: Uint8Array,
  ctx: HandlerContext,
) => Uint8Array | void | Promise<Uint8Array | void>;

/** Options of one call. */
export interface CallOptions {
  /** Give up after this long (`timeout`); the server may still run the call. */
  timeoutMs?: number;
}

/** Options of an upload. */
export interface UploadOptions extends CallOptions {
  /** Bytes the source will give (known for `Uint8Array` and `Blob`; announced in the head and checked). */
  total?: number;
  /** Called as bytes are sent. */
  onProgress?: Progress;
  /**
   * For an upload that goes on from an offset (a resumed one): the BLAKE3 hash of the bytes
   * before it, sent in the head so that the server can check the part it kept.
   */
  prefixHash?: Uint8Array;
}

/** Options of a download. */
export interface DownloadOptions extends CallOptions {
  /** Where to start (resuming a download that broke off). */
  offset?: number;
  /** Called as bytes are taken. */
  onProgress?: Progress;
}

/** Counters of one connection. */
export interface ClientStats {
  /** Frames sent and received. */
  framesSent: number;
  framesReceived: number;
  /** Bytes written to and read from the transport (records included). */
  bytesSent: number;
  bytesReceived: number;
  /** Times this side replaced its sending key. */
  rekeysSent: number;
  /** Times the server replaced its sending key (followed here). */
  rekeysReceived: number;
  /** Calls, pings and streams awaiting their answers. */
  inFlight: number;
}

interface Pending {
  resolve(f: Frame): void;
  reject(e: ZserverError): void;
}

const EMPTY = new Uint8Array(0);
/** Most bytes held before the handshake has finished. */
const HANDSHAKE_BUFFER = 1024 * 1024;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One connection to a zserver server. Make one with {@link Client.connect} (or `connectTcp` / `connectWebSocket`). */
export class Client {
  private readonly handlers = new Map<string, Handler>();
  private readonly pending = new Map<Id, Pending>();
  private readonly uploads = new Map<Id, Outbound>();
  private readonly downloads = new Map<Id, Inbound>();
  private nextId = 1;
  private readonly frames: FrameReader;
  private sealer: Sealer | undefined;
  private opener: Opener | undefined;
  private hs: ByteQueue | undefined = new ByteQueue();
  private out: Uint8Array[] = [];
  private outBytes = 0;
  private flushing = false;
  private writeWaiters: (() => void)[] = [];
  private pumping = false;
  private eof = false;
  private again = false;
  private paused = false;
  private running = 0;
  private lastHeard = Date.now();
  private pinged = false;
  private timer: ReturnType<typeof setTimeout> | undefined;
  /** What the server said before closing: its GoAway, or an app's notice ({@link expectClose}). */
  private farewell: { reason: string; retry: boolean } | undefined;
  /** A WebSocket close reason the server gave. */
  private transportReason: string | undefined;
  private closeReason: ZserverError | undefined;
  private closeListeners: ((e: ZserverError | undefined) => void)[] = [];
  private goAwayListeners: (() => void)[] = [];
  private peerGoingAway = false;
  private readonly counters = { framesSent: 0, framesReceived: 0, bytesSent: 0, bytesReceived: 0 };
  private serverPublic: Uint8Array | undefined;
  private readonly opts: Required<Omit<ClientOptions, "pin" | "keypair" | "rekey" | "aead">> & {
    rekey: RekeyPolicy;
  };

  /** Resolves when the connection has closed: `undefined` after {@link close}, else why. */
  readonly closed: Promise<ZserverError | undefined>;
  private resolveClosed!: (e: ZserverError | undefined) => void;

  private constructor(
    private readonly transport: Transport,
    private readonly options: ClientOptions,
  ) {
    this.opts = {
      encrypted: options.encrypted ?? true,
      maxFrame: options.maxFrame ?? DEFAULT_MAX_FRAME,
      rekey: { ...DEFAULT_REKEY, ...options.rekey },
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      heartbeatMs: options.heartbeatMs ?? 30_000,
      idleTimeoutMs: options.idleTimeoutMs ?? 90_000,
      maxPendingWrite: options.maxPendingWrite ?? 8 * 1024 * 1024,
      maxHandlers: options.maxHandlers ?? 256,
      streamWindow: Math.max(options.streamWindow ?? 1024 * 1024, 256 * 1024),
    };
    this.frames = new FrameReader(this.opts.maxFrame);
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
  }

  /**
   * Runs the preamble and (unless `encrypted: false`) the Noise XX handshake on an open
   * transport, checking the pin. Handlers given in `handlers` are registered before any
   * frame is read, so no early push is missed.
   */
  static async connect(
    transport: Transport,
    options: ClientOptions = {},
    handlers: Record<string, Handler> = {},
  ): Promise<Client> {
    const client = new Client(transport, options);
    for (const [name, h] of Object.entries(handlers)) client.handle(name, h);
    await client.start();
    return client;
  }

  private async start(): Promise<void> {
    const pin =
      typeof this.options.pin === "string" ? parseFingerprint(this.options.pin) : this.options.pin;
    const hs = this.hs!;
    this.transport.start({
      data: (chunk) => this.onData(chunk),
      close: (error, reason) => this.onTransportClose(error, reason),
    });
    const wire = { write: (b: Uint8Array) => this.rawWrite(b), read: hs };
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new ZserverError("timeout", "the handshake did not finish in time")),
        this.opts.handshakeTimeoutMs,
      );
    });
    try {
      await Promise.race([this.handshake(wire, pin), timeout]);
    } catch (e) {
      const err = asZserverError(e, "handshake");
      this.shut(err);
      throw err;
    } finally {
      clearTimeout(timer);
    }
    this.hs = undefined;
    for (const chunk of hs.rest()) this.onData(chunk);
    this.startTimer();
  }

  private async handshake(wire: { write(b: Uint8Array): void; read: ByteQueue }, pin: Uint8Array | undefined) {
    const ours = await exchangePreambles(wire, this.opts.encrypted);
    if (!this.opts.encrypted) return;
    const prologue = new Uint8Array(16);
    prologue.set(ours.ours);
    prologue.set(ours.theirs, 8);
    const local = this.options.keypair ?? generateKeypair();
    const keys = await noiseHandshake(wire, prologue, local, pin);
    this.serverPublic = keys.serverKey;
    this.sealer = await Sealer.create(keys.sendKey, this.opts.rekey, this.options.aead);
    this.opener = await Opener.create(keys.recvKey, this.options.aead);
    keys.sendKey.fill(0);
    keys.recvKey.fill(0);
  }

  /** The server's static public key (32 bytes); `undefined` on a plain connection. */
  get serverKey(): Uint8Array | undefined {
    return this.serverPublic;
  }

  /** The server's key as 64 lower-case hex digits (what `zserver serve` prints and clients pin). */
  get fingerprint(): string | undefined {
    return this.serverPublic && toHex(this.serverPublic);
  }

  /** Whether the connection has closed. */
  get isClosed(): boolean {
    return this.closeReason !== undefined;
  }

  /** Whether the server sent `GoAway` (it is shutting down; new calls get `shuttingDown`). */
  get goingAway(): boolean {
    return this.peerGoingAway;
  }

  /** Counters of this connection. */
  stats(): ClientStats {
    return {
      ...this.counters,
      rekeysSent: this.sealer?.rekeys ?? 0,
      rekeysReceived: this.opener?.rekeys ?? 0,
      inFlight: this.pending.size,
    };
  }

  private channelsSide: Channels | undefined;

  /**
   * This connection's channels (section 6c): made on first use, which registers the
   * handlers of the server's `$ch.` sends.
   */
  get channels(): Channels {
    return (this.channelsSide ??= new Channels(this));
  }

  /** Subscribes to a channel: {@link Channels.subscribe}. */
  subscribe(channel: string, options?: SubscribeOptions): Promise<Subscription> {
    return this.channels.subscribe(channel, options);
  }

  /** Publishes to a channel: {@link Channels.publish}. */
  publish(channel: string, data: Uint8Array | string, options?: CallOptions): Promise<Position | null> {
    return this.channels.publish(channel, data, options);
  }

  /** Who is subscribed to a channel: {@link Channels.presence}. */
  presence(channel: string, options?: CallOptions): Promise<Member[]> {
    return this.channels.presence(channel, options);
  }

  /** A channel's history: {@link Channels.history}. */
  history(channel: string, options: HistoryOptions): Promise<HistoryPage> {
    return this.channels.history(channel, options);
  }

  /** Registers (or replaces) the handler of `command` for the server's calls and sends. */
  handle(command: string, handler: Handler): this {
    commandBytes(command);
    this.handlers.set(command, handler);
    return this;
  }

  /** A console handler: UTF-8 text in, text out (zserver's `console` convention). */
  handleConsole(
    command: string,
    handler: (text: string, ctx: HandlerContext) => string | void | Promise<string | void>,
  ): this {
    return this.handle(command, async (payload, ctx) => {
      let text: string;
      try {
        text = new TextDecoder("utf-8", { fatal: true }).decode(payload);
      } catch {
        throw new ZserverError("badRequest", "console text is not UTF-8");
      }
      const answer = await handler(text, ctx);
      return answer === undefined ? undefined : encoder.encode(answer);
    });
  }

  /** Removes the handler of `command`. */
  unhandle(command: string): this {
    this.handlers.delete(command);
    return this;
  }

  /**
   * Records why the server is about to close this connection, as an app-level notice told
   * it (the login server's `kicked`): the close error (a {@link ServerClosedError}) then
   * carries `reason`, and `retry: false` tells a reconnecting client not to come back.
   */
  expectClose(reason: string, retry = true): this {
    this.farewell = { reason, retry };
    return this;
  }

  /** Runs when the server sends `GoAway`. */
  onGoAway(listener: () => void): this {
    this.goAwayListeners.push(listener);
    return this;
  }

  /** Runs once when the connection closes (with why, or `undefined` after {@link close}). */
  onClose(listener: (error: ZserverError | undefined) => void): this {
    this.closeListeners.push(listener);
    return this;
  }

  /** Calls `command` with `payload` and resolves with the reply's payload. */
  async call(command: string, payload: Uint8Array = EMPTY, options: CallOptions = {}): Promise<Uint8Array> {
    const name = commandBytes(command);
    await this.writable();
    const id = this.takeId();
    const frame = this.encode(Kind.Call, 0, id, name, payload);
    const answer = this.expect(id, options.timeoutMs);
    this.enqueue(frame);
    return (await answer).payload;
  }

  /** A console call: text in, text out. */
  async console(command: string, text: string, options?: CallOptions): Promise<string> {
    return decoder.decode(await this.call(command, encoder.encode(text), options));
  }

  /** A one-way send: resolves once queued; the server never answers. */
  async send(command: string, payload: Uint8Array = EMPTY): Promise<void> {
    const name = commandBytes(command);
    await this.writable();
    this.queue(Kind.Send, 0, 0, name, payload);
  }

  /** A one-way console send. */
  sendConsole(command: string, text: string): Promise<void> {
    return this.send(command, encoder.encode(text));
  }

  /** Pings the server; resolves with the round trip in milliseconds. */
  async ping(options: CallOptions = {}): Promise<number> {
    const t0 = performance.now();
    const id = this.takeId();
    const answer = this.expect(id, options.timeoutMs);
    this.queue(Kind.Ping, 0, id, EMPTY, EMPTY);
    await answer;
    return performance.now() - t0;
  }

  /**
   * Uploads `source` to `command` (a server `upload` handler) with `meta`, under the
   * server's credit, ending with the BLAKE3 hash; resolves with the handler's reply.
   */
  async upload(
    command: string,
    meta: Uint8Array | string,
    source: UploadSource,
    options: UploadOptions = {},
  ): Promise<Uint8Array> {
    const name = commandBytes(command);
    const metaBytes = typeof meta === "string" ? encoder.encode(meta) : meta;
    const total = options.total ?? sourceLength(source);
    await this.writable();
    const id = this.takeId();
    const stream = new Outbound(this.streamHost, id);
    this.uploads.set(id, stream);
    const call = this.encode(Kind.Call, UPLOAD, id, name, encodeHead(total, metaBytes, options.prefixHash));
    const answer = this.expect(id, options.timeoutMs);
    this.enqueue(call);
    // The handler's answer ends the upload, even before the stream does.
    const settled = answer.then(
      (f) => {
        stream.stop("answered");
        return f;
      },
      (e: ZserverError) => {
        stream.stop("failed");
        throw e;
      },
    );
    try {
      await Promise.all([stream.pump(source, total, options.onProgress), settled]);
      return (await settled).payload;
    } catch (e) {
      settled.catch(() => undefined);
      if (!stream.finished) this.pending.delete(id);
      throw asZserverError(e, "streamAborted");
    } finally {
      this.uploads.delete(id);
    }
  }

  /**
   * Asks `command` (a server `download` handler) for the stream named by `meta`, from
   * `offset`; resolves once the server answered with the stream's head.
   */
  async download(command: string, meta: Uint8Array | string, options: DownloadOptions = {}): Promise<Download> {
    const name = commandBytes(command);
    const metaBytes = typeof meta === "string" ? encoder.encode(meta) : meta;
    await this.writable();
    const hasher = await createHasher();
    const id = this.takeId();
    const inbound = new Inbound(this.streamHost, id, this.opts.streamWindow, hasher);
    this.downloads.set(id, inbound);
    const call = this.encode(Kind.Call, DOWNLOAD, id, name, encodeDownloadRequest(options.offset ?? 0, metaBytes));
    const answer = this.expect(id, options.timeoutMs);
    this.enqueue(call);
    let f: Frame;
    try {
      f = await answer;
      if (!(f.flags & DOWNLOAD)) throw new ZserverError("badRequest", `\`${command}\` answered without a stream`);
    } catch (e) {
      this.downloads.delete(id);
      inbound.fail(asZserverError(e, "remote"));
      throw e;
    }
    let head;
    try {
      head = decodeHead(f.payload);
    } catch (e) {
      this.fail(protocolError(`bad stream head: ${e}`));
      throw this.closeReason;
    }
    inbound.total = head.total;
    return new Download(inbound, head.total, head.meta, options.onProgress, head.prefix && head.prefix.slice());
  }

  /** Closes the connection; calls still waiting fail with `closed`. */
  close(): void {
    this.shut(undefined);
  }

  // ---- internals: ids and answers ----

  private takeId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = id >= 0xffffffff ? 1 : id + 1;
      if (!this.pending.has(id)) return id;
    }
  }

  private expect(id: Id, timeoutMs: number | undefined): Promise<Frame> {
    if (this.closeReason) return Promise.reject(this.closedError());
    return new Promise<Frame>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = () => {
        if (timer !== undefined) clearTimeout(timer);
        this.pending.delete(id);
      };
      this.pending.set(id, {
        resolve: (f) => {
          done();
          resolve(f);
        },
        reject: (e) => {
          done();
          reject(e);
        },
      });
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.pending.get(id)?.reject(new ZserverError("timeout", `no answer within ${timeoutMs} ms`));
          this.downloads.get(id)?.cancel("timed out");
        }, timeoutMs);
      }
    });
  }

  private closedError(): ZserverError {
    const why = this.closeReason;
    if (why && why.kind !== "closed") {
      return new ZserverError("closed", `the connection is closed: ${why.message}`, { cause: why });
    }
    return new ZserverError("closed", "the connection is closed");
  }

  // ---- internals: writing ----

  private readonly streamHost: StreamHost = {
    frame: (kind, flags, id, payload) => {
      // Stream frames after the close go nowhere; the stream has failed already.
      if (!this.closeReason) this.queue(kind, flags, id, EMPTY, payload);
    },
    // A download this side stopped: its frames still in flight are answered as unknown.
    forget: (id) => void this.downloads.delete(id),
    writable: () => this.writable(),
  };

  /** Resolves when fewer than `maxPendingWrite` bytes are queued; rejects once closed. */
  private writable(): Promise<void> {
    if (this.closeReason) return Promise.reject(this.closedError());
    if (this.outBytes < this.opts.maxPendingWrite) return Promise.resolve();
    return new Promise((resolve, reject) =>
      this.writeWaiters.push(() => (this.closeReason ? reject(this.closedError()) : resolve())),
    );
  }

  private queue(kind: number, flags: number, id: Id, command: Uint8Array, payload: Uint8Array): void {
    this.enqueue(this.encode(kind, flags, id, command, payload));
  }

  /** One frame's bytes; fails (sending nothing) past `maxFrame` or once closed. */
  private encode(kind: number, flags: number, id: Id, command: Uint8Array, payload: Uint8Array): Uint8Array {
    if (this.closeReason) throw this.closedError();
    const frame = encodeFrame(kind, flags, id, command, payload);
    if (frame.length - 4 > this.opts.maxFrame) {
      throw new ZserverError(
        "frameTooLarge",
        `frame of ${frame.length - 4} bytes exceeds the limit of ${this.opts.maxFrame} bytes`,
      );
    }
    return frame;
  }

  private enqueue(frame: Uint8Array): void {
    if (this.closeReason) throw this.closedError();
    this.out.push(frame);
    this.outBytes += frame.length;
    this.counters.framesSent++;
    if (!this.flushing) {
      this.flushing = true;
      // After the current task, so that frames queued together go out as one batch.
      queueMicrotask(() => void this.flush());
    }
  }

  private rawWrite(b: Uint8Array): Promise<void> | void {
    this.counters.bytesSent += b.length;
    return this.transport.write(b);
  }

  private async flush(): Promise<void> {
    try {
      while (this.out.length > 0 && !this.closeReason) {
        const batch = this.takeBatch();
        if (this.sealer) {
          for (let at = 0; at < batch.length; at += MAX_RECORD_PLAINTEXT) {
            const [header, sealed] = await this.sealer.seal(batch.subarray(at, at + MAX_RECORD_PLAINTEXT));
            const record = new Uint8Array(header.length + sealed.length);
            record.set(header);
            record.set(sealed, header.length);
            if (this.closeReason) return;
            await this.rawWrite(record);
          }
        } else {
          await this.rawWrite(batch);
        }
        this.outBytes -= batch.length;
        if (this.outBytes < this.opts.maxPendingWrite) this.wakeWriters();
        if (this.paused) this.flow();
      }
    } catch (e) {
      this.fail(asZserverError(e, "io"));
    } finally {
      this.flushing = false;
    }
  }

  /** Queued frames up to about {@link RECORD_TARGET} bytes, cut where frames end, as one buffer. */
  private takeBatch(): Uint8Array {
    let n = 0;
    let k = 0;
    while (k < this.out.length && (k === 0 || n + this.out[k].length <= RECORD_TARGET)) {
      n += this.out[k].length;
      k++;
    }
    const frames = this.out.splice(0, k);
    if (k === 1) return frames[0];
    const batch = new Uint8Array(n);
    let at = 0;
    for (const f of frames) {
      batch.set(f, at);
      at += f.length;
    }
    return batch;
  }

  private wakeWriters(): void {
    const w = this.writeWaiters;
    this.writeWaiters = [];
    for (const f of w) f();
  }

  // ---- internals: reading ----

  private onData(chunk: Uint8Array): void {
    if (this.closeReason) return;
    this.counters.bytesReceived += chunk.length;
    this.lastHeard = Date.now();
    if (this.pinged) {
      // The answer to our heartbeat: the next one is due a heartbeat from now.
      this.pinged = false;
      this.schedule();
    }
    if (this.hs) {
      // Before the handshake ends the server has nothing to say beyond its few messages.
      if (this.hs.buffered + chunk.length > HANDSHAKE_BUFFER) {
        this.fail(protocolError(`more than ${HANDSHAKE_BUFFER} bytes arrived before the handshake finished`));
        return;
      }
      this.hs.push(chunk);
      return;
    }
    if (this.opener) {
      this.opener.push(chunk);
    } else {
      this.frames.push(chunk);
    }
    this.flow();
    void this.pump();
  }

  /** Opens records and dispatches frames in order, holding back while handlers are saturated. */
  private async pump(): Promise<void> {
    if (this.pumping) {
      // The running pump may have looked for a whole record before these bytes came (a
      // WebSocket delivers several messages in one task): it looks again before it stops.
      this.again = true;
      return;
    }
    this.pumping = true;
    try {
      for (;;) {
        this.again = false;
        if (this.closeReason) return;
        this.dispatch();
        if (this.running < this.opts.maxHandlers) {
          const plain = this.opener ? await this.opener.next() : undefined;
          if (plain) {
            this.frames.push(plain);
            this.flow();
            continue;
          }
        }
        // Resuming the transport may hand over what it held at once (a WebSocket's
        // backlog), while this pump still runs: then it looks again before it stops.
        this.flow();
        if (!this.again || this.running >= this.opts.maxHandlers) break;
      }
    } catch (e) {
      this.fail(asZserverError(e, "protocol"));
    } finally {
      this.pumping = false;
    }
    if (this.eof && !this.closeReason && this.running < this.opts.maxHandlers) this.finishEof();
  }

  /** Pauses the transport while too much is buffered unprocessed, resumes once it drained. */
  private flow(): void {
    if (this.closeReason) return;
    const buffered = (this.opener?.buffered ?? 0) + this.frames.buffered;
    // Handlers saturated, received bytes piling up faster than they are opened, or answers
    // piling up unwritten (a server that calls without reading): stop reading until it eases.
    const busy =
      this.running >= this.opts.maxHandlers ||
      buffered > 2 * MAX_RECORD_PLAINTEXT ||
      this.outBytes > 2 * this.opts.maxPendingWrite;
    if (busy && !this.paused) {
      this.paused = true;
      this.transport.pause();
    } else if (!busy && this.paused) {
      this.paused = false;
      this.transport.resume();
    }
  }

  private dispatch(): void {
    while (this.running < this.opts.maxHandlers && !this.closeReason) {
      const f = this.frames.next();
      if (!f) return;
      this.counters.framesReceived++;
      this.onFrame(f);
    }
  }

  private onFrame(f: Frame): void {
    switch (f.kind) {
      case Kind.Call:
        return this.onCall(f);
      case Kind.Send:
        return this.onSend(f);
      case Kind.Reply:
        return this.pending.get(f.id)?.resolve(f);
      case Kind.Error:
        return this.pending.get(f.id)?.reject(ZserverError.fromWire(f.command, decoder.decode(f.payload)));
      case Kind.Ping:
        return this.queue(Kind.Pong, 0, f.id, EMPTY, EMPTY);
      case Kind.Pong:
        if (f.id !== 0) this.pending.get(f.id)?.resolve(f);
        return;
      case Kind.GoAway:
        if (!this.peerGoingAway) {
          this.peerGoingAway = true;
          for (const l of this.goAwayListeners) l();
        }
        return;
      default:
        return this.onStreamFrame(f);
    }
  }

  private onStreamFrame(f: Frame): void {
    const dir = f.flags & (UPLOAD | DOWNLOAD);
    if (dir !== UPLOAD && dir !== DOWNLOAD) {
      throw protocolError(`stream frame (kind ${f.kind}) with flags ${f.flags}: exactly one direction expected`);
    }
    if (dir === UPLOAD) {
      // Our uploads: the server grants credit or stops them.
      const up = this.uploads.get(f.id);
      if (f.kind === Kind.Credit) {
        if (f.payload.length !== 8) throw protocolError(`credit payload of ${f.payload.length} bytes (8 expected)`);
        up?.onCredit(f.payload);
      } else if (f.kind === Kind.Stop) {
        up?.stop("stopped by the server");
      } else if (f.kind === Kind.Data) {
        // The server uploading to us: this client takes no uploads.
        this.queue(Kind.Stop, UPLOAD, f.id, EMPTY, EMPTY);
      }
      return;
    }
    const down = this.downloads.get(f.id);
    switch (f.kind) {
      case Kind.Data:
        if (!down) return this.queue(Kind.Stop, DOWNLOAD, f.id, EMPTY, EMPTY);
        return down.onData(f.payload);
      case Kind.End:
        if (f.payload.length !== 32) throw protocolError(`End payload of ${f.payload.length} bytes (32 expected)`);
        down?.onEnd(f.payload);
        this.downloads.delete(f.id);
        return;
      case Kind.Abort:
        down?.fail(new ZserverError("streamAborted", `the server aborted the stream: ${decoder.decode(f.payload)}`));
        this.downloads.delete(f.id);
        return;
      case Kind.Credit:
        if (f.payload.length !== 8) throw protocolError(`credit payload of ${f.payload.length} bytes (8 expected)`);
        return; // credit for a download we would send: we never do
      default:
        return; // Stop for a download we do not send
    }
  }

  private onCall(f: Frame): void {
    if (f.flags & (UPLOAD | DOWNLOAD)) {
      this.answerError(f.id, 3, `\`${f.command}\` takes no stream on this client`);
      if (f.flags & UPLOAD) this.queue(Kind.Stop, UPLOAD, f.id, EMPTY, EMPTY);
      return;
    }
    const handler = this.handlers.get(f.command);
    if (!handler) return this.answerError(f.id, 2, f.command);
    this.run(handler, f, false);
  }

  private onSend(f: Frame): void {
    if (f.flags & (UPLOAD | DOWNLOAD)) return;
    const handler = this.handlers.get(f.command);
    if (handler) this.run(handler, f, true);
  }

  private run(handler: Handler, f: Frame, oneWay: boolean): void {
    this.running++;
    const ctx: HandlerContext = { client: this, command: f.command, oneWay };
    // Started at once, in arrival order (an event handler sees its event before a close
    // that follows it); its result may come later.
    let result: ReturnType<Handler>;
    try {
      result = handler(f.payload, ctx);
    } catch (e) {
      result = Promise.reject(e);
    }
    Promise.resolve(result)
      .then(
        (reply) => {
          if (oneWay || this.closeReason) return;
          const body = reply ?? EMPTY;
          try {
            this.queue(Kind.Reply, 0, f.id, EMPTY, body);
          } catch (e) {
            this.answerError(f.id, 1, e instanceof Error ? e.message : String(e));
          }
        },
        (e: unknown) => {
          if (oneWay || this.closeReason) return;
          const err = asZserverError(e, "remote");
          this.answerError(f.id, err.code, err.message);
        },
      )
      .finally(() => {
        this.running--;
        if (this.running === this.opts.maxHandlers - 1) void this.pump();
      });
  }

  private answerError(id: Id, code: number, message: string): void {
    if (this.closeReason) return;
    let msg = encoder.encode(message);
    if (msg.length > this.opts.maxFrame - 64) msg = msg.subarray(0, this.opts.maxFrame - 64);
    this.queue(Kind.Error, 0, id, encoder.encode(String(code)), msg);
  }

  // ---- internals: liveness and closing ----

  private startTimer(): void {
    this.schedule();
  }

  /**
   * Sets the liveness timer for the next deadline: the heartbeat `Ping` after
   * `heartbeatMs` of silence, the close after `idleTimeoutMs` of it (to the millisecond,
   * not on a coarse tick: a dead server is noticed when the idle time-out says).
   */
  private schedule(): void {
    const { heartbeatMs, idleTimeoutMs } = this.opts;
    if (this.closeReason || this.hs || (!heartbeatMs && !idleTimeoutMs)) return;
    if (this.timer !== undefined) clearTimeout(this.timer);
    const silent = Date.now() - this.lastHeard;
    let next = Infinity;
    if (idleTimeoutMs) next = idleTimeoutMs - silent;
    if (heartbeatMs) next = Math.min(next, this.pinged ? heartbeatMs : heartbeatMs - silent);
    this.timer = setTimeout(() => this.tick(), Math.max(next, 1));
    (this.timer as { unref?: () => void }).unref?.();
  }

  private tick(): void {
    this.timer = undefined;
    const silent = Date.now() - this.lastHeard;
    if (this.opts.idleTimeoutMs && silent >= this.opts.idleTimeoutMs) {
      const asked = this.pinged ? `, nor answered the ping sent after ${this.opts.heartbeatMs} ms` : "";
      this.fail(
        new ZserverError(
          "idleTimeout",
          `nothing heard from the server for ${silent} ms${asked}: it is hung, or the network to it is down`,
        ),
      );
      return;
    }
    if (this.opts.heartbeatMs && silent >= this.opts.heartbeatMs && !this.pinged) {
      this.pinged = true;
      this.queue(Kind.Ping, 0, 0, EMPTY, EMPTY);
    }
    this.schedule();
  }

  private onTransportClose(error?: Error, reason?: string): void {
    if (this.closeReason) return;
    if (reason) this.transportReason = reason;
    if (this.hs) {
      const why = error ? `: ${error.message}` : "";
      this.fail(new ZserverError("handshake", `the server closed the connection during the handshake${why}`));
    } else if (error && (this.farewell || this.peerGoingAway)) {
      // It said it would close; how the socket then ended matters less than why.
      const closed = this.serverClosed();
      this.fail(new ServerClosedError(closed.reason, closed.retry, { cause: error }));
    } else if (error) {
      this.fail(asZserverError(error, "io"));
    } else {
      // An orderly end: what arrived before it is still handled, then the connection closes.
      this.eof = true;
      void this.pump();
    }
  }

  /** After the peer's end, once everything received was handled (or cannot be). */
  private finishEof(): void {
    if ((this.opener?.buffered ?? 0) + this.frames.buffered > 0) {
      this.fail(protocolError("the connection ended in the middle of a frame"));
    } else {
      this.fail(this.serverClosed());
    }
  }

  /** Why the server closed, as far as it said. */
  private serverClosed(): ServerClosedError {
    if (this.farewell) return new ServerClosedError(this.farewell.reason, this.farewell.retry);
    if (this.peerGoingAway) return new ServerClosedError("it is shutting down or restarting (it sent GoAway)");
    return new ServerClosedError(this.transportReason);
  }

  /** Closes with `why` (a failure). */
  private fail(why: ZserverError): void {
    this.shut(why);
  }

  private shut(why: ZserverError | undefined): void {
    if (this.closeReason) return;
    this.closeReason = why ?? new ZserverError("closed", "closed by this client");
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.hs?.fail(this.closeReason);
    this.transport.close();
    const err = this.closedError();
    for (const p of [...this.pending.values()]) p.reject(err);
    for (const s of this.downloads.values()) s.fail(err);
    for (const s of this.uploads.values()) s.stop("closed");
    this.downloads.clear();
    this.wakeWriters();
    this.out = [];
    this.resolveClosed(why);
    for (const l of this.closeListeners) {
      try {
        l(why);
      } catch {
        // a listener's failure is its own
      }
    }
  }
}
