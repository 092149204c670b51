/**
 * A client that reconnects with back-off and jitter when its connection drops (the server
 * restarted, the network blinked, the server hung), logs in again through a hook,
 * subscribes its channels again from where they stopped (recovery, section 6c), and says
 * where it stands through `state` events: `connecting`, `connected`, `disconnected`,
 * `reconnecting`. The TypeScript side of the Rust `ReconnectingClient`
 * (`core/src/reconnect.rs`), with the same rules for calls:
 *
 * - a call made while connected goes out on the live connection;
 * - a call in flight when that connection drops fails with `closed` (or `idleTimeout`
 *   when the server went silent): it may or may not have run, and it is not sent again;
 * - a call made while away (connecting, waiting out the back-off, logging in again)
 *   fails at once with {@link DisconnectedError} (`disconnected`): nothing was sent;
 * - after {@link ReconnectingClient.close}, or once the back-off gave up, calls fail with
 *   `closed`.
 *
 * A server that closes the connection is noticed at once; one that hangs or vanishes
 * without closing is noticed by the heartbeat: the client pings it after `heartbeatMs`
 * of silence and gives the connection up after another `heartbeatMs` without an answer,
 * so within two heartbeat intervals.
 *
 * ```ts
 * const rc = reconnectingWebSocket("ws://127.0.0.1:7180", {
 *   pin,
 *   heartbeatMs: 5_000,
 *   onLogin: (client) => client.call("login", credentials).then(() => undefined),
 * });
 * rc.on("state", (s) => show(s.state, s.error?.message));
 * const lobby = await (await rc.connected(10_000), rc.subscribe("chat:lobby"));
 * lobby.on("resubscribed", ({ recovered }) => { if (!recovered) reload(); });
 * ```
 * @module
 */

import {
  type CallOptions,
  Client,
  type ClientOptions,
  type DownloadOptions,
  type Handler,
  type UploadOptions,
} from "./client.js";
import {
  type HistoryOptions,
  type HistoryPage,
  type Member,
  type Position,
  type SubscribeOptions,
  Subscription,
  type SubscriptionOwner,
} from "./channels.js";
import { asZserverError, DisconnectedError, ServerClosedError, ZserverError } from "./errors.js";
import type { Download, UploadSource } from "./stream.js";

/**
 * The pauses between connection attempts. The pause before retry `n` (from 0 within one
 * outage) is `initialMs × factor^n`, at most `maxMs`, shortened at random by up to
 * `jitter` of itself, so that many clients dropped at once by a restarting server do not
 * all come back at the same instant. Defaults as the Rust client's: 100 ms doubling up to
 * 10 s, 20 % jitter, retrying for ever.
 */
export interface Backoff {
  /** The pause before the first retry after a connection is lost (default 100 ms). */
  initialMs: number;
  /** The longest pause (default 10 s). */
  maxMs: number;
  /** How much each pause grows over the previous one (default 2; below 1 counts as 1). */
  factor: number;
  /** The fraction (0 to 1) by which each pause may be shortened at random (default 0.2). */
  jitter: number;
  /** Stop after this many failed attempts in a row (default: never). */
  giveUpAfter?: number;
}

/** The Rust client's back-off. */
export const DEFAULT_BACKOFF: Readonly<Backoff> = { initialMs: 100, maxMs: 10_000, factor: 2, jitter: 0.2 };

/** The pause before retry `retry` (0-based), before jitter: `initialMs × factor^retry`, at most `maxMs`. */
export function backoffDelay(backoff: Backoff, retry: number): number {
  if (!(backoff.initialMs > 0)) return 0;
  const factor = Number.isFinite(backoff.factor) && backoff.factor > 1 ? backoff.factor : 1;
  return Math.min(backoff.initialMs * factor ** retry, backoff.maxMs);
}

/** {@link backoffDelay} shortened at random by up to `jitter` of itself. */
export function backoffPause(backoff: Backoff, retry: number, random: () => number = Math.random): number {
  const jitter = Number.isFinite(backoff.jitter) ? Math.min(Math.max(backoff.jitter, 0), 1) : 0;
  return backoffDelay(backoff, retry) * (1 - jitter * random());
}

