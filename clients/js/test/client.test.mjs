// The client library against a real shardcast server (run by tests/js_client.rs with
// `node --experimental-websocket --test`): recovery across a restart, backoff, request
// timeouts, dead connections and the close-code rules.

import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, closeAction } from "../shardcast.js";
import { API_KEY, SECRET, api, connected, mint, record, scoped, sleep, until, waitFor } from "./helpers.mjs";

const { server, proxy, client } = scoped();
const noRateLimit = ["--publish-rate", "100000", "--publish-burst", "100000"];

test("a server restart loses and duplicates nothing, in rooms and in the inbox", async () => {
  const s = await server([...noRateLimit, "--api-key", API_KEY]);
  const p = await proxy(s.addr);
  // Alice goes through the proxy, so the test decides when she can reconnect.
  const alice = client({ url: p.url, user: "alice", backoff: { initial: 50, max: 200 } });
  const got = record(alice, ["message", "recovery"]);
  await connected(alice);
  await alice.join("r");
  const bob = client({ url: s.url, user: "bob", backoff: { initial: 50, max: 200 } });
  await connected(bob);
  await bob.join("r");
  for (let i = 1; i <= 5; i++) await bob.publish("r", { n: i });
  const own = await alice.publish("r", { n: 6, mine: true });
  assert.equal(own.seq, 6);
  await bob.send("alice", { dm: 1 });
  await until(() => got.filter((e) => e.type === "message").length === 6, "alice's first 6 messages");

  p.mode = "refuse";
  await s.restart(); // both get 1001
  await connected(bob);
  for (let i = 7; i <= 16; i++) await bob.publish("r", { n: i });
  for (let i = 2; i <= 4; i++) await bob.send("alice", { dm: i });
  p.mode = "pass";
  // Bob keeps publishing while alice recovers.
  const live = (async () => {
    for (let i = 17; i <= 30; i++) await bob.publish("r", { n: i });
    await bob.send("alice", { dm: 5 });
  })();
  await waitFor(alice, "recovery");
  await live;
  await until(() => got.filter((e) => e.type === "message").length === 6 + 24 + 4, "alice's 34 messages");
  await sleep(200); // a duplicate would arrive now

  const room = got.filter((e) => e.type === "message" && e.room === "r");
  const seqs = room.map((m) => m.seq);
  const expected = [...Array(30).keys()].map((i) => i + 1).filter((n) => n !== 6);
  assert.deepEqual(seqs, expected, "every room message once, in order, without alice's own");
  assert.deepEqual(room.map((m) => m.body.n), expected);
  const dms = got.filter((e) => e.type === "message" && e.to === "alice");
  assert.deepEqual(dms.map((m) => m.body.dm), [1, 2, 3, 4, 5]);
  const recovery = got.find((e) => e.type === "recovery");
  assert.equal(recovery.complete, true);
  assert.equal(recovery.rooms.r.since, 6);
  assert.ok(recovery.rooms.r.replayed >= 10, `replayed ${recovery.rooms.r.replayed}`);
});

test("an incomplete recovery is reported: a truncated replay", async () => {
  const s = await server([...noRateLimit, "--replay-limit", "3"]);
  const p = await proxy(s.addr);
  const alice = client({ url: p.url, user: "alice", backoff: { initial: 50, max: 100 } });
  await connected(alice);
  await alice.join("t");
  const bob = client({ url: s.url, user: "bob" });
  await connected(bob);
  await bob.join("t");
  p.mode = "refuse";
  p.cut();
  for (let i = 1; i <= 8; i++) await bob.publish("t", i);
  const got = record(alice, ["message"]);
  p.mode = "pass";
  const recovery = await waitFor(alice, "recovery");
  assert.equal(recovery.complete, false);
  assert.deepEqual(recovery.rooms.t, { recovered: true, replayed: 3, truncated: true, since: 0, seq: 8 });
  await until(() => got.length === 3, "the 3 replayed messages");
  assert.deepEqual(got.map((m) => m.seq), [6, 7, 8], "the newest ones");
});

