// hayedik ui: the page. It reads the transfers' state from /api/transfers
// and their events from /api/events (server-sent events: the very events
// of `--json`, each with `transfer`, the transfer's id). Every name shown
// comes from a file system or a peer: text nodes only, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const cards = new Map();
let refreshing = false;
let again = false;
let anyRunning = false;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (!r.ok) throw new Error((data && data.error) || text.trim() || r.statusText);
  return data;
}

function bytes(n) {
  const units = ["KiB", "MiB", "GiB", "TiB"];
  if (n < 1024) return n + " B";
  let v = n / 1024, u = 0;
  while (v >= 1024 && u + 1 < units.length) { v /= 1024; u++; }
  return v.toFixed(1) + " " + units[u];
}

function duration(s) {
  if (!isFinite(s) || s < 0) return "–";
  s = Math.round(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

// ---- transfers ----

function title(t) {
  if (t.name) return t.name;
  if (t.request.kind === "share") return t.request.path;
  return t.request.ticket;
}

function stat(parent, label, value, cls) {
  const s = el("span", cls);
  s.append(label + " ", el("b", null, value));
  parent.append(s);
}

function makeCard(id) {
  const c = el("div", "transfer");
  c.dataset.transfer = id;
  const top = el("div", "top");
  c.nameEl = el("span", "name");
  c.kindEl = el("span", "muted");
  c.badge = el("span", "badge");
  const actions = el("span", "actions");
  c.stopBtn = el("button", "secondary", "Stop");
  c.resumeBtn = el("button", "secondary", "Resume");
  c.removeBtn = el("button", "secondary", "Remove");
  c.stopBtn.dataset.action = "stop";
  c.resumeBtn.dataset.action = "resume";
  c.removeBtn.dataset.action = "remove";
  for (const b of [c.stopBtn, c.resumeBtn, c.removeBtn]) {
    b.type = "button";
    b.addEventListener("click", () => act(id, b.dataset.action, b));
    actions.append(b);
  }
  top.append(c.nameEl, c.kindEl, c.badge, actions);
  c.bar = el("div", "bar");
  c.fill = el("div");
  c.bar.append(c.fill);
  c.stats = el("div", "stats");
  c.map = el("div", "map");
  c.map.title = "piece map: darker = more of these pieces held here; outlined = no connected peer has them";
  c.ticketBox = el("div", "ticket");
  const col = el("div", "col");
  c.ticketInput = el("input");
  c.ticketInput.readOnly = true;
  c.ticketInput.setAttribute("aria-label", "ticket");
  const copy = el("button", "secondary", "Copy ticket");
  copy.type = "button";
  copy.dataset.action = "copy";
  copy.addEventListener("click", async () => {
    c.ticketInput.select();
    try { await navigator.clipboard.writeText(c.ticketInput.value); copy.textContent = "Copied"; }
    catch (_) { document.execCommand && document.execCommand("copy"); copy.textContent = "Copied"; }
    setTimeout(() => { copy.textContent = "Copy ticket"; }, 1500);
  });
  const row = el("div", "row");
  row.append(c.ticketInput, copy);
  col.append(el("label", null, "Ticket: whoever has it can download this"), row);
  c.qr = el("img");
  c.qr.alt = "QR code of the ticket";
  c.ticketBox.append(col, c.qr);
  c.peers = el("table");
  c.doneRow = el("div", "done-row");
  c.errorEl = el("div", "error");
  c.warnEl = el("div");
  c.append(top, c.bar, c.stats, c.map, c.ticketBox, c.peers, c.doneRow, c.errorEl, c.warnEl);
  return c;
}

function update(c, t) {
  c.nameEl.textContent = title(t);
  c.kindEl.textContent = t.request.kind === "share" ? "shared from " + t.request.path : "into " + t.request.dir;
  c.badge.textContent = t.status;
  c.badge.className = "badge " + t.status;
  c.stopBtn.hidden = !t.running;
  c.resumeBtn.hidden = t.running;
  c.removeBtn.hidden = t.running;

  const total = t.bytes_total || 0;
  const done = Math.min(t.bytes_done || 0, total);
  const pct = total > 0 ? Math.floor((done * 100) / total) : (t.status === "sharing" ? 100 : 0);
  c.fill.style.width = pct + "%";
  c.bar.classList.toggle("complete", pct >= 100);
  c.stats.replaceChildren();
  const pctEl = el("span", "pct", pct + "%");
  pctEl.dataset.pct = pct;
  c.stats.append(pctEl);
  stat(c.stats, "", bytes(done) + " of " + bytes(total));
  if (t.request.kind === "get" && t.running && pct < 100) {
    stat(c.stats, "rate", bytes(t.rate) + "/s");
    stat(c.stats, "ETA", t.rate > 0 ? duration((total - done) / t.rate) : "–");
  }
  stat(c.stats, "peers", String(t.peers));
  stat(c.stats, "uploaded", bytes(t.uploaded));
  if (t.request.kind === "share") stat(c.stats, "copies elsewhere", String(t.copies));
  if (t.reachability) stat(c.stats, "reachable", t.reachability.how + " at " + t.reachability.addr);

  // Piece map: one cell per piece or run of pieces.
  const cells = t.map || [];
  if (c.map.children.length !== cells.length) {
    c.map.replaceChildren(...cells.map(() => el("span")));
  }
  cells.forEach((p, i) => {
    const cls = p >= 100 ? "p3" : p >= 50 ? "p2" : p > 0 ? "p1" : "";
    const gone = p < 100 && t.running && (t.rarest[i] || 0) === 0 && t.peers > 0;
    c.map.children[i].className = cls + (gone ? " gone" : "");
  });
  c.map.hidden = cells.length === 0;

  c.ticketBox.hidden = !t.ticket;
  if (t.ticket && c.ticketInput.value !== t.ticket) {
    c.ticketInput.value = t.ticket;
    c.qr.src = "/api/transfers/" + t.id + "/qr.svg";
  }

  // Per peer: verified bytes received and the path they came by.
  const peers = Object.keys(t.from || {});
  c.peers.hidden = peers.length === 0;
  if (peers.length) {
    const head = el("tr");
    head.append(el("th", null, "peer"), el("th", null, "received"), el("th", null, "path"));
    const rows = peers.map((a) => {
      const r = el("tr");
      r.append(el("td", null, a), el("td", null, bytes(t.from[a])), el("td", null, (t.via || {})[a] || "…"));
      return r;
    });
    c.peers.replaceChildren(head, ...rows);
  }

  const finished = t.request.kind === "get" && t.seconds !== null && t.seconds !== undefined;
  c.doneRow.hidden = !finished;
  if (finished) {
    c.doneRow.textContent = "done: " + (t.path || "") + " (" + bytes(total) + " in " + t.seconds.toFixed(1) + " s, every piece verified)";
  }
  c.errorEl.textContent = t.error ? t.error : "";
  c.errorEl.hidden = !t.error;
  c.warnEl.replaceChildren(...(t.warnings || []).map((w) => el("div", "warning", "warning: " + w)));
}

function render(list) {
  anyRunning = list.some((t) => t.running);
  const seen = new Set();
  const box = $("transfers");
  for (const t of list.slice().reverse()) {
    seen.add(String(t.id));
    let c = cards.get(String(t.id));
    if (!c) {
      c = makeCard(t.id);
      cards.set(String(t.id), c);
    }
    update(c, t);
    box.append(c);
  }
  for (const [id, c] of cards) {
    if (!seen.has(id)) { c.remove(); cards.delete(id); }
  }
  $("empty").hidden = list.length > 0;
}

async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    render(await api("GET", "/api/transfers"));
  } catch (e) {
    $("link").textContent = "cannot read the state: " + e.message;
  } finally {
    refreshing = false;
    if (again) { again = false; setTimeout(refresh, 200); }
  }
}

