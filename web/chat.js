// The chat page: plain DOM on the client library. Every piece of text from the server goes
// in with textContent, never as HTML.

import { applyEvent, connect } from "/shardcast.js";

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

let client = null;
let me = null;
/** key ("#room" or "@user") -> { kind, name, msgs: Map(seq or local id -> message), pending:
 * Map(idempotency key -> message not acked yet, shown greyed after the others), unread,
 * users: Set (rooms), more: bool (older history retained), counted: bool (a room whose
 * presence is a count: `members` is shown, not `users`) } */
const convs = new Map();
let active = null;
let localId = 0;

function conv(key) {
  let c = convs.get(key);
  if (!c) {
    const kind = key[0] === "#" ? "room" : "dm";
    c = { key, kind, name: key.slice(1), msgs: new Map(), pending: new Map(), unread: 0, users: new Set(), more: false };
    convs.set(key, c);
  }
  return c;
}

// ---- sign-in --------------------------------------------------------------------------

$("signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const user = $("user").value.trim();
  const token = $("token").value.trim();
  if (!user && !token) return ($("signin-error").textContent = "Enter a user name or a token.");
  $("signin-error").textContent = "";
  const retrying = client;
  client = null;
  retrying?.close();
  start(token ? { token } : { user });
});

// `?protocol=proto` speaks the binary protocol (shardcast.proto); JSON otherwise.
const protocol = new URLSearchParams(location.search).get("protocol") === "proto" ? "proto" : "json";

function start(credentials) {
  // The outbox in localStorage: what was typed offline, or just before a reload, goes out
  // once when the page is back.
  const c = (client = connect({ ...credentials, outbox: "local", protocol }));
  c.on("state", (e) => c === client && onState(e));
  client.on("message", onMessage);
  client.on("joined", (e) => presenceChange(e.room, e.user, true, e.info));
  client.on("left", (e) => presenceChange(e.room, e.user, false));
  client.on("occupancy", onOccupancy);
  client.on("error", (e) => toast(e.message || e.code));
  client.on("recovery", onRecovery);
  client.on("pending", onPending);
  client.on("sent", onSent);
  client.on("failed", onFailed);
  client.on("typing", onTyping);
  client.on("read", renderSidebar);
  for (const kind of ["edit", "delete", "react", "unreact"]) client.on(kind, onRoomEvent);
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").querySelector("span").textContent = text;
}

let statusTimer;
function onState(e) {
  clearTimeout(statusTimer);
  if (e.state === "connecting" && !me) return setStatus("connecting", "Connecting…");
  if (e.state === "disconnected") {
    if (e.reconnecting) return setStatus("reconnecting", "Reconnecting…");
    setStatus("offline", "Offline");
    if (!me) {
      $("signin-error").textContent = `Could not sign in: ${e.reason || "connection refused"}`;
      client = null;
    } else toast(`Disconnected: ${e.reason || e.code}`);
    return;
  }
  if (e.state !== "connected") return;
  // The subprotocol the server chose ("" for JSON without one), shown on hover.
  const spoken = client?.ws?.protocol || "shardcast.json";
  $("status").dataset.protocol = spoken;
  $("status").title = `Speaking ${spoken}`;
  if (!me) {
    me = e.user;
    $("me").textContent = me;
    $("signin").hidden = true;
    $("app").hidden = false;
    $("text").disabled = false;
    $("send").disabled = false;
  }
  if (e.recovery) {
    setStatus("recovered", e.recovery.complete ? "Recovered" : "Recovered, with gaps");
    statusTimer = setTimeout(() => setStatus("online", "Online"), 4000);
  } else setStatus("online", "Online");
  for (const c of convs.values()) if (c.kind === "room") refreshPresence(c);
}

/** A room whose recovery left a gap starts over from its history. */
function onRecovery(r) {
  for (const [room, info] of Object.entries(r.rooms)) {
    const c = convs.get(`#${room}`);
    if (!c) continue;
    if (info.error) {
      convs.delete(c.key);
      renderSidebar();
      continue;
    }
    if (!info.recovered || info.truncated) {
      c.msgs.clear();
      c.before = undefined;
      loadHistory(c);
    }
  }
}

// ---- messages -------------------------------------------------------------------------

function onMessage(m) {
  let key;
  if (m.room !== undefined) key = `#${m.room}`;
  else if (m.to !== undefined) key = `@${m.from === me ? m.to : m.from}`;
  else return toast(`Broadcast from ${m.from}: ${bodyText(m.body)}`);
  const c = conv(key);
  add(c, m);
  if (key !== active) c.unread += 1;
  else markRead(c);
  renderSidebar();
  if (key === active) renderMessages(true);
}

// ---- the outbox: own messages, greyed until acked ---------------------------------------

