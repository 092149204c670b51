/**
 * The tiny interface the protocol code runs on: an ordered, reliable byte pipe. TCP
 * (`node:net`, in `@zserver/client/node`) and WebSocket (browser `WebSocket`, or the `ws`
 * package in Node) implement it; WebSocket message boundaries carry no meaning.
 * @module
 */

import { ZserverError } from "./errors.js";

/** What a transport reports to the connection. */
export interface TransportEvents {
  /** Bytes arrived, in order. */
  data(chunk: Uint8Array): void;
  /** The pipe closed: `error` if it failed, none for an orderly end. */
  close(error?: Error): void;
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

/**
 * Opens a WebSocket to `url` (`ws://` or `wss://`) as a {@link Transport}. Uses
 * `globalThis.WebSocket` unless `WebSocketImpl` is given (pass `ws`'s in Node 20).
 */
export function openWebSocket(
  url: string,
  options: { WebSocket?: WebSocketConstructor; timeoutMs?: number } = {},
): Promise<Transport> {
  const Ctor =
    options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (!Ctor) {
    return Promise.reject(
      new ZserverError("io", "no WebSocket here: pass one (e.g. the `ws` package's) as WebSocket"),
    );
  }
  return new Promise((resolve, reject) => {
    let ws: WebSocketLike;
    try {
      ws = new Ctor(url);
    } catch (e) {
      reject(new ZserverError("io", `cannot open ${url}: ${e}`));
      return;
    }
    ws.binaryType = "arraybuffer";
    // Messages may come in the same tick as `open` (the server's preamble right behind its
    // upgrade answer), before the connection starts reading: keep them until then.
    const early: unknown[] = [];
    ws.onmessage = (ev) => void early.push(ev.data);
    const timer = setTimeout(() => {
      ws.close();
      reject(new ZserverError("timeout", `WebSocket to ${url} did not open in time`));
    }, options.timeoutMs ?? 10_000);
    ws.onerror = () => {
      clearTimeout(timer);
      reject(new ZserverError("io", `WebSocket to ${url} failed`));
    };
    ws.onclose = (ev) => {
      clearTimeout(timer);
      reject(new ZserverError("io", `WebSocket to ${url} closed (${ev.code ?? ""} ${ev.reason ?? ""})`));
    };
    ws.onopen = () => {
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
      const clean = ev.wasClean !== false && (ev.code === 1000 || ev.code === 1005);
      this.finish(clean ? undefined : new ZserverError("io", `WebSocket closed (${ev.code} ${ev.reason ?? ""})`));
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

  private finish(e: Error | undefined): void {
    if (this.closed) return;
    this.closed = true;
    this.events?.close(e);
  }
}
