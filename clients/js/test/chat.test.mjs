// The client library's chat features against a real shardcast server (run by
// tests/js_client.rs): typing signals that expire on the receiving side, read positions shared
// by a user's clients, receipts, and unread counts from the server's positions.

import assert from "node:assert/strict";
import { test } from "node:test";

import { connected, scoped, until, waitFor } from "./helpers.mjs";

const { server, client } = scoped();

test("typing: shown to the others, throttled on the sender, expiring on the receiver", async () => {
  const s = await server();
  const alice = client({ url: s.url, user: "alice" });
  const bob = client({ url: s.url, user: "bob", typingTimeout: 300 });
  await connected(alice);
  await connected(bob);
  await alice.join("r");
  await bob.join("r");
  const started = waitFor(bob, "typing", (e) => e.typing);
  assert.equal(alice.typing("r"), true);
  assert.equal(alice.typing("r"), false, "a second keystroke within 2 s sends nothing");
  assert.deepEqual(await started, { room: "r", user: "alice", typing: true });
  assert.deepEqual(bob.typists("r"), ["alice"]);
  const stopped = await waitFor(bob, "typing", (e) => !e.typing);
  assert.deepEqual(stopped, { room: "r", user: "alice", typing: false });
  assert.deepEqual(bob.typists("r"), []);
  // A plain signal is an event of its own; the sender never gets it back.
  const sig = waitFor(bob, "signal", (e) => e.body?.emoji);
  alice.signal("r", { emoji: "wave" });
  assert.deepEqual(await sig, { room: "r", from: "alice", body: { emoji: "wave" } });
});

test("read positions: shared by a user's clients, forward only, exact unread counts", async () => {
  const s = await server([], '[[rooms]]\nprefix = "team:"\nreceipts = true\n');
  const bob = client({ url: s.url, user: "bob" });
  const a = client({ url: s.url, user: "alice" });
  const b = client({ url: s.url, user: "alice" });
  for (const c of [bob, a, b]) {
    await connected(c);
    await c.join("team:x");
  }
  for (let i = 1; i <= 3; i++) await bob.publish("team:x", { n: i });
  await until(() => a.unread("team:x").seq === 3 && b.unread("team:x").seq === 3, "the messages");
  assert.deepEqual(b.unread("team:x"), { seq: 3, read: 0, unread: 3 });

  const moved = waitFor(b, "read", (e) => e.seq === 3);
  const receipt = waitFor(bob, "receipt", (e) => e.seq === 3);
  const ack = await a.read("team:x");
  assert.equal(ack.read, 3);
  assert.deepEqual(await moved, { room: "team:x", seq: 3 });
  assert.deepEqual(b.unread("team:x"), { seq: 3, read: 3, unread: 0 });
  assert.deepEqual(await receipt, { room: "team:x", user: "alice", seq: 3 });
  assert.equal((await a.read("team:x", 1)).read, 3, "positions only move forward");

  await bob.publish("team:x", { n: 4 });
  await until(() => b.unread("team:x").unread === 1, "one unread on the other client");
  // A new client (a reload) knows it from the server.
  const c = client({ url: s.url, user: "alice" });
  await connected(c);
  await c.join("team:x");
  assert.deepEqual(c.unread("team:x"), { seq: 4, read: 3, unread: 1 });

  // The inbox: welcome carries its position.
  await bob.send("alice", { dm: 1 });
  await bob.send("alice", { dm: 2 });
  await until(() => a.unread().seq === 2, "the direct messages");
  assert.equal((await a.readInbox(1)).read, 1);
  const d = client({ url: s.url, user: "alice" });
  await connected(d);
  assert.deepEqual(d.unread(), { seq: 2, read: 1, unread: 1 });
});