const outboxConv = (e) => conv(e.room !== undefined ? `#${e.room}` : `@${e.to}`);

function onPending(e) {
  const c = outboxConv(e);
  c.pending.set(e.key, { ...e, from: client.user, ts: Date.now() });
  // Restored from an earlier page: its room is joined again so that it can go out.
  if (e.restored && e.room !== undefined && !client.room(e.room)) joinRoom(e.room, false);
  renderSidebar();
  if (c.key === active) renderMessages(true);
}

function onSent(e) {
  const c = outboxConv(e);
  const m = c.pending.get(e.key);
  c.pending.delete(e.key);
  if (m) add(c, { ...m, seq: e.seq });
  if (c.key === active) renderMessages(true);
}

function onFailed(e) {
  const c = outboxConv(e);
  c.pending.delete(e.key);
  if (c.key === active) renderMessages(true);
  toast(`Not sent (${e.code}): ${bodyText(e.body)}`);
}

function add(c, m) {
  const k = c.kind === "room" ? m.seq : `l${localId++}`;
  c.msgs.set(k, m);
}

function bodyText(body) {
  if (body && typeof body === "object" && typeof body.text === "string") return body.text;
  return typeof body === "string" ? body : JSON.stringify(body);
}

/** Whether this connection has `right` in room `c` (a server without rights allows all). */
function may(c, right) {
  const rights = client.room(c.name)?.rights;
  return !rights || rights.includes(right);
}

async function loadHistory(c) {
  if (c.loading || !may(c, "history")) return;
  c.loading = true;
  const before = c.msgs.size ? (c.before ?? Math.min(...[...c.msgs.keys()])) : undefined;
  try {
    // Messages in their current state: edits, deletes and reactions folded in.
    const page = await client.foldedHistory(c.name, { before, limit: 50 });
    for (const m of page.messages) c.msgs.set(m.seq, m);
    c.more = page.more;
    c.before = page.before;
    if (c.key === active) renderMessages(before === undefined);
  } catch (e) {
    toast(`History: ${e.message}`);
  } finally {
    c.loading = false;
  }
}

async function refreshPresence(c) {
  const info = client.room(c.name);
  c.counted = info?.presence === "count";
  if (!may(c, "presence")) return c.key === active && renderPresence();
  try {
    const users = await client.presence(c.name);
    c.users = new Set(users);
    c.info = { ...users.info };
    // A list room past its presence_list_max answers with a count too.
    c.counted = users.mode === "count";
  } catch {
    // Not in the room (any more): nothing to show.
  }
  if (c.key === active) renderPresence();
}

/** A count room's member count moved (the library keeps it on the room). */
function onOccupancy(e) {
  const c = convs.get(`#${e.room}`);
  if (!c) return;
  c.counted = true;
  if (c.key === active) renderPresence();
}

function presenceChange(room, user, online, info) {
  const c = convs.get(`#${room}`);
  if (!c) return;
  // Names again: a list room that had grown past its presence_list_max has shrunk back.
  if (c.counted) return refreshPresence(c);
  c.info ??= {};
  if (online) c.users.add(user);
  else c.users.delete(user);
  if (online && info) c.info[user] = info;
  else if (!online) delete c.info[user];
  if (c.key === active) renderPresence();
}

// ---- actions --------------------------------------------------------------------------

$("join-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const room = $("join-room").value.trim();
  if (!room) return;
  if (await joinRoom(room, true)) $("join-room").value = "";
});

/** Joins `room` and shows it (opens it when `open`); false when refused. */
async function joinRoom(room, open) {
  try {
    await client.join(room);
  } catch (e) {
    toast(`Cannot join ${room}: ${e.message}`);
    return false;
  }
  const c = conv(`#${room}`);
  c.counted = client.room(room)?.presence === "count";
  if (open || !active) select(c.key);
  else renderSidebar();
  loadHistory(c);
  refreshPresence(c);
  return true;
}

$("dm-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const user = $("dm-user").value.trim();
  if (!user) return;
  $("dm-user").value = "";
  select(conv(`@${user}`).key);
});

$("leave").addEventListener("click", async () => {
  const c = convs.get(active);
  if (!c || c.kind !== "room") return;
  try {
    await client.leave(c.name);
  } catch (e) {
    toast(`Leave: ${e.message}`);
  }
  convs.delete(c.key);
  active = null;
  renderSidebar();
  renderMessages(true);
});

$("text").addEventListener("input", () => {
  const c = convs.get(active);
  if (c?.kind === "room" && $("text").value) client.typing(c.name);
});