async function act(id, action, button) {
  button.disabled = true;
  try {
    await api("POST", "/api/transfers/" + id + "/" + action);
  } catch (e) {
    alert(e.message);
  } finally {
    button.disabled = false;
    refresh();
  }
}

// ---- events ----

function log(line) {
  const box = $("log");
  box.textContent += line + "\n";
  const lines = box.textContent.split("\n");
  if (lines.length > 200) box.textContent = lines.slice(-200).join("\n");
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => { $("link").textContent = "live"; $("link").className = "link live"; refresh(); };
  source.onerror = () => { $("link").textContent = "reconnecting…"; $("link").className = "link"; };
  source.onmessage = (m) => {
    log(m.data);
    refresh();
  };
}

// ---- forms ----

function submit(form, button, message, call) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    $(message).textContent = "";
    $(button).disabled = true;
    try {
      await call();
      refresh();
    } catch (err) {
      $(message).textContent = err.message;
    } finally {
      $(button).disabled = false;
    }
  });
}

submit($("share-form"), "share-button", "share-message", async () => {
  await api("POST", "/api/share", { path: $("share-path").value, tracker: $("share-tracker").value });
  $("share-path").value = "";
});

submit($("get-form"), "get-button", "get-message", async () => {
  await api("POST", "/api/get", { ticket: $("get-ticket").value, dir: $("get-dir").value });
  $("get-ticket").value = "";
});

// ---- the folder browser ----

let browseTarget = null;
let browseFolders = false;
let listing = null;

function join(dir, name) {
  const sep = dir.includes("\\") && !dir.includes("/") ? "\\" : "/";
  return dir.endsWith(sep) ? dir + name : dir + sep + name;
}

async function browse(path) {
  $("browse-message").textContent = "";
  try {
    listing = await api("GET", "/api/browse?path=" + encodeURIComponent(path));
  } catch (e) {
    $("browse-message").textContent = e.message;
    return;
  }
  $("browse-path").value = listing.path;
  const items = listing.entries
    .filter((e) => e.folder || !browseFolders)
    .map((e) => {
      const li = el("li", e.folder ? "folder" : "file");
      li.append(el("span", null, e.name), el("span", "muted", e.folder ? "" : bytes(e.bytes)));
      li.addEventListener("click", () => {
        if (e.folder) browse(join(listing.path, e.name));
        else pick(join(listing.path, e.name));
      });
      return li;
    });
  if (listing.more) items.push(el("li", "muted", listing.more + " more not listed"));
  $("browse-list").replaceChildren(...items);
}

function pick(path) {
  if (browseTarget) $(browseTarget).value = path;
  $("browser").hidden = true;
}

for (const b of document.querySelectorAll("[data-browse]")) {
  b.addEventListener("click", () => {
    browseTarget = b.dataset.browse;
    browseFolders = b.dataset.folders === "1";
    $("browser").hidden = false;
    browse($(browseTarget).value);
  });
}
$("browse-go").addEventListener("click", () => browse($("browse-path").value));
$("browse-path").addEventListener("keydown", (e) => { if (e.key === "Enter") browse($("browse-path").value); });
$("browse-up").addEventListener("click", () => listing && listing.parent && browse(listing.parent));
$("browse-pick").addEventListener("click", () => listing && pick(listing.path));
$("browse-close").addEventListener("click", () => { $("browser").hidden = true; });

refresh();
connect();
setInterval(() => { if (anyRunning) refresh(); }, 1000);
