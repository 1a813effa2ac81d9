// shardcast.js: the JavaScript client for shardcast (docs/protocol.md).
//
// One ES module, no dependencies, no build step. It runs in browsers and in Node (pass
// `WebSocket` when the platform has none). It owns reconnection (jittered exponential backoff,
// the close-code rules), recovery (rejoin with `since`, inbox `sync`, duplicates dropped by
// seq), dead-connection detection and request ids. It holds no UI state.

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

/** Opens a client. It connects at once and keeps reconnecting until `close()`. */
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
    this.attempt = 0;
    this.closed = false;
    this.ws = null;
    this.timers = new Set();
    queueMicrotask(() => this.open());
  }

  /** `fn` is called with each event of `type`: message, joined, left, occupancy, removed,
   * state, recovery, error. Returns a function that removes it. */
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

  /** Publishes `body` (any JSON value) to `room`; resolves with the ack ({room, seq}). */
  async publish(room, body) {
    const ack = await this.request({ type: "publish", room, body });
    const r = this.rooms.get(room);
    if (r && ack.seq > r.seq) {
      r.own.add(ack.seq);
      this.advance(r);
    }
    return ack;
  }

  /** Sends `body` to user `to`; resolves with the ack ({to, seq}). */
  send(to, body) {
    return this.request({ type: "send", to, body });
  }

  /** Resolves with the users online in `room`, sorted, as an array that also carries `mode`
   * ("list", or "count" for a room whose presence is a count: then the array is empty) and
   * `members` (the count), both non-enumerable. The server answers a list in pages (each a
   * request against the rate limit); this asks for 1000 at a time until the last. */
  async presence(room) {
    const users = [];
    let after;
    for (;;) {
      const frame = { type: "presence", room, limit: 1000 };
      if (after !== undefined) frame.after = after;
      const page = await this.request(frame);
      if (page.mode === "count") return this.presenceAnswer(room, [], "count", page.members);
      users.push(...(page.users || []));
      if (!page.more || !page.users?.length) return this.presenceAnswer(room, users, "list", users.length);
      after = page.users[page.users.length - 1];
    }
  }

  presenceAnswer(room, users, mode, members) {
    const info = this.room(room);
    if (info && typeof members === "number") info.members = members;
    Object.defineProperty(users, "mode", { value: mode });
    Object.defineProperty(users, "members", { value: members });
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
      const entry = { id, frame: { ...frame, id }, resolve, reject };
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
    this.ws.send(JSON.stringify(entry.frame));
  }

  /** Closes the connection for good (close code 1000); pending requests reject. */
  close() {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.failAll(this.queue, "closed");
    this.queue = [];
    this.failAll([...this.inflight.values()], "closed");
    this.inflight.clear();
    const ws = this.ws;
    if (ws) {
      this.detach(ws);
      ws.close(1000);
    }
    this.setState("disconnected", { code: 1000, reason: "closed by the client" });
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
      ws = new this.WebSocket(url);
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
    this.failAll([...this.inflight.values()], "disconnected");
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
    this.setState("disconnected", { code, reason, reconnecting: false });
  }

  onFrame(data) {
    this.lastInbound = Date.now();
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return this.emit("error", { code: "bad_frame", message: "the server sent invalid JSON" });
    }
    if (f.type === "welcome") return this.onWelcome(f);
    if (f.type === "message") return this.onMessage(f);
    if (f.type === "joined" || f.type === "left") {
      const info = this.room(f.room);
      if (typeof info?.members === "number") info.members = Math.max(0, info.members + (f.type === "joined" ? 1 : -1));
      return this.emit(f.type, { room: f.room, user: f.user });
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
    const queue = this.queue;
    this.queue = [];
    for (const entry of queue) this.transmit(entry);
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
      return this.emit("message", m);
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
        this.ws?.send('{"type":"ping"}');
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

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc) throw new Error("options.url is required outside a browser");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/ws`;
}
