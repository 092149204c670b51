/**
 * Errors: one class, {@link ZserverError}, whose `kind` says what went wrong. Errors the
 * peer sends (`Error` frames) keep their wire code (PROTOCOL.md section 5).
 * @module
 */

/** What went wrong. */
export type ErrorKind =
  /** The peer's handler failed (wire code 1, and unknown codes). */
  | "remote"
  /** The peer has no handler under that name (code 2). */
  | "unknownCommand"
  /** The peer could not decode the request (code 3). */
  | "badRequest"
  /** The peer's handler dropped its responder without answering (code 4). */
  | "noResponse"
  /** The peer is shutting down and takes no new calls (code 5). */
  | "shuttingDown"
  /** A remote-object id the connection does not hold (code 6). */
  | "noSuchObject"
  /** A hook on the peer vetoed the command, or a channel's permission refused it (code 7). */
  | "denied"
  /** The request would take the peer over one of its limits; nothing was done (code 8). */
  | "limit"
  /** Over a rate limit (`rate limited, retry after N ms`); the request did not run. A client
   * that keeps going is disconnected (code 9). */
  | "rateLimited"
  /** The connection is closed (or closed before the answer came). */
  | "closed"
  /** A call or the connect did not finish in time. */
  | "timeout"
  /** The peer broke the wire protocol (bad preamble, header, length, stream frame...). */
  | "protocol"
  /** The Noise handshake failed. */
  | "handshake"
  /** The server's static key is not the pinned one. */
  | "keyMismatch"
  /** A record failed authentication (tampered, replayed, reordered or forged). */
  | "auth"
  /** A stream's BLAKE3 hash or length did not match what was announced. */
  | "integrity"
  /** The stream's sender gave up (`Abort`) or its receiver stopped it (`Stop`). */
  | "streamAborted"
  /** A frame would exceed `maxFrame`; nothing was sent. */
  | "frameTooLarge"
  /** Nothing heard from the peer within the idle time-out. */
  | "idleTimeout"
  /** A payload could not be decoded (postcard). */
  | "codec"
  /** The transport failed (socket error, reset connection). */
  | "io"
  /** Nothing listens at the address (the connection was refused): {@link NothingListeningError}. */
  | "nothingListening"
  /** A WebSocket server refused this page's origin (HTTP 403): {@link OriginRefusedError}. */
  | "originRefused"
  /** What answers at the address is not a WebSocket server (a TCP port?): {@link NotWebSocketError}. */
  | "notWebSocket"
  /** A {@link ReconnectingClient} has no live connection now (reconnecting): nothing was sent. */
  | "disconnected";

const KIND_BY_CODE: Record<number, ErrorKind> = {
  1: "remote",
  2: "unknownCommand",
  3: "badRequest",
  4: "noResponse",
  5: "shuttingDown",
  6: "noSuchObject",
  7: "denied",
  8: "limit",
  9: "rateLimited",
};

const CODE_BY_KIND: Partial<Record<ErrorKind, number>> = {
  remote: 1,
  unknownCommand: 2,
  badRequest: 3,
  noResponse: 4,
  shuttingDown: 5,
  noSuchObject: 6,
  denied: 7,
  limit: 8,
  rateLimited: 9,
};

/** Every error this package raises. */
export class ZserverError extends Error {
  /** What went wrong. */
  readonly kind: ErrorKind;

  /** @param kind what went wrong; @param message for people. */
  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ZserverError";
    this.kind = kind;
  }

  /** The wire code this error travels with when a handler throws it (1 if none). */
  get code(): number {
    return CODE_BY_KIND[this.kind] ?? 1;
  }

  /** The error an `Error` frame with this code and message means. */
  static fromWire(code: string, message: string): ZserverError {
    const kind = KIND_BY_CODE[Number(code)] ?? "remote";
    return new ZserverError(kind, message);
  }
}

