// Junction's web console: reads the operations endpoint's /api/ and draws the page.
//
// No library, no build step. Every value from the bridge (adapter details, subjects,
// reasons, peer text) goes into the page as text (textContent, attributes), never as
// markup: a peer's "<script>" is shown, not run (the page's Content-Security-Policy
// allows no inline script either). Live updates come from /api/events (server-sent
// events) read with fetch(), which can send the token that EventSource cannot. The
// drawing helpers (el, ago, ...) and the route picture are in draw.js, loaded first.
"use strict";

const TOKEN_KEY = "junction-console-token";
const RATE_WINDOW_S = 5;          // rates from the snapshots of the last seconds
const LEDGER_COLUMNS = [          // the ledger's words, in this order; nothing else
  "received", "matched", "replies", "recovered", "replayed",
  "delivered", "pending", "dead_lettered", "dropped", "filtered", "balanced",
];
const EXAMPLE = {
  source: "placeos",
  subject: "sys-boardroom/Environment_1/temperature",
  body: { kind: "status_change", system: "sys-boardroom", module: "Environment",
          name: "temperature", value: 26.0 },
};

const state = {
  snap: null,
  history: [],          // [{time, routes: {name: {delivered, matched}}}], oldest first
  selected: new Set(),  // dead-letter seqs ticked
  deadTotal: null,      // the store's count when the list was last read
  deadRows: [],
  routesKnown: "",
  streamAbort: null,
};

// --- small helpers ----------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function headers(extra) {
  const out = Object.assign({}, extra || {});
  if (token()) out.Authorization = "Bearer " + token();
  return out;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = headers(opts.headers);
  opts.cache = "no-store";
  const response = await fetch(path, opts);
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch (_) { body = null; }
  if (response.status === 401) {
    askToken(token() ? "that token was refused" : "this endpoint needs its token");
    throw new ApiError(401, "needs the endpoint's token");
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : text.trim() || response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

function post(path, value) {
  return api(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(value),
  });
}

function setNote(id, text, isError) {
  const node = $(id);
  node.textContent = text || "";
  node.classList.toggle("error", Boolean(isError));
}

function replaceRows(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- the token ----------------------------------------------------------------------------

function askToken(note) {
  $("token-form").hidden = false;
  $("token-note").textContent = note || "";
  setLive(false, "needs token");
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  $("token").value = "";
  $("token-note").textContent = "";
  $("token-form").hidden = true;
  start();
});

// --- live updates -------------------------------------------------------------------------

function setLive(on, text) {
  const node = $("live");
  node.classList.toggle("on", on);
  node.classList.toggle("off", !on);
  node.textContent = text;
}

async function stream() {
  if (state.streamAbort) state.streamAbort.abort();
  const abort = new AbortController();
  state.streamAbort = abort;
  try {
    const response = await fetch("api/events", {
      headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: abort.signal,
    });
    if (response.status === 401) {
      askToken(token() ? "that token was refused" : "this endpoint needs its token");
      return;
    }
    if (!response.ok || !response.body) throw new Error("events: HTTP " + response.status);
    setLive(true, "live");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        onEvent(block);
      }
    }
  } catch (err) {
    if (abort.signal.aborted) return;
    showProblem("live updates stopped: " + err.message + "; retrying");
  }
  if (state.streamAbort !== abort) return;
  setLive(false, "reconnecting");
  setTimeout(() => { if (state.streamAbort === abort) stream(); }, 2000);
}

function onEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let value;
  try { value = JSON.parse(data.join("\n")); } catch (_) { return; }
  if (name === "snapshot") {
    showProblem("");
    render(value);
  } else if (name === "problem") {
    showProblem(value.error || "the bridge did not answer");
  }
}

function showProblem(text) {
  const node = $("problem");
  node.textContent = text || "";
  node.hidden = !text;
}

// --- drawing the snapshot -----------------------------------------------------------------

function render(snap) {
  state.snap = snap;
  remember(snap);
  $("uptime").textContent = "up " + ago(snap.uptime_s);
  if (snap.router_error) showProblem(snap.router_error);
  renderAdapters(snap);
  drawGraph($("graph"), snap, rateOf);
  renderLedger(snap);
  renderLatest(snap);
  const store = snap.outbox || {};
  const total = store.dead_letters;
  if (state.deadTotal !== null && total !== undefined && total !== state.deadTotal) loadDead();
  const routes = Object.keys(snap.routes || {}).sort().join("\n");
  if (routes !== state.routesKnown) {
    state.routesKnown = routes;
    const select = $("dead-route");
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "all" }),
      ...Object.keys(snap.routes || {}).sort().map((r) => el("option", { value: r, text: r })));
    select.value = chosen;
  }
}

