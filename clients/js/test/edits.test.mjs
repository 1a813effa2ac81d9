// Edits, deletes and reactions in the client library against a real shardcast server (run by
// tests/js_client.rs): the methods, the events they arrive as, and folding live events into
// a folded history with applyEvent.

import assert from "node:assert/strict";
import { test } from "node:test";

import { applyEvent } from "../shardcast.js";
import { connected, scoped, until, waitFor } from "./helpers.mjs";

const { server, client } = scoped();

test("edit, delete, react and unreact arrive as their own events and fold into history", async () => {
  const s = await server(["--presence-events", "false"]);
  const alice = client({ url: s.url, user: "alice" });
  const bob = client({ url: s.url, user: "bob" });
  await Promise.all([connected(alice), connected(bob)]);
  await alice.join("r");
  await bob.join("r");
  const bobMessages = [];
  bob.on("message", (m) => bobMessages.push(m));
  const first = await alice.publish("r", "one");
  const second = await alice.publish("r", "two");

  // Bob opens the room: a folded page, then live events applied to it.
  await until(() => bobMessages.length === 2, "two messages at bob");
  const page = await bob.foldedHistory("r");
  assert.equal(page.fold, true);
  const view = new Map(page.messages.map((m) => [m.seq, m]));
  assert.deepEqual([...view.keys()], [second.seq, first.seq]);

  const edited = waitFor(bob, "edit");
  const own = waitFor(alice, "edit");
  const ack = await alice.edit("r", first.seq, "one, fixed");
  const ev = await edited;
  // The author's client emits its own event too, as the others get it.
  const mine = await own;
  assert.deepEqual([mine.seq, mine.kind, mine.target, mine.body, mine.from], [ack.seq, "edit", first.seq, "one, fixed", "alice"]);
  assert.equal(ev.seq, ack.seq);
  assert.equal(ev.target, first.seq);
  applyEvent(view, ev, "bob");
  assert.equal(view.get(first.seq).body, "one, fixed");

  await assert.rejects(bob.edit("r", first.seq, "bob's"), (e) => e.code === "forbidden");
  const reacted = waitFor(alice, "react");
  await bob.react("r", first.seq, "👍");
  assert.equal((await bob.react("r", first.seq, "👍")).noop, true);
  applyEvent(view, await reacted, "bob");
  assert.deepEqual(view.get(first.seq).reactions, { "👍": { count: 1, me: true } });

  const deleted = waitFor(bob, "delete");
  await alice.delete("r", second.seq);
  applyEvent(view, await deleted, "bob");
  assert.equal(view.get(second.seq).deleted, true);

  // The events were not emitted as messages, and the server's fold agrees with the view.
  assert.equal(bobMessages.length, 2);
  const again = await bob.foldedHistory("r");
  assert.deepEqual(again.messages, [view.get(second.seq), view.get(first.seq)]);
});

test("protocol proto: signals, read positions, edits, reactions and folded history in the binary form", async () => {
  const s = await server(["--presence-events", "false"], '[[rooms]]\nprefix = "team:"\nreceipts = true\n');
  const alice = client({ url: s.url, user: "alice", protocol: "proto" });
  const alice2 = client({ url: s.url, user: "alice", protocol: "proto" });
  const bob = client({ url: s.url, user: "bob" });
  for (const c of [alice, alice2, bob]) {
    await connected(c);
    await c.join("team:x");
  }

  // Signals, binary to JSON and back.
  const typing = waitFor(bob, "typing", (e) => e.typing);
  assert.equal(alice.typing("team:x"), true);
  assert.deepEqual(await typing, { room: "team:x", user: "alice", typing: true });
  const sig = waitFor(alice, "signal", (e) => e.body?.emoji);
  bob.signal("team:x", { emoji: "wave" });
  assert.deepEqual(await sig, { room: "team:x", from: "bob", body: { emoji: "wave" } });

  // Read positions: the ack, the `read` frame on the user's other client, receipts both ways,
  // the inbox, and the binary welcome's inbox position after a reload.
  const first = await bob.publish("team:x", "one");
  await until(() => alice.unread("team:x").seq === first.seq && alice2.unread("team:x").seq === first.seq, "bob's message");
  const moved = waitFor(alice2, "read", (e) => e.seq === first.seq);
  const receipt = waitFor(bob, "receipt", (e) => e.user === "alice");
  assert.equal((await alice.read("team:x")).read, first.seq);
  assert.deepEqual(await moved, { room: "team:x", seq: first.seq });
  assert.deepEqual(await receipt, { room: "team:x", user: "alice", seq: first.seq });
  const theirs = waitFor(alice, "receipt", (e) => e.user === "bob");
  await bob.read("team:x");
  assert.deepEqual(await theirs, { room: "team:x", user: "bob", seq: first.seq });
  await bob.send("alice", { dm: 1 });
  await until(() => alice.unread().seq === 1, "the direct message");
  const inboxMoved = waitFor(alice2, "read", (e) => e.inbox);
  assert.equal((await alice.readInbox()).read, 1);
  assert.deepEqual(await inboxMoved, { inbox: true, seq: 1 });
  const reloaded = client({ url: s.url, user: "alice", protocol: "proto" });
  await connected(reloaded);
  assert.deepEqual(reloaded.unread(), { seq: 1, read: 1, unread: 0 });

  // Edits, deletes and reactions, sent and received in the binary form.
  const own = await alice.publish("team:x", "mine");
  const gone = await alice.publish("team:x", "oops");
  const edited = waitFor(bob, "edit");
  await alice.edit("team:x", own.seq, "mine, fixed");
  assert.deepEqual([(await edited).target, (await edited).body], [own.seq, "mine, fixed"]);
  const reacted = waitFor(bob, "react");
  await alice.react("team:x", first.seq, "👍");
  assert.equal((await alice.react("team:x", first.seq, "👍")).noop, true);
  assert.equal((await reacted).emoji, "👍");
  await alice.react("team:x", first.seq, "🎉");
  const unreacted = waitFor(bob, "unreact");
  await alice.unreact("team:x", first.seq, "🎉");
  assert.equal((await unreacted).emoji, "🎉");
  const bobs = waitFor(alice, "react");
  await bob.react("team:x", own.seq, "ok");
  const ev = await bobs;
  assert.deepEqual([ev.kind, ev.target, ev.emoji, ev.body, ev.from], ["react", own.seq, "ok", null, "bob"]);
  const deleted = waitFor(bob, "delete");
  await alice.delete("team:x", gone.seq);
  assert.equal((await deleted).target, gone.seq);

  // A folded page reads the same in both forms.
  const page = await alice.foldedHistory("team:x");
  const json = client({ url: s.url, user: "alice" });
  await connected(json);
  await json.join("team:x");
  const expected = await json.foldedHistory("team:x");
  assert.equal(page.fold, true);
  assert.deepEqual([page.before, page.more], [expected.before, expected.more]);
  assert.deepEqual(page.messages, expected.messages);
  const bySeq = new Map(page.messages.map((m) => [m.seq, m]));
  assert.deepEqual(bySeq.get(first.seq).reactions, { "👍": { count: 1, me: true } });
  assert.deepEqual([bySeq.get(own.seq).body, bySeq.get(own.seq).reactions], ["mine, fixed", { ok: { count: 1, me: false } }]);
  assert.equal(typeof bySeq.get(own.seq).edited, "number");
  assert.deepEqual([bySeq.get(gone.seq).deleted, bySeq.get(gone.seq).body], [true, null]);
});