/**
 * Where a {@link ReconnectingClient} stands.
 *
 * - `connecting`: before its first connection (attempts and the pauses between them);
 * - `connected`: a live connection that passed the login hook and the resubscriptions;
 * - `disconnected`: the connection was lost (`error` says why); `reconnecting` follows
 *   unless `retrying` is false: closed here, given up, or told not to come back (kicked);
 * - `reconnecting`: waiting out the back-off before attempt `attempt`, then trying.
 */
export type ConnectionState = "connecting" | "connected" | "disconnected" | "reconnecting";

/** What a `state` listener gets. */
export interface StateChange {
  /** The new state. */
  state: ConnectionState;
  /** The state before (equal to `state` for a further `reconnecting` attempt). */
  previous: ConnectionState;
  /**
   * `disconnected`: what ended the connection (`undefined` after `close()`);
   * `connecting` / `reconnecting`: why the previous attempt failed (none before the first).
   */
  error?: ZserverError;
  /** `connecting` / `reconnecting`: the attempt about to be made, from 1 in this outage. */
  attempt?: number;
  /** `connecting` / `reconnecting`: the pause before that attempt, in milliseconds. */
  delayMs?: number;
  /** `disconnected`: whether the client will try again. */
  retrying?: boolean;
}

/**
 * Makes one connection: `options` (the heartbeat set by the reconnecting client) and
 * `handlers` (its registered ones) go to `Client.connect` or a `connect…` helper, e.g.
 * `(o, h) => connectWebSocket(url, o, h)`.
 */
export type Connector = (options: ClientOptions, handlers: Record<string, Handler>) => Promise<Client>;

/** Runs on every new connection before it is offered (log in there); a throw fails the attempt. */
export type LoginHook = (client: Client) => Promise<unknown> | unknown;

/** Options of a {@link ReconnectingClient}: those of each connection, and the reconnecting ones. */
export interface ReconnectingOptions extends ClientOptions {
  /** The pauses between attempts (defaults: {@link DEFAULT_BACKOFF}). */
  backoff?: Partial<Backoff>;
  /**
   * Ping the server after this long without hearing from it, and give the connection up
   * after as long again without an answer (default 15 s: a hung server is noticed within
   * 30 s). Sets the connections' `heartbeatMs`, and `idleTimeoutMs` to twice it unless given.
   */
  heartbeatMs?: number;
  /** Run on every new connection (the first and each reconnect) before calls may use it. */
  onLogin?: LoginHook;
  /** Handlers of the server's calls and sends, on every connection (also: {@link ReconnectingClient.handle}). */
  handlers?: Record<string, Handler>;
}

type StateListener = (change: StateChange) => void;

/**
 * A client that reconnects. Make one with {@link ReconnectingClient.start} (returns at
 * once, connects in the background) or {@link ReconnectingClient.connect} (waits for the
 * first connection and fails with its error), or the `reconnecting…` helpers of the
 * entry points. See the module documentation for what happens to calls.
 */
export class ReconnectingClient {
  private stateNow: ConnectionState = "connecting";
  private live: Client | undefined;
  private lastErr: ZserverError | undefined;
  private stopping = false;
  private final = false;
  private wake: (() => void) | undefined;
  private readonly listeners: StateListener[] = [];
  private readonly closeListeners: ((error: ZserverError | undefined) => void)[] = [];
  private readonly handlers = new Map<string, Handler>();
  private readonly subs = new Map<string, Subscription>();
  private readonly backoff: Backoff;
  private readonly clientOptions: ClientOptions;
  private reconnectCount = 0;
  private attemptCount = 0;
  private readonly owner: SubscriptionOwner;
  private everConnected = false;
  private finished!: Promise<void>;

  /** The login hook, run on every new connection; may be replaced (a `LoginClient`'s `login` sets it). */
  onLogin: LoginHook | undefined;