test("backoff grows exponentially with jitter, is capped, and resets after a connection", async () => {
  for (let a = 0; a < 8; a++) {
    const ceiling = Math.min(1000, 100 * 2 ** a);
    assert.equal(backoffDelay(a, { initial: 100, max: 1000 }, () => 0), ceiling / 2);
    assert.equal(backoffDelay(a, { initial: 100, max: 1000 }, () => 1), ceiling);
  }
  const s = await server();
  const p = await proxy(s.addr);
  p.mode = "refuse";
  const c = client({ url: p.url, user: "u", backoff: { initial: 40, max: 200, jitter: 0.5 }, random: () => 0.5 });
  const states = record(c, ["state"]);
  await until(() => states.filter((e) => e.delay !== undefined).length >= 5, "5 failed attempts");
  const delays = states.filter((e) => e.delay !== undefined).map((e) => e.delay);
  assert.deepEqual(delays.slice(0, 5), [30, 60, 120, 150, 150]);
  assert.ok(p.accepted >= 5, "each attempt reached the proxy");
  p.mode = "pass";
  await connected(c);
  const before = states.length;
  p.cut();
  await until(() => states.slice(before).some((e) => e.delay !== undefined), "a reconnect after the cut");
  assert.equal(states.slice(before).find((e) => e.delay !== undefined).delay, 30, "backoff starts over");
  await connected(c);
});

test("requests time out, and errors reject with the server's code", async () => {
  const s = await server();
  const p = await proxy(s.addr);
  const c = client({ url: p.url, user: "u", requestTimeout: 300, backoff: { initial: 20, max: 50 } });
  await connected(c);
  await assert.rejects(c.publish("nowhere", 1), { code: "not_member" });
  await assert.rejects(c.join("bad room!"), { code: "invalid_name" });
  p.mode = "freeze";
  const t0 = Date.now();
  await assert.rejects(c.presence("x"), { code: "timeout" });
  assert.ok(Date.now() - t0 >= 290, "not before the timeout");
  // A request made while disconnected waits for the connection.
  p.mode = "refuse";
  p.cut();
  await waitFor(c, "state", (e) => e.state === "disconnected");
  const pending = c.request({ type: "ping" });
  p.mode = "pass";
  assert.equal((await pending).type, "pong");
});

test("a connection that goes quiet is noticed by the heartbeat and replaced", async () => {
  const s = await server(["--heartbeat-ms", "500"]);
  const p = await proxy(s.addr);
  const c = client({ url: p.url, user: "u", backoff: { initial: 20, max: 50 } });
  const states = record(c, ["state"]);
  await connected(c);
  await c.join("hb");
  await sleep(1800); // pings are answered: still the same connection
  assert.deepEqual(states.map((e) => e.state), ["connecting", "connected"]);
  assert.equal(c.state, "connected");
  p.mode = "freeze";
  const dropped = await waitFor(c, "state", (e) => e.state === "disconnected", 5000);
  assert.equal(dropped.reconnecting, true);
  p.mode = "pass";
  const back = await waitFor(c, "state", (e) => e.state === "connected", 5000);
  assert.equal(back.recovery.rooms.hb.recovered, true);
});

