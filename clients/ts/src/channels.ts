/**
 * Channels (docs/PROTOCOL.md, section 6c): subscribe to named channels and get their
 * publications, exactly once and in order (with recovery from a kept position after a
 * reconnect), publish to them, ask for presence and history. On the wire these are
 * ordinary calls (`$ch.sub`, `$ch.unsub`, `$ch.pub`, `$ch.presence`, `$ch.history`) and
 * one-way sends from the server (`$ch.p`, `$ch.join`, `$ch.leave`, `$ch.unsubscribed`),
 * all postcard.
 *
 * ```ts
 * const lobby = await client.subscribe("chat:lobby");
 * lobby.on("publication", (p) => console.log(p.from, new TextDecoder().decode(p.data)));
 * await client.publish("chat:lobby", "hello");
 * // later, on a new connection, from where it stopped:
 * const again = await other.subscribe("chat:lobby", { since: lobby.position });
 * if (!again.recovered) reloadFromTheApp();
 * ```
 * @module
 */

import type { CallOptions, Client } from "./client.js";
import { ZserverError } from "./errors.js";
import { PostcardReader, PostcardWriter } from "./postcard.js";

/** The call and send names of section 6c. */
export const CHANNEL_COMMANDS = {
  subscribe: "$ch.sub",
  unsubscribe: "$ch.unsub",
  publish: "$ch.pub",
  presence: "$ch.presence",
  history: "$ch.history",
  delivery: "$ch.p",
  join: "$ch.join",
  leave: "$ch.leave",
  unsubscribed: "$ch.unsubscribed",
} as const;

/**
 * Where a publication stands in its channel's history: `offset` counts publications from
 * 1; `epoch` names one unbroken history (another epoch: the history was lost). Both are
 * u64, hence bigints.
 */
export interface Position {
  epoch: bigint;
  offset: bigint;
}

/** One publication. */
export interface Publication {
  /** Its offset in the channel (0n in a channel without history). */
  offset: bigint;
  /** The user who published it, as the server knows them (empty: the server's own code). */
  from: string;
  /** What was published. */
  data: Uint8Array;
}

/** One subscriber, as presence and join/leave events show it. */
export interface Member {
  /** The subscriber's connection id on its server. */
  client: bigint;
  /** The user, as the server's app identified the connection (empty when it did not). */
  user: string;
  /** What the server's app attached to the connection. */
  info: Uint8Array;
}

/** The answer to {@link Channels.history}. */
export interface HistoryPage {
  /** The channel's position now. */
  position: Position;
  /** The publications asked for, oldest first. */
  publications: Publication[];
}

/** What a {@link Subscription} yields, in order. */
export type ChannelEvent =
  /** A publication (each once, in the channel's order). */
  | { type: "publication"; publication: Publication }
  /** Someone subscribed (namespaces with join and leave events). */
  | { type: "join"; member: Member }
  /** Someone unsubscribed, or their connection closed. */
  | { type: "leave"; member: Member }
  /**
   * A {@link ReconnectingClient}'s subscription was made again on a new connection. With
   * `recovered`, every publication missed while away follows, before any newer one;
   * without it (the gap is older than the history, or the history was lost), reload the
   * channel's state from the app.
   */
  | { type: "resubscribed"; recovered: boolean; position: Position | null }
  /** The server ended the subscription; this is the last event. */
  | { type: "unsubscribed"; reason: string };

/** The listener of one event type. */
type Listener<T extends ChannelEvent["type"]> = (
  value: T extends "publication"
    ? Publication
    : T extends "join" | "leave"
      ? Member
      : T extends "resubscribed"
        ? Resubscribed
        : string,
) => void;

/** What a `"resubscribed"` listener gets. */
export interface Resubscribed {
  /** Whether every publication missed while away follows (else: reload from the app). */
  recovered: boolean;
  /** The channel's position on resubscribing (`null`: no history). */
  position: Position | null;
}