  private constructor(
    private readonly connector: Connector,
    options: ReconnectingOptions,
  ) {
    const { backoff, heartbeatMs, onLogin, handlers, ...rest } = options;
    this.backoff = { ...DEFAULT_BACKOFF, ...backoff };
    const heartbeat = heartbeatMs ?? 15_000;
    this.clientOptions = { ...rest, heartbeatMs: heartbeat, idleTimeoutMs: rest.idleTimeoutMs ?? 2 * heartbeat };
    this.onLogin = onLogin;
    for (const [name, h] of Object.entries(handlers ?? {})) this.handlers.set(name, h);
    this.owner = {
      forget: (sub) => {
        if (this.subs.get(sub.channel) === sub) this.subs.delete(sub.channel);
        if (this.live && !this.live.isClosed) this.live.channels.forget(sub);
      },
      release: async (sub, callOptions) => {
        this.owner.forget(sub);
        const live = this.live;
        if (live && !live.isClosed) await live.channels.release(sub, callOptions);
      },
    };
  }

  /** Returns at once and connects in the background (the first attempt at once, then per the back-off). */
  static start(connector: Connector, options: ReconnectingOptions = {}): ReconnectingClient {
    const rc = new ReconnectingClient(connector, options);
    // After the caller's task: listeners added right after `start` see the first state.
    rc.finished = Promise.resolve().then(() => rc.run(undefined));
    return rc;
  }

  /**
   * Makes the first connection (and runs the login hook) now, failing with its error;
   * later drops are reconnected in the background.
   */
  static async connect(connector: Connector, options: ReconnectingOptions = {}): Promise<ReconnectingClient> {
    const rc = new ReconnectingClient(connector, options);
    rc.emit({ state: "connecting", previous: "connecting", attempt: 1, delayMs: 0 });
    let client: Client;
    try {
      client = await rc.attempt();
    } catch (e) {
      rc.final = true;
      rc.stopping = true;
      throw asZserverError(e, "io");
    }
    rc.offer(client);
    rc.finished = rc.run(client);
    return rc;
  }

  /** Where the client stands now. */
  get state(): ConnectionState {
    return this.stateNow;
  }

  /** Why the last connection ended or the last attempt failed; `undefined` while connected. */
  get lastError(): ZserverError | undefined {
    return this.lastErr;
  }

  /** Whether the client is closed for good (`close()`, given up, or told not to come back). */
  get isClosed(): boolean {
    return this.final;
  }

  /** How many times a lost connection was replaced by a new one. */
  get reconnects(): number {
    return this.reconnectCount;
  }

  /** Connection attempts so far, successful or not (the login hook included). */
  get attempts(): number {
    return this.attemptCount;
  }

  /**
   * Adds a listener of state changes: `connecting`, `connected`, `disconnected` (with why),
   * `reconnecting` (once per attempt, with its number and pause).
   */
  on(event: "state", listener: StateListener): this {
    if (event !== "state") throw new TypeError(`no event \`${event}\` (only "state")`);
    this.listeners.push(listener);
    return this;
  }

  /** Removes a listener added with {@link on}. */
  off(event: "state", listener: StateListener): this {
    const i = this.listeners.indexOf(listener);
    if (event === "state" && i >= 0) this.listeners.splice(i, 1);
    return this;
  }

  /** Runs once when the client is closed for good: with why (given up, kicked), `undefined` after {@link close}. */
  onClose(listener: (error: ZserverError | undefined) => void): this {
    this.closeListeners.push(listener);
    return this;
  }

  /**
   * The live connection; {@link DisconnectedError} while away, `closed` once closed for good.
   */
  current(): Client {
    const live = this.live;
    if (this.stateNow === "connected" && live && !live.isClosed) return live;
    if (this.final) throw this.closedError();
    throw new DisconnectedError(this.lastErr);
  }