test("close codes: 1001 and 4000 reconnect; kicked and replaced stop", async () => {
  for (const code of [1001, 1002, 1006, 1008, 1009, 1011, 4000]) assert.equal(closeAction(code), "reconnect", `${code}`);
  assert.equal(closeAction(4001), "token");
  assert.equal(closeAction(4002, "unavailable"), "reconnect");
  for (const reason of ["unauthorized", "token_expired"]) assert.equal(closeAction(4002, reason), "token", reason);
  for (const code of [1000, 4500, 4501]) assert.equal(closeAction(code), "stop", `${code}`);

  const s = await server(["--api-key", API_KEY, "--session-policy", "kick_old"]);
  const kicked = client({ url: s.url, user: "k", backoff: { initial: 20, max: 20 } });
  await connected(kicked);
  const errors = record(kicked, ["error"]);
  await api(s, "disconnect", { user: "k" });
  const st = await waitFor(kicked, "state", (e) => e.state === "disconnected");
  assert.equal(st.code, 4501);
  assert.equal(st.reconnecting, false);
  assert.equal(errors[0].code, "kicked");
  await sleep(300);
  assert.equal(kicked.state, "disconnected", "no reconnect after kicked");

  const old = client({ url: s.url, user: "r", backoff: { initial: 20, max: 20 } });
  await connected(old);
  const fresh = client({ url: s.url, user: "r" });
  const replaced = await waitFor(old, "state", (e) => e.state === "disconnected");
  assert.equal(replaced.code, 4500);
  assert.equal(replaced.reconnecting, false);
  await connected(fresh);
  await sleep(300);
  assert.equal(old.state, "disconnected", "no reconnect after replaced");
  assert.equal(fresh.state, "connected", "the newer session stays");

  const down = client({ url: s.url, user: "d", backoff: { initial: 20, max: 20 } });
  await connected(down);
  await down.join("x");
  const closing = waitFor(down, "state", (e) => e.state === "disconnected");
  await s.restart();
  const bye = await closing;
  assert.equal(bye.code, 1001);
  assert.equal(bye.reconnecting, true);
  await waitFor(down, "state", (e) => e.state === "connected");
});

test("auth: a refused token stops the client unless getToken gives a fresh one", async () => {
  // No grace period after `exp`, so the 4001 close comes at the first heartbeat after it.
  const s = await server(["--jwt-secret", SECRET, "--api", "false", "--heartbeat-ms", "200",
    "--token-grace-secs", "0"]);
  const exp = () => Math.floor(Date.now() / 1000) + 3600;

  const bad = client({ url: s.url, token: mint({ sub: "x", exp: exp() }, "wrong-secret") });
  const st = await waitFor(bad, "state", (e) => e.state === "disconnected");
  assert.equal(st.reconnecting, false);
  assert.equal(st.reason, "unauthorized");

  let calls = 0;
  const refreshed = client({
    url: s.url,
    token: mint({ sub: "y", exp: exp() }, "wrong-secret"),
    getToken: async () => (calls += 1, mint({ sub: "y", exp: exp() })),
  });
  await connected(refreshed);
  assert.equal(refreshed.user, "y");
  assert.equal(calls, 1);

  // 4001: the token expires while connected (checked at each heartbeat).
  const short = () => mint({ sub: "z", exp: Math.floor(Date.now() / 1000) + 1 });
  const expiring = client({ url: s.url, token: short(), getToken: async () => mint({ sub: "z", exp: exp() }) });
  await connected(expiring);
  const expired = await waitFor(expiring, "state", (e) => e.state === "disconnected", 5000);
  assert.equal(expired.code, 4001);
  assert.equal(expired.reconnecting, true);
  await connected(expiring);

  const noRefresh = client({ url: s.url, token: short() });
  const end = await waitFor(noRefresh, "state", (e) => e.state === "disconnected", 5000);
  assert.equal(end.code, 4001);
  assert.equal(end.reconnecting, false);
});

test("refresh: rooms the new token leaves out are removed and not rejoined", async () => {
  const s = await server(["--jwt-secret", SECRET, "--api", "false"]);
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const p = await proxy(s.addr);
  const w = client({ url: p.url, token: mint({ sub: "w", exp, rooms: ["a", "b"] }), backoff: { initial: 20, max: 20 } });
  await connected(w);
  const removed = waitFor(w, "removed");
  const reply = await w.refresh(mint({ sub: "w", exp, rooms: ["a"] }));
  assert.equal(reply.exp, exp);
  assert.equal((await removed).room, "b");
  assert.deepEqual([...w.rooms.keys()], ["a"]);
  assert.deepEqual(await w.presence("a"), ["w"]);
  // A reconnect rejoins "a" only, with the refreshed token.
  const recovery = waitFor(w, "recovery");
  p.cut();
  assert.deepEqual(Object.keys((await recovery).rooms), ["a"]);
  await assert.rejects(w.publish("b", 1), (e) => e.code === "not_member");
});

