// Type declarations for shardcast.js.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** A message body: any JSON value, or bytes. Bytes go out as they are with `protocol:
 * "proto"`, and as `{"$b64": "<base64>"}` with JSON; a binary client's body that is not JSON
 * arrives as a Uint8Array with "proto" and as `{"$b64": ...}` with JSON (docs/protocol.md,
 * "Bodies across formats"). */
export type Body = Json | Uint8Array;

export interface Backoff {
  /** First delay, in ms. Default 500. */
  initial?: number;
  /** Largest delay, in ms. Default 30000. */
  max?: number;
  /** Growth per attempt. Default 2. */
  factor?: number;
  /** Fraction of each delay drawn at random. Default 0.5. */
  jitter?: number;
}

export interface ConnectOptions {
  /** ws:// or wss:// URL of /ws. Default: /ws on the page's own host. */
  url?: string;
  /** A JWT. */
  token?: string;
  /** A user id, for a server in dev mode (no jwt_secret). */
  user?: string;
  /** Called for a token before connecting without one, and after an auth failure, 4001 or
   * a close that forbids reconnecting: a token different from the last one reconnects. */
  getToken?: () => string | Promise<string>;
  /** The WebSocket constructor, where the platform has none. */
  WebSocket?: unknown;
  /** How long a request waits for its reply, in ms. Default 10000. */
  requestTimeout?: number;
  backoff?: Backoff;
  /** The random source for jitter. Default Math.random. */
  random?: () => number;
  /** Where unacknowledged publish and send requests are kept: "memory" (default; lost with
   * the page) or "local" (also in `storage`, so a new client of the same URL and user, after a
   * reload, sends them). */
  outbox?: "memory" | "local";
  /** How long a `typing` event lasts without a fresh signal, in ms. Default 5000. */
  typingTimeout?: number;
  /** The storage of `outbox: "local"`. Default: localStorage when the platform has a working
   * one (else the outbox stays in memory). */
  storage?: OutboxStorage;
  /** The wire form: "json" (default; text frames) or "proto" (binary frames of
   * proto/shardcast.proto, subprotocol shardcast.proto). The API and events are the same. */
  protocol?: "json" | "proto";
}

/** The part of the Web Storage API that `outbox: "local"` uses. */
export interface OutboxStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** A publish or send in the outbox, as its events name it. */
export interface OutboxRequest {
  /** Its idempotency key: the app's, or one the client made (26 characters, ULID-like). */
  key: string;
  /** Set for a publish. */
  room?: string;
  /** Set for a send. */
  to?: string;
  body: Body;
}

export interface SendOptions {
  /** The idempotency key: 1-64 printable ASCII characters, unique per message (docs/protocol.md,
   * "Sending once"). Default: a fresh one. */
  key?: string;
}

export interface Message {
  type: "message";
  /** Set for a room message. */
  room?: string;
  /** Set for a direct message. */
  to?: string;
  from: string;
  /** The room's or the recipient's inbox sequence number (absent on a broadcast). */
  seq?: number;
  /** The sender's idempotency key: only on the sender's own other connections, live. */
  key?: string;
  ts: number;
  body: Body;
  /** An edit, delete or reaction of message `target` (emitted as its own event, not
   * "message"). */
  kind?: "edit" | "delete" | "react" | "unreact";
  target?: number;
  /** A reaction's emoji. */
  emoji?: string;
  /** A delete by the server API that erased the body. */
  hard?: boolean;
  /** Folded history: the seq of the latest edit. */
  edited?: number;
  /** Folded history: a tombstone (`body` null). */
  deleted?: boolean;
  /** The body was erased by a hard delete. */
  erased?: boolean;
  /** Folded history: per emoji, how many reacted and whether this user did. */
  reactions?: Record<string, { count: number; me: boolean }>;
}

export interface RoomRecovery {
  recovered: boolean;
  replayed: number;
  truncated: boolean;
  since: number;
  seq?: number;
  /** The error code when the room could not be rejoined. */
  error?: string;
}

export interface Recovery {
  /** False when a room missed messages it cannot get back or has a truncated replay. */
  complete: boolean;
  rooms: Record<string, RoomRecovery>;
}

export interface StateEvent {
  state: "connecting" | "connected" | "disconnected";
  attempt?: number;
  code?: number;
  reason?: string;
  /** On "disconnected": whether the client will reconnect, after `delay` ms. */
  reconnecting?: boolean;
  delay?: number;
  user?: string;
  /** On "connected" after a reconnect. */
  recovery?: Recovery | null;
}

export interface Events {
  message: Message;
  /** Live (or replayed) events of a room's stream: a Message with `kind` and `target`. */
  edit: Message;
  delete: Message;
  react: Message;
  unreact: Message;
  /** `info`: the user's presence info from the connect hook, if it has one. */
  joined: { room: string; user: string; info?: Record<string, unknown> };
  left: { room: string; user: string };
  /** A count room's member count changed (coalesced by the server: at most one per
   * `occupancy_interval_ms`); a list room past its `presence_list_max` sends these instead of
   * joined/left too. */
  occupancy: { room: string; members: number };
  /** The server took this client out of `room` (a refreshed token no longer allows it); it is
   * not rejoined. */
  removed: { room: string; reason: string };
  state: StateEvent;
  recovery: Recovery;
  error: { code: string; message: string; room?: string };
  /** A publish or send entered the outbox (`restored`: found in storage at the first
   * connect). */
  pending: OutboxRequest & { restored?: boolean };
  /** It was acknowledged: stored with `seq` (`dup`: by an earlier send of it). */
  sent: OutboxRequest & { seq: number; dup: boolean };
  /** It was refused for good (`code`: forbidden, not_member, bad_request, too_large, ...):
   * never sent again. */
  failed: OutboxRequest & { code: string; message: string };
  /** A member's signal (never stored, no seq; dropped first under back-pressure). */
  signal: { room: string; from: string; body: Json };
  /** A member started (a `{"typing":true}` signal) or stopped typing (`{"typing":false}`, or
   * no fresh signal within `typingTimeout`). */
  typing: { room: string; user: string; typing: boolean };
  /** This user's read position moved (on another connection, or by `read()`). */
  read: { room?: string; inbox?: true; seq: number };
  /** A member read the room up to `seq` (rooms whose rule has `receipts = true`; coalesced). */
  receipt: { room: string; user: string; seq: number };
}

/** A stream's unread count: its last seq seen, the user's read position, the difference. */
export interface Unread {
  seq: number;
  read: number;
  unread: number;
}

export interface Ack {
  type: "ack";
  id: number;
  room?: string;
  to?: string;
  seq?: number;
  recovered?: boolean;
  replayed?: number;
  truncated?: boolean;
  /** A join's room epoch, from a cluster (the redis engine); sent back on rejoin. */
  epoch?: number;
  /** A join's room rule: who may publish. */
  publish?: PublishMode;
  /** A join's room rule: what presence the room shows. */
  presence?: PresenceMode;
  /** A join's rights: what this connection may do in the room. */
  rights?: Right[];
  /** A join's member count (absent when the connection was already in the room). */
  members?: number;
  /** A join's (and a `read`'s) read position of the user in the room. */
  read?: number;
  /** A `read` of the inbox. */
  inbox?: true;
  /** A publish or send ack: an earlier send with the same key was stored, with this seq. */
  dup?: boolean;
  /** An edit, delete or reaction that changed nothing (no seq, no event). */
  noop?: boolean;
}

/** Who may publish in a room: any member whose token allows it, only connections whose token
 * grants publish there, or only the server API. */
export type PublishMode = "members" | "granted" | "api";
/** A room's presence: names and joined/left, a count and occupancy events, or nothing. */
export type PresenceMode = "list" | "count" | "off";
export type Right = "join" | "publish" | "presence" | "history";

/** What the client knows of a room it is in (`client.room(name)`), updated in place. Fields
 * are undefined with a server that does not send them. */
export interface RoomInfo {
  room: string;
  publish?: PublishMode;
  /** The room's rule; a "list" room past its presence_list_max counts (occupancy events,
   * `presence()` answers mode "count") until it shrinks back. */
  presence?: PresenceMode;
  /** What this connection may do there: "publish" is absent where the rule or the token keeps
   * it from publishing, "history" where a rejoin cannot recover (it rejoins without since). */
  rights?: Right[];
  /** The member count: from the join ack, then occupancy, joined and left events and
   * `presence()` answers. */
  members?: number;
}

/** `presence()`'s answer: the users, sorted (empty in count mode), with the mode and count. */
export type Presence = string[] & {
  readonly mode: "list" | "count";
  readonly members: number;
  /** The presence info (from the connect hook) of the users that have one, by user. */
  readonly info: Record<string, Record<string, unknown>>;
};

export interface Page {
  messages: Message[];
  more: boolean;
}

export class ShardcastError extends Error {
  /** The server's error code (e.g. "forbidden", "room_full", "not_member"), or "timeout",
   * "disconnected", "closed". */
  code: string;
  /** The request's room, when it named one. */
  room?: string;
}

export class Client {
  state: "connecting" | "connected" | "disconnected";
  user: string | null;
  on<K extends keyof Events>(type: K, fn: (event: Events[K]) => void): () => void;
  join(room: string): Promise<Ack>;
  leave(room: string): Promise<Ack>;
  /** Through the outbox: no timeout; sent again with its key after each reconnect until
   * acked (resolves, a dup ack too) or refused for good (rejects). rate_limited and
   * unavailable are retried after a backoff. One request on the wire per room (per recipient
   * for send): stored in the order made, one round trip each; other rooms go in parallel. */
  publish(room: string, body: Body, options?: SendOptions): Promise<Ack>;
  send(to: string, body: Body, options?: SendOptions): Promise<Ack>;
  /** The unacknowledged publish and send requests, oldest first (read only). */
  readonly outbox: ReadonlyArray<{ frame: OutboxRequest & { type: "publish" | "send" } }>;
  /** Every user in the room, sorted (paged from the server 1000 at a time); in a count room
   * none, and `members` says how many. */
  presence(room: string): Promise<Presence>;
  /** The room's rule, rights and member count; undefined when not in the room. */
  room(room: string): RoomInfo | undefined;
  history(room: string, options?: { before?: number; limit?: number }): Promise<Page>;
  sync(since: number): Promise<Page>;
  /** Our own message only; the ack's seq is the edit's. */
  edit(room: string, target: number, body: Json): Promise<Ack>;
  /** Our own message only; `noop` if it was deleted already. */
  delete(room: string, target: number): Promise<Ack>;
  /** One per user, emoji and message: `noop` if we have it. */
  react(room: string, target: number, emoji: string): Promise<Ack>;
  unreact(room: string, target: number, emoji: string): Promise<Ack>;
  /** Messages in their current state; page on with the reply's `before` while `more`. */
  foldedHistory(room: string, options?: { before?: number; limit?: number }): Promise<Page & { fold: true; before: number }>;
  /** A new token for the same user; later reconnects use it too. */
  refresh(token: string): Promise<{ type: "refreshed"; exp?: number }>;
  request(frame: { type: string; [key: string]: Json }): Promise<any>;
  /** A signal to the room's other members; false (not sent) while disconnected. */
  signal(room: string, body: Json): boolean;
  /** Call on each keystroke: at most one `{"typing":true}` signal per 2 s per room;
   * `typing(room, false)` says the user stopped. */
  typing(room: string, on?: boolean): boolean;
  /** The users typing in the room now. */
  typists(room: string): string[];
  /** Marks the room read up to `seq` (default: the last seq seen); resolves with the ack
   * (`read`: the position the server holds; positions only move forward). */
  read(room: string, seq?: number): Promise<Ack>;
  /** Marks the inbox read up to `seq` (default: the last inbox seq seen). */
  readInbox(seq?: number): Promise<Ack>;
  /** The room's (without a room: the inbox's) unread count, from the server's positions. */
  unread(room?: string): Unread;
  close(): void;
}

export function connect(options: ConnectOptions): Client;
/** Applies a live edit, delete or reaction to a folded view (seq → message); returns the
 * changed message, or undefined when its target is not in the view. */
export function applyEvent(messages: Map<number, Message>, event: Message, me?: string): Message | undefined;
export function closeAction(code: number, reason?: string): "reconnect" | "token" | "stop";
/** A fresh idempotency key (ULID-like: time, then 80 random bits). */
export function newKey(random?: () => number): string;
/** The reply codes after which the outbox sends a request again: rate_limited, unavailable. */
export const RETRIED_CODES: ReadonlySet<string>;
export function backoffDelay(attempt: number, backoff?: Backoff, random?: () => number): number;
/** A client frame (its JSON form's object) as a binary `ClientFrame` of proto/shardcast.proto. */
export function encodeClientFrame(frame: { type: string; [key: string]: unknown }): Uint8Array;
/** A binary `ServerFrame` as the object its JSON form parses to (a non-JSON body as bytes). */
export function decodeServerFrame(bytes: Uint8Array): { type: string; [key: string]: any };