function remember(snap) {
  const routes = {};
  for (const [name, r] of Object.entries(snap.routes || {})) {
    const ledger = r.ledger || {};
    routes[name] = { delivered: ledger.delivered ?? r.delivered, matched: ledger.matched ?? r.matched };
  }
  state.history.push({ time: snap.time, routes });
  while (state.history.length > 2 && snap.time - state.history[0].time > RATE_WINDOW_S) {
    state.history.shift();
  }
}

function rateOf(route, field) {
  const first = state.history[0];
  const last = state.history[state.history.length - 1];
  if (!first || first === last || !first.routes[route] || !last.routes[route]) return null;
  const dt = last.time - first.time;
  if (dt <= 0) return null;
  return Math.max(0, (last.routes[route][field] - first.routes[route][field]) / dt);
}

function renderAdapters(snap) {
  const now = snap.time;
  const rows = Object.values(snap.adapters || {}).map((a) => el("tr", { "data-adapter": a.name },
    el("td", { text: a.name }),
    el("td", { text: a.type }),
    el("td", { class: "state " + stateClass(a.state), text: a.state }),
    el("td", { text: ago(now - a.since) }),
    el("td", { class: "wrap", text: a.detail || a.last_error || "" }),
    el("td", { class: "num", text: a.restarts }),
    el("td", { class: "num", text: a.reconnects }),
  ));
  replaceRows($("adapters").tBodies[0], rows);
}

function renderLedger(snap) {
  const vocabulary = snap.vocabulary || {};
  const head = $("ledger").tHead.rows[0];
  if (!head.cells.length) {
    head.append(el("th", { text: "route" }),
      ...LEDGER_COLUMNS.map((w) => el("th", { class: w === "balanced" ? "" : "num",
        title: vocabulary[w], text: w })),
      el("th", { class: "num", title: "age of the oldest envelope waiting in the outbox",
        text: "oldest pending" }));
  }
  const rows = Object.entries(snap.routes || {}).map(([name, r]) => {
    const ledger = r.ledger || {};
    const cells = LEDGER_COLUMNS.map((w) => {
      if (w === "balanced") {
        const ok = ledger.balanced;
        return el("td", {}, el("span", { class: "balanced " + (ok ? "yes" : "no"),
          text: ok ? "yes" : "NO" }));
      }
      return el("td", { class: "num", "data-word": w, text: ledger[w] ?? "-" });
    });
    const oldest = (r.outbox || {}).oldest_age_s;
    return el("tr", { "data-route": name }, el("td", { text: name }), ...cells,
      el("td", { class: "num", text: oldest === null || oldest === undefined ? "-" : ago(oldest) }));
  });
  replaceRows($("ledger").tBodies[0], rows);
}

function renderLatest(snap) {
  const latest = snap.latest;
  $("latest-section").hidden = !Array.isArray(latest);
  if (!Array.isArray(latest)) return;
  const rows = latest.map((v) => el("tr", {},
    el("td", { text: v.adapter }),
    el("td", { text: v.subject }),
    el("td", { class: "wrap mono", text: v.value }),
    el("td", { class: "num", text: ago(snap.time - v.ts) }),
  ));
  replaceRows($("latest").tBodies[0], rows);
}

// --- dead letters -------------------------------------------------------------------------

async function loadDead() {
  const params = new URLSearchParams({ limit: "100" });
  if ($("dead-route").value) params.set("route", $("dead-route").value);
  if ($("dead-reason").value.trim()) params.set("reason", $("dead-reason").value.trim());
  try {
    const answer = await api("api/dead-letters?" + params.toString());
    state.deadTotal = answer.total;
    state.deadRows = answer.dead_letters;
    drawDead(answer);
  } catch (err) {
    if (err.status !== 401) setNote("dead-note", err.message, true);
  }
}

function drawDead(answer) {
  const shown = new Set(answer.dead_letters.map((d) => d.seq));
  for (const seq of [...state.selected]) if (!shown.has(seq)) state.selected.delete(seq);
  const waiting = answer.replays_waiting ? `, ${answer.replays_waiting} replays waiting` : "";
  $("dead-count").textContent =
    `(${answer.total} in the store${waiting}; newest ${answer.dead_letters.length} shown)`;
  const rows = answer.dead_letters.map((d) => {
    const box = el("input", { type: "checkbox", "data-seq": d.seq,
      "aria-label": "select dead letter " + d.seq });
    box.checked = state.selected.has(d.seq);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(d.seq); else state.selected.delete(d.seq);
      updateButtons();
    });
    return el("tr", { "data-seq": d.seq },
      el("td", {}, box),
      el("td", { class: "num", text: d.seq }),
      el("td", { text: d.route }),
      el("td", { text: d.target || "-" }),
      el("td", { text: d.stage }),
      el("td", { class: "wrap", text: d.reason }),
      el("td", { text: when(d.failed_at) }),
      el("td", { class: "num", text: d.attempts }),
      el("td", { class: "wrap", text: d.subject }),
      el("td", { class: "wrap mono", text: d.preview }),
    );
  });
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 10, class: "muted", text: "no dead letters" })));
  }
  replaceRows($("dead").tBodies[0], rows);
  updateButtons();
}