/** Room rules for the tests below: `live:` rooms count their members and take messages only
 * from a publish grant, `news:` rooms from the API only, `small:` rooms hold two users. */
const RULES = `
occupancy_interval_ms = 100

[[rooms]]
prefix = "live:"
publish = "granted"
presence = "count"

[[rooms]]
prefix = "news:"
publish = "api"

[[rooms]]
prefix = "small:"
max_members = 2
`;

test("room rules: the join ack's modes and rights, occupancy counts, presence as a count", async () => {
  const s = await server(["--jwt-secret", SECRET, "--api", "false", ...noRateLimit], RULES);
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const rooms = [
    { room: "live:*", rights: ["join", "presence"] },
    { room: "news:*", rights: ["join", "presence", "history"] },
  ];
  const viewer = client({ url: s.url, token: mint({ sub: "viewer", exp, rooms }) });
  await connected(viewer);
  const ack = await viewer.join("live:k");
  assert.equal(ack.members, 1);
  assert.deepEqual(viewer.room("live:k"), {
    room: "live:k",
    publish: "granted",
    presence: "count",
    rights: ["join", "presence"],
    members: 1,
  });

  // Others join: a count room sends occupancy events, never joined.
  const events = record(viewer, ["occupancy", "joined", "left"]);
  const others = [];
  for (const sub of ["a", "b"]) {
    const c = client({ url: s.url, token: mint({ sub, exp }) });
    await connected(c);
    await c.join("live:k");
    others.push(c);
  }
  await until(() => viewer.room("live:k").members === 3, "a count of 3");
  assert.deepEqual(events.at(-1), { type: "occupancy", room: "live:k", members: 3 });
  assert.ok(events.every((e) => e.type === "occupancy"), JSON.stringify(events));
  const who = await viewer.presence("live:k");
  assert.deepEqual([who.mode, who.members, [...who]], ["count", 3, []]);
  await others[0].leave("live:k");
  await until(() => viewer.room("live:k").members === 2, "a count of 2 after a leave");

  // No publish right here: refused with forbidden, naming the room and the right.
  await assert.rejects(viewer.publish("live:k", "hi"), (e) => {
    assert.equal(e.code, "forbidden");
    assert.equal(e.room, "live:k");
    assert.match(e.message, /publish/);
    return true;
  });

  // A list room: names, with mode and count; joined moves the count.
  await viewer.join("news:today");
  const news = viewer.room("news:today");
  assert.deepEqual([news.publish, news.presence, news.rights], ["api", "list", ["join", "presence", "history"]]);
  const names = await viewer.presence("news:today");
  assert.deepEqual(names, ["viewer"]);
  assert.deepEqual([names.mode, names.members], ["list", 1]);
  await others[1].join("news:today");
  await until(() => news.members === 2, "a count of 2 after joined");
  await viewer.leave("live:k");
  assert.equal(viewer.room("live:k"), undefined);
});

