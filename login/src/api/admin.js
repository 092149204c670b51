// The admin page: logs in with the API key (the server answers with an HttpOnly session
// cookie, which every later call carries), then polls /api/info every second and acts
// through the API (/api/sessions, /api/disconnect, /api/publish). No secret is kept here.
"use strict";

const $ = (id) => document.getElementById(id);
let polling = null;

/** POSTs `body` to `path`; resolves with `{status, json}`. */
async function post(path, body = {}) {
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let json = {};
  try {
    json = await response.json();
  } catch {
    // Not JSON: leave it empty.
  }
  return { status: response.status, json };
}

function show(loggedIn) {
  $("login").hidden = loggedIn;
  $("dashboard").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  clearInterval(polling);
  polling = loggedIn ? setInterval(refresh, 1000) : null;
}

const rate = (x) => (Math.round(x * 10) / 10).toString();

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = String(text);
  row.appendChild(td);
  return td;
}

/** Shows the figures of /api/info; back to the login form if the session ended. */
async function refresh() {
  const { status, json } = await post("/api/info");
  if (status === 401) return show(false);
  if (status !== 200) return;
  let connections = 0, channels = 0, messages = 0;
  const body = $("nodes").querySelector("tbody");
  body.replaceChildren();
  for (const node of json.nodes) {
    connections += node.connections;
    channels += node.channels;
    messages += node.publications_per_sec + node.pushes_per_sec;
    const row = document.createElement("tr");
    row.dataset.node = node.node;
    for (const value of [node.node, node.connections, node.users, node.sessions, node.channels]) cell(row, value);
    for (const value of [node.publications_per_sec, node.deliveries_per_sec, node.pushes_per_sec]) cell(row, rate(value));
    body.appendChild(row);
  }
  $("total-connections").textContent = connections;
  $("total-users").textContent = json.users_online;
  $("total-channels").textContent = channels;
  $("total-rate").textContent = rate(messages);
  $("unreachable").textContent = json.unreachable.length ? `not answering: ${json.unreachable.join(", ")}` : "";
}

/** Looks up `user`'s sessions and lists them, each with a disconnect button. */
async function findUser(user) {
  const { status, json } = await post("/api/sessions", { user });
  const table = $("sessions");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  $("disconnect-all").hidden = true;
  if (status !== 200) {
    table.hidden = true;
    $("user-status").textContent = json.error ?? `error ${status}`;
    $("user-status").className = "error";
    return;
  }
  $("user-status").className = "";
  $("user-status").textContent = json.sessions.length
    ? `${user}: ${json.sessions.length} session(s)`
    : `${user} is not logged in`;
  table.hidden = json.sessions.length === 0;
  $("disconnect-all").hidden = json.sessions.length === 0;
  $("disconnect-all").dataset.user = user;
  for (const s of json.sessions) {
    const row = document.createElement("tr");
    row.className = "session";
    cell(row, s.node);
    cell(row, s.connection);
    cell(row, s.address);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "danger disconnect";
    button.textContent = "Disconnect";
    button.addEventListener("click", () => disconnect({ user, node: s.node, connection: s.connection }));
    cell(row, "").appendChild(button);
    body.appendChild(row);
  }
}

async function disconnect(target) {
  const { status, json } = await post("/api/disconnect", target);
  await findUser(target.user);
  if (status !== 200) {
    $("user-status").textContent = json.error ?? `error ${status}`;
    $("user-status").className = "error";
  } else {
    $("user-status").textContent = `${target.user}: disconnected ${json.disconnected} session(s)`;
    $("user-status").className = "ok";
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const { status, json } = await post("/admin/login", { key: $("key").value });
    $("key").value = "";
    if (status === 200) {
      $("login-error").textContent = "";
      show(true);
      refresh();
    } else {
      $("login-error").textContent = json.error ?? `error ${status}`;
    }
  });
  $("logout").addEventListener("click", async () => {
    await post("/admin/logout");
    show(false);
  });
  $("find-form").addEventListener("submit", (event) => {
    event.preventDefault();
    findUser($("find-user").value.trim());
  });
  $("disconnect-all").addEventListener("click", () => disconnect({ user: $("disconnect-all").dataset.user }));
  $("publish-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const channel = $("publish-channel").value.trim();
    const { status, json } = await post("/api/publish", { channel, data: $("publish-data").value });
    const result = $("publish-result");
    if (status === 200) {
      result.className = "ok";
      result.textContent = json.position
        ? `published to ${channel} at offset ${json.position.offset}`
        : `published to ${channel}`;
      $("publish-data").value = "";
    } else {
      result.className = "error";
      result.textContent = json.error ?? `error ${status}`;
    }
  });
  // Logged in already (the cookie is still good)? Otherwise the form.
  const { status } = await post("/api/info");
  show(status === 200);
  if (status === 200) refresh();
});