/** @internal Whom a {@link Subscription} tells that it ended or is unsubscribed. */
export interface SubscriptionOwner {
  forget(sub: Subscription): void;
  release(sub: Subscription, options?: CallOptions): Promise<void>;
}

/** Options of {@link Channels.subscribe}. */
export interface SubscribeOptions extends CallOptions {
  /**
   * Recover from this position (normally the {@link Subscription.position} of an earlier
   * subscription): every publication after it comes first, once each, if the server's
   * history still holds them all ({@link Subscription.recovered} says whether it did).
   */
  since?: Position | null;
  /**
   * Most events kept for {@link Subscription.next} and the async iterator while nobody
   * takes them (default 100,000). Past it the subscription ends (as if the server had
   * ended it, reason `"too many events unread"`) and is unsubscribed; subscribe again
   * from its {@link Subscription.position} to miss nothing.
   */
  maxQueued?: number;
}

/** Options of {@link Channels.history}. */
export interface HistoryOptions extends CallOptions {
  /** Only publications after this position (default: from the oldest kept). */
  since?: Position | null;
  /** At most this many publications (a u32). */
  limit: number;
}

// ---- postcard encodings (section 6c, field order as listed) ----

function writePosition(w: PostcardWriter, p: Position): void {
  w.u64(p.epoch).u64(p.offset);
}

function readU64(r: PostcardReader): bigint {
  return BigInt(r.varintAny(10));
}

function readPosition(r: PostcardReader): Position {
  return { epoch: readU64(r), offset: readU64(r) };
}

function readPublication(r: PostcardReader): Publication {
  return { offset: readU64(r), from: r.string(), data: r.bytes().slice() };
}

function readMember(r: PostcardReader): Member {
  return { client: readU64(r), user: r.string(), info: r.bytes().slice() };
}

/**
 * Decodes a value from the front of `buf`. Bytes after it are ignored, as zserver ignores
 * them (section 6, "Trailing bytes": a receiver MAY).
 */
function decode<T>(buf: Uint8Array, read: (r: PostcardReader) => T): T {
  return read(new PostcardReader(buf));
}

/** `SubscribeRequest { channel, since }`. */
export function encodeSubscribeRequest(channel: string, since?: Position | null): Uint8Array {
  return new PostcardWriter(channel.length + 24).string(channel).option(since, writePosition).finish();
}

/** `Subscribed { position, recovered, publications }`. */
export interface Subscribed {
  position: Position | null;
  recovered: boolean;
  publications: Publication[];
}

/** Decodes the answer to `$ch.sub`. */
export function decodeSubscribed(buf: Uint8Array): Subscribed {
  return decode(buf, (r) => ({
    position: r.option(readPosition) ?? null,
    recovered: r.bool(),
    publications: r.seq(readPublication),
  }));
}

/** A `$ch.p` payload: `Delivery { channel, offset, from, data }`. */
export function decodeDelivery(buf: Uint8Array): { channel: string; publication: Publication } {
  return decode(buf, (r) => ({ channel: r.string(), publication: readPublication(r) }));
}

/** `PublishRequest { channel, data }`. */
export function encodePublishRequest(channel: string, data: Uint8Array): Uint8Array {
  return new PostcardWriter(channel.length + data.length + 8).string(channel).bytes(data).finish();
}

/** `HistoryRequest { channel, since, limit }`. */
export function encodeHistoryRequest(channel: string, since: Position | null | undefined, limit: number): Uint8Array {
  if (!Number.isInteger(limit) || limit < 0 || limit > 0xffffffff) {
    throw new ZserverError("codec", `history limit ${limit} is not a u32`);
  }
  return new PostcardWriter(channel.length + 24).string(channel).option(since, writePosition).u32(limit).finish();
}

/** Decodes `HistoryPage { position, publications }`. */
export function decodeHistoryPage(buf: Uint8Array): HistoryPage {
  return decode(buf, (r) => ({ position: readPosition(r), publications: r.seq(readPublication) }));
}

/** Decodes `Vec<Member>`. */
export function decodeMembers(buf: Uint8Array): Member[] {
  return decode(buf, (r) => r.seq(readMember));
}