test("reconnect: no history right rejoins without since; a room now full is dropped once", async () => {
  const s = await server(["--jwt-secret", SECRET, "--api", "false", ...noRateLimit], RULES);
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const p = await proxy(s.addr);
  const rooms = [
    { room: "live:*", rights: ["join"] },
    { room: "small:*", rights: ["join", "publish", "presence", "history"] },
  ];
  const w = client({ url: p.url, token: mint({ sub: "w", exp, rooms }), backoff: { initial: 20, max: 50 } });
  await connected(w);
  await w.join("live:a");
  await w.join("small:r");
  const hostRooms = [{ room: "*", rights: ["join", "publish", "presence", "history"] }];
  const host = client({ url: s.url, token: mint({ sub: "host", exp, rooms: hostRooms }) });
  await connected(host);
  await host.join("live:a");
  await host.join("small:r");

  // W drops; while away the live room gets two messages and the small room fills up.
  const gone = waitFor(host, "left", (e) => e.room === "small:r" && e.user === "w");
  p.mode = "refuse";
  p.cut();
  await gone;
  await host.publish("live:a", 1);
  await host.publish("live:a", 2);
  const carol = client({ url: s.url, token: mint({ sub: "carol", exp }) });
  await connected(carol);
  await carol.join("small:r");
  const errors = record(w, ["error"]);
  const got = record(w, ["message"]);
  p.mode = "pass";
  const recovery = await waitFor(w, "recovery");
  // A join with since would be forbidden without the history right: the room is rejoined
  // plainly, and what was missed is reported as not recovered.
  assert.equal(recovery.rooms["live:a"].error, undefined, JSON.stringify(recovery));
  assert.equal(recovery.rooms["live:a"].recovered, false);
  assert.equal(w.room("live:a").rights.join(), "join");
  assert.equal(recovery.rooms["small:r"].error, "room_full");
  assert.equal(recovery.complete, false);
  assert.equal(w.room("small:r"), undefined);
  assert.deepEqual(errors.map((e) => [e.code, e.room]), [["room_full", "small:r"]]);
  await host.publish("live:a", 3);
  await until(() => got.length === 1, "the live message after the rejoin");
  assert.equal(got[0].seq, 3);

  // The next reconnect does not try the full room again.
  const again = waitFor(w, "recovery");
  p.cut();
  assert.deepEqual(Object.keys((await again).rooms), ["live:a"]);
  assert.equal(errors.length, 1);
});

// ---- the outbox: idempotency keys, resends, storage -------------------------------------

/** A WebSocket that records every frame the client sends. */
function spyingWebSocket(frames) {
  return class extends WebSocket {
    send(data) {
      frames.push(JSON.parse(data));
      super.send(data);
    }
  };
}

/** The part of the Web Storage API the outbox uses, in memory (Node has no localStorage). */
function memoryStorage() {
  const map = new Map();
  return {
    map,
    getItem: (k) => (map.has(k) ? map.get(k) : null),
    setItem: (k, v) => map.set(k, String(v)),
    removeItem: (k) => map.delete(k),
  };
}

const stored = (storage) => [...storage.map.values()].flatMap((v) => JSON.parse(v));

