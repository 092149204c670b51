/**
 * The chat demo: a page of `zserver serve --listen-ws ADDR --web DIR` built on the
 * TypeScript client. Log in (or register), see who is online, push to a user or to
 * everyone, receive pushes and the messages stored while offline, and see being kicked.
 *
 * The page connects to `?ws=` (default: the WebSocket port that served the page) and pins
 * the server key `?pin=` (the fingerprint `zserver serve` prints): the same Noise XX
 * encryption and pinning as the Rust client.
 */

import { type Client, connectWebSocket, LoginClient, type Message, type PushReport } from "../../src/index.js";

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

function endSession(): void {
  if (session) clearInterval(session.timer);
  session = undefined;
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
