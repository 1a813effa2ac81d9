// shardcast.js: the JavaScript client for shardcast (docs/protocol.md).
//
// One ES module, no dependencies, no build step. It runs in browsers and in Node (pass
// `WebSocket` when the platform has none). It owns reconnection (jittered exponential backoff,
// the close-code rules), recovery (rejoin with `since`, inbox `sync`, duplicates dropped by
// seq), dead-connection detection, request ids, and the outbox: every `publish` and `send`
// carries an idempotency key and is sent again, with it, until the server answers it, so each
// is stored once (docs/protocol.md, "Sending once"). It holds no UI state.

/** What a rejoin sends: the last seq seen, and the room's epoch when the server gave one.
 * Nothing when the last ack's rights leave out `history`: a `join` with `since` needs it, and
 * would be refused (`forbidden`) where a plain join is let in. */
function position(r) {
  if (r.info.rights && !r.info.rights.includes("history")) return {};
  return r.epoch === undefined ? { since: r.seq } : { since: r.seq, epoch: r.epoch };
}

/** A room's record: the bookkeeping for recovery, and `info`, what `room(name)` shows. */
function roomRecord(room, seq) {
  return { seq, own: new Set(), info: { room, publish: undefined, presence: undefined, rights: undefined, members: undefined } };
}

/** What the client does after a close code: "reconnect", "token" (only with a fresh token) or
 * "stop". The table is docs/protocol.md's: 4000–4499 reconnect, 4500–4999 do not; 4002 (a
 * refused first-frame `connect`) depends on the refusal code in its reason. */
export function closeAction(code, reason = "") {
  if (code === 1000) return "stop";
  if (code === 4001) return "token";
  if (code === 4002) return reason === "unavailable" ? "reconnect" : "token";
  if (code >= 4500 && code <= 4999) return "stop";
  return "reconnect";
}

const CLOSE_NAMES = {
  1000: "normal",
  1001: "going_away",
  1002: "protocol_error",
  1006: "abnormal",
  1008: "policy",
  1009: "too_big",
  1007: "invalid_payload",
  1011: "internal_error",
  4000: "slow_consumer",
  4001: "token_expired",
  4002: "refused",
  4500: "replaced",
  4501: "kicked",
};

/** The delay before reconnect attempt `attempt` (0-based): exponential, capped at `max`, with
 * the upper `jitter` fraction drawn at random so that clients dropped together come back
 * spread out. */
export function backoffDelay(attempt, { initial = 500, max = 30000, factor = 2, jitter = 0.5 } = {}, random = Math.random) {
  const ceiling = Math.min(max, initial * Math.pow(factor, attempt));
  return Math.round(ceiling * (1 - jitter) + ceiling * jitter * random());
}

/** An error a request rejects with: `code` is the server's error code, or "timeout",
 * "disconnected" (the connection dropped before the reply) or "closed" (the client was
 * closed). */
export class ShardcastError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "ShardcastError";
    this.code = code;
  }
}

/** The error a request rejects with; `room` is the request's room, if it names one (a `join`
 * refused with `room_full` or `forbidden`, say). */
function requestError(f, frame) {
  const e = new ShardcastError(f.code, f.message);
  if (frame.room !== undefined) e.room = frame.room;
  return e;
}

/** Reply codes after which a `publish` or `send` is sent again (after a backoff): the server
 * did not store it and may take it later. Any other error reply is a definite refusal. */
export const RETRIED_CODES = new Set(["rate_limited", "unavailable"]);

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** A fresh idempotency key: 26 characters like a ULID (the time in ms, then 80 random bits),
 * within the protocol's 1–64 printable ASCII. */
export function newKey(random = Math.random) {
  let out = "";
  for (let t = Date.now(), i = 0; i < 10; i++, t = Math.floor(t / 32)) out = CROCKFORD[t % 32] + out;
  const bytes = new Uint8Array(16);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(random() * 256);
  for (const b of bytes) out += CROCKFORD[b % 32];
  return out;
}

/** The outbox's copy in `storage` (localStorage or the like), shared with the other clients of
 * the same URL (another tab, the page after a reload). Every change is a read-modify-write of
 * the whole list, so that two tabs do not drop each other's entries; a broken or full storage
 * only costs the copy, never a send. */
class StoredOutbox {
  constructor(storage, name) {
    this.storage = storage;
    this.name = name;
  }

  read() {
    try {
      const list = JSON.parse(this.storage.getItem(this.name) || "[]");
      return Array.isArray(list) ? list : [];
    } catch {
      return [];
    }
  }

  write(list) {
    try {
      if (list.length) this.storage.setItem(this.name, JSON.stringify(list, binaryAsB64));
      else this.storage.removeItem(this.name);
    } catch {
      // Full or unavailable: this instance still sends what it holds.
    }
  }

  add(record) {
    const list = this.read();
    if (!list.some((r) => r.key === record.key && r.user === record.user)) this.write([...list, record]);
  }

  remove(key, user) {
    this.write(this.read().filter((r) => !(r.key === key && (r.user ?? user) === user)));
  }
}

/** Opens a client. It connects at once and keeps reconnecting until `close()`. */
/** Applies a live event (`edit`, `delete`, `react`, `unreact`: a message with `kind`) to a
 * folded view: `messages`, a Map from seq to message as `foldedHistory` gives them. `me` is
 * this user, to keep each reaction's `me`. Returns the changed message, or undefined when its
 * target is not in the view. */
export function applyEvent(messages, event, me) {
  const m = messages.get(event.target);
  if (!m) return undefined;
  if (event.kind === "edit") {
    m.body = event.body;
    m.edited = event.seq;
  } else if (event.kind === "delete") {
    m.body = null;
    m.deleted = true;
    if (event.hard) m.erased = true;
    delete m.reactions;
  } else if (event.kind === "react" || event.kind === "unreact") {
    const reactions = (m.reactions = m.reactions || {});
    const r = reactions[event.emoji] || { count: 0, me: false };
    const add = event.kind === "react";
    r.count = Math.max(0, r.count + (add ? 1 : -1));
    if (event.from === me) r.me = add;
    if (r.count === 0) delete reactions[event.emoji];
    else reactions[event.emoji] = r;
  }
  return m;
}

export function connect(options) {
  return new Client(options);
}