test("outbox: a connection cut before its acks: every message stored once, in order, every promise resolves", async () => {
  const s = await server(noRateLimit);
  const p = await proxy(s.addr);
  const frames = [];
  const alice = client({ url: p.url, user: "alice", WebSocket: spyingWebSocket(frames), backoff: { initial: 20, max: 50 } });
  const events = record(alice, ["pending", "sent", "failed"]);
  await connected(alice);
  await alice.join("o");
  const bob = client({ url: s.url, user: "bob" });
  await connected(bob);
  await bob.join("o");
  const bobGot = record(bob, ["message"]);

  // The replies are lost: 1 and the first direct message are stored, alice never hears; 2-10
  // wait behind 1 (one request on the wire per room or user).
  p.mode = "mute";
  const sends = [];
  for (let n = 1; n <= 10; n++) sends.push(alice.publish("o", { n }));
  sends.push(alice.send("bob", { dm: 1 }));
  await until(() => bobGot.length === 2, "bob's first 2 messages");
  await sleep(100);
  assert.equal(bobGot.length, 2, "2-10 wait for 1's ack");
  // 11-13 and a direct message are on their way when the connection drops; 14-16 and another
  // are made while alice is away.
  for (let n = 11; n <= 13; n++) sends.push(alice.publish("o", { n }));
  sends.push(alice.send("bob", { dm: 2 }));
  p.mode = "refuse";
  p.cut();
  await until(() => alice.state !== "connected", "alice's disconnect");
  for (let n = 14; n <= 16; n++) sends.push(alice.publish("o", { n }));
  sends.push(alice.send("bob", { dm: 3 }));
  p.mode = "pass";
  const acks = await Promise.all(sends);

  const roomAcks = acks.filter((a) => a.room === "o");
  assert.deepEqual(roomAcks.map((a) => a.seq), [...Array(16).keys()].map((i) => i + 1), "each publish's own seq, in order");
  assert.deepEqual(roomAcks.map((a) => a.dup === true), roomAcks.map((_, i) => i === 0), "the lost ack comes back as a dup");
  const dmAcks = acks.filter((a) => a.to === "bob");
  assert.deepEqual(dmAcks.map((a) => a.seq), [1, 2, 3]);
  assert.equal(dmAcks[0].dup, true);

  const history = await bob.history("o", { limit: 100 });
  assert.deepEqual(history.messages.map((m) => m.body.n).reverse(), [...Array(16).keys()].map((i) => i + 1), "stored once each, in order");
  await until(() => bobGot.length === 19, "bob's 19 messages");
  await sleep(200); // a duplicate would arrive now
  assert.deepEqual(bobGot.filter((m) => m.room).map((m) => m.body.n), [...Array(16).keys()].map((i) => i + 1));
  assert.deepEqual(bobGot.filter((m) => m.to).map((m) => m.body.dm), [1, 2, 3]);

  // One key per request, the same on every resend; the events tell the whole story.
  const keys = (type) => events.filter((e) => e.type === type).map((e) => e.key);
  assert.equal(new Set(keys("pending")).size, 19);
  assert.deepEqual(new Set(keys("sent")), new Set(keys("pending")));
  assert.deepEqual(keys("failed"), []);
  const first = events.find((e) => e.type === "pending");
  assert.deepEqual(first, { type: "pending", key: first.key, room: "o", body: { n: 1 } });
  assert.match(first.key, /^[0-9A-HJKMNP-TV-Z]{26}$/, "a ULID-like key");
  assert.ok(frames.filter((f) => f.key === first.key).length === 2, "1 was sent twice, with one key");
  assert.equal(alice.outbox.length, 0);
});

test("outbox: a definite refusal fails at once and is never resent; rate_limited is retried, in order", async () => {
  const s = await server([...noRateLimit, "--jwt-secret", SECRET, "--api", "false"], RULES);
  const exp = Math.floor(Date.now() / 1000) + 3600;
  const p = await proxy(s.addr);
  const frames = [];
  const w = client({ url: p.url, token: mint({ sub: "w", exp }), WebSocket: spyingWebSocket(frames), backoff: { initial: 20, max: 50 } });
  const failed = record(w, ["failed"]);
  await connected(w);
  await w.join("news:x");
  await w.join("ok");
  await assert.rejects(w.publish("news:x", "no", { key: "refused-1" }), { code: "forbidden", room: "news:x" });
  await assert.rejects(w.publish("elsewhere", "no", { key: "refused-2" }), { code: "not_member" });
  await assert.rejects(w.send("v", "no", { key: "a b" }), { code: "bad_request" });
  assert.deepEqual(failed.map((e) => [e.key, e.code]), [["refused-1", "forbidden"], ["refused-2", "not_member"], ["a b", "bad_request"]]);
  assert.deepEqual(failed[0], { type: "failed", key: "refused-1", room: "news:x", body: "no", code: "forbidden", message: failed[0].message });
  assert.equal(failed[2].to, "v");
  // A reconnect does not bring them back.
  const recovery = waitFor(w, "recovery");
  p.cut();
  await recovery;
  assert.equal((await w.publish("ok", "after")).seq, 1);
  for (const key of ["refused-1", "refused-2", "a b"]) assert.equal(frames.filter((f) => f.key === key).length, 1, key);
  assert.equal(w.outbox.length, 0);

  // One request a second: the second and later are refused with rate_limited, and sent again.
  const slow = await server(["--publish-rate", "1", "--publish-burst", "1"]);
  const sent = [];
  const u = client({ url: slow.url, user: "u", WebSocket: spyingWebSocket(sent), backoff: { initial: 100, max: 400 } });
  await connected(u);
  await u.join("r");
  const acks = await Promise.all([1, 2, 3].map((n) => u.publish("r", n)));
  assert.deepEqual(acks.map((a) => a.seq), [1, 2, 3], "stored in the order sent");
  const tries = sent.filter((f) => f.type === "publish").length;
  assert.ok(tries > 3, `some publishes were refused and sent again (${tries} sent)`);
  // history takes a token of the same bucket: asked until one is free.
  let history;
  while (!history) history = await u.history("r").catch((e) => (e.code === "rate_limited" ? sleep(200) : Promise.reject(e)));
  assert.deepEqual(history.messages.map((m) => m.body), [3, 2, 1]);
});

