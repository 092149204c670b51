/**
 * The chat demo: a page of `zserver serve --listen-ws ADDR --web DIR` built on the
 * TypeScript client. Log in (or register), see who is online, push to a user or to
 * everyone, receive pushes and the messages stored while offline, and see being kicked.
 * Rooms are the server's `chat:` channels: the page joins `chat:lobby` at login, more
 * rooms by name, one tab each; a room shows its last messages (history), its members
 * (presence, join and leave events) and what is posted to it (publications), and counts
 * what arrives while another room is shown.
 *
 * The connection is the library's `ReconnectingClient`: when it drops (the server
 * restarts, the network goes, the server hangs) the page says "reconnecting…" and the
 * client tries again by itself, waiting longer each time (up to 5 s); once back it has
 * logged in again and subscribed the rooms again from where each stopped, so that a room
 * shows exactly the messages it missed.
 *
 * The page connects to `?ws=` (default: the WebSocket port that served the page) and pins
 * the server key `?pin=` (the fingerprint `zserver serve` prints): the same Noise XX
 * encryption and pinning as the Rust client.
 */

import {
  connectWebSocket,
  LoginClient,
  type Message,
  type Publication,
  type PushReport,
  ReconnectingClient,
  type StateChange,
  ServerClosedError,
  type Subscription,
} from "@zserver/client";

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el as T;
};

const ui = {
  status: $<HTMLParagraphElement>("status"),
  ws: $<HTMLInputElement>("ws"),
  pin: $<HTMLInputElement>("pin"),
  loginForm: $<HTMLFormElement>("login-form"),
  user: $<HTMLInputElement>("user"),
  password: $<HTMLInputElement>("password"),
  register: $<HTMLButtonElement>("register"),
  connectPanel: $<HTMLElement>("connect-panel"),
  kicked: $<HTMLParagraphElement>("kicked"),
  chat: $<HTMLElement>("chat"),
  online: $<HTMLUListElement>("online"),
  onlineCount: $<HTMLSpanElement>("online-count"),
  onlineNames: $<HTMLDataListElement>("online-names"),
  refresh: $<HTMLButtonElement>("refresh"),
  logout: $<HTMLButtonElement>("logout"),
  pushForm: $<HTMLFormElement>("push-form"),
  to: $<HTMLInputElement>("to"),
  text: $<HTMLInputElement>("text"),
  report: $<HTMLParagraphElement>("report"),
  messages: $<HTMLOListElement>("messages"),
  roomTabs: $<HTMLElement>("room-tabs"),
  roomForm: $<HTMLFormElement>("room-form"),
  room: $<HTMLInputElement>("room"),
  roomPanel: $<HTMLDivElement>("room-panel"),
  roomName: $<HTMLSpanElement>("room-name"),
  leaveRoom: $<HTMLButtonElement>("leave-room"),
  roomMembers: $<HTMLSpanElement>("room-members"),
  roomLists: $<HTMLDivElement>("room-lists"),
  roomPostForm: $<HTMLFormElement>("room-post-form"),
  roomText: $<HTMLInputElement>("room-text"),
  roomReport: $<HTMLParagraphElement>("room-report"),
};

const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
ui.ws.value = params.get("ws") ?? `${scheme}//${location.host}/`;
ui.pin.value = params.get("pin") ?? "";

/** How often the online list is asked for again while logged in. */
const WHO_EVERY_MS = 3000;
/** Most names the page lists, `?shown=` (default 100): one `who` page, so that a server
 * with a million users online sends a hundred names and the count, not the million. */
const WHO_SHOWN = Math.min(Math.max(Number(params.get("shown")) || 100, 1), 1000);
/** Characters of a message shown before "show all": a 1 MB message is one click away,
 * not a page a million letters long. */
const SHOWN_CHARS = 2000;
/** Messages a room shows from before one joined it (its history). */
const ROOM_EARLIER = 20;
/** The room joined at login. */
const LOBBY = "lobby";
/** Waits between reconnection attempts: doubled each time from the first, up to the last
 * (less up to a fifth at random, so that pages dropped together do not come back at once). */
const BACKOFF = { initialMs: 250, maxMs: 5000, factor: 2, jitter: 0.2 };
/** A server silent this long is pinged, and given up after as long again. */
const HEARTBEAT_MS = 10_000;

type State = "idle" | "online" | "reconnecting" | "error" | "kicked";

