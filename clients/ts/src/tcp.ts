/**
 * TCP for Node (`node:net`): the transport zserver's `--listen` speaks. Not for browsers.
 * @module
 */

import { connect as netConnect, type Socket } from "node:net";

import { NothingListeningError, ZserverError } from "./errors.js";
import type { Transport, TransportEvents } from "./transport.js";

/** Where and how to open a TCP connection. */
export interface TcpOptions {
  /** Time for the TCP connect (default 10 s). */
  timeoutMs?: number;
  /** Local address to bind the socket to (e.g. `127.0.0.2` to act as another host). */
  localAddress?: string;
}

/** Opens a TCP connection to `host:port` as a {@link Transport} (Nagle off, as zserver). */
export function openTcp(host: string, port: number, options: TcpOptions = {}): Promise<Transport> {
  return new Promise((resolve, reject) => {
    const socket = netConnect({ host, port, localAddress: options.localAddress, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ZserverError("timeout", `TCP connect to ${host}:${port} did not finish in time`));
    }, options.timeoutMs ?? 10_000);
    socket.once("error", (e: Error & { code?: string }) => {
      clearTimeout(timer);
      if (e.code === "ECONNREFUSED") reject(new NothingListeningError(`${host}:${port}`, { cause: e }));
      else reject(new ZserverError("io", `TCP connect to ${host}:${port} failed: ${e.message}`, { cause: e }));
    });
    socket.once("connect", () => {
      clearTimeout(timer);
      socket.removeAllListeners("error");
      resolve(new TcpTransport(socket));
    });
  });
}

class TcpTransport implements Transport {
  readonly kind = "tcp";
  private done = false;

  constructor(private readonly socket: Socket) {}

  start(events: TransportEvents): void {
    let failure: Error | undefined;
    this.socket.on("data", (chunk: Buffer) => events.data(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length)));
    this.socket.on("error", (e) => (failure = new ZserverError("io", `TCP: ${e.message}`, { cause: e })));
    this.socket.on("close", () => {
      if (this.done) return;
      this.done = true;
      events.close(failure);
    });
  }

  write(data: Uint8Array): Promise<void> | void {
    if (this.done || this.socket.destroyed) return;
    if (this.socket.write(data)) return;
    return new Promise((resolve) => {
      const go = () => {
        this.socket.off("drain", go);
        this.socket.off("close", go);
        resolve();
      };
      this.socket.on("drain", go);
      this.socket.on("close", go);
    });
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  close(): void {
    this.done = true;
    this.socket.destroy();
  }
}