export class Client {
  constructor(options = {}) {
    this.options = options;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket");
    this.url = options.url || defaultUrl();
    this.token = options.token;
    this.requestTimeout = options.requestTimeout ?? 10000;
    this.random = options.random || Math.random;
    const protocol = options.protocol ?? "json";
    if (protocol !== "json" && protocol !== "proto") throw new Error(`options.protocol must be "json" or "proto", not ${JSON.stringify(protocol)}`);
    /** Speaks the binary protocol (subprotocol shardcast.proto) rather than JSON. */
    this.proto = protocol === "proto";
    /** "connecting", "connected" or "disconnected". */
    this.state = "disconnected";
    /** The user id from the server's welcome. */
    this.user = null;
    this.listeners = {};
    /** Rooms this client is in: room -> { seq: last seq seen, own: seqs of our own publishes
     * above `seq` (they are never delivered to us live, but a replay would bring them), info:
     * the room's rule, rights and member count, as `room(name)` shows them }. */
    this.rooms = new Map();
    /** The last inbox seq seen; null until the first welcome. */
    this.inboxSeq = null;
    this.nextId = 1;
    /** id -> { resolve, reject, timer } for requests on the wire. */
    this.inflight = new Map();
    /** Requests made while not connected: sent once recovery is done. */
    this.queue = [];
    /** Unacknowledged `publish` and `send` requests, oldest first: each stays until its ack
     * (sent again with its key after every reconnect) or a definite refusal. */
    this.outbox = [];
    /** Orders the queue and the outbox together: a request waiting for the connection goes
     * out after the ones made before it, whichever list holds it. */
    this.nextOrder = 1;
    /** The timer that flushes the outbox when a retried request's backoff is over. */
    this.wake = null;
    const mode = options.outbox ?? "memory";
    if (mode !== "memory" && mode !== "local") throw new Error(`options.outbox must be "memory" or "local", not ${JSON.stringify(mode)}`);
    const storage = mode === "local" ? options.storage ?? storageOrNull() : null;
    this.stored = storage ? new StoredOutbox(storage, `shardcast.outbox ${this.url}`) : null;
    this.attempt = 0;
    this.closed = false;
    this.ws = null;
    this.timers = new Set();
    queueMicrotask(() => this.open());
  }

