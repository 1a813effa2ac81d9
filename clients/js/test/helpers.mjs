// Test helpers: the real shardcast binary (SHARDCAST_BIN, set by tests/js_client.rs), a TCP
// proxy that can refuse or freeze connections, HS256 tokens, and waiting for events.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";

import { connect } from "../shardcast.js";

export const SECRET = "js-test-secret-0123456789abcdef01234";
export const API_KEY = "js-test-key";

/** `shardcast serve` on 127.0.0.1:0 with a temp data dir and `args`, and `config` (TOML, e.g.
 * `[[rooms]]` rules) as its config file when given; `restart()` brings it back on the same
 * port and data, `stop()` then `start()` the same with time between. */
export async function startServer(args = [], config) {
  const bin = process.env.SHARDCAST_BIN;
  if (!bin) throw new Error("SHARDCAST_BIN is not set: run these tests through `cargo test --test js_client`");
  const data = mkdtempSync(join(tmpdir(), "shardcast-js-"));
  if (config !== undefined) {
    // Beside the data dir, not in it: the store owns that.
    const file = `${data}.toml`;
    writeFileSync(file, config);
    args = ["--config", file, ...args];
  }
  const server = { data, args, child: null, addr: null };
  const launch = async (bind) => {
    const child = spawn(bin, ["serve", "--bind", bind, "--data", data, "--shards", "2", ...args], {
      env: { PATH: process.env.PATH, RUST_LOG: "info", NO_COLOR: "1" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    server.child = child;
    let log = "";
    server.addr = await new Promise((resolve, reject) => {
      child.stderr.on("data", (chunk) => {
        log += chunk;
        const m = /listening on (\S+)/.exec(log);
        if (m) resolve(m[1]);
      });
      child.on("exit", (code) => reject(new Error(`shardcast exited with ${code} before listening:\n${log}`)));
    });
  };
  await launch("127.0.0.1:0");
  server.url = `ws://${server.addr}/ws`;
  server.http = `http://${server.addr}`;
  server.stop = async () => {
    const child = server.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.on("exit", resolve));
    child.kill("SIGTERM");
    await exited;
  };
  server.start = () => launch(server.addr);
  server.restart = async () => {
    await server.stop();
    await launch(server.addr);
  };
  server.close = async () => {
    await server.stop();
    rmSync(data, { recursive: true, force: true });
    rmSync(`${data}.toml`, { force: true });
  };
  return server;
}

/** A TCP proxy in front of `target` ("host:port"). `mode`: "pass", "refuse" (new connections
 * are reset), "freeze" (bytes stop flowing both ways; connections stay open) or "mute" (the
 * client's bytes reach the server, the server's replies are dropped: acks get lost). */
export async function startProxy(target) {
  const [host, port] = target.split(":");
  const proxy = { mode: "pass", sockets: new Set(), accepted: 0 };
  const server = net.createServer((client) => {
    proxy.accepted += 1;
    if (proxy.mode === "refuse") return client.resetAndDestroy();
    const upstream = net.connect(Number(port), host);
    const pair = { client, upstream };
    proxy.sockets.add(pair);
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (proxy.mode === "freeze" || (proxy.mode === "mute" && from === upstream)) return;
        to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      proxy.sockets.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("close", end).on("error", end);
    upstream.on("close", end).on("error", end);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  proxy.addr = `127.0.0.1:${server.address().port}`;
  proxy.url = `ws://${proxy.addr}/ws`;
  /** Cuts every open connection (as a network failure would: no close frame). */
  proxy.cut = () => {
    for (const { client, upstream } of proxy.sockets) {
      client.resetAndDestroy();
      upstream.destroy();
    }
  };
  proxy.close = () => {
    proxy.cut();
    server.close();
  };
  return proxy;
}

const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");

/** An HS256 JWT over `claims`. */
export function mint(claims, secret = SECRET) {
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${head}.${createHmac("sha256", secret).update(head).digest("base64url")}`;
}

/** Resolves with the first `type` event of `client` that satisfies `pred`, or rejects after
 * `ms`. */
export function waitFor(client, type, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const off = client.on(type, (ev) => {
      if (!pred(ev)) return;
      clearTimeout(timer);
      off();
      resolve(ev);
    });
  });
}

/** Records every event of the given types, in order. */
export function record(client, types) {
  const events = [];
  for (const type of types) client.on(type, (ev) => events.push({ type, ...ev }));
  return events;
}

/** Waits until `cond()` is true (checked every 20 ms), or fails after `ms` with `what`. */
export async function until(cond, what, ms = 10000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** POST to the server API. */
export async function api(server, path, body) {
  const res = await fetch(`${server.http}/api/${path}`, {
    method: "POST",
    headers: { authorization: `apikey ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`POST /api/${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

/**
 * A test file's servers, proxies and clients, each closed after the file's tests (the newest
 * first). Call it once, at the file's top level.
 */
export function scoped() {
  const cleanups = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });
  const kept = (x) => (cleanups.push(() => x.close()), x);
  return {
    server: async (args = [], config) => kept(await startServer(args, config)),
    proxy: async (target) => kept(await startProxy(target)),
    client: (options) => kept(connect({ WebSocket, requestTimeout: 3000, ...options })),
  };
}

/** Resolves once `c` is connected. */
export const connected = (c) => (c.state === "connected" ? Promise.resolve() : waitFor(c, "state", (e) => e.state === "connected"));
