// Monmouth dashboard: polls /dashboard/summary every second, draws notifications/s, searches /rag/search and browses
// /memory. No external code: it must work offline. A bearer token (optional on loopback) is kept in sessionStorage.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("monmouth-token") || "", last: null, series: [], agent: "" };
const WINDOW = 120;

function headers(json) {
  const h = {};
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: headers(!!opts.body) });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = body.detail || body.title || r.statusText;
    throw new Error(r.status + ": " + msg);
  }
  return body;
}

function text(id, v) { const el = $(id); if (el) el.textContent = v === null || v === undefined ? "–" : String(v); }
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(e, rest);
  for (const [k, v] of Object.entries(dataset || {})) e.dataset[k] = v;
  for (const c of children) e.append(c);
  return e;
}
function ago(t) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - t));
  return s < 60 ? s + "s ago" : s < 3600 ? Math.round(s / 60) + "m ago" : Math.round(s / 3600) + "h ago";
}

// ------------------------------------------------------------------------------------------------ live numbers
async function poll() {
  let sum;
  try {
    sum = await api("/dashboard/summary");
    $("conn").textContent = "live";
    $("conn").className = "pill ok";
  } catch (e) {
    $("conn").textContent = e.message.startsWith("401") ? "token needed" : "offline: " + e.message;
    $("conn").className = "pill bad";
    return;
  }
  const st = sum.status;
  text("version", "v" + st.version);
  text("head", st.head ? st.head.number : null);
  text("head-hash", st.head ? st.head.hash : "");
  text("finalized", st.finalized);
  text("source-head", st.source_head);
  text("lag", st.lag);
  text("reorg-count", st.reorgs);
  text("notifications", st.notifications + " total");
  const now = sum.time;
  let rate = 0;
  if (state.last) {
    const dt = now - state.last.time;
    if (dt > 0) rate = Math.max(0, (st.notifications - state.last.n) / dt);
  }
  state.last = { time: now, n: st.notifications };
  text("nps", rate.toFixed(1));
  state.series.push(rate);
  if (state.series.length > WINDOW) state.series.shift();
  drawChart();
  const backlog = Object.values(sum.backlog || {});
  text("backlog", backlog.length ? backlog.reduce((a, b) => a + b, 0) : "n/a");
  renderReorgs(sum.reorgs || []);
  renderPlugins(st.plugins || {});
}

function drawChart() {
  const c = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight;
  if (c.width !== w * ratio) { c.width = w * ratio; c.height = h * ratio; }
  const g = c.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...state.series);
  g.strokeStyle = "#263241"; g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) { const y = 8 + (h - 16) * i / 4; g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); }
  g.fillStyle = "#8b98a5"; g.font = "11px system-ui";
  g.fillText(max.toFixed(1) + "/s", 4, 18);
  if (state.series.length < 2) return;
  g.strokeStyle = "#4cc38a"; g.lineWidth = 2; g.beginPath();
  state.series.forEach((v, i) => {
    const x = w - (state.series.length - 1 - i) * (w / (WINDOW - 1));
    const y = h - 8 - (h - 16) * v / max;
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}

function renderReorgs(list) {
  const tb = $("reorgs").querySelector("tbody");
  tb.replaceChildren(...list.slice(0, 10).map((r) =>
    el("tr", {}, el("td", { textContent: ago(r.at) }), el("td", { textContent: String(r.depth), className: "depth" }),
       el("td", { textContent: r.head === null ? "–" : String(r.head) }))));
  $("reorgs-empty").style.display = list.length ? "none" : "";
}

function renderPlugins(plugins) {
  const tb = $("plugins").querySelector("tbody");
  tb.replaceChildren(...Object.entries(plugins).map(([name, p]) => {
    const details = Object.entries(p).filter(([k]) => k !== "state")
      .map(([k, v]) => k + ": " + (typeof v === "object" ? JSON.stringify(v) : v)).join(", ");
    return el("tr", { dataset: { plugin: name } }, el("td", { textContent: name }),
      el("td", { textContent: p.state, className: "state-" + p.state }),
      el("td", { textContent: details.length > 160 ? details.slice(0, 160) + "…" : details, className: "muted" }));
  }));
}

// ------------------------------------------------------------------------------------------------ search
async function search(ev) {
  ev.preventDefault();
  const q = $("search-q").value.trim();
  if (!q) return;
  const body = { query: q, k: 10 };
  if ($("search-mode").value) body.mode = $("search-mode").value;
  text("search-status", "searching…");
  try {
    const r = await api("/rag/search", { method: "POST", body: JSON.stringify(body) });
    text("search-status", r.hits.length + " hits (" + r.mode + ", " + r.took_ms + " ms)");
    $("hits").replaceChildren(...r.hits.map((h) => {
      const p = h.provenance || {};
      const where = p.tx_hash ? "block " + p.block_number + " · tx " + p.tx_hash.slice(0, 18) + "…" : (p.doc_id || "");
      return el("li", { className: "hit" },
        el("div", { className: "cite", textContent: (h.citation || where) + " · score " + h.score.toFixed(3) }),
        el("div", { className: "text", textContent: h.text }));
    }));
  } catch (e) {
    text("search-status", e.message);
    $("hits").replaceChildren();
  }
}

// ------------------------------------------------------------------------------------------------ memory browser
async function loadAgents() {
  try {
    const r = await api("/memory/agents");
    const sel = $("agents");
    const keep = sel.value;
    sel.replaceChildren(el("option", { value: "", textContent: "(choose an agent)" }),
      ...r.agents.map((a) => el("option", { value: a.address, textContent: a.address + (a.label ? " · " + a.label : "") })));
    if (keep) sel.value = keep;
    text("memory-status", r.agents.length + " agents");
  } catch (e) {
    text("memory-status", e.message);
  }
}

async function loadAgent() {
  const a = $("agents").value;
  state.agent = a;
  if (!a) return;
  try {
    const items = await api("/memory/agents/" + a + "/items?limit=50");
    $("memory-items").replaceChildren(...items.items.map((i) =>
      el("li", { className: "item" }, el("span", { className: "mono", textContent: i.id.slice(0, 12) + "… " }),
        el("b", { textContent: i.kind + " " }), el("span", { textContent: String(i.content ?? "(bytes)").slice(0, 200) }),
        el("span", { className: "muted", textContent: i.anchor ? "  anchored @" + i.anchor.block : "  (pending)" }))));
    text("memory-status", items.items.length + " items");
  } catch (e) {
    text("memory-status", e.message);
  }
  try {
    const root = await api("/memory/agents/" + a + "/root");
    text("memory-root", root.root);
    text("memory-root-block", "at block " + root.block + " · " + root.count + " leaves");
    $("memory-root").dataset.agent = a;
  } catch (e) {
    text("memory-root", "–");
    text("memory-root-block", e.message);
  }
}

// ------------------------------------------------------------------------------------------------ wiring
$("token").value = state.token;
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("monmouth-token", state.token);
  poll(); loadAgents();
});
$("search-form").addEventListener("submit", search);
$("agents").addEventListener("change", loadAgent);
$("agents-refresh").addEventListener("click", () => { loadAgents(); loadAgent(); });
poll();
loadAgents();
setInterval(poll, 1000);
setInterval(() => { if (state.agent) loadAgent(); }, 5000);