test("outbox: under a rate limit that refuses most of them, a client's publishes are stored in the order made", async () => {
  // 20 a second, a burst of 2: most of the 60 are refused at least once, some many times, and
  // tokens come back while retries are on the wire.
  const s = await server(["--publish-rate", "20", "--publish-burst", "2"]);
  const sent = [];
  const c = client({ url: s.url, user: "o", WebSocket: spyingWebSocket(sent), backoff: { initial: 5, max: 30 } });
  await connected(c);
  await c.join("q");
  await c.join("q2");
  const n = 60;
  const sends = [];
  for (let i = 1; i <= n; i++) sends.push(c.publish(i % 3 === 0 ? "q2" : "q", i));
  const acks = await Promise.all(sends);
  const tries = sent.filter((f) => f.type === "publish").length;
  assert.ok(tries > n + 10, `many publishes were refused and sent again (${tries} sent for ${n})`);
  for (const room of ["q", "q2"]) {
    const mine = acks.map((a, i) => [a, i + 1]).filter(([a]) => a.room === room);
    assert.deepEqual(mine.map(([a]) => a.seq), mine.map((_, i) => i + 1), `${room}: acked in the order made`);
    let history;
    while (!history) history = await c.history(room, { limit: 100 }).catch((e) => (e.code === "rate_limited" ? sleep(100) : Promise.reject(e)));
    assert.deepEqual(history.messages.map((m) => m.body).reverse(), mine.map(([, body]) => body), `${room}: stored in the order made`);
  }
});

test("outbox local: sends made while the server is down go out once when it is back, across a reload", async () => {
  const s = await server(noRateLimit);
  const storage = memoryStorage();
  const options = { url: s.url, user: "alice", outbox: "local", storage, backoff: { initial: 20, max: 100 } };
  const first = client(options);
  await connected(first);
  await first.join("l");
  assert.equal((await first.publish("l", { n: 1 })).seq, 1);
  assert.deepEqual(stored(storage), [], "an acked request leaves storage");

  // Down and back while the page stays: the promise resolves.
  await s.stop();
  await until(() => first.state !== "connected", "the disconnect");
  const waiting = first.publish("l", { n: 2 });
  assert.deepEqual(stored(storage).map((r) => r.body), [{ n: 2 }]);
  await s.start();
  assert.equal((await waiting).seq, 2);
  assert.deepEqual(stored(storage), []);

  // Down, and the page reloads before the server is back: the new page sends them.
  await s.stop();
  await until(() => first.state !== "connected", "the second disconnect");
  const offline = [first.publish("l", { n: 3 }), first.send("bob", { dm: 1 }), first.publish("l", { n: 4 })];
  assert.deepEqual(stored(storage).map((r) => r.body), [{ n: 3 }, { dm: 1 }, { n: 4 }]);
  first.close();
  for (const r of await Promise.allSettled(offline)) assert.equal(r.reason?.code, "closed");
  assert.equal(stored(storage).length, 3, "closing keeps them in storage");

  const second = client(options);
  const events = record(second, ["pending", "sent", "failed"]);
  await s.start();
  await connected(second);
  assert.deepEqual(events.map((e) => [e.type, e.restored, e.body]), [
    ["pending", true, { n: 3 }],
    ["pending", true, { dm: 1 }],
    ["pending", true, { n: 4 }],
  ]);
  // The direct message goes at once; the publishes wait until the page is in the room again.
  await until(() => events.some((e) => e.type === "sent"), "the direct message sent");
  assert.deepEqual(events.filter((e) => e.type === "sent").map((e) => e.body), [{ dm: 1 }]);
  await second.join("l");
  await until(() => events.filter((e) => e.type === "sent").length === 3, "all 3 sent");
  assert.deepEqual(events.filter((e) => e.type === "sent").map((e) => [e.body, e.seq]), [[{ dm: 1 }, 1], [{ n: 3 }, 3], [{ n: 4 }, 4]]);
  assert.deepEqual(stored(storage), []);

  // A third page with the same storage has nothing left to send.
  second.close();
  const third = client(options);
  const more = record(third, ["pending"]);
  await connected(third);
  await third.join("l");
  const history = await third.history("l");
  assert.deepEqual(history.messages.map((m) => m.body.n), [4, 3, 2, 1], "each stored once");
  assert.deepEqual(more, []);
  const bob = client({ url: s.url, user: "bob" });
  const got = record(bob, ["message"]);
  await connected(bob);
  await until(() => got.length === 1, "bob's direct message");
  await sleep(200);
  assert.deepEqual(got.map((m) => m.body), [{ dm: 1 }]);
});