/** Decodes `Option<Position>` (the answer to `$ch.pub`). */
export function decodeOptionPosition(buf: Uint8Array): Position | null {
  return decode(buf, (r) => r.option(readPosition) ?? null);
}

/** Decodes `PresenceEvent { channel, member }` (`$ch.join`, `$ch.leave`). */
function decodePresenceEvent(buf: Uint8Array): { channel: string; member: Member } {
  return decode(buf, (r) => ({ channel: r.string(), member: readMember(r) }));
}

/** Decodes `Unsubscribed { channel, reason }`. */
function decodeUnsubscribed(buf: Uint8Array): { channel: string; reason: string } {
  return decode(buf, (r) => ({ channel: r.string(), reason: r.string() }));
}

const encoder = new TextEncoder();
const DEFAULT_MAX_QUEUED = 100_000;

/**
 * One subscription: its events in order, as an async iterator (`for await (const e of
 * sub)`), with {@link next}, or through listeners ({@link on}). An event type that has a
 * listener goes to it and is not queued for the iterator; events that came before the
 * listener was added are handed to it when it is added, so a listener added right after
 * `subscribe` misses nothing (the recovered publications included). The iteration ends
 * after an `unsubscribed` event, after {@link unsubscribe}, or when the connection
 * closes (events queued before still come first).
 */
export class Subscription implements AsyncIterable<ChannelEvent> {
  private recoveredFlag = true;
  /** The last publication delivered (queued or given to a listener), for dropping repeats. */
  private last: Position | null = null;
  /** The last publication the app took. */
  private taken: Position | null = null;
  private readonly queue: { event: ChannelEvent; position: Position | null }[] = [];
  private readonly waiters: ((e: ChannelEvent | undefined) => void)[] = [];
  private readonly listeners: { [K in ChannelEvent["type"]]: Listener<K>[] } = {
    publication: [],
    join: [],
    leave: [],
    resubscribed: [],
    unsubscribed: [],
  };
  private endedFlag = false;
  private endListeners: ((reason: string | undefined) => void)[] = [];

  /** @internal made by {@link Channels.subscribe}. */
  constructor(
    private readonly owner: SubscriptionOwner,
    /** The channel's name. */
    readonly channel: string,
    private readonly maxQueued: number,
    since: Position | null | undefined,
  ) {
    this.last = since ?? null;
    this.taken = this.last;
  }

  /**
   * Whether every publication after the `since` position came (they are the first events,
   * before any newer publication). Without `since`, true; from a position the server no
   * longer holds (another epoch, a gap older than its history), false: reload the
   * channel's state from the app.
   */
  get recovered(): boolean {
    return this.recoveredFlag;
  }

  /**
   * The position of the last publication the app took (from the iterator or a listener),
   * else the channel's position when the subscription took effect; `null` when the
   * channel keeps no history. Subscribe again `since` it to miss nothing.
   */
  get position(): Position | null {
    return this.taken && { ...this.taken };
  }

  /** Whether the subscription has ended (no more events will be queued). */
  get ended(): boolean {
    return this.endedFlag;
  }

  /**
   * Adds a listener: `"publication"` (a {@link Publication}), `"join"` / `"leave"` (a
   * {@link Member}), `"unsubscribed"` (the server's reason), `"resubscribed"` (a
   * {@link ReconnectingClient} made it again on a new connection: `{recovered, position}`). Events of that type queued
   * unread are handed to it at once.
   */
  on(event: "publication", listener: (p: Publication) => void): this;
  on(event: "join" | "leave", listener: (m: Member) => void): this;
  on(event: "resubscribed", listener: (r: Resubscribed) => void): this;
  on(event: "unsubscribed", listener: (reason: string) => void): this;
  on(event: ChannelEvent["type"], listener: (value: never) => void): this {
    (this.listeners[event] as unknown[]).push(listener);
    // Hand over what waited, in order; the rest stays queued.
    const rest = this.queue.splice(0);
    for (const item of rest) {
      if (item.event.type === event) this.give(item.event, item.position);
      else this.queue.push(item);
    }
    return this;
  }

