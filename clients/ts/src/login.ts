/**
 * The login server's typed API (`zserver serve`; `login/src/protocol.rs`): accounts,
 * sessions, push to users or everyone, who is online, per-user files, and the two events
 * the server pushes (`message`, `kicked`). Payloads are postcard.
 * @module
 */

import { type CallOptions, Client, type HandlerContext } from "./client.js";
import { ReconnectingClient } from "./reconnect.js";
import { ZserverError } from "./errors.js";
import { decodeAll, decodeString, encodeString, PostcardReader, PostcardWriter } from "./postcard.js";
import { hashOf, type Download, type Progress, type UploadSource } from "./stream.js";

/** A message as its recipient sees it. */
export interface Message {
  /** Who sent it. */
  from: string;
  /** The text. */
  text: string;
}

/** What became of a push. */
export interface PushReport {
  /** Users it was delivered to now (for a push to everyone, at most 10,000 names). */
  delivered: string[];
  /** Users it was stored for, delivered at their next login (bounded likewise). */
  stored: string[];
  /** How many users it was delivered to now. */
  deliveredCount: number;
  /** How many users it was stored for. */
  storedCount: number;
  /**
   * Users whose node (in a cluster) took the push but did not confirm in time: delivered to
   * them or stored for them, exactly once, but the server cannot say which.
   */
  unconfirmed: string[];
}

/** A page of the users online. */
export interface WhoPage {
  /** The names on this page, in byte order. */
  users: string[];
  /** How many users are online in all, on every node. */
  online: number;
  /** Whether names follow this page. */
  more: boolean;
}

/** One file of the user's store. */
export interface FileInfo {
  /** Its name. */
  name: string;
  /** Its size in bytes. */
  size: number;
}

/** What the server pushes to a logged-in client. */
export type LoginEvent =
  | { type: "message"; message: Message }
  | { type: "kicked"; reason: string };

/** Most names one `who` page may ask for. */
/** What the server kept of an upload that broke off: its first `size` bytes, whose BLAKE3 hash is `hash`. */
export interface PartialUpload {
  size: number;
  hash: Uint8Array;
}

/** What `putResumable` did. */
export interface Uploaded {
  /** Bytes sent by this call. */
  written: number;
  /** Where it went on from: the size of the server's partial upload when resumed, else 0. */
  resumedFrom: number;
  /** The server's partial upload was not `data`'s start (or the server would not go on from it), so the upload started over. */
  restarted: boolean;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

export const MAX_WHO_PAGE = 65_536;

function readMessage(r: PostcardReader): Message {
  return { from: r.string(), text: r.string() };
}

function readStrings(r: PostcardReader): string[] {
  return r.seq((r) => r.string());
}

function credentials(user: string, password: string): Uint8Array {
  return new PostcardWriter().string(user).string(password).finish();
}

const UNIT = new Uint8Array(0);

/** Checks that a `()` reply is empty. */
function unit(reply: Uint8Array): void {
  if (reply.length !== 0) throw new ZserverError("codec", `expected an empty reply, got ${reply.length} bytes`);
}

/**
 * A client of the login server. Wrap a connected {@link Client}: its `message` and
 * `kicked` handlers are registered at once (the server pushes only after `login`).
 *
 * Or wrap a {@link ReconnectingClient}: the handlers then hold on every connection, and
 * {@link login} logs in again after every reconnect (as the reconnecting client's login
 * hook; messages stored meanwhile come as `message` events). Being kicked (the user logged
 * in elsewhere) closes it for good: coming back would kick the other session.
 */
export class LoginClient<C extends Client | ReconnectingClient = Client> {
  private readonly messageListeners: ((m: Message) => void)[] = [];
  private readonly kickedListeners: ((reason: string) => void)[] = [];
  private readonly queued: LoginEvent[] = [];
  private readonly waiters: ((e: LoginEvent | undefined) => void)[] = [];
  private ended = false;
  /** The newest login token ({@link loginToken}, {@link refreshToken}). */
  private token: string | undefined;
  /** Most events kept for {@link nextEvent} while nobody takes them (the oldest go first). */
  maxQueuedEvents = 10_000;

  /** @param client a connection to a login server, or a reconnecting client of one. */
  constructor(readonly client: C) {
    client.handle("message", (payload, ctx) => this.onMessage(payload, ctx));
    client.handle("kicked", (payload, ctx) => this.onKicked(payload, ctx));
    client.onClose(() => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w(undefined);
    });
  }

  private onMessage(payload: Uint8Array, _ctx: HandlerContext): void {
    this.message(decodeAll(payload, readMessage));
  }

  private message(message: Message): void {
    for (const l of this.messageListeners) l(message);
    this.enqueue({ type: "message", message });
  }

  private onKicked(payload: Uint8Array, ctx: HandlerContext): void {
    const reason = decodeString(payload);
    // The server closes next: its close error says why, and not to come back.
    ctx.client.expectClose(`kicked: ${reason}`, false);
    for (const l of this.kickedListeners) l(reason);
    this.enqueue({ type: "kicked", reason });
  }

