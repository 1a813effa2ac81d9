// Edits, deletes and reactions in the client library against a real shardcast server (run by
// tests/js_client.rs): the methods, the events they arrive as, and folding live events into
// a folded history with applyEvent.

import assert from "node:assert/strict";
import { after, test } from "node:test";

import { applyEvent, connect } from "../shardcast.js";
import { startServer, until, waitFor } from "./helpers.mjs";

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});
function client(options) {
  const c = connect({ WebSocket, requestTimeout: 3000, ...options });
  cleanups.push(() => c.close());
  return c;
}
const connected = (c) => (c.state === "connected" ? Promise.resolve() : waitFor(c, "state", (e) => e.state === "connected"));

test("edit, delete, react and unreact arrive as their own events and fold into history", async () => {
  const s = await startServer(["--presence-events", "false"]);
  cleanups.push(() => s.close());
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
