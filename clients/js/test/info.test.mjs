// Presence info (docs/protocol.md, "Presence info") in the binary protocol: `Membership.info`
// and `Presence.info` (JSON text) decode to the objects the JSON form carries. The frames are
// encoded by protoc (the reference compiler) from their text form, not by this library.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { test } from "node:test";

import { decodeServerFrame } from "../shardcast.js";

function encode(text) {
  const out = execFileSync("protoc", ["-I", "../../proto", "--encode=shardcast.v1.ServerFrame", "../../proto/shardcast.proto"], { input: text });
  return new Uint8Array(out);
}

test("joined and presence carry each user's info as an object", () => {
  const info = '{\\"name\\":\\"Dana S.\\",\\"tags\\":[\\"a\\"]}';
  assert.deepEqual(decodeServerFrame(encode(`joined { room: "lobby" user: "dana" info: "${info}" }`)), {
    type: "joined",
    room: "lobby",
    user: "dana",
    info: { name: "Dana S.", tags: ["a"] },
  });
  assert.deepEqual(decodeServerFrame(encode('joined { room: "lobby" user: "bo" }')), { type: "joined", room: "lobby", user: "bo" });
  const p = decodeServerFrame(encode(`num_id: 6 presence { room: "lobby" mode: "list" users: "alice" users: "dana" info { key: "dana" value: "${info}" } }`));
  assert.deepEqual(p, {
    type: "presence",
    id: 6,
    room: "lobby",
    mode: "list",
    users: ["alice", "dana"],
    info: { dana: { name: "Dana S.", tags: ["a"] } },
  });
});