  /** `fn` is called with each event of `type`: message, joined, left, occupancy, removed,
   * state, recovery, error, pending, sent, failed, signal, typing, read, receipt. Returns a
   * function that removes it. */
  on(type, fn) {
    (this.listeners[type] ||= new Set()).add(fn);
    return () => this.listeners[type].delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners[type] || []) {
      try {
        fn(detail);
      } catch (e) {
        // An app's handler must not break the client's own bookkeeping.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  // ---- requests -------------------------------------------------------------------------

  /** Joins `room`; resolves with the ack ({room, seq, ...}). The room is rejoined with `since`
   * after every reconnect until `leave`. */
  async join(room) {
    const known = this.rooms.get(room);
    const frame = { type: "join", room };
    if (known) Object.assign(frame, position(known));
    const ack = await this.request(frame);
    this.joinedAck(room, ack);
    // Outbox entries restored from storage wait for their room.
    if (this.outbox.some((e) => e.restored)) this.flush();
    return ack;
  }

  /** What the client knows of a room it is in: `{room, publish, presence, rights, members}`
   * from the last join ack (`publish`: "members", "granted" or "api"; `presence`: "list",
   * "count" or "off"; `rights`: what this connection may do there), `members` kept up to date
   * by `occupancy`, `joined` and `left` events and `presence` answers. The same object is
   * updated in place; undefined when not in the room. Fields stay undefined with a server
   * that does not send them. */
  room(room) {
    return this.rooms.get(room)?.info;
  }

  async leave(room) {
    this.rooms.delete(room);
    return this.request({ type: "leave", room });
  }

  /** Publishes `body` (any JSON value) to `room`; resolves with the ack ({room, seq}, and
   * `dup: true` when an earlier send of it had been stored). It goes through the outbox: see
   * `outboxRequest`. */
  publish(room, body, { key } = {}) {
    return this.outboxRequest({ type: "publish", room, key: key ?? newKey(this.random), body });
  }

  /** Sends `body` to user `to`; resolves with the ack ({to, seq}, and `dup: true` as above). */
  send(to, body, { key } = {}) {
    return this.outboxRequest({ type: "send", to, key: key ?? newKey(this.random), body });
  }

  /** Puts a `publish` or `send` in the outbox and resolves with its ack. It has no timeout: it
   * waits through reconnects and is sent again with the same key after each recovery, in the
   * order first sent, until it is acked (a `dup` ack included) or refused for good (rejects,
   * `failed`). `rate_limited` and `unavailable` are retried after a backoff. One at a time
   * per room or recipient (see `flush`), so they are stored in the order made. */
  outboxRequest(frame) {
    if (this.closed) return Promise.reject(new ShardcastError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const entry = { isOutbox: true, frame, order: this.nextOrder++, resolve, reject, tries: 0, notBefore: 0, wire: null };
      this.outbox.push(entry);
      this.stored?.add({ ...frame, user: this.user });
      this.emit("pending", outboxDetail(frame));
      this.flush();
    });
  }

  /** The outbox entries found in storage for this user (or for no user yet), ahead of any
   * made by this instance: sent once their room is joined (a `send`: at once). */
  adoptStored() {
    if (!this.stored) return;
    const mine = new Set(this.outbox.map((e) => e.frame.key));
    const found = [];
    const list = this.stored.read();
    // Requests made before any welcome named no user: they are this user's now.
    if (list.some((r) => r.user == null)) this.stored.write(list.map((r) => (r.user == null ? { ...r, user: this.user } : r)));
    for (const r of list) {
      if (mine.has(r.key) || (r.user != null && r.user !== this.user)) continue;
      if (r.type !== "publish" && r.type !== "send") continue;
      const frame = r.type === "publish" ? { type: "publish", room: r.room, key: r.key, body: r.body } : { type: "send", to: r.to, key: r.key, body: r.body };
      found.push({ isOutbox: true, frame, order: 0, resolve() {}, reject() {}, tries: 0, notBefore: 0, wire: null, restored: true });
      mine.add(r.key);
    }
    found.forEach((e, i) => (e.order = i - found.length));
    this.outbox.unshift(...found);
    for (const e of found) this.emit("pending", { ...outboxDetail(e.frame), restored: true });
  }

  /** Sends what can go now: queued requests and outbox entries, in the order they were made.
   * An outbox entry holds back the later ones to its room or user while it waits (for its
   * retry time, or, restored from storage, for its room to be joined), so they keep their
   * order. Each room and each recipient has at most one outbox request on the wire (different
   * ones go in parallel): a request that the server refuses for now (`rate_limited`,
   * `unavailable`) can then never be overtaken by a later one it takes meanwhile, which a
   * pipeline could not prevent. Cost: a pass over the outbox and the queue, per flush and so
   * per ack. */
  flush() {
    if (this.state !== "connected" || !this.ws) return;
    const queue = this.queue;
    this.queue = [];
    const waiting = this.outbox.filter((e) => e.wire === null);
    const all = [...queue, ...waiting].sort((a, b) => a.order - b.order);
    const held = new Set();
    for (const e of this.outbox) if (e.wire !== null) held.add(targetOf(e.frame));
    const now = Date.now();
    let wake = Infinity;
    for (const entry of all) {
      if (!entry.isOutbox) {
        this.transmit(entry);
        continue;
      }
      const target = targetOf(entry.frame);
      const unjoined = entry.restored && entry.frame.room !== undefined && !this.rooms.has(entry.frame.room);
      if (entry.notBefore > now) wake = Math.min(wake, entry.notBefore);
      if (held.has(target) || entry.notBefore > now || unjoined) {
        held.add(target);
        continue;
      }
      this.sendOutbox(entry);
      held.add(target);
    }
    if (wake < Infinity) this.flushAt(wake);
  }

  /** Flushes again at `at` (ms since the epoch); one timer, for the earliest. A timer that
   * fires early just sets the next one. */
  flushAt(at) {
    if (this.wake && this.wake.at <= at) return;
    if (this.wake) {
      clearTimeout(this.wake.timer);
      this.timers.delete(this.wake.timer);
    }
    const timer = this.timer(Math.max(0, at - Date.now()) + 1, () => {
      this.wake = null;
      this.flush();
    });
    this.wake = { at, timer };
  }

  sendOutbox(entry) {
    const id = this.nextId++;
    entry.wire = id;
    entry.tries += 1;
    // `outbox` marks a wire entry that a dropped connection sends again instead of failing.
    const wire = { id, frame: { ...entry.frame, id }, outbox: entry };
    wire.resolve = (ack) => this.outboxAcked(entry, ack);
    wire.reject = (e) => this.outboxRefused(entry, e);
    this.transmit(wire);
  }

  outboxAcked(entry, ack) {
    this.settle(entry);
    if (entry.frame.type === "publish") {
      const r = this.rooms.get(entry.frame.room);
      if (r && ack.seq > r.seq) {
        r.own.add(ack.seq);
        this.advance(r);
      }
    }
    this.emit("sent", { ...outboxDetail(entry.frame), seq: ack.seq, dup: ack.dup === true });
    entry.resolve(ack);
  }

  outboxRefused(entry, e) {
    if (RETRIED_CODES.has(e.code)) {
      entry.wire = null;
      entry.notBefore = Date.now() + backoffDelay(entry.tries - 1, this.options.backoff, this.random);
      return this.flush();
    }
    this.settle(entry);
    this.emit("failed", { ...outboxDetail(entry.frame), code: e.code, message: e.message });
    entry.reject(e);
  }

  settle(entry) {
    this.outbox = this.outbox.filter((e) => e !== entry);
    // The next request to its room or user may go now.
    if (this.outbox.length > 0) queueMicrotask(() => this.flush());
    this.stored?.remove(entry.frame.key, this.user);
  }

  /** Resolves with the users online in `room`, sorted, as an array that also carries `mode`
   * ("list", or "count" for a room whose presence is a count: then the array is empty) and
   * `members` (the count), both non-enumerable. The server answers a list in pages (each a
   * request against the rate limit); this asks for 1000 at a time until the last. */
  async presence(room) {
    const users = [];
    const info = {};
    let after;
    for (;;) {
      const frame = { type: "presence", room, limit: 1000 };
      if (after !== undefined) frame.after = after;
      const page = await this.request(frame);
      if (page.mode === "count") return this.presenceAnswer(room, [], "count", page.members, info);
      users.push(...(page.users || []));
      Object.assign(info, page.info);
      if (!page.more || !page.users?.length) return this.presenceAnswer(room, users, "list", users.length, info);
      after = page.users[page.users.length - 1];
    }
  }

  presenceAnswer(room, users, mode, members, userInfo) {
    const info = this.room(room);
    if (info && typeof members === "number") info.members = members;
    Object.defineProperty(users, "mode", { value: mode });
    Object.defineProperty(users, "members", { value: members });
    Object.defineProperty(users, "info", { value: userInfo });
    return users;
  }

  /** Sends a new token for this connection's user; resolves with {exp}. It becomes the token
   * of later reconnects too. Rooms its `rooms` claim leaves out are left, each with a
   * `removed` event. */
  async refresh(token) {
    const reply = await this.request({ type: "refresh", token });
    this.token = token;
    return reply;
  }

  /** Resolves with {messages (newest first), more}. */
  history(room, { before, limit } = {}) {
    const frame = { type: "history", room };
    if (before !== undefined) frame.before = before;
    if (limit !== undefined) frame.limit = limit;
    return this.request(frame);
  }

  // ----- edits, deletes and reactions (docs/protocol.md) -----------------------------------

  /** A new body for our own message `target`; resolves with the ack (`seq`: the edit's). */
  edit(room, target, body) {
    return this.eventRequest({ type: "edit", room, target, body });
  }

  /** Deletes our own message `target` (ack `noop: true` if it was deleted already). */
  delete(room, target) {
    return this.eventRequest({ type: "delete", room, target });
  }

  /** Adds our reaction `emoji` to message `target` (ack `noop: true` if we have it). */
  react(room, target, emoji) {
    return this.eventRequest({ type: "react", room, target, emoji });
  }

  /** Takes our reaction back (ack `noop: true` if we had none). */
  unreact(room, target, emoji) {
    return this.eventRequest({ type: "unreact", room, target, emoji });
  }

  /** The server does not send a connection its own events (as for publishes): once acked
   * with a seq, the event is emitted here as the others get it (`ts` is this clock's), and
   * its seq counts as seen. */
  async eventRequest(frame) {
    const ack = await this.request(frame);
    if (ack.seq === undefined) return ack;
    const r = this.rooms.get(frame.room);
    if (r && ack.seq > r.seq) {
      r.own.add(ack.seq);
      this.advance(r);
    }
    const { type, ...fields } = frame;
    this.emit(type, { body: null, ...fields, type: "message", kind: type, from: this.user, seq: ack.seq, ts: Date.now() });
    return ack;
  }

  /** Resolves with {messages (newest first, each in its current state: latest body, `edited`,
   * tombstones with `deleted`, `reactions`), more, before}: page on with `before`. */
  foldedHistory(room, { before, limit } = {}) {
    const frame = { type: "history", room, fold: true };
    if (before !== undefined) frame.before = before;
    if (limit !== undefined) frame.limit = limit;
    return this.request(frame);
  }

  /** Resolves with {messages (oldest first), more}: direct messages to this user after
   * inbox seq `since`. */
  sync(since) {
    return this.request({ type: "sync", since });
  }

  /** Sends `frame` with a fresh id; resolves with the reply, rejects with a ShardcastError.
   * Made while disconnected, it waits for the connection (its timeout runs all the same). */
  request(frame) {
    if (this.closed) return Promise.reject(new ShardcastError("closed", "the client is closed"));
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const entry = { id, frame: { ...frame, id }, resolve, reject, order: this.nextOrder++ };
      entry.timer = this.timer(this.requestTimeout, () => {
        this.inflight.delete(id);
        this.queue = this.queue.filter((e) => e !== entry);
        reject(new ShardcastError("timeout", `no reply to ${frame.type} within ${this.requestTimeout} ms`));
      });
      if (this.state === "connected" && this.ws) this.transmit(entry);
      else this.queue.push(entry);
    });
  }

  transmit(entry) {
    this.inflight.set(entry.id, entry);
    this.ws.send(this.encode(entry.frame));
  }

  /** A frame in the connection's form: JSON text, or a binary `ClientFrame`. */
  encode(frame) {
    return this.proto ? encodeClientFrame(frame) : JSON.stringify(frame, binaryAsB64);
  }

  /** Closes the connection for good (close code 1000); pending requests reject, the outbox's
   * with them (with `outbox: "local"` they stay in storage for the next client). */
  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.failAll(this.queue, "closed");
    this.queue = [];
    this.failAll([...this.inflight.values()].filter((e) => !e.outbox), "closed");
    this.inflight.clear();
    this.dropOutbox();
    const ws = this.ws;
    if (ws) {
      this.detach(ws);
      ws.close(1000);
    }
    this.setState("disconnected", { code: 1000, reason: "closed by the client" });
  }

  /** The client stops: the outbox's promises reject with `closed`; their stored copies stay. */
  dropOutbox() {
    const outbox = this.outbox;
    this.outbox = [];
    for (const e of outbox) e.reject(new ShardcastError("closed", `${e.frame.type}: closed before it was acknowledged`));
  }

  failAll(entries, code) {
    for (const e of entries) {
      clearTimeout(e.timer);
      this.timers.delete(e.timer);
      e.reject(new ShardcastError(code, `${e.frame.type}: ${code}`));
    }
  }

  timer(ms, fn) {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  // ---- the connection -------------------------------------------------------------------

  async open() {
    if (this.closed) return;
    this.setState("connecting", { attempt: this.attempt });
    if (!this.token && this.options.getToken) {
      try {
        this.token = await this.options.getToken();
      } catch (e) {
        this.emit("error", { code: "token", message: `getToken failed: ${e}` });
      }
      if (this.closed) return;
    }
    const url = this.connectUrl();
    let ws;
    try {
      ws = this.proto ? new this.WebSocket(url, "shardcast.proto") : new this.WebSocket(url);
      ws.binaryType = "arraybuffer";
    } catch (e) {
      this.emit("error", { code: "bad_url", message: String(e) });
      return this.stop({ code: 1006, reason: String(e) });
    }
    this.ws = ws;
    this.welcomed = false;
    ws.addEventListener("message", (ev) => this.ws === ws && this.onFrame(ev.data));
    ws.addEventListener("close", (ev) => this.ws === ws && this.onClose(ev.code, ev.reason));
    // Some platforms (Node 20's WebSocket) fire only `error` when the handshake fails.
    let opened = false;
    ws.addEventListener("open", () => (opened = true));
    ws.addEventListener("error", () => this.ws === ws && !opened && this.onClose(1006, "connection failed"));
  }

  connectUrl() {
    const u = new URL(this.url);
    if (this.token) u.searchParams.set("token", this.token);
    else if (this.options.user) u.searchParams.set("user", this.options.user);
    return u.toString();
  }

  detach(ws) {
    // The listeners check `this.ws === ws`; dropping the reference silences them.
    if (this.ws === ws) this.ws = null;
    clearInterval(this.heartbeat);
  }

  async onClose(code, reason) {
    const ws = this.ws;
    this.detach(ws);
    // The outbox's requests are sent again after the next recovery; the others fail.
    this.failAll([...this.inflight.values()].filter((e) => !e.outbox), "disconnected");
    for (const e of this.inflight.values()) if (e.outbox) e.outbox.wire = null;
    this.inflight.clear();
    if (this.closed) return;
    let action = closeAction(code, reason);
    let why = CLOSE_NAMES[code] || `close ${code}`;
    if (!this.welcomed && code === 1006) {
      // A refused handshake looks like 1006 to a browser, which never sees the HTTP status.
      // A plain GET of the same URL answers 401 when the credentials are refused.
      const status = await this.probe();
      if (status === 401) {
        action = "token";
        why = reason = "unauthorized";
      }
    }
    if (action === "reconnect") return this.retry({ code, reason, why });
    // "token" and "stop": only a fresh token from getToken brings the client back.
    if (action === "token" || this.options.getToken) {
      const old = this.token;
      this.token = undefined;
      if (this.options.getToken) {
        try {
          this.token = await this.options.getToken();
        } catch (e) {
          this.emit("error", { code: "token", message: `getToken failed: ${e}` });
        }
      }
      if (this.closed) return;
      if (this.token && this.token !== old) return this.retry({ code, reason, why });
      this.token = old;
    }
    this.emit("error", { code: why, message: reason || why });
    this.stop({ code, reason: reason || why });
  }

  /** The HTTP status of a plain GET of the connect URL, or 0 when there is none. */
  async probe() {
    if (typeof fetch !== "function") return 0;
    try {
      const u = new URL(this.connectUrl());
      u.protocol = u.protocol === "wss:" ? "https:" : "http:";
      return (await fetch(u, { cache: "no-store" })).status;
    } catch {
      return 0;
    }
  }

  retry({ code, reason, why }) {
    const delay = backoffDelay(this.attempt, this.options.backoff, this.random);
    this.attempt += 1;
    this.setState("disconnected", { code, reason: reason || why, reconnecting: true, delay });
    this.timer(delay, () => this.open());
  }

  stop({ code, reason }) {
    this.closed = true;
    this.failAll(this.queue, "closed");
    this.queue = [];
    this.dropOutbox();
    this.setState("disconnected", { code, reason, reconnecting: false });
  }

  onFrame(data) {
    this.lastInbound = Date.now();
    let f;
    try {
      f = typeof data === "string" ? JSON.parse(data) : decodeServerFrame(new Uint8Array(data));
    } catch {
      return this.emit("error", { code: "bad_frame", message: "the server sent a frame that does not decode" });
    }
    if (f.type === "welcome") return this.onWelcome(f);
    if (f.type === "message") return this.onMessage(f);
    if (f.type === "signal" || f.type === "receipt" || (f.type === "read" && f.id === undefined)) return this.onChatFrame(f);
    if (f.type === "joined" || f.type === "left") {
      const info = this.room(f.room);
      if (typeof info?.members === "number") info.members = Math.max(0, info.members + (f.type === "joined" ? 1 : -1));
      const event = { room: f.room, user: f.user };
      if (f.info !== undefined) event.info = f.info;
      return this.emit(f.type, event);
    }
    if (f.type === "occupancy") {
      // A count room (or a list room past its presence_list_max): the member count, coalesced
      // by the server, instead of joined/left.
      const info = this.room(f.room);
      if (info) info.members = f.members;
      return this.emit("occupancy", { room: f.room, members: f.members });
    }
    if (f.type === "removed") {
      // The server took us out of the room (a refreshed token no longer allows it): it is
      // not rejoined after a reconnect.
      this.rooms.delete(f.room);
      return this.emit("removed", { room: f.room, reason: f.reason });
    }
    if (f.id !== undefined) {
      const entry = this.inflight.get(f.id);
      if (!entry) return;
      this.inflight.delete(f.id);
      clearTimeout(entry.timer);
      this.timers.delete(entry.timer);
      if (f.type === "error") entry.reject(requestError(f, entry.frame));
      else entry.resolve(f);
      return;
    }
    if (f.type === "error") this.emit("error", { code: f.code, message: f.message });
  }

  async onWelcome(w) {
    const ws = this.ws;
    const first = this.inboxSeq === null;
    this.welcomed = true;
    this.user = w.user;
    this.chatWelcome(w);
    if (first) this.adoptStored();
    this.startHeartbeat(w.heartbeat_ms);
    // Direct messages are held until `sync` has answered: the offline replay, the sync reply
    // and live ones may overlap, and are merged by seq.
    this.held = [];
    const since = first ? w.inbox_seq : this.inboxSeq;
    const rooms = {};
    for (const room of w.rooms || []) if (!this.rooms.has(room)) this.rooms.set(room, roomRecord(room, 0));
    const rejoin = async ([room, r]) => {
      const since = r.seq;
      try {
        const ack = await this.direct({ type: "join", room, ...position(r) });
        // A room the token's claim joined at connect is acknowledged again, without a replay:
        // messages between `since` and its seq were missed.
        const recovered = ack.recovered ?? ack.seq === since;
        rooms[room] = { recovered, replayed: ack.replayed ?? 0, truncated: ack.truncated ?? false, since, seq: ack.seq };
        this.joinedAck(room, ack);
      } catch (e) {
        if (e.code === "timeout" || e.code === "disconnected") throw e;
        // Refused now (e.g. forbidden): the room is dropped, and the app told.
        this.rooms.delete(room);
        rooms[room] = { recovered: false, replayed: 0, truncated: false, since, error: e.code };
        this.emit("error", { code: e.code, message: `rejoin ${room}: ${e.message}`, room });
      }
    };
    try {
      const joins = Promise.all([...this.rooms.entries()].map(rejoin));
      const synced = [];
      for (let after = since, more = true; more; ) {
        const page = await this.direct({ type: "sync", since: after });
        synced.push(...page.messages);
        more = page.more && page.messages.length > 0;
        if (page.messages.length) after = page.messages[page.messages.length - 1].seq;
      }
      await joins;
      if (this.ws !== ws) return;
      const held = this.held;
      this.held = null;
      if (first) this.inboxSeq = 0;
      for (const m of [...held, ...synced].sort((a, b) => a.seq - b.seq)) this.onDirect(m);
      this.inboxSeq = Math.max(this.inboxSeq, since);
    } catch (e) {
      if (this.ws === ws) this.abandon(`recovery failed: ${e.message}`);
      return;
    }
    if (this.ws !== ws) return;
    this.attempt = 0;
    const complete = Object.values(rooms).every((r) => r.recovered && !r.truncated);
    if (!first) this.emit("recovery", { complete, rooms });
    this.setState("connected", { user: this.user, recovery: first ? null : { complete, rooms } });
    this.flush();
  }

  /** A request on the current socket during recovery, before the queue is let through. */
  direct(frame) {
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      const entry = { id, frame: { ...frame, id }, resolve, reject };
      entry.timer = this.timer(this.requestTimeout, () => {
        this.inflight.delete(id);
        reject(new ShardcastError("timeout", `no reply to ${frame.type}`));
      });
      this.transmit(entry);
    });
  }

  joinedAck(room, ack) {
    let r = this.rooms.get(room);
    if (!r) this.rooms.set(room, (r = roomRecord(room, ack.seq)));
    // A repeated join's ack has no `members`: the count kept so far stands.
    for (const k of ["publish", "presence", "rights", "members"]) if (ack[k] !== undefined) r.info[k] = ack[k];
    // A cluster's room that began a new epoch (its Redis lost the history) restarts its seqs:
    // what is replayed now counts from 0 (the ack says recovered: false).
    if (ack.epoch !== undefined) {
      if (r.epoch !== undefined && r.epoch !== ack.epoch) r.seq = 0;
      r.epoch = ack.epoch;
    }
    // With a truncated replay the gap below the replay is for the app to page back through.
    if (!ack.replayed && ack.seq > r.seq) r.seq = ack.seq;
    this.advance(r);
    if (ack.read !== undefined) this.readMoved(`r:${room}`, ack.read, false);
  }

  /** Moves `seq` over our own publishes that directly follow it. */
  advance(r) {
    for (const s of r.own) if (s <= r.seq) r.own.delete(s);
    while (r.own.delete(r.seq + 1)) r.seq += 1;
  }

  onMessage(m) {
    if (m.room !== undefined) {
      const r = this.rooms.get(m.room);
      if (r) {
        if (m.seq <= r.seq || r.own.has(m.seq)) {
          r.own.delete(m.seq);
          return;
        }
        r.seq = m.seq;
        this.advance(r);
      }
      // An edit, delete or reaction is emitted as its kind, not as a new message.
      return this.emit(m.kind || "message", m);
    }
    if (m.to !== undefined && m.to === this.user) {
      if (this.held) return void this.held.push(m);
      return this.onDirect(m);
    }
    this.emit("message", m);
  }

  onDirect(m) {
    if (this.inboxSeq !== null && m.seq <= this.inboxSeq) return;
    this.inboxSeq = m.seq;
    this.emit("message", m);
  }

  /** Pings every heartbeat: a tick that finds nothing received since the previous tick means
   * the connection went quiet (browsers hide the server's WebSocket pings), so it is dropped
   * and reopened. */
  startHeartbeat(ms) {
    clearInterval(this.heartbeat);
    // The first tick only pings; from the second on, the previous ping has had a whole
    // heartbeat to be answered.
    let previous = this.lastInbound;
    this.heartbeat = setInterval(() => {
      if (this.lastInbound < previous) return this.abandon("no reply from the server within the heartbeat");
      previous = Date.now();
      try {
        this.ws?.send(this.encode({ type: "ping" }));
      } catch {
        // The close event follows.
      }
    }, ms);
  }

  /** Drops a connection that stopped answering, without waiting for its close handshake. */
  abandon(why) {
    const ws = this.ws;
    if (!ws) return;
    try {
      ws.close(4000, "unresponsive");
    } catch {
      // Already closing.
    }
    // onClose detaches `ws`, so its own close event, whenever it comes, is ignored.
    this.onClose(1006, why);
  }
}

