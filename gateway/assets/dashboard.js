// shardline dashboard: polls the gateway's /ui/api/* endpoints and draws the cluster.
// Plain JavaScript, no library. Every piece of data reaches the page through textContent,
// attribute values or SVG coordinates, never through an HTML parser, so a value that looks
// like markup stays text.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const EVENTS_KEPT = 200;

const $ = (id) => document.getElementById(id);

/** An element with optional class and text (text via textContent: never markup). */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");
function clock(ms) {
  const d = new Date(ms);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** The failure message of an API answer, or the status line. */
async function failure(r) {
  try {
    const body = await r.json();
    if (body && typeof body.message === "string") return `${r.status}: ${body.message}`;
  } catch (_) { /* not JSON */ }
  return `${r.status} ${r.statusText}`;
}

async function getJson(url) {
  const r = await fetch(url, { cache: "no-store" });
  if (!r.ok) throw new Error(await failure(r));
  return r.json();
}

// ---------------------------------------------------------------------------------------
// Cluster: key space, grid, banner, events
// ---------------------------------------------------------------------------------------

const state = { since: null, events: [], shards: [], walSeq: null };

function setPill(node, text, cls) {
  node.textContent = text;
  node.className = `pill ${cls || ""}`;
}

function banner(text, example, bad) {
  const b = $("banner");
  b.hidden = !text;
  b.className = bad ? "banner bad" : "banner";
  $("banner-text").textContent = text || "";
  $("banner-example").hidden = !example;
  $("banner-example").textContent = example || "";
}

function renderKeySpace(v) {
  const root = $("keyspace");
  clear(root);
  if (!v.key_space) return;
  const [low, high] = v.key_space;
  const span = Math.max(1, high - low);
  const health = Object.fromEntries(v.servers.map((s) => [s.name, s.health]));
  for (const s of v.shards) {
    const x = ((s.low - low) / span) * 1000;
    const w = (s.size / span) * 1000;
    const ok = s.primary && health[s.primary] === "up";
    const g = svg("g", { "data-shard": s.id });
    g.appendChild(svg("rect", {
      x: x + 1, y: 2, width: Math.max(1, w - 2), height: 34, rx: 3,
      fill: ok ? "#1f8a4c" : "#d64545",
    }));
    if (w > 60) {
      g.appendChild(svg("text", { x: x + 8, y: 24 }, `${s.id} · ${s.primary || "no primary"}`));
    }
    g.appendChild(svg("title", {}, `${s.id}: keys [${s.low}, ${s.low + s.size}), primary ${s.primary || "none"}, term ${s.term}`));
    root.appendChild(g);
    root.appendChild(svg("text", { x: x + 2, y: 52, class: "axis" }, s.low));
  }
  root.appendChild(svg("text", { x: 998, y: 52, class: "axis", "text-anchor": "end" }, high));
}

const ROLE_LETTER = { primary: "P", secondary: "S", recovering: "R", down: "D", failed: "F" };

function renderGrid(v) {
  const head = $("grid-head");
  const body = $("grid-body");
  clear(head);
  clear(body);
  if (v.state !== "configured") return;
  for (const h of ["shard", "keys", "term", "primary", "WAL length"]) head.appendChild(el("th", null, h));
  for (const s of v.servers) {
    const th = el("th", "server");
    th.dataset.server = s.name;
    th.appendChild(el("span", "name", s.name));
    th.appendChild(el("span", `health ${s.health}`, s.health));
    th.title = `${s.addr} · leads ${s.primaries} shard(s)`;
    head.appendChild(th);
  }
  for (const s of v.shards) {
    const tr = el("tr");
    tr.dataset.shard = s.id;
    tr.appendChild(el("td", "shard-id", s.id));
    tr.appendChild(el("td", null, `[${s.low}, ${s.low + s.size})`));
    tr.appendChild(el("td", "term", s.term));
    tr.appendChild(el("td", "primary-name", s.primary || "none"));
    tr.appendChild(el("td", "wal-len", s.wal_last_seq === null ? "?" : s.wal_last_seq));
    const byServer = Object.fromEntries(s.replicas.map((r) => [r.server, r]));
    for (const srv of v.servers) {
      const r = byServer[srv.name];
      const td = el("td", "replica");
      td.dataset.server = srv.name;
      if (!r) {
        td.appendChild(el("span", "cell none", "·"));
      } else {
        td.dataset.role = r.role;
        const badge = el("span", `cell ${r.role}`, ROLE_LETTER[r.role] || "?");
        badge.title = r.primary ? `primary (${r.role})` : r.role;
        if (r.primary && r.role !== "primary") badge.textContent = `P·${badge.textContent}`;
        td.appendChild(badge);
        const applied = r.applied === null ? "?" : r.applied;
        const lag = r.lag === null ? "" : r.lag === 0 ? " · lag 0" : ` · lag ${r.lag}`;
        td.appendChild(el("span", r.lag > 0 ? "stats behind" : "stats", `${applied}${lag}`));
      }
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
}

function renderEvents(v) {
  if (v.events_reset) state.events = [];
  state.events.push(...v.events);
  if (state.events.length > EVENTS_KEPT) state.events.splice(0, state.events.length - EVENTS_KEPT);
  if (!v.events.length && !v.events_reset) return;
  const list = $("events");
  clear(list);
  for (const e of state.events.slice().reverse()) {
    const li = el("li");
    li.dataset.kind = e.kind;
    if (e.shard) li.dataset.shard = e.shard;
    const t = el("time", null, clock(e.at_ms));
    t.dateTime = new Date(e.at_ms).toISOString();
    li.appendChild(t);
    li.appendChild(el("span", `kind ${e.kind}`, e.kind.replace("_", " ")));
    li.appendChild(el("span", "text", e.text));
    list.appendChild(li);
  }
  if (!state.events.length) list.appendChild(el("li", "muted", "no events yet"));
}

function renderCluster(v) {
  setPill($("conn"), `cluster: ${v.state}`, v.state === "configured" ? "ok" : "warn");
  setPill($("nats"), `NATS: ${v.nats}`, v.nats === "connected" ? "ok" : "bad");
  const primaries = v.shards.filter((s) => s.primary).length;
  $("summary").textContent = v.state === "configured"
    ? `${v.servers.length} servers · ${v.shards.length} shards · ${primaries}/${v.shards.length} with a primary · metadata revision ${v.revision}`
    : "";
  $("updated").textContent = `updated ${clock(v.now_ms)}`;
  const example = v.example ? v.example.replace("<gateway>", location.origin) : null;
  banner(v.hint, example, v.nats !== "connected" || v.state === "loading");
  renderKeySpace(v);
  renderGrid(v);
  renderEvents(v);
  state.shards = v.shards;
  syncWalChoices(v.shards);
}

async function pollCluster() {
  const q = state.since === null ? "" : `?since=${state.since}&wait_ms=750`;
  let pause = 250;
  try {
    const v = await getJson(`/ui/api/cluster${q}`);
    renderCluster(v);
    state.since = v.last_event;
  } catch (e) {
    setPill($("conn"), "gateway unreachable", "bad");
    banner(`The gateway does not answer (${e.message}); showing the last data received.`, null, true);
    pause = 1000;
  }
  setTimeout(pollCluster, pause);
}

// ---------------------------------------------------------------------------------------
// Traffic charts
// ---------------------------------------------------------------------------------------

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** Draws series (arrays of numbers or null) as lines over the whole width. */
function drawChart(root, series, unit) {
  clear(root);
  const W = 600, H = 150, top = 8, bottom = 16;
  const values = series.flatMap((s) => s.data).filter((x) => x !== null);
  const max = niceMax(Math.max(0, ...values));
  for (const f of [0, 0.5, 1]) {
    const y = top + (1 - f) * (H - top - bottom);
    root.appendChild(svg("line", { x1: 0, x2: W, y1: y, y2: y, class: "grid" }));
    const label = f === 1 ? y + 12 : y - 2; // the top label below its line, inside the chart
    root.appendChild(svg("text", { x: 4, y: label }, `${+(max * f).toPrecision(3)}${unit}`));
  }
  root.appendChild(svg("text", { x: 4, y: H - 3 }, "−5 min"));
  root.appendChild(svg("text", { x: W - 4, y: H - 3, "text-anchor": "end" }, "now"));
  for (const s of series) {
    const n = s.data.length;
    let d = "";
    let pen = false;
    s.data.forEach((val, i) => {
      if (val === null) { pen = false; return; }
      const x = n > 1 ? (i / (n - 1)) * W : W;
      const y = top + (1 - val / max) * (H - top - bottom);
      d += `${pen ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
      pen = true;
    });
    if (d) root.appendChild(svg("path", { d, class: s.cls }));
  }
}

const fmt = (x, unit) => (x === null || x === undefined ? "–" : `${+x.toPrecision(3)}${unit}`);

async function pollTraffic() {
  try {
    const t = await getJson("/ui/api/traffic");
    drawChart($("chart-rate"), [
      { data: t.write.count, cls: "write" },
      { data: t.read.count, cls: "read" },
    ], "");
    drawChart($("chart-p99"), [
      { data: t.write.p99_ms, cls: "write" },
      { data: t.read.p99_ms, cls: "read" },
    ], " ms");
    $("traffic-summary").textContent =
      `last 10 s — writes ${fmt(t.write.per_sec_10s, "/s")}, p99 ${fmt(t.write.p99_ms_10s, " ms")}; ` +
      `reads ${fmt(t.read.per_sec_10s, "/s")}, p99 ${fmt(t.read.p99_ms_10s, " ms")}`;
  } catch (e) {
    $("traffic-summary").textContent = `traffic unavailable: ${e.message}`;
  }
  setTimeout(pollTraffic, 1000);
}

// ---------------------------------------------------------------------------------------
// WAL tail of the chosen shard (#wal=<shard> in the address keeps the choice)
// ---------------------------------------------------------------------------------------

function chosenShard() {
  const m = /(?:^#|&)wal=([^&]*)/.exec(location.hash);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch (_) { return m[1]; }
}

function syncWalChoices(shards) {
  const sel = $("wal-shard");
  const ids = shards.map((s) => s.id);
  const have = Array.from(sel.options).map((o) => o.value);
  if (ids.join("\n") !== have.join("\n")) {
    clear(sel);
    for (const id of ids) {
      const o = el("option", null, id);
      o.value = id;
      sel.appendChild(o);
    }
  }
  const chosen = chosenShard();
  if (chosen === null && ids.length) {
    history.replaceState(null, "", `#wal=${encodeURIComponent(ids[0])}`);
  }
  const want = chosenShard();
  if (ids.includes(want)) sel.value = want;
  const shard = shards.find((s) => s.id === want);
  // Fetch again only when the WAL grew (or the choice changed).
  const seq = shard ? shard.wal_last_seq : null;
  if (want !== null && (seq !== state.walSeq || want !== state.walShard)) {
    state.walSeq = seq;
    loadWal(want);
  }
}

let walLoading = false;
async function loadWal(shard) {
  if (walLoading) { state.walSeq = undefined; return; } // retried at the next poll
  walLoading = true;
  state.walShard = shard;
  const status = $("wal-status");
  const n = $("wal-n").value;
  try {
    const t = await getJson(`/ui/api/wal/${encodeURIComponent(shard)}?n=${encodeURIComponent(n)}`);
    const root = $("wal");
    // Oldest first, as the NATS CLI prints them; keep the newest in view unless the reader
    // scrolled up.
    const follow = root.scrollTop + root.clientHeight >= root.scrollHeight - 8;
    clear(root);
    status.className = "muted";
    status.textContent = `stream ${t.stream}: sequences ${t.first_seq}…${t.last_seq}, showing ${t.messages.length}`;
    for (const m of t.messages) {
      const head = `[${m.seq}] Subject: ${m.subject} Received: ${new Date(m.time_ms).toISOString()}`;
      const headers = m.headers.map(([k, v]) => `${k}: ${v}`).join("\n");
      const pre = el("pre", null, `${head}\n${headers ? headers + "\n" : ""}\n${m.payload}`);
      pre.dataset.seq = m.seq;
      root.appendChild(pre);
    }
    if (!t.messages.length) root.appendChild(el("p", "muted", "the WAL is empty"));
    if (follow) root.scrollTop = root.scrollHeight;
  } catch (e) {
    clear($("wal"));
    status.className = "bad";
    status.textContent = `WAL of ${shard}: ${e.message}`;
  } finally {
    walLoading = false;
  }
}

function choose(shard) {
  history.replaceState(null, "", `#wal=${encodeURIComponent(shard)}`);
  state.walSeq = undefined;
  syncWalChoices(state.shards);
}

$("wal-shard").addEventListener("change", (e) => choose(e.target.value));
$("wal-n").addEventListener("change", () => { state.walSeq = undefined; syncWalChoices(state.shards); });
window.addEventListener("hashchange", () => { state.walSeq = undefined; syncWalChoices(state.shards); });

pollCluster();
pollTraffic();
