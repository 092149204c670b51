/**
 * `@zserver/client`: a zserver client for browsers and Node ≥ 20 (docs/PROTOCOL.md).
 *
 * ```ts
 * import { connectWebSocket, LoginClient } from "@zserver/client";
 * const client = await connectWebSocket("ws://127.0.0.1:7180", { pin: FINGERPRINT });
 * const login = new LoginClient(client);
 * await login.login("ann", "secret");
 * login.on("message", (m) => console.log(`${m.from}: ${m.text}`));
 * ```
 *
 * In Node, `@zserver/client/node` adds `connectTcp`, `connect("host:port" | "ws://...")`.
 * @module
 */

import { Client, type ClientOptions, type Handler } from "./client.js";
import { LoginClient } from "./login.js";
import { type ReconnectingOptions, ReconnectingClient } from "./reconnect.js";
import { openWebSocket, type WebSocketConstructor, type WebSocketOptions } from "./transport.js";

export {
  Client,
  type CallOptions,
  type ClientOptions,
  type ClientStats,
  type DownloadOptions,
  type Handler,
  type HandlerContext,
  type UploadOptions,
} from "./client.js";
export {
  Channels,
  CHANNEL_COMMANDS,
  type ChannelEvent,
  type HistoryOptions,
  type HistoryPage,
  type Member,
  type Position,
  type Publication,
  type Resubscribed,
  type SubscribeOptions,
  Subscription,
} from "./channels.js";
export {
  DisconnectedError,
  type ErrorKind,
  NothingListeningError,
  NotWebSocketError,
  OriginRefusedError,
  ServerClosedError,
  ZserverError,
} from "./errors.js";
export {
  type Backoff,
  backoffDelay,
  backoffPause,
  type ConnectionState,
  type Connector,
  DEFAULT_BACKOFF,
  type LoginHook,
  ReconnectingClient,
  type ReconnectingOptions,
  type StateChange,
} from "./reconnect.js";
export {
  LoginClient,
  MAX_WHO_PAGE,
  type FileInfo,
  type LoginEvent,
  type Message,
  type PartialUpload,
  type PushReport,
  type Uploaded,
  type WhoPage,
} from "./login.js";
export { generateKeypair, type Keypair } from "./noise.js";
export { decodeAll, decodeString, encodeString, PostcardReader, PostcardWriter } from "./postcard.js";
export { DEFAULT_REKEY, type RekeyPolicy } from "./record.js";
export { Download, type Progress, type UploadSource } from "./stream.js";
export { parseFingerprint, toHex } from "./handshake.js";
export {
  openWebSocket,
  type Transport,
  type TransportEvents,
  type WebSocketConstructor,
  type WebSocketLike,
  type WebSocketOptions,
} from "./transport.js";
export { type AeadProvider } from "./aead.js";

/**
 * Connects over WebSocket to `url` (`ws://host:port` of `zserver serve --listen-ws`) and
 * runs the handshake. Uses the global `WebSocket` (browsers, Node 22+) unless `WebSocket`
 * is given.
 */
export async function connectWebSocket(
  url: string,
  options: ClientOptions & WebSocketOptions = {},
  handlers?: Record<string, Handler>,
): Promise<Client> {
  const { WebSocket, timeoutMs, diagnose } = options;
  const transport = await openWebSocket(url, { WebSocket, timeoutMs, diagnose });
  return Client.connect(transport, options, handlers);
}

/**
 * A {@link ReconnectingClient} over WebSocket to `url` (browsers, Node 22+, or any
 * `WebSocket` given): returns at once and connects in the background; listen to its
 * `state` events, `await rc.connected(timeoutMs)` for the link.
 */
export function reconnectingWebSocket(
  url: string,
  options: ReconnectingOptions & WebSocketOptions = {},
): ReconnectingClient {
  return ReconnectingClient.start((o, h) => connectWebSocket(url, { ...options, ...o }, h), options);
}

/** Connects over WebSocket and wraps the connection in a {@link LoginClient}. */
export async function connectLoginWebSocket(
  url: string,
  options: ClientOptions & { WebSocket?: WebSocketConstructor } = {},
): Promise<LoginClient> {
  return new LoginClient(await connectWebSocket(url, options));
}