function updateButtons() {
  const n = state.selected.size;
  $("replay").disabled = n === 0;
  $("purge").disabled = n === 0;
  $("replay").textContent = n ? `Replay ${n}` : "Replay";
  $("purge").textContent = n ? `Purge ${n}` : "Purge";
  const all = $("dead-all");
  all.checked = n > 0 && n === state.deadRows.length;
}

$("dead-all").addEventListener("change", () => {
  state.selected = new Set($("dead-all").checked ? state.deadRows.map((d) => d.seq) : []);
  for (const box of $("dead").querySelectorAll("tbody input[type=checkbox]")) {
    box.checked = state.selected.has(Number(box.dataset.seq));
  }
  updateButtons();
});

$("dead-filter").addEventListener("submit", (event) => {
  event.preventDefault();
  loadDead();
});

async function act(verb) {
  const seqs = [...state.selected].sort((a, b) => a - b);
  if (!seqs.length) return;
  if (verb === "purge" &&
      !window.confirm(`Delete ${seqs.length} dead letter(s) for good? This cannot be undone.`)) {
    return;
  }
  setNote("dead-note", verb === "replay" ? "replaying..." : "purging...", false);
  try {
    const answer = await post("api/dead-letters/" + verb, { seqs });
    const n = verb === "replay" ? answer.queued : answer.purged;
    let text = verb === "replay"
      ? `${n} queued for replay; the bridge takes them at its next tick`
      : `${n} purged`;
    if (answer.missing && answer.missing.length) text += `; gone already: ${answer.missing.join(", ")}`;
    if (answer.warnings && answer.warnings.length) text += "; " + answer.warnings.join("; ");
    setNote("dead-note", text, false);
    state.selected.clear();
  } catch (err) {
    setNote("dead-note", `${verb} refused: ${err.message}`, true);
  }
  loadDead();
}

$("replay").addEventListener("click", () => act("replay"));
$("purge").addEventListener("click", () => act("purge"));

// --- explain ------------------------------------------------------------------------------

$("envelope").value = JSON.stringify(EXAMPLE, null, 1);

$("explain-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = $("explain-result");
  let envelope;
  try {
    envelope = JSON.parse($("envelope").value);
  } catch (err) {
    setNote("explain-note", "not JSON: " + err.message, true);
    out.replaceChildren();
    return;
  }
  setNote("explain-note", "explaining...", false);
  try {
    const answer = await post("api/explain", { envelope });
    setNote("explain-note", `${answer.matched} of ${answer.routes.length} routes match`, false);
    out.replaceChildren(...drawVerdicts(answer.routes));
  } catch (err) {
    setNote("explain-note", err.message, true);
    out.replaceChildren();
  }
});

function drawVerdicts(verdicts) {
  const block = (v) => {
    const items = v.why.map((w) => el("li", { class: w.startsWith("FAIL") ? "fail" : "", text: w }));
    for (const s of v.steps) {
      const text = typeof s.output === "string" ? s.output : JSON.stringify(s.output);
      items.push(el("li", { text: `-> ${s.step}: ${text}` }));
    }
    if (v.error) items.push(el("li", { class: "fail", text: "!! " + v.error }));
    return el("div", { class: "verdict" + (v.matched ? " match" : ""), "data-route": v.route },
      el("h3", { text: `${v.route}: ${v.matched ? "MATCH" : "no match"}` }),
      el("ul", {}, ...items));
  };
  const hits = verdicts.filter((v) => v.matched);
  const misses = verdicts.filter((v) => !v.matched);
  const out = hits.map(block);
  if (misses.length) {
    out.push(el("details", {}, el("summary", { text: `${misses.length} routes do not match` }),
      ...misses.map(block)));
  }
  return out;
}

// --- the configuration --------------------------------------------------------------------

async function loadConfig() {
  try {
    const answer = await api("api/config");
    $("config-path").textContent = answer.path;
    $("config").textContent = answer.text;
  } catch (err) {
    if (err.status !== 401) $("config").textContent = "cannot show it: " + err.message;
  }
}

// --- start --------------------------------------------------------------------------------

async function start() {
  try {
    render(await api("api/snapshot"));
  } catch (err) {
    if (err.status !== 401) showProblem(err.message);
    if (err.status === 401) return;
  }
  loadConfig();
  loadDead();
  stream();
}

start();