  /** Runs once when the subscription ends: with the server's reason, or `undefined` (unsubscribed here, or the connection closed). */
  onEnd(listener: (reason: string | undefined) => void): this {
    if (this.endedFlag) listener(this.endReason);
    else this.endListeners.push(listener);
    return this;
  }

  private endReason: string | undefined;

  /**
   * The next event, or `undefined` once the subscription has ended and nothing is left;
   * `timeout` after `timeoutMs`.
   */
  next(timeoutMs?: number): Promise<ChannelEvent | undefined> {
    const item = this.queue.shift();
    if (item) {
      if (item.position) this.taken = item.position;
      return Promise.resolve(item.event);
    }
    if (this.endedFlag) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => {
      const waiter = (e: ChannelEvent | undefined) => {
        if (timer !== undefined) clearTimeout(timer);
        resolve(e);
      };
      const timer =
        timeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              const i = this.waiters.indexOf(waiter);
              if (i >= 0) this.waiters.splice(i, 1);
              reject(new ZserverError("timeout", `no event on \`${this.channel}\` within ${timeoutMs} ms`));
            }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<ChannelEvent> {
    for (;;) {
      const e = await this.next();
      if (e === undefined) return;
      yield e;
    }
  }

  /** Ends the subscription and tells the server (resolves once it confirmed). */
  async unsubscribe(options?: CallOptions): Promise<void> {
    if (this.endedFlag) return;
    this.end(undefined);
    await this.owner.release(this, options);
  }

  // ---- internal: what Channels calls ----

  /**
   * @internal The answer to `$ch.sub` arrived: its publications first, then `held`, each
   * once. `again`: made again on a new connection (a `resubscribed` event comes first).
   */
  settle(answer: Subscribed, since: Position | null | undefined, held: ChannelEvent[], again = false): void {
    this.recoveredFlag = answer.recovered;
    if (again) {
      const position = answer.position && { ...answer.position };
      this.push({ type: "resubscribed", recovered: answer.recovered, position }, null);
      // Not recovered: the old position means nothing in the history the server has now.
      if (!answer.recovered) this.last = null;
    }
    if (since) {
      for (const p of answer.publications) this.publication(p);
    }
    // Every delivery after the answer has a greater offset than its position (and after
    // a failed recovery, the position the client knew means nothing any more).
    this.last = answer.position && { ...answer.position };
    if (this.queue.length === 0) this.taken = this.last && { ...this.last };
    for (const e of held) this.deliver(e);
  }

  /** @internal Where to subscribe again from: the last publication delivered (queued or taken). */
  get resumeFrom(): Position | null {
    return this.last && { ...this.last };
  }

  /** @internal An event for this subscription (after its answer). */
  deliver(event: ChannelEvent): void {
    if (this.endedFlag) return;
    if (event.type === "publication") return this.publication(event.publication);
    this.push(event, null);
    if (event.type === "unsubscribed") this.end(event.reason);
  }

  /** Delivers a publication unless one at or before its offset was delivered already. */
  private publication(p: Publication): void {
    let position: Position | null = null;
    if (p.offset > 0n && this.last) {
      if (p.offset <= this.last.offset) return;
      this.last = { epoch: this.last.epoch, offset: p.offset };
      position = { ...this.last };
    }
    this.push({ type: "publication", publication: p }, position);
  }

  private push(event: ChannelEvent, position: Position | null): void {
    if (this.listeners[event.type].length > 0) return this.give(event, position);
    const w = this.waiters.shift();
    if (w) {
      if (position) this.taken = position;
      return w(event);
    }
    if (this.queue.length >= this.maxQueued && event.type !== "unsubscribed") {
      this.push({ type: "unsubscribed", reason: "too many events unread" }, null);
      this.end("too many events unread");
      void this.owner.release(this).catch(() => undefined);
      return;
    }
    this.queue.push({ event, position });
  }

  private give(event: ChannelEvent, position: Position | null): void {
    if (position) this.taken = position;
    const value =
      event.type === "publication"
        ? event.publication
        : event.type === "unsubscribed"
          ? event.reason
          : event.type === "resubscribed"
            ? { recovered: event.recovered, position: event.position }
            : event.member;
    for (const l of this.listeners[event.type] as ((v: unknown) => void)[]) {
      try {
        l(value);
      } catch {
        // a listener's failure is its own
      }
    }
  }

  /** @internal No more events: wakes the iterator once the queue is empty. */
  end(reason: string | undefined): void {
    if (this.endedFlag) return;
    this.endedFlag = true;
    this.endReason = reason;
    this.owner.forget(this);
    for (const w of this.waiters.splice(0)) w(undefined);
    for (const l of this.endListeners.splice(0)) {
      try {
        l(reason);
      } catch {
        // a listener's failure is its own
      }
    }
  }
}

/** A subscription on this connection, and what arrived for it before its answer. */
interface Slot {
  sub: Subscription;
  /** Set while `$ch.sub` is in flight: deliveries wait here (section 6c). */
  held: ChannelEvent[] | undefined;
  /** A reconnecting client's: outlives this connection (not ended when it closes). */
  keep: boolean;
}

/**
 * The channels side of one {@link Client} (`client.channels`; its `subscribe`,
 * `publish`, `presence` and `history` are also on the client). Registers the handlers
 * of `$ch.p`, `$ch.join`, `$ch.leave` and `$ch.unsubscribed` on the client.
 */
export class Channels implements SubscriptionOwner {
  private readonly slots = new Map<string, Slot>();

