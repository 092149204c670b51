/**
 * The chat demo: a page of `zserver serve --listen-ws ADDR --web DIR` built on the
 * TypeScript client. Log in (or register), see who is online, push to a user or to
 * everyone, receive pushes and the messages stored while offline, and see being kicked.
 * Rooms are the server's `chat:` channels: the page joins `chat:lobby` at login, more
 * rooms by name, one tab each; a room shows its last messages (history), its members
 * (presence, join and leave events) and what is posted to it (publications), and counts
 * what arrives while another room is shown.
 *
 * When the connection drops (the server restarts, the network goes), the page says
 * "reconnecting…" and tries again by itself, waiting longer each time (up to 5 s); once
 * back it logs in again and subscribes to its rooms again from where each stopped, so that
 * a room shows exactly the messages it missed.
 *
 * The page connects to `?ws=` (default: the WebSocket port that served the page) and pins
 * the server key `?pin=` (the fingerprint `zserver serve` prints): the same Noise XX
 * encryption and pinning as the Rust client.
 */

import {
  type Client,
  connectWebSocket,
  LoginClient,
  type Message,
  type Position,
  type Publication,
  type PushReport,
  type Subscription,
  ZserverError,
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
/** Waits between reconnection attempts: doubled each time from the first, up to the last. */
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 5000;

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

// ---- the session: one user logged in, through connections that may come and go ----

/** What the user asked for: logged in as `user` (kept while reconnecting). */
let wanted: { user: string; password: string } | undefined;
/** The connection now, when there is one and its user is logged in. */
let session: { login: LoginClient; user: string; timer: number } | undefined;
/** The reconnection under way: its attempt count and timer. */
let retry: { attempt: number; timer: number } | undefined;

function showOnline(users: string[], me: string, online: number): void {
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
  ui.onlineCount.textContent = `(${online})`;
  if (online > users.length) {
    const more = document.createElement("li");
    more.className = "more";
    more.textContent = `and ${online - users.length} more`;
    ui.online.append(more);
  }
}

async function refreshOnline(): Promise<void> {
  if (!session) return;
  const { login, user } = session;
  try {
    const page = await login.whoPage(undefined, WHO_SHOWN);
    showOnline(page.users, user, page.online);
  } catch (e) {
    if (session?.login === login) ui.report.textContent = `who: ${errorText(e)}`;
  }
}

function describe(report: PushReport): string {
  const parts = [];
  if (report.deliveredCount > 0) parts.push(`delivered to ${report.delivered.join(", ")}`);
  if (report.storedCount > 0) parts.push(`stored for ${report.stored.join(", ")} (offline)`);
  return parts.length > 0 ? parts.join("; ") : "nobody online";
}

// ---- rooms ----

/** A joined room: its channel, its subscription on the connection now (none while
 * reconnecting), where it stopped, its members by connection, its messages and tab. */
interface Room {
  name: string;
  channel: string;
  sub?: Subscription;
  position: Position | null;
  members: Map<bigint, string>;
  list: HTMLOListElement;
  tab: HTMLButtonElement;
  unread: number;
}

const rooms = new Map<string, Room>();
let shown: Room | undefined;

function showMembers(): void {
  if (!shown) return;
  const me = session?.user ?? wanted?.user;
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

/** Subscribes `room` on `client`: from where it stopped when it has a position (after a
 * reconnect: exactly what it missed), else its last messages from the history. */
async function subscribeRoom(client: Client, room: Room): Promise<void> {
  const since = room.position;
  // Subscribed first: what is published from now on waits in the subscription (each once,
  // in order) until the listeners below take it, after the recovered or earlier messages.
  const sub = await client.subscribe(room.channel, since ? { since } : {});
  if (rooms.get(room.name) !== room) {
    await sub.unsubscribe().catch(() => undefined);
    return;
  }
  room.sub = sub;
  if (since && !sub.recovered) {
    addRoomNote(room, "some messages from while you were away are gone");
  }
  const at = sub.position;
  if (!since && at && at.offset > 0n) {
    const from = at.offset > BigInt(ROOM_EARLIER) ? at.offset - BigInt(ROOM_EARLIER) : 0n;
    const page = await client.history(room.channel, { since: { epoch: at.epoch, offset: from }, limit: ROOM_EARLIER });
    for (const p of page.publications) if (p.offset <= at.offset) addRoomMessage(room, p, true);
  }
  room.members.clear();
  for (const m of await client.presence(room.channel)) room.members.set(m.client, m.user);
  if (room.sub !== sub) return; // left meanwhile
  sub.on("publication", (p) => {
    addRoomMessage(room, p, false);
    room.position = sub.position;
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
    // The connection's close is the reconnect's business; the server ending it is not.
    if (reason && rooms.get(room.name) === room && session?.login.client === client) {
      addRoomNote(room, `the server ended this room's subscription: ${reason}`);
    }
  });
  room.position = sub.position;
  if (room === shown) showMembers();
}

/** Joins the room `chat:NAME` (or shows it, when joined already). */
async function joinRoom(name: string): Promise<void> {
  const existing = rooms.get(name);
  if (existing) return showRoom(existing);
  if (!session) return;
  const client = session.login.client;
  const list = document.createElement("ol");
  list.className = "messages room-messages";
  list.dataset.room = name;
  const tab = document.createElement("button");
  tab.type = "button";
  tab.dataset.room = name;
  const room: Room = { name, channel: `chat:${name}`, position: null, members: new Map(), list, tab, unread: 0 };
  tab.addEventListener("click", () => showRoom(room));
  ui.roomReport.textContent = "";
  rooms.set(name, room);
  ui.roomLists.append(list);
  ui.roomTabs.append(tab);
  showRoom(room);
  try {
    await subscribeRoom(client, room);
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

function forgetRooms(): void {
  for (const room of [...rooms.values()]) removeRoom(room);
}

// ---- connecting, logging in, reconnecting ----

async function connect(): Promise<Client> {
  const pin = ui.pin.value.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(pin)) {
    throw new Error("the server key fingerprint (64 hex digits) is needed: add ?pin=... to the address");
  }
  return connectWebSocket(ui.ws.value.trim(), { pin });
}

function stopTimers(): void {
  if (session) clearInterval(session.timer);
  if (retry) clearTimeout(retry.timer);
  retry = undefined;
}

/** Ends everything: no session, no reconnecting, no rooms, the login form shown. */
function endSession(): void {
  stopTimers();
  wanted = undefined;
  session = undefined;
  forgetRooms();
  ui.chat.hidden = true;
  delete ui.chat.dataset.offline;
  ui.connectPanel.hidden = false;
}

/** Whether a failure to log in again means trying later (the server away or busy) rather
 * than giving up (the password refused, the key changed). */
function worthRetrying(e: unknown): boolean {
  if (!(e instanceof ZserverError)) return true;
  if (e.kind === "keyMismatch") return false;
  return !/wrong user name or password|already logged in|no such user/i.test(e.message);
}

/** One connection: connects, logs in as `wanted`, subscribes the rooms again. */
async function open(register: boolean): Promise<void> {
  const want = wanted;
  if (!want) return;
  const client = await connect();
  try {
    const login = new LoginClient(client);
    login.on("message", (m) => addMessage(m, "received"));
    login.on("kicked", (reason) => {
      if (session?.login !== login) return;
      endSession();
      ui.kicked.textContent = `Kicked: ${reason}`;
      ui.kicked.hidden = false;
      setStatus("kicked", "kicked");
    });
    client.onClose((e) => {
      if (session?.login === login) lost(e);
    });
    if (register) await login.register(want.user, want.password);
    const offline = await login.login(want.user, want.password);
    if (wanted !== want) throw new Error("logged out meanwhile");
    for (const m of offline) addMessage(m, "offline");
    session = { login, user: want.user, timer: window.setInterval(() => void refreshOnline(), WHO_EVERY_MS) };
    for (const room of rooms.values()) {
      await subscribeRoom(client, room).catch((e) => addRoomNote(room, `cannot rejoin: ${errorText(e)}`));
    }
    if (client.isClosed) throw new Error("the connection closed while logging in");
  } catch (e) {
    if (session?.login.client === client) {
      clearInterval(session.timer);
      session = undefined;
    }
    client.close();
    throw e;
  }
}

function connected(): void {
  const key = session?.login.client.fingerprint ?? "";
  setStatus(`connected as ${session?.user} · encrypted, server key ${key.slice(0, 8)}… pinned`, "online");
  delete ui.chat.dataset.offline;
  void refreshOnline();
}

/** The connection dropped while logged in: keep the page, try again by itself. */
function lost(e: unknown): void {
  if (session) clearInterval(session.timer);
  session = undefined;
  if (!wanted) return;
  ui.chat.dataset.offline = "";
  for (const room of rooms.values()) room.members.clear();
  showMembers();
  scheduleRetry(0, e ? errorText(e) : "connection closed");
}

function scheduleRetry(attempt: number, why: string): void {
  const wait = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** attempt);
  setStatus(`reconnecting… (attempt ${attempt + 1} in ${(wait / 1000).toFixed(1)} s)`, "reconnecting");
  ui.status.title = why;
  retry = {
    attempt,
    timer: window.setTimeout(() => {
      retry = undefined;
      open(false).then(connected, (e) => {
        if (!wanted) return;
        if (worthRetrying(e)) scheduleRetry(attempt + 1, errorText(e));
        else {
          endSession();
          setStatus(`could not log in again: ${errorText(e)}`, "error");
        }
      });
    }, wait),
  };
}

async function start(register: boolean): Promise<void> {
  const user = ui.user.value.trim();
  const password = ui.password.value;
  endSession();
  wanted = { user, password };
  setStatus("connecting…", "idle");
  try {
    await open(register);
  } catch (e) {
    wanted = undefined;
    setStatus(errorText(e), "error");
    return;
  }
  ui.kicked.hidden = true;
  ui.connectPanel.hidden = true;
  ui.chat.hidden = false;
  connected();
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
  endSession();
  setStatus("logged out", "idle");
  void login?.logout().finally(() => login.close());
});
ui.pushForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!session) {
    ui.report.textContent = "not sent: reconnecting";
    return;
  }
  const { login, user } = session;
  const to = ui.to.value.trim();
  const text = ui.text.value;
  const recipients = to
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u.length > 0);
  const sent = to === "*" ? login.pushAll(text) : login.push(recipients, text);
  ui.text.value = "";
  sent.then(
    (report) => {
      addMessage({ from: user, text }, "sent", to === "*" ? "everyone" : to);
      ui.report.textContent = describe(report);
    },
    (e) => {
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
  if (!room) return;
  if (!session) {
    ui.roomReport.textContent = "not posted: reconnecting";
    return;
  }
  const text = ui.roomText.value;
  ui.roomText.value = "";
  session.login.client.publish(room.channel, text).then(
    () => (ui.roomReport.textContent = ""),
    (e) => (ui.roomReport.textContent = `not posted: ${errorText(e)}`),
  );
});
