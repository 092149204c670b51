// Connecting the same way over each transport, so one suite runs over TCP and WebSocket.
import { Client, type ClientOptions, type Handler, LoginClient } from "@zserver/client";
import { connectTcp, connectWebSocketNode } from "@zserver/client/node";

import type { Addr } from "./servers.js";

/** The transports the suites run over. */
export type Via = "tcp" | "websocket";

/** Connects to `addr` over `via`. */
export function connectVia(
  via: Via,
  addr: Addr,
  options: ClientOptions = {},
  handlers?: Record<string, Handler>,
): Promise<Client> {
  if (via === "tcp") return connectTcp(addr.host, addr.port, options, handlers);
  return connectWebSocketNode(`ws://${addr.host}:${addr.port}/`, options, handlers);
}

/** A login client over `via`. */
export async function loginVia(via: Via, addr: Addr, pin: string): Promise<LoginClient> {
  return new LoginClient(await connectVia(via, addr, { pin }));
}

/** Resolves after `ms`. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