  /** @param client the connection (one `Channels` per client; `client.channels` makes it). */
  constructor(readonly client: Client) {
    client.handle(CHANNEL_COMMANDS.delivery, (payload) => {
      const d = decodeDelivery(payload);
      this.route(d.channel, { type: "publication", publication: d.publication });
    });
    client.handle(CHANNEL_COMMANDS.join, (payload) => {
      const e = decodePresenceEvent(payload);
      this.route(e.channel, { type: "join", member: e.member });
    });
    client.handle(CHANNEL_COMMANDS.leave, (payload) => {
      const e = decodePresenceEvent(payload);
      this.route(e.channel, { type: "leave", member: e.member });
    });
    client.handle(CHANNEL_COMMANDS.unsubscribed, (payload) => {
      const e = decodeUnsubscribed(payload);
      this.route(e.channel, { type: "unsubscribed", reason: e.reason });
    });
    client.onClose(() => {
      for (const slot of [...this.slots.values()]) if (!slot.keep) slot.sub.end(undefined);
      this.slots.clear();
    });
  }

  /** Hands an event from the server to its subscription (held while the answer is awaited). */
  private route(channel: string, event: ChannelEvent): void {
    const slot = this.slots.get(channel);
    if (!slot) return; // no subscription to that channel: ignored (section 6c)
    if (slot.held) slot.held.push(event);
    else slot.sub.deliver(event);
  }

  /** The subscriptions this connection holds, by channel. */
  get subscriptions(): Subscription[] {
    return [...this.slots.values()].map((s) => s.sub);
  }

  /**
   * Subscribes to `channel` (from `since` when given). The subscription is registered
   * before `$ch.sub` is sent; deliveries that arrive before the answer are held, then
   * the answer's recovered publications come first and the held ones after them, with
   * repeats dropped: each publication once, in order. Fails with `denied` (code 7) where
   * the server refuses the channel, `limit` (code 8) past its limits, `badRequest` for an
   * empty or too long name or a second subscription to the same channel.
   */
  async subscribe(channel: string, options: SubscribeOptions = {}): Promise<Subscription> {
    if (this.slots.has(channel)) {
      throw new ZserverError("badRequest", `already subscribed to \`${channel}\``);
    }
    const since = options.since ?? null;
    const sub = new Subscription(this, channel, options.maxQueued ?? DEFAULT_MAX_QUEUED, since);
    await this.subscribeOn(sub, since, options, false, false);
    return sub;
  }