  private enqueue(e: LoginEvent): void {
    const w = this.waiters.shift();
    if (w) return w(e);
    this.queued.push(e);
    if (this.queued.length > this.maxQueuedEvents) this.queued.shift();
  }

  /** Subscribes to an event: `"message"` (a {@link Message}) or `"kicked"` (the reason). */
  on(event: "message", listener: (m: Message) => void): this;
  on(event: "kicked", listener: (reason: string) => void): this;
  on(event: "message" | "kicked", listener: ((m: Message) => void) | ((reason: string) => void)): this {
    if (event === "message") this.messageListeners.push(listener as (m: Message) => void);
    else this.kickedListeners.push(listener as (reason: string) => void);
    return this;
  }

  /**
   * The next event (in arrival order, including those that came before the call), or
   * `undefined` once the connection has closed and none are left; `timeout` after `timeoutMs`.
   */
  nextEvent(timeoutMs?: number): Promise<LoginEvent | undefined> {
    const e = this.queued.shift();
    if (e) return Promise.resolve(e);
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const waiter = (ev: LoginEvent | undefined) => {
        if (timer !== undefined) clearTimeout(timer);
        resolve(ev);
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              const i = this.waiters.indexOf(waiter);
              if (i >= 0) this.waiters.splice(i, 1);
              reject(new ZserverError("timeout", `no event within ${timeoutMs} ms`));
            }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** Creates an account. */
  async register(user: string, password: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("register", credentials(user, password), options));
  }

  /**
   * Logs in; resolves with the messages stored while the user was offline, oldest first.
   * On a {@link ReconnectingClient}, also logs in again on every new connection (the
   * messages stored meanwhile come as `message` events) until {@link logout}.
   */
  async login(user: string, password: string, options?: CallOptions): Promise<Message[]> {
    const reply = await this.client.call("login", credentials(user, password), options);
    const stored = decodeAll(reply, (r) => r.seq(readMessage));
    if (this.client instanceof ReconnectingClient) {
      this.client.onLogin = async (client: Client) => {
        const again = await client.call("login", credentials(user, password), options);
        for (const m of decodeAll(again, (r) => r.seq(readMessage))) this.message(m);
      };
    }
    return stored;
  }

  /**
   * Logs in with a signed token (a JWT the app's back end minted; docs/LOGIN.md section 5b)
   * instead of a password; resolves with the stored messages as {@link login} does. A
   * refused token rejects with the server's `invalid token: REASON`. Before the token's
   * `exp`, send a newer one with {@link refreshToken}, or the server ends the session then
   * (a `kicked` event, `token expired`, and the connection closes). On a
   * {@link ReconnectingClient}, each new connection logs in with the newest token given to
   * this method or {@link refreshToken}.
   */
  async loginToken(token: string, options?: CallOptions): Promise<Message[]> {
    this.token = token;
    const reply = await this.client.call("login_token", encodeString(token), options);
    const stored = decodeAll(reply, (r) => r.seq(readMessage));
    if (this.client instanceof ReconnectingClient) {
      this.client.onLogin = async (client: Client) => {
        const again = await client.call("login_token", encodeString(this.token ?? token), options);
        for (const m of decodeAll(again, (r) => r.seq(readMessage))) this.message(m);
      };
    }
    return stored;
  }

