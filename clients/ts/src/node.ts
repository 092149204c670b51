/**
 * `@zserver/client/node`: everything in the main entry, plus connecting over TCP
 * (`node:net`) and over WebSocket through the `ws` package (Node 20 has no global
 * `WebSocket`; Node 22's is used when present).
 * @module
 */

import WebSocketImpl from "ws";

import { Client, type ClientOptions, type Handler } from "./client.js";
import { LoginClient } from "./login.js";
import { openTcp, type TcpOptions } from "./tcp.js";
import { ReconnectingClient, type ReconnectingOptions } from "./reconnect.js";
import { openWebSocket, type WebSocketConstructor, type WebSocketOptions } from "./transport.js";

export * from "./index.js";
export { openTcp, type TcpOptions } from "./tcp.js";

/** Connects over TCP to `host:port` (zserver's `--listen`) and runs the handshake. */
export async function connectTcp(
  host: string,
  port: number,
  options: ClientOptions & TcpOptions = {},
  handlers?: Record<string, Handler>,
): Promise<Client> {
  return Client.connect(await openTcp(host, port, options), options, handlers);
}

/** The WebSocket constructor Node offers: the global one (Node 22+) or the `ws` package's. */
export function nodeWebSocket(): WebSocketConstructor {
  const global = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  return global ?? (WebSocketImpl as unknown as WebSocketConstructor);
}

/** Connects over WebSocket (`ws://host:port/`, zserver's `--listen-ws`) from Node. */
export async function connectWebSocketNode(
  url: string,
  options: ClientOptions & WebSocketOptions = {},
  handlers?: Record<string, Handler>,
): Promise<Client> {
  const transport = await openWebSocket(url, {
    WebSocket: options.WebSocket ?? nodeWebSocket(),
    timeoutMs: options.timeoutMs,
    diagnose: options.diagnose,
  });
  return Client.connect(transport, options, handlers);
}

/**
 * Connects to an address: `tcp://host:port` or `host:port` over TCP, `ws://...` or
 * `wss://...` over WebSocket.
 */
export async function connect(
  address: string,
  options: ClientOptions & TcpOptions & WebSocketOptions = {},
  handlers?: Record<string, Handler>,
): Promise<Client> {
  if (/^wss?:\/\//.test(address)) return connectWebSocketNode(address, options, handlers);
  const hostPort = address.replace(/^tcp:\/\//, "");
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(hostPort);
  if (!m) throw new TypeError(`\`${address}\` is not host:port, tcp://host:port or ws://...`);
  return connectTcp(m[1], Number(m[2]), options, handlers);
}

/** Connects to a login server at `address` (see {@link connect}) and wraps it in a {@link LoginClient}. */
export async function connectLogin(address: string, options: ClientOptions & TcpOptions = {}): Promise<LoginClient> {
  return new LoginClient(await connect(address, options));
}

/**
 * A {@link ReconnectingClient} to an address (`host:port` or `tcp://…` over TCP, `ws://…`
 * over WebSocket, as {@link connect}): returns at once and connects in the background.
 */
export function reconnecting(
  address: string,
  options: ReconnectingOptions & TcpOptions & WebSocketOptions = {},
): ReconnectingClient {
  return ReconnectingClient.start((o, h) => connect(address, { ...options, ...o }, h), options);
}
