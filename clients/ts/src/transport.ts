/**
 * The tiny interface the protocol code runs on: an ordered, reliable byte pipe. TCP
 * (`node:net`, in `@zserver/client/node`) and WebSocket (browser `WebSocket`, or the `ws`
 * package in Node) implement it; WebSocket message boundaries carry no meaning.
 * @module
 */

import { NotWebSocketError, NothingListeningError, OriginRefusedError, ZserverError } from "./errors.js";

/** What a transport reports to the connection. */
export interface TransportEvents {
  /** Bytes arrived, in order. */
  data(chunk: Uint8Array): void;
  /** The pipe closed: `error` if it failed, none for an orderly end (`reason`: the peer's words, if the transport carries any, as a WebSocket close does). */
  close(error?: Error, reason?: string): void;
}

/** An open byte pipe to the server. */
export interface Transport {
  /** `"tcp"`, `"websocket"`, ... (for statistics and errors). */
  readonly kind: string;
  /** Starts delivering events; called once, right after the connect. */
  start(events: TransportEvents): void;
  /**
   * Queues bytes to send (the transport may keep `data`). Resolves once the transport is
   * ready for more (its own buffer drained below its mark): the caller's back-pressure.
   */
  write(data: Uint8Array): Promise<void> | void;
  /** Stops delivering data until {@link resume} (no-op where the platform cannot). */
  pause(): void;
  /** Delivers data again after {@link pause}. */
  resume(): void;
  /** Closes the pipe; no more events after the `close` one. */
  close(): void;
}

/** The minimal shape of a WebSocket this client needs (the browser's and `ws`'s both fit). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string; wasClean?: boolean }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  /** Stops reading from the socket (the `ws` package has it; browsers do not). */
  pause?(): void;
  /** Reads again after `pause`. */
  resume?(): void;
}

/** A WebSocket constructor (`globalThis.WebSocket`, or `ws`'s `WebSocket` in Node). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** Largest WebSocket message this client sends (as zserver: 256 KiB). */
const WS_MAX_MESSAGE = 256 * 1024;

/** Bytes buffered in a WebSocket above which writes wait (there is no drain event). */
const WS_HIGH_WATER = 4 * 1024 * 1024;

/** Options of {@link openWebSocket}. */
export interface WebSocketOptions {
  /** The WebSocket constructor (default: `globalThis.WebSocket`; pass `ws`'s in Node 20). */
  WebSocket?: WebSocketConstructor;
  /** Time for the WebSocket to open (default 10 s). */
  timeoutMs?: number;
  /**
   * When the WebSocket fails without saying why (browsers never say), ask the address
   * over plain HTTP (`fetch`, `no-cors`) to tell a refused origin (an HTTP server
   * answers) from nothing listening (none does). Default true where `fetch` exists.
   */
  diagnose?: boolean;
}

/** What a failed WebSocket's error event says, if anything (the `ws` package says much, browsers nothing). */
function errorDetail(ev: unknown): { message: string; code?: string } | undefined {
  const e = ev as { error?: { message?: string; code?: string }; message?: string } | undefined;
  const message = e?.error?.message ?? e?.message;
  if (!message) return undefined;
  return { message, code: e?.error?.code };
}

/** The error a WebSocket that failed before it opened means, from what its error said. */
function classify(url: string, detail: { message: string; code?: string }): ZserverError {
  const { message, code } = detail;
  if (code === "ECONNREFUSED" || /ECONNREFUSED/.test(message)) return new NothingListeningError(url);
  const status = /Unexpected server response: (\d+)/.exec(message);
  if (status?.[1] === "403") return new OriginRefusedError(url, pageOrigin());
  if (status) return new NotWebSocketError(url, { detail: `it answered HTTP ${status[1]} instead of upgrading` });
  if (/Parse Error|Invalid HTTP|Expected HTTP|socket hang up|HPE_/i.test(message)) {
    return new NotWebSocketError(url, { detail: `its answer is not HTTP: ${message}` });
  }
  return new ZserverError("io", `WebSocket to ${url} failed: ${message}`);
}

/** The page's origin (browsers), else undefined. */
function pageOrigin(): string | undefined {
  const origin = (globalThis as { location?: { origin?: string } }).location?.origin;
  return origin && origin !== "null" ? origin : undefined;
}

type Fetch = (url: string, init: { mode: string; cache: string; signal: AbortSignal }) => Promise<unknown>;

/**
 * Why a WebSocket that gave no reason failed: asks the same address over HTTP. An answer
 * (even an opaque one) means an HTTP server that refused the upgrade: a refused origin,
 * zserver's one reason to refuse a browser; no answer means nothing listens there (or
 * something that does not speak HTTP, such as the server's TCP port).
 */
