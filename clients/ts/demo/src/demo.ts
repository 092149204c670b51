/**
 * The chat demo: a page of `zserver serve --listen-ws ADDR --web DIR` built on the
 * TypeScript client. Log in (or register), see who is online, push to a user or to
 * everyone, receive pushes and the messages stored while offline, and see being kicked.
 * Rooms are the server's `chat:` channels: join `chat:NAME`, see its members come and go
 * (presence, join and leave events), its last messages (history) and what is posted to
 * it (publications).
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
  type Publication,
  type PushReport,
  type Subscription,
} from "../../src/index.js";

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
  roomForm: $<HTMLFormElement>("room-form"),
  room: $<HTMLInputElement>("room"),
  roomPanel: $<HTMLDivElement>("room-panel"),
  roomName: $<HTMLSpanElement>("room-name"),
  leaveRoom: $<HTMLButtonElement>("leave-room"),
  roomMembers: $<HTMLSpanElement>("room-members"),
  roomMessages: $<HTMLOListElement>("room-messages"),
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

let session: { login: LoginClient; user: string; timer: number } | undefined;

function setStatus(text: string, state: "idle" | "online" | "error" | "kicked"): void {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function addMessage(m: Message, kind: "received" | "offline" | "sent", to?: string): void {
  const li = document.createElement("li");
  li.className = kind;
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = kind === "sent" ? `you → ${to}` : m.from;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = m.text;
  li.append(from, text);
  if (kind === "offline") {
    const note = document.createElement("span");
    note.className = "note";
    note.textContent = "(while you were offline)";
    li.append(note);
  }
  ui.messages.append(li);
  li.scrollIntoView({ block: "nearest" });
}

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
    ui.report.textContent = `who: ${errorText(e)}`;
  }
}

function describe(report: PushReport): string {
  const parts = [];
  if (report.deliveredCount > 0) parts.push(`delivered to ${report.delivered.join(", ")}`);
  if (report.storedCount > 0) parts.push(`stored for ${report.stored.join(", ")} (offline)`);
  return parts.length > 0 ? parts.join("; ") : "nobody online";
}

/** Messages a room shows from before one joined it (its history). */
const ROOM_EARLIER = 20;

/** The room joined (one at a time): its channel, subscription and members by connection. */
let room: { name: string; channel: string; sub: Subscription; members: Map<bigint, string> } | undefined;

function showMembers(): void {
  if (!room) return;
  const me = session?.user;
  const names = [...new Set(room.members.values())].sort();
  ui.roomMembers.replaceChildren(
    ...names.map((name, i) => {
      const span = document.createElement("span");
      span.className = name === me ? "member me" : "member";
      span.textContent = `${name}${i < names.length - 1 ? ", " : ""}`;
      return span;
    }),
  );
}

function addRoomMessage(p: Publication, earlier: boolean): void {
  const li = document.createElement("li");
  if (earlier) li.className = "earlier";
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = p.from || "server";
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = new TextDecoder().decode(p.data);
  li.append(from, text);
  ui.roomMessages.append(li);
  li.scrollIntoView({ block: "nearest" });
}

function closeRoom(): void {
  room = undefined;
  ui.roomPanel.hidden = true;
  ui.roomMessages.replaceChildren();
  ui.roomMembers.replaceChildren();
}

async function leaveRoom(): Promise<void> {
  const left = room;
  closeRoom();
  await left?.sub.unsubscribe().catch(() => undefined);
}