$("composer").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const c = convs.get(active);
  const text = $("text").value;
  if (!c || !text.trim()) return;
  $("text").value = "";
  if (c.kind === "room") client.typing(c.name, false);
  if (editing && editing.key === c.key) return saveEdit(c, text);
  // Shown at once, greyed, by the `pending` event; `sent` or `failed` settle it.
  const sending = c.kind === "room" ? client.publish(c.name, { text }) : client.send(c.name, { text });
  sending.catch(() => {});
});

// Scrolling to the top, or the button there, pages back through the room's history.
const older = () => {
  const c = convs.get(active);
  if (c && c.more) loadHistory(c);
};
$("older").addEventListener("click", older);
$("messages").addEventListener("scroll", () => $("messages").scrollTop < 20 && older());

$("menu").addEventListener("click", () => document.body.classList.toggle("show-sidebar"));

function select(key) {
  active = key;
  const c = convs.get(key);
  c.unread = 0;
  // The read marker: where this user had read up to when the room was opened.
  if (c.kind === "room") c.marker = client.unread(c.name).read;
  markRead(c);
  renderTyping();
  document.body.classList.remove("show-sidebar");
  renderSidebar();
  renderMessages(true);
  renderPresence();
  $("text").focus();
}

// ---- rendering ------------------------------------------------------------------------

function renderSidebar() {
  for (const [listId, kind] of [["rooms", "room"], ["dms", "dm"]]) {
    const list = $(listId);
    list.replaceChildren();
    for (const c of convs.values()) {
      if (c.kind !== kind) continue;
      const li = el("li", c.key === active ? "active" : "");
      li.dataset[kind === "room" ? "room" : "user"] = c.name;
      const n = unreadOf(c);
      li.append(el("span", "name", (kind === "room" ? "# " : "@ ") + c.name), el("span", "unread", n ? String(n) : ""));
      li.addEventListener("click", () => select(c.key));
      list.append(li);
    }
  }
}