/** What `pending`, `sent` and `failed` events carry: a publish has `room`, a send `to`. */
function outboxDetail(frame) {
  const target = frame.type === "publish" ? { room: frame.room } : { to: frame.to };
  return { key: frame.key, ...target, body: frame.body };
}

/** The order domain of an outbox entry: its room, or its recipient. */
function targetOf(frame) {
  return frame.type === "publish" ? `#${frame.room}` : `@${frame.to}`;
}

/** `localStorage` where the platform has one that works (not in Node; not in a browser that
 * blocks it). */
function storageOrNull() {
  try {
    const s = globalThis.localStorage;
    if (!s) return null;
    s.getItem("shardcast.probe");
    return s;
  } catch {
    return null;
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("options.url is required outside a browser");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}

// ----- the binary protocol (shardcast.proto) -------------------------------------------------
// A small codec for proto/shardcast.proto, written by hand so the client keeps no dependency:
// client frames are encoded from the same objects the JSON form sends, and server frames are
// decoded into the objects the JSON form parses to, so the rest of the client does not know
// which form it speaks. Numbers are JavaScript numbers: seqs, times and epochs stay below
// 2^53 (docs/protocol.md). Unknown fields and frame kinds are skipped, as protobuf requires.

const S = "string", U = "uint", B = "bool", BODY = "body", LIST = "strings";

/** Client frames: type -> [its arm's number in ClientFrame, { field: [number, kind] }]. */
const CLIENT_FRAMES = {
  join: [10, { room: [1, S], since: [2, U], epoch: [3, U] }],
  leave: [11, { room: [1, S] }],
  publish: [12, { room: [1, S], body: [2, BODY], key: [3, S] }],
  send: [13, { to: [1, S], body: [2, BODY], key: [3, S] }],
  presence: [14, { room: [1, S], after: [2, S], limit: [3, U] }],
  history: [15, { room: [1, S], before: [2, U], limit: [3, U], fold: [4, B] }],
  sync: [16, { since: [1, U] }],
  ping: [17, {}],
  refresh: [18, { token: [1, S] }],
  connect: [19, { token: [1, S] }],
  signal: [20, { room: [1, S], body: [2, BODY] }],
  read: [21, { room: [1, S], inbox: [2, B], seq: [3, U] }],
  edit: [22, { room: [1, S], target: [2, U], body: [3, BODY] }],
  delete: [23, { room: [1, S], target: [2, U] }],
  react: [24, { room: [1, S], target: [2, U], emoji: [3, S] }],
  unreact: [25, { room: [1, S], target: [2, U], emoji: [3, S] }],
};

// `reactions` and `reads` are JSON objects keyed by emoji and room: repeated messages whose
// first field is the key (OBJECT: [key field, { number: [field, kind] } of the rest]).
const OBJECT = "object";
const REACTIONS = ["emoji", { 2: ["count", U], 3: ["me", B] }];
const READS = ["room", { 2: ["seq", U], 3: ["read", U] }];
const MESSAGE = {
  1: ["room", S], 2: ["to", S], 3: ["from", S], 4: ["seq", U], 5: ["ts", U], 6: ["key", S], 7: ["body", "bytes"], 8: ["body_json", B],
  9: ["kind", S], 10: ["target", U], 11: ["emoji", S], 12: ["hard", B], 13: ["edited", U], 14: ["deleted", B], 15: ["erased", B], 16: ["reactions", OBJECT, REACTIONS],
};
const MEMBERSHIP = { 1: ["room", S], 2: ["user", S], 3: ["info", "bytes"] };
// `Presence.info`: map<string, bytes>, entries of key 1 and value 2 (a JSON object's text).
const INFOS = ["user", { 2: ["value", "bytes"] }];
const PAGE = { 1: ["room", S], 2: ["messages", "messages"], 3: ["more", B], 4: ["fold", B], 5: ["before", U] };

/** Server frames: ServerFrame arm number -> [type, { number: [field, kind] }]. */
const SERVER_FRAMES = {
  10: ["welcome", { 1: ["user", S], 2: ["rooms", LIST], 3: ["heartbeat_ms", U], 4: ["inbox_seq", U], 5: ["inbox_read", U], 6: ["reads", OBJECT, READS] }],
  11: ["message", MESSAGE],
  12: ["joined", MEMBERSHIP],
  13: ["left", MEMBERSHIP],
  14: ["occupancy", { 1: ["room", S], 2: ["members", U] }],
  15: ["removed", { 1: ["room", S], 2: ["reason", S] }],
  16: ["ack", { 1: ["room", S], 2: ["to", S], 3: ["seq", U], 4: ["dup", B], 5: ["publish", S], 6: ["presence", S], 7: ["rights", LIST], 8: ["members", U], 9: ["epoch", U], 10: ["recovered", B], 11: ["replayed", U], 12: ["truncated", B], 13: ["noop", B], 14: ["read", U], 15: ["inbox", B] }],
  17: ["pong", {}],
  18: ["presence", { 1: ["room", S], 2: ["mode", S], 3: ["users", LIST], 4: ["more", B], 5: ["members", U], 6: ["info", OBJECT, INFOS] }],
  19: ["refreshed", { 1: ["exp", U] }],
  20: ["error", { 1: ["code", S], 2: ["message", S] }],
  21: ["history", PAGE],
  22: ["sync", PAGE],
  23: ["signal", { 1: ["room", S], 2: ["from", S], 3: ["body", "bytes"], 4: ["body_json", B] }],
  24: ["read", { 1: ["room", S], 2: ["inbox", B], 3: ["seq", U] }],
  25: ["receipt", { 1: ["room", S], 2: ["user", S], 3: ["seq", U] }],
};

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

class Writer {
  constructor() {
    this.bytes = [];
  }
  varint(n) {
    // Numbers up to 2^53: the low 7 bits by arithmetic, not by 32-bit shifts.
    while (n >= 0x80) {
      this.bytes.push((n % 0x80) | 0x80);
      n = Math.floor(n / 0x80);
    }
    this.bytes.push(n);
  }
  tag(field, wire) {
    this.varint(field * 8 + wire);
  }
  lengthDelimited(field, bytes) {
    this.tag(field, 2);
    this.varint(bytes.length);
    for (const b of bytes) this.bytes.push(b);
  }
  finish() {
    return new Uint8Array(this.bytes);
  }
}

/** A JSON.stringify replacer: a Uint8Array body as `{"$b64": ...}`, the JSON form of bytes. */
function binaryAsB64(_key, v) {
  if (!(v instanceof Uint8Array)) return v;
  let s = "";
  for (const b of v) s += String.fromCharCode(b);
  return { $b64: btoa(s) };
}

/** A body's bytes: a Uint8Array as it is, anything else as its JSON text. */
function bodyBytes(body) {
  return body instanceof Uint8Array ? body : utf8.encode(JSON.stringify(body === undefined ? null : body));
}

/** A client frame (the object the JSON form would send) as a binary `ClientFrame`. */
export function encodeClientFrame(frame) {
  const spec = CLIENT_FRAMES[frame.type];
  if (!spec) throw new Error(`no binary form for a ${JSON.stringify(frame.type)} frame`);
  const [arm, fields] = spec;
  const inner = new Writer();
  for (const [name, [n, kind]] of Object.entries(fields)) {
    const v = frame[name];
    if (v === undefined || v === null) continue;
    if (kind === U) {
      inner.tag(n, 0);
      inner.varint(v);
    } else if (kind === B) {
      if (!v) continue; // false is proto3's default: left unset
      inner.tag(n, 0);
      inner.varint(1);
    } else if (kind === BODY) inner.lengthDelimited(n, bodyBytes(v));
    else inner.lengthDelimited(n, utf8.encode(String(v)));
  }
  const out = new Writer();
  if (typeof frame.id === "number") {
    out.tag(1, 0);
    out.varint(frame.id);
  } else if (frame.id !== undefined) out.lengthDelimited(2, utf8.encode(String(frame.id)));
  out.lengthDelimited(arm, inner.finish());
  return out.finish();
}

class Reader {
  constructor(bytes, start = 0, end = bytes.length) {
    this.b = bytes;
    this.at = start;
    this.end = end;
  }
  varint() {
    let n = 0;
    for (let scale = 1; ; scale *= 0x80) {
      if (this.at >= this.end) throw new Error("truncated varint");
      const b = this.b[this.at++];
      n += (b & 0x7f) * scale;
      if (b < 0x80) return n;
    }
  }
  /** Each field: [number, wire type, a varint's value or a length-delimited [start, end]]. */
  *fields() {
    while (this.at < this.end) {
      const tag = this.varint();
      const field = Math.floor(tag / 8), wire = tag % 8;
      if (wire === 0) yield [field, wire, this.varint()];
      else if (wire === 2) {
        const len = this.varint();
        const start = this.at;
        this.at += len;
        if (this.at > this.end) throw new Error("truncated field");
        yield [field, wire, [start, this.at]];
      } else if (wire === 1) this.at += 8;
      else if (wire === 5) this.at += 4;
      else throw new Error(`unsupported wire type ${wire}`);
    }
  }
}

function decodeFields(bytes, [start, end], spec) {
  const out = {};
  for (const [n, wire, v] of new Reader(bytes, start, end).fields()) {
    const f = spec[n];
    if (!f) continue;
    const [name, kind, sub] = f;
    if (kind === U) out[name] = v;
    else if (kind === B) out[name] = v !== 0;
    else if (wire !== 2) continue;
    else if (kind === S) out[name] = fromUtf8.decode(bytes.subarray(v[0], v[1]));
    else if (kind === LIST) (out[name] ??= []).push(fromUtf8.decode(bytes.subarray(v[0], v[1])));
    else if (kind === "bytes") out[name] = bytes.slice(v[0], v[1]);
    else if (kind === "messages") (out[name] ??= []).push(asMessage(decodeFields(bytes, v, MESSAGE)));
    else if (kind === OBJECT) {
      const [key, rest] = sub;
      const { [key]: k = "", ...value } = decodeFields(bytes, v, { 1: [key, S], ...rest });
      for (const [, [field, fk]] of Object.entries(rest)) value[field] ??= fk === B ? false : 0;
      (out[name] ??= {})[k] = value;
    }
  }
  return out;
}

/** A decoded `Message` in its JSON shape: a JSON body as its value, other bytes as a
 * Uint8Array (docs/protocol.md, "Bodies across formats"). */
function asMessage(m) {
  withBody(m);
  if (!m.seq) delete m.seq;
  return { type: "message", ...m };
}

/** A decoded `body` and `body_json` as the JSON form's `body`. */
function withBody(m) {
  const body = m.body ?? new Uint8Array();
  m.body = m.body_json ? JSON.parse(fromUtf8.decode(body)) : body;
  delete m.body_json;
  return m;
}

/** A binary `ServerFrame` as the object its JSON form parses to (proto3's unset defaults put
 * back where the JSON form always has the field). */
export function decodeServerFrame(bytes) {
  let f = { type: undefined };
  for (const [n, wire, v] of new Reader(bytes).fields()) {
    if (n === 1 && wire === 0) f.id = v;
    else if (n === 2 && wire === 2) f.id = fromUtf8.decode(bytes.subarray(v[0], v[1]));
    else if (SERVER_FRAMES[n] && wire === 2) {
      const [type, spec] = SERVER_FRAMES[n];
      f = { ...f, ...decodeFields(bytes, v, spec), type };
    }
  }
  if (f.type === "message") f = { ...asMessage(f), id: f.id };
  if (f.type === "signal") withBody(f);
  if (f.type === "read" || f.type === "receipt") f.seq ??= 0;
  if (f.type === "welcome") {
    f.rooms ??= [];
    f.inbox_seq ??= 0;
    f.inbox_read ??= 0;
    f.reads ??= {};
  }
  if (f.type === "ack" && (f.read !== undefined || f.inbox)) f.read ??= 0;
  if (f.type === "history" || f.type === "sync") {
    f.messages ??= [];
    f.more ??= false;
  }
  if (f.type === "presence" && f.mode === "list") f.users ??= [];
  // Presence info: JSON text in the binary form, the object in the JSON one.
  const json = (b) => JSON.parse(fromUtf8.decode(b));
  if (f.type === "joined" || f.type === "left") {
    if (f.info?.length) f.info = json(f.info);
    else delete f.info;
  }
  if (f.type === "presence" && f.info) {
    f.info = Object.fromEntries(Object.entries(f.info).map(([u, v]) => [u, json(v.value)]));
  }
  if (f.id === undefined) delete f.id;
  return f;
}

// ----- signals, typing, read positions, receipts and unread counts (issue 23) -----------------
//
// Signals are fire-and-forget (never stored, dropped first under back-pressure), so a typing
// indicator expires on the receiving side: `typing` events say `typing: false` after
// `options.typingTimeout` (default 5000 ms) without a fresh signal. Read positions come from
// the server (welcome, join acks, `read` frames from the user's other connections), so unread
// counts agree across devices and reloads.

/** How often `typing(room)` sends at most, per room, while the user keeps typing. */
const TYPING_EVERY_MS = 2000;

const chatMethods = {
  chat() {
    return (this.chatState ||= { reads: new Map(), typists: new Map(), lastTyping: new Map() });
  },

  /** Sends a signal (any JSON value) to the room's other members; never stored. Returns whether
   * it was sent (not while disconnected: a signal is about now). */
  signal(room, body) {
    if (this.state !== "connected" || !this.ws) return false;
    this.ws.send(this.encode({ type: "signal", room, body }));
    return true;
  },

  /** Says the user is typing in `room`: call it on each keystroke; it sends at most one
   * `{"typing":true}` signal every 2 s per room. `typing(room, false)` says it stopped. */
  typing(room, on = true) {
    const last = this.chat().lastTyping;
    const now = Date.now();
    if (on && now - (last.get(room) ?? -Infinity) < TYPING_EVERY_MS) return false;
    if (on) last.set(room, now);
    else last.delete(room);
    return this.signal(room, { typing: on });
  },

  /** The users typing in `room` now (by the signals received, expired after typingTimeout). */
  typists(room) {
    return [...this.chat().typists.keys()].filter((k) => k.startsWith(`${room}\n`)).map((k) => k.slice(room.length + 1));
  },

  /** Marks `room` read up to `seq` (by default, the last seq seen); resolves with the position
   * the server holds ({room, read}). Positions only move forward. */
  async read(room, seq) {
    const r = this.rooms.get(room);
    const upto = seq ?? r?.seq ?? 0;
    const ack = await this.request({ type: "read", room, seq: upto });
    this.readMoved(`r:${room}`, ack.read, true);
    return ack;
  },

  /** Marks the inbox read up to `seq` (by default, the last inbox seq seen). */
  async readInbox(seq) {
    const ack = await this.request({ type: "read", inbox: true, seq: seq ?? this.inboxSeq ?? 0 });
    this.readMoved("i", ack.read, true);
    return ack;
  },

  /** What is unread: for `room`, {seq, read, unread}; without a room, the inbox's. `seq` is
   * the last seq this client has seen (the join ack's, then each message's). */
  unread(room) {
    const seq = room === undefined ? this.inboxSeq ?? 0 : this.rooms.get(room)?.seq ?? 0;
    const read = this.chat().reads.get(room === undefined ? "i" : `r:${room}`) ?? 0;
    return { seq, read, unread: Math.max(0, seq - read) };
  },

  chatWelcome(w) {
    if (w.inbox_read !== undefined) this.readMoved("i", w.inbox_read, false);
    for (const [room, p] of Object.entries(w.reads || {})) this.readMoved(`r:${room}`, p.read, false);
  },

  /** A position the server gave; `emit` sends a `read` event when it moved. */
  readMoved(key, seq, emit) {
    const reads = this.chat().reads;
    if ((reads.get(key) ?? -1) >= seq) return;
    reads.set(key, seq);
    if (emit) this.emit("read", key === "i" ? { inbox: true, seq } : { room: key.slice(2), seq });
  },

  onChatFrame(f) {
    if (f.type === "read") return this.readMoved(f.inbox ? "i" : `r:${f.room}`, f.seq, true);
    if (f.type === "receipt") return this.emit("receipt", { room: f.room, user: f.user, seq: f.seq });
    this.emit("signal", { room: f.room, from: f.from, body: f.body });
    const typing = f.body && typeof f.body === "object" ? f.body.typing : undefined;
    if (typing !== true && typing !== false) return;
    const typists = this.chat().typists;
    const key = `${f.room}\n${f.from}`;
    clearTimeout(typists.get(key));
    if (!typing) {
      if (typists.delete(key)) this.emit("typing", { room: f.room, user: f.from, typing: false });
      return;
    }
    const fresh = !typists.has(key);
    const expire = setTimeout(() => {
      typists.delete(key);
      this.emit("typing", { room: f.room, user: f.from, typing: false });
    }, this.options.typingTimeout ?? 5000);
    typists.set(key, expire);
    if (fresh) this.emit("typing", { room: f.room, user: f.from, typing: true });
  },
};

Object.assign(Client.prototype, chatMethods);