/** Shorthand for a protocol violation by the peer. */
export function protocolError(message: string): ZserverError {
  return new ZserverError("protocol", message);
}

/** Any thrown value as a {@link ZserverError} of `kind` (kept as is if it already is one). */
export function asZserverError(e: unknown, kind: ErrorKind): ZserverError {
  if (e instanceof ZserverError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new ZserverError(kind, message, { cause: e });
}

/**
 * Nothing listens at the address: the connection was refused (`ECONNREFUSED`). The server
 * is not running, or runs on another port. A {@link ReconnectingClient} keeps trying.
 */
export class NothingListeningError extends ZserverError {
  constructor(
    /** Where the client tried (`host:port` or the URL). */
    readonly address: string,
    options?: { cause?: unknown; detail?: string },
  ) {
    super(
      "nothingListening",
      `nothing is listening at ${address}${options?.detail ? ` (${options.detail})` : " (connection refused)"}: is the server running, and is this the port it listens on?`,
      options,
    );
    this.name = "NothingListeningError";
  }
}

/**
 * The WebSocket server refused the upgrade with `403 Forbidden`: it does not allow the
 * origin of the page (PROTOCOL.md section 2d). Start it with `--allowed-origin ORIGIN`,
 * or serve the page from the WebSocket port itself (`--web DIR`).
 */
export class OriginRefusedError extends ZserverError {
  constructor(
    /** The URL the client tried. */
    readonly address: string,
    /** The page's origin, when known. */
    readonly origin?: string,
    options?: { cause?: unknown; detail?: string },
  ) {
    const who = origin ? `this page's origin (${origin})` : "this page's origin";
    super(
      "originRefused",
      `${address} refused ${who} with HTTP 403${options?.detail ? ` (${options.detail})` : ""}: start the server with --allowed-origin ${origin ?? "ORIGIN"}, or serve the page from its WebSocket port`,
      options,
    );
    this.name = "OriginRefusedError";
  }
}

/**
 * Something answers at the address, but not as a WebSocket server: most likely the
 * server's TCP port (`--listen`) rather than its WebSocket one (`--listen-ws`).
 */
export class NotWebSocketError extends ZserverError {
  constructor(
    /** The URL the client tried. */
    readonly address: string,
    options?: { cause?: unknown; detail?: string },
  ) {
    super(
      "notWebSocket",
      `${address} did not answer as a WebSocket server${options?.detail ? ` (${options.detail})` : ""}: is it the server's --listen (TCP) port rather than its --listen-ws one?`,
      options,
    );
    this.name = "NotWebSocketError";
  }
}

/**
 * The server closed the connection. `reason` says why when the server said so: it sent
 * `GoAway` first (it is shutting down or restarting), or the app told the client before
 * closing (the login server's `kicked`), or a WebSocket close reason. `retry` is false
 * when coming back would undo what the server meant (kicked because the user logged in
 * elsewhere): a {@link ReconnectingClient} then stops.
 */
export class ServerClosedError extends ZserverError {
  constructor(
    /** Why, in the server's words, if it gave any. */
    readonly reason?: string,
    /** Whether reconnecting makes sense (default true). */
    readonly retry = true,
    options?: { cause?: unknown },
  ) {
    super("closed", reason ? `the server closed the connection: ${reason}` : "the server closed the connection", options);
    this.name = "ServerClosedError";
  }
}

/**
 * A {@link ReconnectingClient} has no live connection now (it is connecting, waiting out
 * its back-off, or logging in again): nothing was sent. Wait with `connected()`, or retry.
 */
export class DisconnectedError extends ZserverError {
  constructor(
    /** Why the last connection ended or the last attempt failed, if known. */
    readonly lastError?: ZserverError,
  ) {
    super(
      "disconnected",
      `not connected (reconnecting), nothing was sent${lastError ? `: ${lastError.message}` : ""}`,
      { cause: lastError },
    );
    this.name = "DisconnectedError";
  }
}