function renderMessages(toBottom) {
  const box = $("messages");
  const list = $("list");
  const c = convs.get(active);
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const fromBottom = box.scrollHeight - box.scrollTop;
  list.replaceChildren();
  $("conv-title").textContent = c ? (c.kind === "room" ? `# ${c.name}` : `@ ${c.name}`) : "No conversation";
  $("leave").hidden = !c || c.kind !== "room";
  $("empty").hidden = !!(c && (c.msgs.size || c.pending.size));
  const readOnly = renderComposer();
  $("empty").textContent = c ? (readOnly ? "No messages yet." : "No messages yet. Say hello!") : "Join a room or open a direct message to start.";
  $("older").hidden = !c || !c.more;
  if (!c) return;
  const msgs = [...c.msgs.entries()];
  if (c.kind === "room") msgs.sort((a, b) => a[0] - b[0]);
  for (const m of c.pending.values()) msgs.push([m.key, { ...m, pending: true }]);
  let marked = false;
  for (const [, m] of msgs) {
    if (!marked && c.kind === "room" && c.marker !== undefined && m.seq > c.marker && !m.pending) {
      marked = true;
      if (c.marker > 0) list.append(el("li", "read-marker", "New"));
    }
    const li = el("li", m.pending ? "msg mine pending" : m.from === me ? "msg mine" : "msg");
    if (m.seq !== undefined) li.dataset.seq = m.seq;
    if (m.pending) li.title = "Not sent yet: it goes out when the connection is back";
    const meta = el("div", "meta");
    meta.append(el("span", "from", m.from), el("span", "time", new Date(m.ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
    if (c.kind === "room" && !m.pending) decorate(li, meta, c, m);
    else li.append(meta, el("div", "text", bodyText(m.body)));
    list.append(li);
  }
  // Older messages arrive above: what the reader looks at stays put.
  box.scrollTop = toBottom || atBottom ? box.scrollHeight : box.scrollHeight - fromBottom;
}

function renderPresence() {
  const c = convs.get(active);
  const p = $("presence");
  p.replaceChildren();
  if (!c || c.kind !== "room") return;
  const info = client.room(c.name);
  if (!may(c, "presence") && !c.counted) return;
  if (c.counted) {
    // No names in a count room: the number the server counts.
    const n = info?.members ?? 0;
    return p.append(el("span", "dot"), `${n} watching`);
  }
  const users = [...c.users].sort();
  p.append(el("span", "dot"), `${users.length} online: `);
  // A display name from the connect hook's presence info, if it gave one.
  const label = (u) => (typeof c.info?.[u]?.name === "string" ? `${c.info[u].name} (${u})` : u);
  p.append(el("span", "users", users.map(label).join(", ")));
}

/** The composer, or why this user may not publish in the open room; true for the latter. */
function renderComposer() {
  const c = convs.get(active);
  const info = c?.kind === "room" ? client.room(c.name) : undefined;
  let why = "";
  if (info?.rights && !info.rights.includes("publish")) {
    if (info.publish === "api") why = "Read only: this room takes messages from the server only.";
    else if (info.publish === "granted") why = "Read only: your token does not grant publishing in this room.";
    else why = "Read only: your token does not allow publishing in this room.";
  }
  $("composer").hidden = !!why;
  $("readonly").hidden = !why;
  $("readonly").textContent = why;
  return !!why;
}

// ---- edits, deletes and reactions ----------------------------------------------------

/** The message being edited in the composer: {key (conversation), seq}. */
let editing = null;
const QUICK_REACTION = "👍";

/** A live (or replayed) edit, delete or reaction: applied to the room's folded view. */
function onRoomEvent(e) {
  const c = convs.get(`#${e.room}`);
  if (!c || !applyEvent(c.msgs, e, me)) return;
  if (c.key === active) renderMessages(false);
}

/** A room message with its state: the text (or a tombstone), "(edited)", its reactions and,
 * for one's own, edit and delete. */
function decorate(li, meta, c, m) {
  if (m.edited) meta.append(el("span", "edited", "(edited)"));
  if (m.deleted) {
    li.classList.add("deleted");
    return li.append(meta, el("div", "text", "This message was deleted."));
  }
  li.append(meta, el("div", "text", bodyText(m.body)));
  const row = el("div", "reactions");
  for (const [emoji, r] of Object.entries(m.reactions || {})) {
    const b = el("button", r.me ? "reaction mine" : "reaction", `${emoji} ${r.count}`);
    b.type = "button";
    b.dataset.emoji = emoji;
    b.addEventListener("click", () => toggleReaction(c, m, emoji, r.me));
    row.append(b);
  }
  if (may(c, "publish")) {
    const mine = m.reactions?.[QUICK_REACTION]?.me;
    const add = el("button", "action react-btn", `+${QUICK_REACTION}`);
    add.type = "button";
    add.hidden = !!mine;
    add.addEventListener("click", () => toggleReaction(c, m, QUICK_REACTION, false));
    row.append(add);
    if (m.from === me) {
      const edit = el("button", "action edit-btn", "Edit");
      edit.type = "button";
      edit.addEventListener("click", () => startEdit(c, m));
      const del = el("button", "action delete-btn", "Delete");
      del.type = "button";
      del.addEventListener("click", () => client.delete(c.name, m.seq).catch((e) => toast(`Delete: ${e.message}`)));
      row.append(edit, del);
    }
  }
  li.append(row);
}

function toggleReaction(c, m, emoji, had) {
  const req = had ? client.unreact(c.name, m.seq, emoji) : client.react(c.name, m.seq, emoji);
  req.catch((e) => toast(`Reaction: ${e.message}`));
}

function startEdit(c, m) {
  editing = { key: c.key, seq: m.seq };
  $("text").value = bodyText(m.body);
  $("composer").classList.add("editing");
  $("send").textContent = "Save";
  $("text").focus();
}

async function saveEdit(c, text) {
  const { seq } = editing;
  editing = null;
  $("composer").classList.remove("editing");
  $("send").textContent = "Send";
  try {
    await client.edit(c.name, seq, { text });
  } catch (e) {
    toast(`Edit: ${e.message}`);
  }
}

let toastTimer;
function toast(text) {
  const t = $("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), 4000);
}

// ---- typing, read positions and unread badges (issue 23) ---------------------------------
//
// A room's badge is the server's count (its last seq minus this user's read position), so
// every tab and device of the user shows the same number, after a reload too. Direct messages
// keep a count per conversation on this page (the server keeps one position for the inbox).

/** The badge of a conversation. */
function unreadOf(c) {
  if (c.kind !== "room" || !client) return c.unread;
  return client.unread(c.name).unread;
}

/** Marks the open room read up to what it shows (at most one `read` per 300 ms). */
function markRead(c) {
  if (c.kind !== "room" || document.hidden) return;
  // Up to what it shows now: a message that comes during the wait may be for a room the user
  // has left by then.
  const seq = client.unread(c.name).seq;
  clearTimeout(c.readTimer);
  c.readTimer = setTimeout(() => {
    client.read(c.name, seq).then(renderSidebar, () => {});
  }, 300);
}

document.addEventListener("visibilitychange", () => {
  const c = convs.get(active);
  if (c && !document.hidden) markRead(c);
});

function onTyping(e) {
  if (`#${e.room}` === active) renderTyping();
}

/** "alice is typing…" under the open room's messages; it goes when the signals stop. */
function renderTyping() {
  const c = convs.get(active);
  const who = c?.kind === "room" ? client.typists(c.name).filter((u) => u !== me) : [];
  const t = $("typing");
  if (!who.length) return (t.textContent = "");
  t.textContent = who.length === 1 ? `${who[0]} is typing…` : `${who.slice(0, 3).join(", ")} are typing…`;
}