/** Joins the room `chat:NAME`: its last messages, its members, then what comes live. */
async function joinRoom(name: string): Promise<void> {
  if (!session) return;
  const client = session.login.client;
  await leaveRoom();
  const channel = `chat:${name}`;
  ui.roomReport.textContent = "";
  try {
    // Subscribed first: what is published from now on waits in the subscription (each
    // once, in order) until the listeners below take it, after the history before it.
    const sub = await client.subscribe(channel);
    const members = new Map<bigint, string>();
    room = { name, channel, sub, members };
    ui.roomName.textContent = name;
    ui.roomPanel.hidden = false;
    const at = sub.position;
    if (at && at.offset > 0n) {
      const from = at.offset > BigInt(ROOM_EARLIER) ? at.offset - BigInt(ROOM_EARLIER) : 0n;
      const page = await client.history(channel, { since: { epoch: at.epoch, offset: from }, limit: ROOM_EARLIER });
      for (const p of page.publications) if (p.offset <= at.offset) addRoomMessage(p, true);
    }
    for (const m of await client.presence(channel)) members.set(m.client, m.user);
    if (room?.sub !== sub) return; // left meanwhile
    sub.on("publication", (p) => addRoomMessage(p, false));
    sub.on("join", (m) => {
      members.set(m.client, m.user);
      showMembers();
    });
    sub.on("leave", (m) => {
      members.delete(m.client);
      showMembers();
    });
    sub.onEnd((reason) => {
      if (room?.sub !== sub) return;
      closeRoom();
      ui.roomReport.textContent = `left ${name}${reason ? `: ${reason}` : ""}`;
    });
    showMembers();
    ui.roomText.focus();
  } catch (e) {
    if (room?.channel === channel) closeRoom();
    ui.roomReport.textContent = `cannot join ${name}: ${errorText(e)}`;
  }
}

function endSession(): void {
  if (session) clearInterval(session.timer);
  session = undefined;
  closeRoom();
  ui.chat.hidden = true;
}

async function connect(): Promise<Client> {
  const pin = ui.pin.value.trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(pin)) {
    throw new Error("the server key fingerprint (64 hex digits) is needed: add ?pin=... to the address");
  }
  return connectWebSocket(ui.ws.value.trim(), { pin });
}

async function start(register: boolean): Promise<void> {
  const user = ui.user.value.trim();
  const password = ui.password.value;
  endSession();
  setStatus("connecting…", "idle");
  let client: Client | undefined;
  try {
    client = await connect();
    const login = new LoginClient(client);
    login.on("message", (m) => addMessage(m, "received"));
    login.on("kicked", (reason) => {
      ui.kicked.textContent = `Kicked: ${reason}`;
      ui.kicked.hidden = false;
      setStatus("kicked", "kicked");
      endSession();
      ui.connectPanel.hidden = false;
    });
    client.onClose((e) => {
      if (session?.login === login) {
        endSession();
        ui.connectPanel.hidden = false;
        setStatus(`disconnected${e ? `: ${e.message}` : ""}`, "error");
      }
    });
    if (register) await login.register(user, password);
    const offline = await login.login(user, password);
    ui.kicked.hidden = true;
    ui.messages.replaceChildren();
    for (const m of offline) addMessage(m, "offline");
    session = { login, user, timer: window.setInterval(() => void refreshOnline(), WHO_EVERY_MS) };
    ui.connectPanel.hidden = true;
    ui.chat.hidden = false;
    const key = client.fingerprint ?? "";
    setStatus(`${user} · encrypted, server key ${key.slice(0, 8)}… pinned`, "online");
    await refreshOnline();
    ui.to.focus();
  } catch (e) {
    client?.close();
    setStatus(errorText(e), "error");
  }
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
  ui.connectPanel.hidden = false;
  setStatus("logged out", "idle");
  void login?.logout().finally(() => login.close());
});
ui.pushForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!session) return;
  const { login } = session;
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
      addMessage({ from: session?.user ?? "", text }, "sent", to === "*" ? "everyone" : to);
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
  if (name) void joinRoom(name);
});
ui.leaveRoom.addEventListener("click", () => {
  const name = room?.name;
  void leaveRoom().then(() => (ui.roomReport.textContent = name ? `left ${name}` : ""));
});
ui.roomPostForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!session || !room) return;
  const text = ui.roomText.value;
  ui.roomText.value = "";
  session.login.client.publish(room.channel, text).then(
    () => (ui.roomReport.textContent = ""),
    (e) => (ui.roomReport.textContent = `not posted: ${errorText(e)}`),
  );
});