function setStatus(text: string, state: State): void {
  ui.status.textContent = text;
  ui.status.title = "";
  ui.status.dataset.state = state;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A message's text: the first {@link SHOWN_CHARS} characters, and a button for the rest. */
function textOf(text: string): HTMLElement {
  const span = document.createElement("span");
  span.className = "text";
  if (text.length <= SHOWN_CHARS) {
    span.textContent = text;
    return span;
  }
  span.textContent = `${text.slice(0, SHOWN_CHARS)}…`;
  const more = document.createElement("button");
  more.type = "button";
  more.className = "more";
  more.textContent = `show all ${text.length.toLocaleString("en")} characters`;
  more.addEventListener("click", () => {
    span.textContent = text;
    more.remove();
  });
  const wrap = document.createElement("span");
  wrap.append(span, more);
  return wrap;
}

function messageItem(from: string, text: string, className: string): HTMLLIElement {
  const li = document.createElement("li");
  if (className) li.className = className;
  const who = document.createElement("span");
  who.className = "from";
  who.textContent = from;
  li.append(who, textOf(text));
  return li;
}

function addMessage(m: Message, kind: "received" | "offline" | "sent", to?: string): void {
  const li = messageItem(kind === "sent" ? `you → ${to}` : m.from, m.text, kind);
  if (kind === "offline") {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = "(while you were offline)";
    li.append(note);
  }
  ui.messages.append(li);
  li.scrollIntoView({ block: "nearest" });
}

// ---- the session: one user logged in, through connections that come and go ----

/** The session: the reconnecting client, logged in as `user`. */
let session: { rc: ReconnectingClient; login: LoginClient<ReconnectingClient>; user: string; timer: number } | undefined;

const online = (): boolean => session?.rc.state === "connected";

function showOnline(users: string[], me: string, count: number): void {
  ui.online.replaceChildren(
    ...users.map((u) => {
      const li = document.createElement("li");
      li.textContent = u;
      if (u === me) li.className = "me";
      li.addEventListener("click", () => {
        ui.to.value = u;
        ui.text.focus();
      });
      return li;
    }),
  );
  ui.onlineNames.replaceChildren(
    ...users.map((u) => Object.assign(document.createElement("option"), { value: u })),
  );
  ui.onlineCount.textContent = `(${count})`;
  if (count > users.length) {
    const more = document.createElement("li");
    more.className = "more";
    more.textContent = `and ${count - users.length} more`;
    ui.online.append(more);
  }
}

async function refreshOnline(): Promise<void> {
  if (!session || !online()) return;
  const { login, user } = session;
  try {
    const page = await login.whoPage(undefined, WHO_SHOWN);
    showOnline(page.users, user, page.online);
  } catch (e) {
    if (session?.login === login && online()) ui.report.textContent = `who: ${errorText(e)}`;
  }
}

function describe(report: PushReport): string {
  const parts = [];
  if (report.deliveredCount > 0) parts.push(`delivered to ${report.delivered.join(", ")}`);
  if (report.storedCount > 0) parts.push(`stored for ${report.stored.join(", ")} (offline)`);
  return parts.length > 0 ? parts.join("; ") : "nobody online";
}

// ---- rooms ----

/** A joined room: its channel, its subscription (made again by the reconnecting client on
 * every new connection), its members by connection, its messages and its tab. */
interface Room {
  name: string;
  channel: string;
  sub?: Subscription;
  members: Map<bigint, string>;
  list: HTMLOListElement;
  tab: HTMLButtonElement;
  unread: number;
}

const rooms = new Map<string, Room>();
let shown: Room | undefined;

function showMembers(): void {
  if (!shown) return;
  const me = session?.user;
  const names = [...new Set(shown.members.values())].sort();
  ui.roomMembers.replaceChildren(
    ...names.map((name, i) => {
      const span = document.createElement("span");
      span.className = name === me ? "member me" : "member";
      span.textContent = `${name}${i < names.length - 1 ? ", " : ""}`;
      return span;
    }),
  );
}

function showTab(room: Room): void {
  room.tab.replaceChildren(room.name);
  if (room.unread > 0) {
    const badge = document.createElement("span");
    badge.className = "unread";
    badge.textContent = String(room.unread);
    room.tab.append(badge);
  }
  room.tab.setAttribute("aria-current", String(room === shown));
}

/** Shows `room` (its messages, members and tab), or no room. */
function showRoom(room: Room | undefined): void {
  shown = room;
  for (const r of rooms.values()) {
    r.list.hidden = r !== room;
    if (r === room) r.unread = 0;
    showTab(r);
  }
  ui.roomPanel.hidden = !room;
  if (!room) return;
  ui.roomName.textContent = room.name;
  showMembers();
  room.list.lastElementChild?.scrollIntoView({ block: "nearest" });
}

function addRoomMessage(room: Room, p: Publication, earlier: boolean): void {
  const li = messageItem(p.from || "server", new TextDecoder().decode(p.data), earlier ? "earlier" : "");
  room.list.append(li);
  if (room === shown) {
    li.scrollIntoView({ block: "nearest" });
  } else if (!earlier) {
    room.unread += 1;
    showTab(room);
  }
}

function addRoomNote(room: Room, text: string): void {
  const li = document.createElement("li");
  li.className = "gap";
  li.textContent = text;
  room.list.append(li);
}

/** Asks who is in `room` now (at joining it, and after each reconnect). */
async function refreshMembers(room: Room): Promise<void> {
  if (!session) return;
  const members = await session.rc.presence(room.channel);
  room.members.clear();
  for (const m of members) room.members.set(m.client, m.user);
  if (room === shown) showMembers();
}

/** Subscribes `room`: its last messages from the history, its members, then what comes. */
async function subscribeRoom(rc: ReconnectingClient, room: Room): Promise<void> {
  // Subscribed first: what is published from now on waits in the subscription (each once,
  // in order) until the listeners below take it, after the earlier messages.
  const sub = await rc.subscribe(room.channel);
  if (rooms.get(room.name) !== room) {
    await sub.unsubscribe().catch(() => undefined);
    return;
  }
  room.sub = sub;
  const at = sub.position;
  if (at && at.offset > 0n) {
    const from = at.offset > BigInt(ROOM_EARLIER) ? at.offset - BigInt(ROOM_EARLIER) : 0n;
    const page = await rc.history(room.channel, { since: { epoch: at.epoch, offset: from }, limit: ROOM_EARLIER });
    for (const p of page.publications) if (p.offset <= at.offset) addRoomMessage(room, p, true);
  }
  await refreshMembers(room);
  if (room.sub !== sub) return; // left meanwhile
  sub.on("publication", (p) => addRoomMessage(room, p, false));
  // After a reconnect: the publications missed come next, once each; unless the server's
  // history no longer holds them all.
  sub.on("resubscribed", ({ recovered }) => {
    if (!recovered) addRoomNote(room, "some messages from while you were away are gone");
  });
  sub.on("join", (m) => {
    room.members.set(m.client, m.user);
    if (room === shown) showMembers();
  });
  sub.on("leave", (m) => {
    room.members.delete(m.client);
    if (room === shown) showMembers();
  });
  sub.onEnd((reason) => {
    if (room.sub !== sub) return;
    room.sub = undefined;
    room.members.clear();
    if (room === shown) showMembers();
    if (reason && rooms.get(room.name) === room) addRoomNote(room, `the server ended this room's subscription: ${reason}`);
  });
}

/** Joins the room `chat:NAME` (or shows it, when joined already). */
async function joinRoom(name: string): Promise<void> {
  const existing = rooms.get(name);
  if (existing) return showRoom(existing);
  if (!session) return;
  const { rc } = session;
  const list = document.createElement("ol");
  list.className = "messages room-messages";
  list.dataset.room = name;
  const tab = document.createElement("button");
  tab.type = "button";
  tab.dataset.room = name;
  const room: Room = { name, channel: `chat:${name}`, members: new Map(), list, tab, unread: 0 };
  tab.addEventListener("click", () => showRoom(room));
  ui.roomReport.textContent = "";
  rooms.set(name, room);
  ui.roomLists.append(list);
  ui.roomTabs.append(tab);
  showRoom(room);
  try {
    await subscribeRoom(rc, room);
  } catch (e) {
    if (rooms.get(name) === room) removeRoom(room);
    ui.roomReport.textContent = `cannot join ${name}: ${errorText(e)}`;
  }
}

function removeRoom(room: Room): void {
  rooms.delete(room.name);
  room.list.remove();
  room.tab.remove();
  room.sub = undefined;
  if (shown === room) showRoom(rooms.values().next().value);
}

async function leaveRoom(room: Room): Promise<void> {
  const sub = room.sub;
  removeRoom(room);
  await sub?.unsubscribe().catch(() => undefined);
}

// ---- connecting, logging in, reconnecting ----

/** The reconnecting client's state, on the page. */
function showState(change: StateChange): void {
  if (!session) return;
  const why = change.error?.message ?? "";
  switch (change.state) {
    case "connected": {
      const key = session.rc.current().fingerprint ?? "";
      setStatus(`connected as ${session.user} · encrypted, server key ${key.slice(0, 8)}… pinned`, "online");
      delete ui.chat.dataset.offline;
      void refreshOnline();
      // Who is in each room now (those who left meanwhile sent no leave to this page).
      for (const room of rooms.values()) void refreshMembers(room).catch(() => undefined);
      break;
    }
    case "disconnected":
      if (!change.retrying) {
        // Closed for good: kicked (the server's close may come before the kicked push), or
        // the back-off gave up.
        const reason = change.error instanceof ServerClosedError ? change.error.reason : undefined;
        if (reason?.startsWith("kicked")) kicked(reason.replace(/^kicked:\s*/, ""));
        else {
          endSession();
          setStatus(`disconnected${why ? `: ${why}` : ""}`, "error");
        }
        break;
      }
      ui.chat.dataset.offline = "";
      // Who is in a room is asked again once back.
      for (const room of rooms.values()) room.members.clear();
      showMembers();
      setStatus("reconnecting…", "reconnecting");
      ui.status.title = why;
      break;
    case "reconnecting":
    case "connecting": {
      const wait = ((change.delayMs ?? 0) / 1000).toFixed(1);
      setStatus(`reconnecting… (attempt ${change.attempt ?? 1} in ${wait} s)`, "reconnecting");
      ui.status.title = why;
      break;
    }
  }
}

/** Kicked: another login of this user took over; the page does not come back by itself
 * (it would kick that one in turn). */
function kicked(reason: string): void {
  endSession();
  ui.kicked.textContent = `Kicked: ${reason}`;
  ui.kicked.hidden = false;
  setStatus("kicked", "kicked");
}

/** Ends the session: the client closed, no rooms, the login form shown. */
function endSession(): void {
  const ended = session;
  session = undefined;
  if (ended) {
    clearInterval(ended.timer);
    void ended.rc.close();
  }
  for (const room of [...rooms.values()]) removeRoom(room);
  ui.chat.hidden = true;
  delete ui.chat.dataset.offline;
  ui.connectPanel.hidden = false;
}

async function start(register: boolean): Promise<void> {
  const user = ui.user.value.trim();
  const password = ui.password.value;
  endSession();
  const pin = ui.pin.value.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(pin)) {
    setStatus("the server key fingerprint (64 hex digits) is needed: add ?pin=... to the address", "error");
    return;
  }
  const url = ui.ws.value.trim();
  setStatus("connecting…", "idle");
  let rc: ReconnectingClient | undefined;
  try {
    // The first connection now (its failure said as it is); later drops reconnect.
    rc = await ReconnectingClient.connect((options, handlers) => connectWebSocket(url, options, handlers), {
      pin,
      backoff: BACKOFF,
      heartbeatMs: HEARTBEAT_MS,
    });
    const login = new LoginClient(rc);
    login.on("message", (m) => addMessage(m, "received"));
    login.on("kicked", (reason) => {
      if (session?.login === login) kicked(reason);
    });
    if (register) await login.register(user, password);
    // On the reconnecting client, also logs in again after every reconnect (messages
    // stored meanwhile then come as `message` events).
    const offline = await login.login(user, password);
    ui.messages.replaceChildren();
    for (const m of offline) addMessage(m, "offline");
    session = { rc, login, user, timer: window.setInterval(() => void refreshOnline(), WHO_EVERY_MS) };
    rc.on("state", showState);
  } catch (e) {
    void rc?.close();
    setStatus(errorText(e), "error");
    return;
  }
  ui.kicked.hidden = true;
  ui.connectPanel.hidden = true;
  ui.chat.hidden = false;
  showState({ state: "connected", previous: "connecting" });
  await joinRoom(LOBBY);
  ui.roomText.focus();
}