  /**
   * @internal Subscribes a {@link ReconnectingClient}'s `sub` on this connection from
   * `since` (`again`: a resubscription, which starts with a `resubscribed` event). The
   * slot outlives the connection: its close does not end `sub`.
   */
  attach(sub: Subscription, since: Position | null, again: boolean, options: CallOptions = {}): Promise<void> {
    if (this.slots.has(sub.channel)) {
      return Promise.reject(new ZserverError("badRequest", `already subscribed to \`${sub.channel}\``));
    }
    return this.subscribeOn(sub, since, options, true, again);
  }

  private async subscribeOn(
    sub: Subscription,
    since: Position | null,
    options: CallOptions,
    keep: boolean,
    again: boolean,
  ): Promise<void> {
    const channel = sub.channel;
    const slot: Slot = { sub, held: [], keep };
    this.slots.set(channel, slot);
    let answer: Subscribed;
    try {
      const reply = await this.client.call(CHANNEL_COMMANDS.subscribe, encodeSubscribeRequest(channel, since), options);
      answer = decodeSubscribed(reply);
    } catch (e) {
      if (this.slots.get(channel) === slot) this.slots.delete(channel);
      // Timed out or undecodable: the server may hold the subscription; undo it there.
      if (e instanceof ZserverError && (e.kind === "timeout" || e.kind === "codec") && !this.client.isClosed) {
        void this.client.call(CHANNEL_COMMANDS.unsubscribe, encodeString(channel)).catch(() => undefined);
      }
      throw e;
    }
    if (this.slots.get(channel) !== slot) {
      // The connection closed meanwhile.
      throw new ZserverError("closed", `the connection closed while subscribing to \`${channel}\``);
    }
    const held = slot.held ?? [];
    slot.held = undefined;
    sub.settle(answer, since, held, again);
  }

  /** @internal Drops `sub`'s slot (it ended). */
  forget(sub: Subscription): void {
    const slot = this.slots.get(sub.channel);
    if (slot && slot.sub === sub) this.slots.delete(sub.channel);
  }

  /** @internal Tells the server `sub` is over. */
  async release(sub: Subscription, options?: CallOptions): Promise<void> {
    this.forget(sub);
    if (this.client.isClosed) return;
    const reply = await this.client.call(CHANNEL_COMMANDS.unsubscribe, encodeString(sub.channel), options);
    if (reply.length !== 0) throw new ZserverError("codec", `expected an empty reply, got ${reply.length} bytes`);
  }

  /**
   * Publishes `data` (bytes, or a string sent as UTF-8) to `channel`; resolves with its
   * position, or `null` where the channel keeps no history. `denied` (code 7) where
   * clients may not publish there, `limit` (code 8) for data over the namespace's size.
   */
  async publish(channel: string, data: Uint8Array | string, options?: CallOptions): Promise<Position | null> {
    const bytes = typeof data === "string" ? encoder.encode(data) : data;
    const reply = await this.client.call(CHANNEL_COMMANDS.publish, encodePublishRequest(channel, bytes), options);
    return decodeOptionPosition(reply);
  }

  /** Who is subscribed to `channel` (where its namespace has presence; else `denied`). */
  async presence(channel: string, options?: CallOptions): Promise<Member[]> {
    return decodeMembers(await this.client.call(CHANNEL_COMMANDS.presence, encodeString(channel), options));
  }

  /**
   * Up to `limit` of `channel`'s publications after `since` (from the oldest kept when
   * none), oldest first, and the channel's position; where its namespace keeps history
   * (else `denied`). A `since` of another epoch reads from the oldest kept.
   */
  async history(channel: string, options: HistoryOptions): Promise<HistoryPage> {
    const req = encodeHistoryRequest(channel, options.since, options.limit);
    return decodeHistoryPage(await this.client.call(CHANNEL_COMMANDS.history, req, options));
  }
}

function encodeString(s: string): Uint8Array {
  return new PostcardWriter(s.length + 4).string(s).finish();
}