  /** Waits for a live connection (one that passed the login hook); fails if closed first, or after `timeoutMs`. */
  connected(timeoutMs?: number): Promise<Client> {
    try {
      return Promise.resolve(this.current());
    } catch (e) {
      if (this.final) return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      const done = () => {
        if (timer !== undefined) clearTimeout(timer);
        this.off("state", listener);
      };
      const listener: StateListener = (s) => {
        if (s.state === "connected") {
          done();
          resolve(this.live!);
        } else if (this.final) {
          done();
          reject(this.closedError());
        }
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              done();
              reject(new ZserverError("timeout", `not connected within ${timeoutMs} ms${this.lastErr ? `: ${this.lastErr.message}` : ""}`));
            }, timeoutMs);
      this.on("state", listener);
    });
  }

  /** Registers (or replaces) a handler of the server's calls and sends, on this and every later connection. */
  handle(command: string, handler: Handler): this {
    this.handlers.set(command, handler);
    if (this.live && !this.live.isClosed) this.live.handle(command, handler);
    return this;
  }

  /** Removes a handler. */
  unhandle(command: string): this {
    this.handlers.delete(command);
    this.live?.unhandle(command);
    return this;
  }

  /** Calls on the live connection (see the module documentation for the errors). */
  call(command: string, payload?: Uint8Array, options?: CallOptions): Promise<Uint8Array> {
    return this.on_((c) => c.call(command, payload, options));
  }

  /** A console call on the live connection. */
  console(command: string, text: string, options?: CallOptions): Promise<string> {
    return this.on_((c) => c.console(command, text, options));
  }

  /** A one-way send on the live connection (lost without an error if it drops before the write). */
  send(command: string, payload?: Uint8Array): Promise<void> {
    return this.on_((c) => c.send(command, payload));
  }

  /** Pings the live connection's server; the round trip in milliseconds. */
  ping(options?: CallOptions): Promise<number> {
    return this.on_((c) => c.ping(options));
  }

  /** An upload on the live connection. */
  upload(command: string, meta: Uint8Array | string, source: UploadSource, options?: UploadOptions): Promise<Uint8Array> {
    return this.on_((c) => c.upload(command, meta, source, options));
  }

  /** A download on the live connection (it fails if that connection drops; resume with `offset`). */
  download(command: string, meta: Uint8Array | string, options?: DownloadOptions): Promise<Download> {
    return this.on_((c) => c.download(command, meta, options));
  }

  /** Publishes to a channel on the live connection. */
  publish(channel: string, data: Uint8Array | string, options?: CallOptions): Promise<Position | null> {
    return this.on_((c) => c.publish(channel, data, options));
  }

  /** Who is subscribed to a channel. */
  presence(channel: string, options?: CallOptions): Promise<Member[]> {
    return this.on_((c) => c.presence(channel, options));
  }

  /** A channel's history. */
  history(channel: string, options: HistoryOptions): Promise<HistoryPage> {
    return this.on_((c) => c.history(channel, options));
  }

  /** The subscriptions that will be made again on the next connection. */
  get subscriptions(): Subscription[] {
    return [...this.subs.values()];
  }

  /**
   * Subscribes to `channel` on the live connection, and again on every new one, each time
   * from the last publication delivered: the subscription then sees a `resubscribed` event
   * (`recovered`: whether every publication missed while away follows), then what it
   * missed, then what is new, each once and in order. Fails with `disconnected` while away.
   */
  async subscribe(channel: string, options: SubscribeOptions = {}): Promise<Subscription> {
    const client = this.current();
    if (this.subs.has(channel)) throw new ZserverError("badRequest", `already subscribed to \`${channel}\``);
    const since = options.since ?? null;
    const sub = new Subscription(this.owner, channel, options.maxQueued ?? 100_000, since);
    await client.channels.attach(sub, since, false, options);
    this.subs.set(channel, sub);
    return sub;
  }

  /**
   * Stops reconnecting and closes the live connection (calls in flight fail with
   * `closed`); resolves once the background loop has ended. The state ends `disconnected`
   * with `retrying: false`.
   */
  async close(): Promise<void> {
    if (!this.stopping) {
      this.stopping = true;
      this.live?.close();
      this.wake?.();
      this.finish(undefined);
    }
    await this.finished?.catch(() => undefined);
  }

  // ---- internals ----

  private on_<T>(f: (c: Client) => Promise<T>): Promise<T> {
    let client: Client;
    try {
      client = this.current();
    } catch (e) {
      return Promise.reject(e);
    }
    return f(client);
  }

  private closedError(): ZserverError {
    const why = this.lastErr;
    return why
      ? new ZserverError("closed", `the reconnecting client is closed: ${why.message}`, { cause: why })
      : new ZserverError("closed", "the reconnecting client is closed");
  }

  private emit(change: StateChange): void {
    this.stateNow = change.state;
    for (const l of [...this.listeners]) {
      try {
        l(change);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /** Closed for good: a last `disconnected` unless already there, then the close listeners. */
  private finish(error: ZserverError | undefined): void {
    if (this.final) return;
    this.final = true;
    this.stopping = true;
    if (error) this.lastErr = error;
    const previous = this.stateNow;
    this.live = undefined;
    this.emit({ state: "disconnected", previous, error, retrying: false });
    for (const sub of [...this.subs.values()]) sub.end(undefined);
    this.subs.clear();
    for (const l of this.closeListeners.splice(0)) {
      try {
        l(error);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /** Connects once, logs in and subscribes again; a connection that fails any of it is closed. */
  private async attempt(): Promise<Client> {
    this.attemptCount++;
    const client = await this.connector(this.clientOptions, Object.fromEntries(this.handlers));
    try {
      if (this.onLogin) await this.onLogin(client);
      for (const sub of [...this.subs.values()]) {
        if (sub.ended) {
          this.subs.delete(sub.channel);
          continue;
        }
        try {
          await client.channels.attach(sub, sub.resumeFrom, true);
        } catch (e) {
          const err = asZserverError(e, "io");
          if (client.isClosed || ["closed", "timeout", "io", "shuttingDown", "idleTimeout"].includes(err.kind)) throw err;
          // The server refuses it now (denied, gone): it ends, the rest go on.
          this.subs.delete(sub.channel);
          sub.deliver({ type: "unsubscribed", reason: `not subscribed again: ${err.message}` });
        }
      }
    } catch (e) {
      client.close();
      throw asZserverError(e, "io");
    }
    if (client.isClosed) throw await client.closed.then((why) => why ?? new ZserverError("closed", "closed while logging in"));
    return client;
  }

  /** Offers a new connection. */
  private offer(client: Client): void {
    const previous = this.stateNow;
    this.live = client;
    this.lastErr = undefined;
    if (this.everConnected) this.reconnectCount++;
    this.everConnected = true;
    this.emit({ state: "connected", previous });
  }

  /** Waits `ms`, or less if the client is closed meanwhile. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }

  /** The background loop: watches the live connection, reconnects when it drops. */
  private async run(first: Client | undefined): Promise<void> {
    let live = first;
    // No pause before the very first attempt of `start()`.
    let pause = live !== undefined;
    for (;;) {
      if (live) {
        const why = await live.closed;
        if (this.stopping) return;
        this.live = undefined;
        const error = why ?? new ZserverError("closed", "the connection closed");
        this.lastErr = error;
        if (error instanceof ServerClosedError && !error.retry) {
          this.finish(error);
          return;
        }
        this.emit({ state: "disconnected", previous: "connected", error, retrying: true });
        live = undefined;
      }
      let failures = 0;
      let retry = 0;
      for (;;) {
        if (this.stopping) return;
        const phase: ConnectionState = this.everConnected ? "reconnecting" : "connecting";
        const delayMs = pause ? Math.round(backoffPause(this.backoff, retry++)) : 0;
        this.emit({ state: phase, previous: this.stateNow, attempt: failures + 1, delayMs, error: failures > 0 ? this.lastErr : undefined });
        if (delayMs > 0) await this.sleep(delayMs);
        pause = true;
        if (this.stopping) return;
        let client: Client;
        try {
          client = await this.attempt();
        } catch (e) {
          if (this.stopping) return;
          failures++;
          this.lastErr = asZserverError(e, "io");
          const limit = this.backoff.giveUpAfter;
          if (limit !== undefined && failures >= Math.max(limit, 1)) {
            this.finish(
              new ZserverError("closed", `gave up after ${failures} failed attempts: ${this.lastErr.message}`, {
                cause: this.lastErr,
              }),
            );
            return;
          }
          continue;
        }
        if (this.stopping) {
          client.close();
          return;
        }
        this.offer(client);
        live = client;
        break;
      }
    }
  }
}