test("protocol proto: binary and JSON clients share a room, and bodies cross formats both ways", async () => {
  const s = await server(noRateLimit);
  const p = client({ url: s.url, user: "pat", protocol: "proto" });
  const j = client({ url: s.url, user: "jo" });
  await connected(p);
  await connected(j);
  assert.equal(p.user, "pat");
  assert.equal((await p.join("mix")).seq, 0);
  await j.join("mix");
  const pm = record(p, ["message"]);
  const jm = record(j, ["message"]);
  // From JSON: the binary client gets the same values; {"$b64"} arrives as the bytes.
  await j.publish("mix", { text: "hi", n: [1, 2] });
  await j.publish("mix", { $b64: "/wAB" });
  // From binary: JSON values as values; a Uint8Array as bytes, and as {"$b64"} to JSON.
  const ack = await p.publish("mix", "plain");
  assert.equal(ack.seq, 3);
  await p.publish("mix", new Uint8Array([1, 2, 250]));
  await until(() => pm.length === 2 && jm.length === 2, "both clients' messages");
  assert.deepEqual(pm.map((m) => m.seq), [1, 2]);
  assert.deepEqual(pm[0].body, { text: "hi", n: [1, 2] });
  assert.deepEqual(pm[1].body, new Uint8Array([255, 0, 1]));
  assert.deepEqual(jm.map((m) => [m.seq, m.from, m.body]), [[3, "pat", "plain"], [4, "pat", { $b64: "AQL6" }]]);
  // A JSON client's Uint8Array goes as {"$b64"} and reaches the binary client as bytes.
  await j.send("pat", new Uint8Array([7]));
  await until(() => pm.length === 3, "the direct message");
  assert.deepEqual([pm[2].to, pm[2].body], ["pat", new Uint8Array([7])]);
  // Requests and replies in the binary form: presence, history (with a binary body), errors.
  const presence = await p.presence("mix");
  assert.deepEqual([...presence], ["jo", "pat"]);
  const page = await p.history("mix");
  assert.deepEqual(page.messages.map((m) => m.seq), [4, 3, 2, 1]);
  assert.deepEqual(page.messages[0].body, new Uint8Array([1, 2, 250]));
  assert.equal(page.more, false);
  await assert.rejects(p.publish("nowhere", 1), { code: "not_member" });
  // Recovery after a restart, in the binary form.
  await s.restart();
  await waitFor(p, "recovery");
  await j.publish("mix", 5).catch(async () => {
    await connected(j);
    return j.publish("mix", 5);
  });
  await until(() => pm.some((m) => m.seq === 5), "a message after the restart");
  assert.deepEqual(pm.filter((m) => m.room === "mix").map((m) => m.seq), [1, 2, 5]);
});