async function diagnose(url: string, timeoutMs: number): Promise<ZserverError> {
  const fetch = (globalThis as { fetch?: Fetch }).fetch;
  const why = "the browser gives no reason";
  if (!fetch) return new ZserverError("io", `WebSocket to ${url} failed (${why})`);
  const http = url.replace(/^ws/i, "http");
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), Math.min(timeoutMs, 3_000));
  try {
    await fetch(http, { mode: "no-cors", cache: "no-store", signal: abort.signal });
    return new OriginRefusedError(url, pageOrigin(), {
      detail: `${why}; an HTTP server answers there, so it refused the WebSocket upgrade`,
    });
  } catch (e) {
    // Node's fetch says what it met; a browser's does not.
    const code = (e as { cause?: { code?: string } }).cause?.code;
    if (code === "ECONNREFUSED") return new NothingListeningError(url);
    if (code?.startsWith("HPE_")) return new NotWebSocketError(url, { detail: "its answer is not HTTP" });
    return new NothingListeningError(url, {
      detail: `${why}, and nothing answers HTTP there; if the server runs, this may be its --listen (TCP) port rather than its --listen-ws one`,
    });
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Opens a WebSocket to `url` (`ws://` or `wss://`) as a {@link Transport}. Uses
 * `globalThis.WebSocket` unless `WebSocket` is given (pass `ws`'s in Node 20). A failure
 * says what happened: {@link NothingListeningError}, {@link OriginRefusedError} (403),
 * {@link NotWebSocketError} (a TCP port, or an HTTP server that does not upgrade), else
 * `io`; `timeout` if it did not open in time.
 */
export function openWebSocket(url: string, options: WebSocketOptions = {}): Promise<Transport> {
  const Ctor =
    options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!Ctor) {
    return Promise.reject(
      new ZserverError("io", "no WebSocket here: pass one (e.g. the `ws` package's) as WebSocket"),
    );
  }
  const timeoutMs = options.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (e) {
      reject(new ZserverError("io", `cannot open ${url}: ${e}`));
      return;
    }
    ws.binaryType = "arraybuffer";
    let settled = false;
    // Messages may come in the same tick as `open` (the server's preamble right behind its
    // upgrade answer), before the connection starts reading: keep them until then.
    const early: unknown[] = [];
    ws.onmessage = (ev) => void early.push(ev.data);
    const timer = setTimeout(() => {
      if (settled) return;
      settled = true;
      ws.close();
      reject(new ZserverError("timeout", `WebSocket to ${url} did not open within ${timeoutMs} ms`));
    }, timeoutMs);
    const failed = (detail: { message: string; code?: string } | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (detail) reject(classify(url, detail));
      else if (options.diagnose ?? true) void diagnose(url, timeoutMs).then(reject);
      else reject(new ZserverError("io", `WebSocket to ${url} failed (no reason given)`));
    };
    ws.onerror = (ev) => failed(errorDetail(ev));
    ws.onclose = (ev) => {
      const said = ev.reason ? `${ev.code ?? ""} ${ev.reason}`.trim() : undefined;
      failed(said ? { message: `closed before it opened (${said})` } : undefined);
    };
    ws.onopen = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(new WebSocketTransport(ws, early));
    };
  });
}

class WebSocketTransport implements Transport {
  readonly kind = "websocket";
  private events: TransportEvents | undefined;
  private closed = false;
  private paused = false;
  private backlog: Uint8Array[] = [];

  constructor(
    private readonly ws: WebSocketLike,
    private readonly early: unknown[],
  ) {}

  start(events: TransportEvents): void {
    this.events = events;
    this.ws.onmessage = (ev) => this.onMessage(ev.data, events);
    this.ws.onclose = (ev) => {
      const clean = ev.wasClean !== false && (ev.code === 1000 || ev.code === 1005 || ev.code === 1001);
      const reason = ev.reason || undefined;
      const why =
        ev.code === 1006
          ? "the WebSocket connection was cut (1006: it ended without a close message)"
          : `WebSocket closed (${ev.code}${reason ? ` ${reason}` : ""})`;
      this.finish(clean ? undefined : new ZserverError("io", why), reason);
    };
    this.ws.onerror = () => this.finish(new ZserverError("io", "WebSocket error"));
    for (const data of this.early.splice(0)) this.onMessage(data, events);
    if (this.ws.readyState > 1) this.finish(undefined); // closed before we started
  }

  private onMessage(data: unknown, events: TransportEvents): void {
    let chunk: Uint8Array;
    if (data instanceof ArrayBuffer) chunk = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) chunk = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.fail(new ZserverError("protocol", "a text WebSocket message (only binary carries the protocol)"));
      return;
    }
    if (this.paused) this.backlog.push(chunk);
    else events.data(chunk);
  }

  write(data: Uint8Array): Promise<void> | void {
    if (this.closed) return;
    // Boundaries carry no meaning (PROTOCOL.md 2d); keep messages well below the limit.
    for (let at = 0; at < data.length; at += WS_MAX_MESSAGE) {
      this.ws.send(data.subarray(at, at + WS_MAX_MESSAGE));
    }
    if (this.ws.bufferedAmount <= WS_HIGH_WATER) return;
    return new Promise((resolve) => {
      const poll = () => {
        if (this.closed || this.ws.bufferedAmount <= WS_HIGH_WATER / 2) resolve();
        else setTimeout(poll, 5);
      };
      setTimeout(poll, 5);
    });
  }

  pause(): void {
    // The browser's WebSocket cannot stop reading; messages wait in `backlog` instead,
    // whose growth the connection bounds by what it asked for (stream credit, calls).
    this.paused = true;
    this.ws.pause?.();
  }

  resume(): void {
    this.paused = false;
    this.ws.resume?.();
    while (!this.paused && this.backlog.length > 0) {
      this.events?.data(this.backlog.shift()!);
    }
  }

  close(): void {
    if (!this.closed) this.ws.close(1000);
    this.finish(undefined);
  }

  private fail(e: Error): void {
    try {
      this.ws.close(1002);
    } catch {
      // already closing
    }
    this.finish(e);
  }

  private finish(e: Error | undefined, reason?: string): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.close(e, reason);
  }
}