  /**
   * Replaces the token of a session that logged in with {@link loginToken} by a newer one
   * for the same user: its `exp`, `info` and `channels` take effect.
   */
  async refreshToken(token: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("refresh_token", encodeString(token), options));
    this.token = token;
  }

  /**
   * Adds the private channels of a subscribe token (a token for this session's user with a
   * `channels` claim) to what this connection may subscribe and publish to, until its `exp`;
   * after any login, password or token.
   */
  async channelToken(token: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("channel_token", encodeString(token), options));
  }

  /** Ends the session (the connection stays open; a reconnecting client no longer logs in again). */
  async logout(options?: CallOptions): Promise<void> {
    if (this.client instanceof ReconnectingClient) this.client.onLogin = undefined;
    unit(await this.client.call("logout", UNIT, options));
  }

  /** Changes the password. */
  async changePassword(old: string, next: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("passwd", new PostcardWriter().string(old).string(next).finish(), options));
  }

  /** Deletes the account with its messages and files. */
  async deleteAccount(password: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("delete", encodeString(password), options));
  }

  /** One page of the users online: at most `limit` names sorting after `after`. */
  async whoPage(after: string | undefined, limit = MAX_WHO_PAGE, options?: CallOptions): Promise<WhoPage> {
    const req = new PostcardWriter().option(after, (w, a) => w.string(a)).u32(limit).finish();
    const reply = await this.client.call("who", req, options);
    return decodeAll(reply, (r) => ({ users: readStrings(r), online: r.u64(), more: r.bool() }));
  }

  /** Every user online, sorted (page after page). */
  async who(options?: CallOptions): Promise<string[]> {
    const users: string[] = [];
    let after: string | undefined;
    for (;;) {
      const page = await this.whoPage(after, MAX_WHO_PAGE, options);
      users.push(...page.users);
      if (!page.more || page.users.length === 0) return users;
      after = users[users.length - 1];
    }
  }

  /** Sends `text` to `users` (stored for those offline). */
  push(users: string[], text: string, options?: CallOptions): Promise<PushReport> {
    // Recipients::Users is variant 0, with a Vec<String>.
    const w = new PostcardWriter().varint(0).seq(users, (w, u) => w.string(u)).string(text);
    return this.pushRaw(w.finish(), options);
  }

  /** Sends `text` to everyone online (Recipients::Everyone, variant 1). */
  pushAll(text: string, options?: CallOptions): Promise<PushReport> {
    return this.pushRaw(new PostcardWriter().varint(1).string(text).finish(), options);
  }

  private async pushRaw(payload: Uint8Array, options?: CallOptions): Promise<PushReport> {
    const reply = await this.client.call("push", payload, options);
    return decodeAll(reply, (r) => ({
      delivered: readStrings(r),
      stored: readStrings(r),
      deliveredCount: r.u64(),
      storedCount: r.u64(),
      // Added after the first version: absent from an older server's reply.
      unconfirmed: r.remaining > 0 ? readStrings(r) : [],
    }));
  }

  /** Uploads `data` as the file `name`; resolves with the size stored. */
  async put(
    name: string,
    data: UploadSource,
    options: { total?: number; onProgress?: Progress; prefixHash?: Uint8Array } & CallOptions = {},
  ): Promise<number> {
    const reply = await this.client.upload("put", name, data, options);
    if (reply.length !== 8) throw new ZserverError("codec", `bad put reply of ${reply.length} bytes`);
    const size = new DataView(reply.buffer, reply.byteOffset, 8).getBigUint64(0, true);
    return Number(size);
  }

  /** What the server kept of an upload of `name` that broke off, if anything. */
  async partialUpload(name: string, options?: CallOptions): Promise<PartialUpload | undefined> {
    const reply = await this.client.call("put_partial", encodeString(name), options);
    return decodeAll(reply, (r) => r.option((r) => ({ size: r.u64(), hash: r.raw(32) })));
  }

  /**
   * Uploads `data` as the file `name`, going on from what the server kept of an upload of
   * that name that broke off when those bytes are `data`'s first ones (checked by hash here,
   * and by the server); otherwise from the start, and `restarted` says so.
   */
  async putResumable(
    name: string,
    data: Uint8Array | Blob,
    options: { onProgress?: Progress } & CallOptions = {},
  ): Promise<Uploaded> {
    const length = data instanceof Uint8Array ? data.length : data.size;
    const slice = (from: number) => (data instanceof Uint8Array ? data.subarray(from) : data.slice(from));
    const partial = await this.partialUpload(name, options);
    let from = 0;
    if (partial !== undefined && partial.size > 0 && partial.size <= length) {
      const start = data instanceof Uint8Array ? data.subarray(0, partial.size) : data.slice(0, partial.size);
      if (sameBytes(await hashOf(start), partial.hash)) from = partial.size;
    }
    if (from > 0) {
      try {
        const stored = await this.put(name, slice(from), { ...options, total: length - from, prefixHash: partial!.hash });
        return { written: stored - from, resumedFrom: from, restarted: false };
      } catch (e) {
        // Another upload took the partial, or it expired: start over.
        if (!(e instanceof ZserverError && e.message.includes("no partial upload"))) throw e;
      }
    }
    const stored = await this.put(name, data, options);
    return { written: stored, resumedFrom: 0, restarted: partial !== undefined };
  }

  /** Downloads the file `name` from `offset` (resuming); read the returned stream. */
  get(name: string, options: { offset?: number; onProgress?: Progress } & CallOptions = {}): Promise<Download> {
    return this.client.download("get", name, options);
  }

  /** The user's files. */
  async ls(options?: CallOptions): Promise<FileInfo[]> {
    const reply = await this.client.call("ls", UNIT, options);
    return decodeAll(reply, (r) => r.seq((r) => ({ name: r.string(), size: r.u64() })));
  }

  /** One file's size. */
  async stat(name: string, options?: CallOptions): Promise<FileInfo> {
    const reply = await this.client.call("stat", encodeString(name), options);
    return decodeAll(reply, (r) => ({ name: r.string(), size: r.u64() }));
  }

  /** Deletes a file. */
  async rm(name: string, options?: CallOptions): Promise<void> {
    unit(await this.client.call("rm", encodeString(name), options));
  }

  /** Closes the connection (a reconnecting client for good). */
  close(): void {
    void this.client.close();
  }
}