ui.loginForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  void start(false);
});
ui.register.addEventListener("click", () => {
  if (ui.loginForm.reportValidity()) void start(true);
});
ui.refresh.addEventListener("click", () => void refreshOnline());
ui.logout.addEventListener("click", () => {
  const login = session?.login;
  const rc = session?.rc;
  session = undefined;
  endSession();
  setStatus("logged out", "idle");
  void login
    ?.logout()
    .catch(() => undefined)
    .finally(() => rc?.close());
});
ui.pushForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!session) return;
  const { login, user } = session;
  const to = ui.to.value.trim();
  const text = ui.text.value;
  const recipients = to
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
  // While reconnecting this fails at once (nothing sent), said below.
  const sent = to === "*" ? login.pushAll(text) : login.push(recipients, text);
  ui.text.value = "";
  sent.then(
    (report) => {
      addMessage({ from: user, text }, "sent", to === "*" ? "everyone" : to);
      ui.report.textContent = describe(report);
    },
    (e) => {
      ui.text.value ||= text;
      ui.report.textContent = `not sent: ${errorText(e)}`;
    },
  );
});
ui.roomForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = ui.room.value.trim();
  ui.room.value = "";
  if (name) void joinRoom(name);
});
ui.leaveRoom.addEventListener("click", () => {
  const room = shown;
  if (!room) return;
  void leaveRoom(room).then(() => (ui.roomReport.textContent = `left ${room.name}`));
});
ui.roomPostForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const room = shown;
  if (!room || !session) return;
  const text = ui.roomText.value;
  ui.roomText.value = "";
  session.rc.publish(room.channel, text).then(
    () => (ui.roomReport.textContent = ""),
    (e) => {
      ui.roomText.value ||= text;
      ui.roomReport.textContent = `not posted: ${errorText(e)}`;
    },
  );
});
