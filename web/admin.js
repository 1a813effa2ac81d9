// The operator page: /api/stats every second, drawn as tiles, a per-shard table and a chart;
// /api/rooms, the biggest rooms with their rule; forms for publish, broadcast and disconnect. The API key lives in this module's memory only.

const $ = (id) => document.getElementById(id);
let key = "";
/** The last minute, one point a second: { connections: [total, shard 0, ...], rate: [...] }. */
const points = [];
let previous = null;

$("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  key = $("key").value;
  $("key").value = "";
  $("signin").hidden = true;
  $("app").hidden = false;
  poll();
  setInterval(poll, 1000);
});

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (key) headers.authorization = `apikey ${key}`;
  const res = await fetch(`/api/${path}`, { method, headers, body: body && JSON.stringify(body), cache: "no-store" });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${json.code || res.status}: ${json.message || ""}`);
  return json;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").querySelector("span").textContent = text;
}

async function poll() {
  let stats;
  try {
    stats = await api("GET", "stats");
  } catch (e) {
    return setStatus("offline", e.message);
  }
  setStatus("online", "live");
  const now = performance.now();
  const rates = stats.shards.map((s) => {
    const before = previous?.shards.find((p) => p.shard === s.shard);
    return before ? ((s.deliveries - before.deliveries) * 1000) / (now - previous.at) : 0;
  });
  const total = rates.reduce((a, b) => a + b, 0);
  previous = { at: now, shards: stats.shards };
  $("connections").textContent = stats.total.connections;
  $("rooms").textContent = stats.total.rooms;
  $("rate").textContent = Math.round(total);
  const rows = stats.shards.map((s, i) => {
    const tr = document.createElement("tr");
    for (const v of [s.shard, s.connections, s.rooms, Math.round(rates[i])]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  });
  const foot = document.createElement("tr");
  for (const v of ["total", stats.total.connections, stats.total.rooms, Math.round(total)]) {
    const th = document.createElement("th");
    th.textContent = v;
    foot.append(th);
  }
  $("shards").replaceChildren(...rows, foot);
  points.push({
    connections: [stats.total.connections, ...stats.shards.map((s) => s.connections)],
    rate: [total, ...rates],
  });
  while (points.length > 60) points.shift();
  draw($("chart-connections"), "connections");
  draw($("chart-rate"), "rate");
  const legend = ["total", ...stats.shards.map((s) => `shard ${s.shard}`)].map((name, i) => {
    const span = document.createElement("span");
    span.style.color = COLORS[i % COLORS.length];
    span.textContent = `\u25A0 ${name}  `;
    return span;
  });
  $("legend").replaceChildren(...legend);
  await pollRooms();
}

/** How many rooms the rooms panel lists: the biggest first. */
const ROOMS_SHOWN = 50;

async function pollRooms() {
  let list;
  try {
    list = await api("GET", `rooms?limit=${ROOMS_SHOWN}`);
  } catch (e) {
    return ($("rooms-more").textContent = `(not available: ${e.message})`);
  }
  const rows = list.rooms.map((r) => {
    const tr = document.createElement("tr");
    tr.dataset.room = r.room;
    const rule = r.rule === "" ? "default" : `${r.rule}*`;
    for (const v of [r.room, r.members, rule, r.publish, r.presence]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    return tr;
  });
  $("room-list").replaceChildren(...rows);
  $("rooms-more").textContent = list.more ? `(the ${ROOMS_SHOWN} biggest)` : "";
}

/** Total first, then one per shard. */
const COLORS = ["#1d2230", "#4f6ef7", "#2fb36d", "#f0a020", "#e0484f", "#9b59b6", "#16a3b8", "#8d6e63"];

/** One line per series (total, then each shard) of `field` over the last minute. */
function draw(canvas, field) {
  const ratio = window.devicePixelRatio || 1;
  canvas.width = canvas.clientWidth * ratio;
  canvas.height = canvas.clientHeight * ratio;
  const g = canvas.getContext("2d");
  const w = canvas.width;
  const h = canvas.height;
  const pad = 8 * ratio;
  // A multiple of 4, so that the 4 grid lines have whole labels.
  const max = Math.ceil(Math.max(1, ...points.flatMap((p) => p[field])) / 4) * 4;
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#e2e5ec";
  g.lineWidth = ratio;
  g.fillStyle = "#6b7385";
  g.font = `${11 * ratio}px system-ui, sans-serif`;
  for (let i = 0; i <= 4; i++) {
    const y = pad + ((h - 2 * pad) * i) / 4;
    g.beginPath();
    g.moveTo(0, y);
    g.lineTo(w, y);
    g.stroke();
    g.fillText(String((max * (4 - i)) / 4), 2 * ratio, y - 2 * ratio);
  }
  const series = points.length ? points[points.length - 1][field].length : 0;
  for (let k = series - 1; k >= 0; k--) {
    g.strokeStyle = COLORS[k % COLORS.length];
    g.lineWidth = (k === 0 ? 2.5 : 1.5) * ratio;
    g.beginPath();
    points.forEach((p, i) => {
      const x = (w * i) / 59;
      const y = h - pad - ((h - 2 * pad) * (p[field][k] ?? 0)) / max;
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }
}

function form(id, run) {
  $(id).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      $("result").textContent = await run();
      ev.target.reset();
    } catch (e) {
      $("result").textContent = `Failed: ${e.message}`;
    }
  });
}

form("publish-form", async () => {
  const room = $("pub-room").value.trim();
  const r = await api("POST", "publish", { room, body: { text: $("pub-body").value }, from: "operator" });
  return `Published to ${room} as seq ${r.seq}.`;
});
form("broadcast-form", async () => {
  const r = await api("POST", "broadcast", { body: { text: $("bc-body").value }, from: "operator" });
  return `Broadcast to ${r.connections} connections.`;
});
form("disconnect-form", async () => {
  const user = $("dc-user").value.trim();
  const body = { user };
  if ($("dc-reason").value) body.reason = $("dc-reason").value;
  const r = await api("POST", "disconnect", body);
  return `Disconnected ${r.connections} connections of ${user}.`;
});
