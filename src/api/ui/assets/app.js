// The mini-etcd console. One file, no framework, no build step.
//
// Everything here is a client of the server's public APIs on this origin: etcd's JSON gateway
// (/v3/..., keys and values base64) for keys, history, members, status, leases and auth, and the
// REST API for the watch stream, /health and /metrics. Data from the store only ever reaches the
// page as text (textContent, attribute values), never as markup, and the page's Content-Security-
// Policy forbids inline script besides.
//
// Keys and values are bytes. They travel as base64 and are kept as Uint8Array here; they are only
// decoded to text for display, so a value that is not UTF-8 survives a round trip untouched.
"use strict";

// Anything the Content-Security-Policy blocks is a bug of this console: say so in the console log,
// and count it on <html> (data-csp-violations), where the browser tests look.
document.addEventListener("securitypolicyviolation", (e) => {
  console.error("blocked by the Content-Security-Policy:", e.violatedDirective, e.blockedURI);
  const root = document.documentElement;
  root.dataset.cspViolations = String(Number(root.dataset.cspViolations || 0) + 1);
});

// ---------------------------------------------------------------------------------------------
// Small helpers.

const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes, never HTML). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** An SVG element (charts are inline SVG, drawn from numbers only). */
function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

const enc = new TextEncoder();
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

function bytesToB64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function b64ToBytes(b64) {
  const s = atob(b64 || "");
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

/** The bytes as UTF-8 text, or null when they are not valid UTF-8. */
function utf8(bytes) {
  try {
    return strictUtf8.decode(bytes);
  } catch (_) {
    return null;
  }
}

/** A key for display: its text, or its bytes escaped where they are not UTF-8. */
function showKey(bytes) {
  const t = utf8(bytes);
  if (t !== null) return t;
  return Array.from(bytes, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : "\\x" + b.toString(16).padStart(2, "0"))).join("");
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/** The smallest key after every key that starts with `prefix` (etcd's range_end for a prefix). */
function prefixEnd(prefix) {
  const end = Uint8Array.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i] += 1;
      return end.subarray(0, i + 1);
    }
  }
  return new Uint8Array([0]); // every key: etcd's "\0"
}

function concat(a, b) {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

function startsWith(bytes, prefix) {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

function fmtBytes(n) {
  n = Number(n || 0);
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

/** A decimal id string (uint64, as the gateway writes it) in hex, as etcdctl shows ids. */
function idHex(id) {
  try {
    return BigInt(id || 0).toString(16);
  } catch (_) {
    return String(id);
  }
}

// ---------------------------------------------------------------------------------------------
// Talking to the server. Both APIs carry the same token: raw in Authorization for the gateway
// (as etcd's grpc-gateway expects), as a Bearer token for the REST API.

const state = {
  token: sessionStorage.getItem("mini-etcd-token"),
  user: sessionStorage.getItem("mini-etcd-user"),
  authEnabled: false,
  view: null,
};

class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
  get denied() {
    return this.status === 403 || /permission denied/.test(this.message);
  }
  get compacted() {
    return /required revision has been compacted/.test(this.message);
  }
}

/** Answers a 401 anywhere: the token is gone or was never there; back to the login form. */
function unauthorized(err) {
  if (err instanceof ApiError && err.status === 401) {
    setToken(null, null);
    showLogin(state.authEnabled ? "Your session ended (" + err.message + "). Please log in again." : err.message);
    return true;
  }
  return false;
}

async function gw(path, body) {
  return gwAt("", path, body);
}

/**
 * A JSON gateway call to the member at `base` ("" for this one; another member's client URL,
 * which its `--cors` lets this page read), given up after `ms` milliseconds when `ms` is set.
 */
async function gwAt(base, path, body, ms) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers["Authorization"] = state.token;
  const init = { method: "POST", headers, body: JSON.stringify(body || {}), credentials: "omit" };
  if (ms) init.signal = AbortSignal.timeout(ms);
  const r = await fetch(base.replace(/\/+$/, "") + path, init);
  const text = await r.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch (_) {
    throw new ApiError(r.status, "unexpected answer from " + path);
  }
  if (!r.ok) throw new ApiError(r.status, json.message || json.error || r.statusText, json.code);
  return json;
}

function restHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

/** A REST API call; an answer that is not OK throws, but 503 and the statuses in `accept`. */
async function rest(path, accept = []) {
  const r = await fetch(path, { headers: restHeaders(), credentials: "omit" });
  if (!r.ok && r.status !== 503 && !accept.includes(r.status)) {
    let msg = r.statusText;
    try {
      msg = (await r.json()).error || msg;
    } catch (_) {}
    throw new ApiError(r.status, msg);
  }
  return r;
}

function banner(text, isError) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
  b.classList.toggle("error", !!isError);
}

/** A polite sentence for an error, with the server's own words. */
function explain(err, what) {
  if (err instanceof ApiError && err.denied) {
    return "Your role may not " + what + " (" + err.message + ").";
  }
  return "Could not " + what + ": " + (err && err.message ? err.message : String(err));
}

// ---------------------------------------------------------------------------------------------
// Theme: auto (the system's), light or dark, remembered in localStorage.

const THEMES = ["auto", "light", "dark"];

function applyTheme(t) {
  if (t === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", t);
  const b = $("theme");
  b.textContent = "Theme: " + t;
  b.setAttribute("aria-label", "Colour theme: " + (t === "auto" ? "follows the system" : t) + ". Change.");
}

// ---------------------------------------------------------------------------------------------
// Views and login.

const VIEWS = ["keys", "live", "cluster", "metrics"];
const timers = { cluster: null, metrics: null };

function setToken(token, user) {
  state.token = token;
  state.user = user;
  if (token) {
    sessionStorage.setItem("mini-etcd-token", token);
    sessionStorage.setItem("mini-etcd-user", user || "");
  } else {
    sessionStorage.removeItem("mini-etcd-token");
    sessionStorage.removeItem("mini-etcd-user");
  }
}

function showLogin(message) {
  stopWatch();
  for (const v of VIEWS) $("view-" + v).hidden = true;
  clearInterval(timers.cluster);
  clearInterval(timers.metrics);
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  banner("");
  $("login-name").focus();
}

function showApp() {
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = !state.authEnabled;
  $("whoami").textContent = state.authEnabled && state.user ? "Logged in as " + state.user : "";
  const fromHash = location.hash.replace("#", "");
  selectView(VIEWS.includes(fromHash) ? fromHash : "keys");
}

function selectView(name) {
  state.view = name;
  banner("");
  for (const v of VIEWS) {
    const on = v === name;
    $("view-" + v).hidden = !on;
    const tab = $("tab-" + v);
    tab.setAttribute("aria-selected", on ? "true" : "false");
    tab.tabIndex = on ? 0 : -1;
  }
  if (location.hash !== "#" + name) history.replaceState(null, "", "#" + name);
  clearInterval(timers.cluster);
  clearInterval(timers.metrics);
  if (name === "keys" && !keys.loaded) browse(keys.prefix);
  if (name === "cluster") {
    refreshCluster();
    timers.cluster = setInterval(refreshCluster, 2000);
  }
  if (name === "metrics") {
    scrapeMetrics();
    timers.metrics = setInterval(scrapeMetrics, SCRAPE_MS);
  }
}

async function login(ev) {
  ev.preventDefault();
  const name = $("login-name").value;
  const password = $("login-password").value;
  $("login-error").textContent = "";
  try {
    const r = await gw("/v3/auth/authenticate", { name, password });
    setToken(r.token, name);
    $("login-password").value = "";
    keys.loaded = false;
    showApp();
  } catch (err) {
    $("login-error").textContent = "Login failed: " + err.message;
  }
}

async function start() {
  applyTheme(localStorage.getItem("mini-etcd-theme") || "auto");
  try {
    const st = await gw("/v3/auth/status", {});
    state.authEnabled = !!st.enabled;
  } catch (err) {
    banner("Cannot reach the server: " + err.message, true);
    return;
  }
  if (state.authEnabled && !state.token) showLogin("");
  else showApp();
}

// ---------------------------------------------------------------------------------------------
// Keys: a tree by "/"-separated prefix, a page at a time.

const PAGE = 100;
const keys = {
  prefix: new Uint8Array(0), // the level being listed
  cursor: null, // where the next page starts (bytes), or null when the listing is complete
  loaded: false,
  selected: null, // the key shown in the detail pane (bytes)
  kv: null, // its current KeyValue as the gateway returned it
  history: null, // {next: revision to ask for next, or 0 when done}
};

function crumbs() {
  const nav = $("crumbs");
  nav.replaceChildren();
  nav.append(el("button", { type: "button", onclick: () => browse(new Uint8Array(0)) }, "(all keys)"));
  const text = showKey(keys.prefix);
  let acc = "";
  for (const part of text.split(/(?<=\/)/)) {
    if (!part) continue;
    acc += part;
    const target = enc.encode(acc);
    nav.append(el("button", { type: "button", onclick: () => browse(target) }, part));
  }
}

async function browse(prefix) {
  keys.prefix = prefix;
  keys.cursor = prefix.length ? prefix : new Uint8Array([0]);
  keys.loaded = true;
  $("search-prefix").value = showKey(prefix);
  $("tree").replaceChildren();
  crumbs();
  await morePage();
}

/** Range requests one "Load more" may make to fill a page when folders collapse many keys. */
const PAGE_REQUESTS = 20;

async function morePage() {
  const prefix = keys.prefix;
  const end = prefix.length ? prefixEnd(prefix) : new Uint8Array([0]);
  $("tree-status").textContent = "Loading…";
  $("tree-more").hidden = true;
  const tree = $("tree");
  const seen = new Set(Array.from(tree.querySelectorAll("button[data-folder]"), (b) => b.dataset.folder));
  // A page is PAGE entries: a folder counts once however many keys it holds, and the next
  // request starts past it, so a page never waits for a folder's keys to be listed.
  let added = 0;
  let more = false;
  for (let request = 0; request < PAGE_REQUESTS && keys.cursor && added < PAGE; request++) {
    let r;
    try {
      r = await gw("/v3/kv/range", {
        key: bytesToB64(keys.cursor),
        range_end: bytesToB64(end),
        limit: PAGE,
        keys_only: true,
      });
    } catch (err) {
      if (unauthorized(err)) return;
      $("tree-status").textContent = explain(err, "list these keys");
      $("tree-more").hidden = false;
      return;
    }
    let last = null;
    let leftOver = false; // keys of this answer not shown (under the folder, or past a full page)
    const kvs = r.kvs || [];
    for (let i = 0; i < kvs.length; i++) {
      const key = b64ToBytes(kvs[i].key);
      const rest = key.subarray(prefix.length);
      const slash = rest.indexOf(0x2f);
      if (slash >= 0 && slash < rest.length - 1) {
        // A deeper level: one folder entry, and the next request skips past everything under it.
        const folder = key.subarray(0, prefix.length + slash + 1);
        const b64 = bytesToB64(folder);
        last = { skip: folder };
        if (seen.has(b64)) continue;
        seen.add(b64);
        added++;
        tree.append(
          el("li", {}, el("button", { type: "button", class: "folder", "data-folder": b64, onclick: () => browse(folder) }, showKey(folder.subarray(prefix.length))))
        );
        // Everything else this answer holds under the folder is skipped.
        leftOver = i < kvs.length - 1;
        break;
      }
      last = { key };
      added++;
      const b64 = bytesToB64(key);
      tree.append(
        el(
          "li",
          {},
          el(
            "button",
            {
              type: "button",
              class: "leaf",
              "data-key": b64,
              "aria-current": keys.selected && bytesToB64(keys.selected) === b64 ? "true" : null,
              onclick: () => openKey(key),
            },
            showKey(rest) || "(this prefix itself)"
          )
        )
      );
      if (added >= PAGE) {
        leftOver = i < kvs.length - 1;
        break;
      }
    }
    more = Boolean(last) && (r.more || leftOver);
    keys.cursor = more ? (last.skip ? prefixEnd(last.skip) : concat(last.key, new Uint8Array([0]))) : null;
  }
  $("tree-more").hidden = !more;
  const n = tree.children.length;
  $("tree-status").textContent = n === 0 ? "No keys under this prefix." : n + (n === 1 ? " entry" : " entries") + (more ? " so far (more on demand)." : ".");
}

function showValue() {
  const kv = keys.kv;
  if (!kv) return;
  const bytes = b64ToBytes(kv.value);
  const format = $("value-format").value;
  const text = utf8(bytes);
  let out;
  let note = "";
  if (format === "text") {
    if (text === null) {
      out = bytesToB64(bytes);
      note = "Not UTF-8: shown as base64.";
    } else out = text;
  } else if (format === "json") {
    try {
      out = JSON.stringify(JSON.parse(text === null ? "" : text), null, 2);
    } catch (_) {
      out = text === null ? bytesToB64(bytes) : text;
      note = "Not valid JSON: shown as text.";
    }
  } else if (format === "hex") out = hex(bytes);
  else out = bytesToB64(bytes);
  $("key-value").textContent = out;
  $("value-note").textContent = note + " " + bytes.length + " bytes.";
}

async function openKey(key) {
  keys.selected = key;
  for (const b of $("tree").querySelectorAll("button[data-key]")) {
    b.setAttribute("aria-current", b.dataset.key === bytesToB64(key) ? "true" : "false");
  }
  $("edit-form").hidden = true;
  $("history").hidden = true;
  let r;
  try {
    r = await gw("/v3/kv/range", { key: bytesToB64(key) });
  } catch (err) {
    if (unauthorized(err)) return;
    banner(explain(err, "read " + showKey(key)), true);
    return;
  }
  const kv = (r.kvs || [])[0];
  $("detail-empty").hidden = !!kv;
  $("key-detail").hidden = !kv;
  if (!kv) {
    $("detail-empty").textContent = showKey(key) + " does not exist (any more).";
    keys.kv = null;
    return;
  }
  keys.kv = kv;
  $("key-name").textContent = showKey(key);
  const meta = $("key-meta");
  meta.replaceChildren();
  const lease = kv.lease && kv.lease !== "0" ? kv.lease + " (0x" + idHex(kv.lease) + ")" : "none";
  for (const [k, v] of [
    ["Create revision", kv.create_revision || "0"],
    ["Mod revision", kv.mod_revision || "0"],
    ["Version", kv.version || "0"],
    ["Lease", lease],
    ["Read at revision", (r.header && r.header.revision) || "?"],
  ]) {
    meta.append(el("dt", {}, k), el("dd", {}, v));
  }
  const bytes = b64ToBytes(kv.value);
  if (utf8(bytes) === null) $("value-format").value = "hex";
  else if ($("value-format").value === "hex" || $("value-format").value === "base64") $("value-format").value = "text";
  showValue();
}

function editKey() {
  const bytes = b64ToBytes(keys.kv.value);
  const text = utf8(bytes);
  const f = $("edit-form");
  f.hidden = false;
  f.dataset.encoding = text === null ? "base64" : "text";
  $("edit-encoding").textContent = text === null ? "(base64: the value is not UTF-8, and stays bytes)" : "(text)";
  $("edit-value").value = text === null ? bytesToB64(bytes) : text;
  $("edit-value").focus();
}

/** Asks for confirmation in the page's dialog; resolves true or false. */
function confirmDialog(title, text, okLabel) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      d.onclose = null;
      if (d.open) d.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    d.onclose = () => done(false);
    d.showModal();
    $("confirm-cancel").focus();
  });
}

async function putKey(key, valueBytes) {
  const ok = await confirmDialog("Put " + showKey(key) + "?", "Write " + valueBytes.length + " bytes to " + showKey(key) + ".", "Put");
  if (!ok) return false;
  try {
    const r = await gw("/v3/kv/put", { key: bytesToB64(key), value: bytesToB64(valueBytes) });
    banner("Wrote " + showKey(key) + " at revision " + ((r.header && r.header.revision) || "?") + ".");
    return true;
  } catch (err) {
    if (!unauthorized(err)) banner(explain(err, "write " + showKey(key)), true);
    return false;
  }
}

async function saveEdit(ev) {
  ev.preventDefault();
  const key = keys.selected;
  const raw = $("edit-value").value;
  let bytes;
  if ($("edit-form").dataset.encoding === "base64") {
    try {
      bytes = b64ToBytes(raw.trim());
    } catch (_) {
      banner("The new value is not valid base64.", true);
      return;
    }
  } else bytes = enc.encode(raw);
  if (await putKey(key, bytes)) {
    $("edit-form").hidden = true;
    await openKey(key);
  }
}

async function newKey(ev) {
  ev.preventDefault();
  const key = enc.encode($("new-key-name").value);
  if (!key.length) return;
  if (await putKey(key, enc.encode($("new-key-value").value))) {
    $("new-key-name").value = "";
    $("new-key-value").value = "";
    await browse(keys.prefix);
    await openKey(key);
  }
}

async function deleteKey() {
  const key = keys.selected;
  const ok = await confirmDialog("Delete " + showKey(key) + "?", "The key " + showKey(key) + " will be deleted. Its history stays until the next compaction.", "Delete");
  if (!ok) return;
  try {
    const r = await gw("/v3/kv/deleterange", { key: bytesToB64(key) });
    banner("Deleted " + showKey(key) + " at revision " + ((r.header && r.header.revision) || "?") + ".");
    keys.kv = null;
    keys.selected = null;
    $("key-detail").hidden = true;
    $("detail-empty").hidden = false;
    $("detail-empty").textContent = "Deleted.";
    await browse(keys.prefix);
  } catch (err) {
    if (!unauthorized(err)) banner(explain(err, "delete " + showKey(key)), true);
  }
}

// History: the key at its mod revision, then at that revision minus one (which answers the version
// before), and so on, until the key did not exist yet or compaction removed the older revisions.
const HISTORY_PAGE = 25;

function historyRow(kv) {
  const bytes = b64ToBytes(kv.value);
  const t = utf8(bytes);
  const preview = t === null ? "(bytes) " + hex(bytes.subarray(0, 32)) : t.length > 200 ? t.slice(0, 200) + "…" : t;
  return el("tr", {}, el("td", {}, kv.mod_revision), el("td", {}, kv.version), el("td", { class: "mono" }, preview));
}

async function showHistory() {
  $("history").hidden = false;
  $("history-rows").replaceChildren(historyRow(keys.kv));
  keys.history = { next: Number(keys.kv.mod_revision) - 1, key: keys.selected };
  $("history-end").textContent = "";
  await moreHistory();
}

async function moreHistory() {
  const h = keys.history;
  $("history-more").hidden = true;
  for (let i = 0; i < HISTORY_PAGE && h.next > 0; i++) {
    let r;
    try {
      r = await gw("/v3/kv/range", { key: bytesToB64(h.key), revision: h.next });
    } catch (err) {
      if (unauthorized(err)) return;
      if (err.compacted) {
        $("history-rows").append(el("tr", { class: "mark" }, el("td", { colspan: 3 }, "✂ Compacted: revision " + h.next + " and older are gone.")));
        $("history-end").textContent = "Compaction cut the history at revision " + h.next + ".";
      } else {
        $("history-end").textContent = explain(err, "read the history");
      }
      h.next = 0;
      return;
    }
    const kv = (r.kvs || [])[0];
    if (!kv) {
      h.next = 0;
      await earlierLives(h.key, Number(keys.kv.create_revision));
      return;
    }
    $("history-rows").append(historyRow(kv));
    h.next = Number(kv.mod_revision) - 1;
  }
  if (h.next > 0) $("history-more").hidden = false;
  else $("history-end").textContent = "Revision 1 reached.";
}

/** At most this many events of a key's earlier lives are shown (the newest ones). */
const EARLIER_EVENTS = 1000;

/**
 * The key's lives before the current one (created, changed, deleted, created again): every
 * retained event before `createdAt`, read with the REST API's watch from the oldest retained
 * revision (`timeout=0`: what history holds, then stop), shown newest first below the current
 * life, each delete marked. A 410 answer names the compaction point, which is marked and read on
 * from. The REST watch takes the key as text: a key that is not UTF-8 stops at its current life.
 */
async function earlierLives(key, createdAt) {
  const rows = $("history-rows");
  const text = utf8(key);
  if (text === null) {
    $("history-end").textContent = "The key did not exist at revision " + (createdAt - 1) + ". Earlier lives of a key that is not UTF-8 are not shown.";
    return;
  }
  const events = [];
  let rev = 1;
  let compactedAt = 0;
  for (let polls = 0; polls < 100; polls++) {
    const q = new URLSearchParams({ key: text, rev: String(rev), timeout: "0" });
    let r;
    try {
      r = await rest("/watch?" + q, [410]);
    } catch (err) {
      if (unauthorized(err)) return;
      $("history-end").textContent = explain(err, "read the key's earlier history");
      return;
    }
    if (r.status === 410) {
      const body = await r.json();
      compactedAt = Number(body.compact_revision);
      rev = compactedAt;
      continue;
    }
    if (r.status === 204) break;
    const batch = (await r.json()).events || [];
    if (!batch.length) break;
    let done = false;
    for (const ev of batch) {
      if (ev.mod_revision >= createdAt) {
        done = true;
        break;
      }
      events.push(ev);
      if (events.length > EARLIER_EVENTS) events.shift();
    }
    if (done) break;
    rev = batch[batch.length - 1].mod_revision + 1;
  }
  for (const ev of events.reverse()) {
    if (ev.type === "DELETE") {
      rows.append(el("tr", { class: "mark deleted" }, el("td", {}, ev.mod_revision), el("td", {}, "—"), el("td", {}, "🗑 Deleted")));
    } else {
      const value = ev.value !== undefined ? ev.value : "(bytes, base64) " + (ev.value_base64 || "");
      const preview = value.length > 200 ? value.slice(0, 200) + "…" : value;
      rows.append(el("tr", {}, el("td", {}, ev.mod_revision), el("td", {}, ev.version), el("td", { class: "mono" }, preview)));
    }
  }
  if (compactedAt > 0) {
    rows.append(el("tr", { class: "mark" }, el("td", { colspan: 3 }, "✂ Compacted: revisions before " + compactedAt + " are gone.")));
    $("history-end").textContent = "Compaction cut the history at revision " + compactedAt + ".";
  } else {
    $("history-end").textContent = events.length ? "Revision 1 reached: every life of the key is shown." : "The key was created at revision " + createdAt + " and has no earlier life.";
  }
  if (events.length >= EARLIER_EVENTS) $("history-end").textContent += " Only the newest " + EARLIER_EVENTS + " earlier events are shown.";
}

// ---------------------------------------------------------------------------------------------
// Live: a watch through the REST API's Server-Sent Events (read with fetch, which can send the
// token; EventSource cannot), with pause, clear and a changes-per-second sparkline.

const live = {
  abort: null,
  paused: false,
  held: [], // events that arrived while paused, shown on resume
  rev: 0, // the next revision the watch must deliver, so that a reconnect misses nothing
  perSecond: new Array(60).fill(0),
  current: 0,
};
const MAX_ROWS = 500;

function addEventRow(ev) {
  const tbody = $("events");
  const key = ev.key !== undefined ? ev.key : "(base64) " + ev.key_base64;
  let value = "";
  if (ev.type === "PUT") value = ev.value !== undefined ? ev.value : "(base64) " + (ev.value_base64 || "");
  tbody.prepend(
    el("tr", {}, el("td", {}, new Date().toLocaleTimeString()), el("td", { class: ev.type }, ev.type), el("td", { class: "mono" }, key), el("td", { class: "mono" }, value), el("td", {}, ev.mod_revision))
  );
  while (tbody.children.length > MAX_ROWS) tbody.lastChild.remove();
}

function stopWatch() {
  if (live.abort) live.abort.abort();
  live.abort = null;
  $("watch-stop").disabled = true;
  $("watch-pause").disabled = true;
  $("watch-start").disabled = false;
}

async function startWatch(ev) {
  ev.preventDefault();
  stopWatch();
  const key = $("watch-key").value;
  const prefix = $("watch-prefix").checked;
  if (!key) return;
  // Start after the current revision, so that every reconnect can resume exactly.
  try {
    const kb = enc.encode(key);
    const r = await gw("/v3/kv/range", { key: bytesToB64(kb), range_end: prefix ? bytesToB64(prefixEnd(kb)) : undefined, count_only: true });
    live.rev = Number((r.header && r.header.revision) || 0) + 1;
  } catch (err) {
    if (unauthorized(err)) return;
    $("watch-state").textContent = explain(err, "watch " + key);
    return;
  }
  const controller = new AbortController();
  live.abort = controller;
  $("watch-stop").disabled = false;
  $("watch-pause").disabled = false;
  $("watch-start").disabled = true;
  $("watch-state").textContent = "Watching " + key + (prefix ? " (prefix)" : "") + " from revision " + live.rev + ".";
  while (!controller.signal.aborted) {
    try {
      await streamOnce(key, prefix, controller.signal);
    } catch (err) {
      if (controller.signal.aborted) break;
      if (unauthorized(err)) return;
      $("watch-state").textContent = explain(err, "watch " + key) + " Retrying…";
      if (err instanceof ApiError && (err.denied || err.status === 410)) {
        stopWatch();
        return;
      }
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
}

/** One SSE response, until the server ends it (its timeout) or the user stops. */
async function streamOnce(key, prefix, signal) {
  const q = new URLSearchParams({ key, stream: "true", timeout: "600", rev: String(live.rev) });
  if (prefix) q.set("prefix", "true");
  const r = await fetch("/watch?" + q, { headers: restHeaders(), credentials: "omit", signal });
  if (!r.ok) {
    let msg = r.statusText;
    try {
      msg = (await r.json()).error || msg;
    } catch (_) {}
    throw new ApiError(r.status, msg);
  }
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let kind = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (!data) continue; // keep-alive comment
      const ev = JSON.parse(data);
      if (kind === "error") throw new ApiError(410, ev.error + " (compacted at " + ev.compact_revision + ")");
      live.rev = Number(ev.mod_revision) + 1;
      live.current++;
      if (live.paused) {
        live.held.push(ev);
        if (live.held.length > MAX_ROWS) live.held.shift();
        $("watch-state").textContent = "Paused: " + live.held.length + " events held.";
      } else addEventRow(ev);
    }
  }
}

function togglePause() {
  live.paused = !live.paused;
  $("watch-pause").setAttribute("aria-pressed", live.paused ? "true" : "false");
  $("watch-pause").textContent = live.paused ? "Resume" : "Pause";
  if (!live.paused) {
    for (const ev of live.held) addEventRow(ev);
    live.held = [];
    $("watch-state").textContent = "Watching again.";
  }
}

function tickSparkline() {
  live.perSecond.push(live.current);
  live.perSecond.shift();
  live.current = 0;
  if (state.view !== "live") return;
  const max = Math.max(1, ...live.perSecond);
  const pts = live.perSecond.map((v, i) => i * 4 + "," + (38 - (v / max) * 36).toFixed(1)).join(" ");
  $("spark").replaceChildren(svg("polyline", { points: pts }));
  $("spark-rate").textContent = String(live.perSecond[live.perSecond.length - 1]);
  $("spark-peak").textContent = String(Math.max(...live.perSecond));
}

// ---------------------------------------------------------------------------------------------
// Cluster: member list plus this member's status; other members' health from this member's
// peer connections (etcd_network_active_peers in /metrics).

function dl(target, pairs) {
  target.replaceChildren();
  for (const [k, v] of pairs) target.append(el("dt", {}, k), el("dd", {}, v));
}

/** How long the console waits for another member's status before it calls the member unreachable. */
const MEMBER_STATUS_MS = 2000;

/**
 * Another member's own view, from its client URLs in turn (the first that answers): its Status
 * (Raft term and index, database sizes, as `etcdctl endpoint status --cluster` reads them) and
 * its `/health`.
 */
async function memberStatus(urls) {
  let last = new Error("no client URL");
  for (const url of urls) {
    try {
      const [st, h] = await Promise.all([
        gwAt(url, "/v3/maintenance/status", {}, MEMBER_STATUS_MS),
        fetch(url.replace(/\/+$/, "") + "/health", { credentials: "omit", signal: AbortSignal.timeout(MEMBER_STATUS_MS) }).then((r) => r.json()),
      ]);
      return { st, health: h };
    } catch (err) {
      last = err;
    }
  }
  throw last;
}

async function refreshCluster() {
  let st;
  let members;
  try {
    [st, members] = await Promise.all([gw("/v3/maintenance/status", {}), gw("/v3/cluster/member/list", {})]);
  } catch (err) {
    if (unauthorized(err)) return;
    banner(explain(err, "read the cluster's status"), true);
    return;
  }
  const me = (st.header && st.header.member_id) || "0";
  let healthy = false;
  let healthReason = "";
  let active = {};
  try {
    const h = await rest("/health");
    const hj = await h.json();
    healthy = hj.health === "true";
    healthReason = hj.reason || "";
    active = parseActivePeers(await (await rest("/metrics")).text());
  } catch (err) {
    if (unauthorized(err)) return;
    healthReason = err.message;
  }
  dl($("status"), [
    ["Member", idHex(me)],
    ["Version", st.version || "?"],
    ["Leader", st.leader && st.leader !== "0" ? idHex(st.leader) : "none"],
    ["Raft term", st.raftTerm || st.raft_term || "0"],
    ["Raft index", st.raftIndex || st.raft_index || "0"],
    ["Applied index", st.raftAppliedIndex || st.raft_applied_index || "0"],
    ["Database size", fmtBytes(st.dbSize || st.db_size)],
    ["Database in use", fmtBytes(st.dbSizeInUse || st.db_size_in_use)],
    ["Health", healthy ? "healthy" : "unhealthy " + healthReason],
    ["Errors", (st.errors || []).join("; ") || "none"],
  ]);
  const list = members.members || [];
  // Every other started member is asked for its own status, all at once.
  const statuses = await Promise.all(
    list.map((m) => {
      const id = m.ID || m.id || "0";
      const urls = m.clientURLs || m.client_urls || [];
      if (id === me) return Promise.resolve({ st, health: { health: healthy ? "true" : "false", reason: healthReason } });
      if (!urls.length) return Promise.resolve({ err: new Error("not started") });
      return memberStatus(urls).catch((err) => ({ err }));
    })
  );
  const tbody = $("members");
  tbody.replaceChildren();
  list.forEach((m, i) => {
    const id = m.ID || m.id || "0";
    const learner = m.isLearner || m.is_learner;
    const own = statuses[i].st;
    const role = learner ? "learner" : id === st.leader ? "leader" : "follower";
    // Its own /health; "unreachable" when it does not answer this browser although the member
    // serving this page still holds a live peer connection to it (TLS or a firewall between).
    let health;
    let why = "";
    if (own) {
      health = statuses[i].health.health === "true" ? "healthy" : "unhealthy";
      why = statuses[i].health.reason || "";
    } else if (active[idHex(id)]) {
      health = "unreachable";
      why = "this member reaches it, this browser does not: " + statuses[i].err.message;
    } else {
      health = "unhealthy";
      why = statuses[i].err.message;
    }
    const name = m.name || "(not started)";
    const num = (v) => (own ? v || "0" : "?");
    tbody.append(
      el(
        "tr",
        { "data-member": idHex(id) },
        el("td", {}, name + (id === me ? " (this member)" : "")),
        el("td", { class: "mono" }, idHex(id)),
        el("td", { class: "role" }, role),
        el("td", { class: "health", title: why }, el("span", { class: "pill " + (health === "healthy" ? "good" : "bad") }, health)),
        el("td", { class: "term" }, num(own && (own.raftTerm || own.raft_term))),
        el("td", { class: "index" }, num(own && (own.raftIndex || own.raft_index))),
        el("td", { class: "dbsize" }, own ? fmtBytes(own.dbSize || own.db_size) : "?"),
        el("td", { class: "inuse" }, own ? fmtBytes(own.dbSizeInUse || own.db_size_in_use) : "?"),
        el("td", { class: "mono" }, (m.clientURLs || m.client_urls || []).join(" ")),
        el("td", { class: "mono" }, (m.peerURLs || m.peer_urls || []).join(" "))
      )
    );
  });
  await refreshAlarmsAndLeases();
}

/** `etcd_network_active_peers{Local="..",Remote="<hex id>"} 0|1` as {hexId: bool}. */
function parseActivePeers(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^etcd_network_active_peers\{[^}]*Remote="([0-9a-f]+)"[^}]*\}\s+(\S+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]) > 0;
  }
  return out;
}

async function refreshAlarmsAndLeases() {
  const notes = [];
  const alarms = $("alarms");
  try {
    const a = await gw("/v3/maintenance/alarm", { action: "GET" });
    alarms.replaceChildren();
    for (const x of a.alarms || []) alarms.append(el("li", { class: "bad" }, (x.alarm || "?") + " on member " + idHex(x.memberID || x.member_id)));
    if (!alarms.children.length) alarms.append(el("li", {}, "No alarms."));
  } catch (err) {
    if (unauthorized(err)) return;
    alarms.replaceChildren(el("li", { class: "muted" }, explain(err, "list alarms")));
  }
  const tbody = $("leases");
  try {
    const l = await gw("/v3/lease/leases", {});
    const ids = (l.leases || []).map((x) => x.ID || x.id);
    const shown = ids.slice(0, 50);
    const rows = await Promise.all(
      shown.map((id) =>
        gw("/v3/lease/timetolive", { ID: id, keys: true }).then(
          (t) => ({ id, t }),
          (err) => ({ id, err })
        )
      )
    );
    tbody.replaceChildren();
    for (const { id, t, err } of rows) {
      if (err) {
        tbody.append(el("tr", {}, el("td", { class: "mono" }, idHex(id)), el("td", { colspan: 3, class: "muted" }, explain(err, "read this lease"))));
        continue;
      }
      const keysText = (t.keys || []).map((k) => showKey(b64ToBytes(k))).join(", ") || "none";
      tbody.append(el("tr", {}, el("td", { class: "mono" }, idHex(id)), el("td", {}, (t.TTL || t.ttl || "0") + " s"), el("td", {}, (t.grantedTTL || t.granted_ttl || "0") + " s"), el("td", { class: "mono" }, keysText)));
    }
    if (!ids.length) tbody.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "No leases.")));
    if (ids.length > shown.length) notes.push("Showing 50 of " + ids.length + " leases.");
  } catch (err) {
    if (unauthorized(err)) return;
    tbody.replaceChildren(el("tr", {}, el("td", { colspan: 4, class: "muted" }, explain(err, "list leases"))));
  }
  $("cluster-note").textContent = notes.join(" ");
}

// ---------------------------------------------------------------------------------------------
// Metrics: Prometheus text parsed here; rates and interval percentiles from successive scrapes.

const SCRAPE_MS = 1000;
const HISTORY_POINTS = 300; // five minutes at one scrape a second
const metrics = { prev: null, series: {} };

/** Prometheus text as {name: [{labels: {..}, value}]} (no timestamps, no exemplars). */
function parseProm(text) {
  const out = {};
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) for (const p of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[p[1]] = p[2];
    (out[m[1]] = out[m[1]] || []).push({ labels, value: Number(m[4]) });
  }
  return out;
}

function scalar(parsed, name) {
  const s = parsed[name];
  return s && s.length ? s[0].value : null;
}

/** The q-quantile of the observations between two scrapes of one histogram, in seconds. */
function intervalQuantile(prev, cur, name, q) {
  const b = (p) => (p[name + "_bucket"] || []).filter((x) => !x.labels.To).map((x) => [Number(x.labels.le === "+Inf" ? Infinity : x.labels.le), x.value]);
  const now = b(cur);
  const then = new Map(b(prev));
  const total = (scalar(cur, name + "_count") || 0) - (scalar(prev, name + "_count") || 0);
  if (total <= 0) return null;
  let lower = 0;
  let lowerCount = 0;
  for (const [le, count] of now) {
    const c = count - (then.get(le) || 0);
    if (c >= q * total) {
      if (!isFinite(le)) return lower;
      // Linear inside the bucket, as Prometheus's histogram_quantile does.
      const within = c - lowerCount;
      return within > 0 ? lower + (le - lower) * ((q * total - lowerCount) / within) : le;
    }
    lower = le;
    lowerCount = c;
  }
  return lower;
}

function push(name, values) {
  const s = (metrics.series[name] = metrics.series[name] || []);
  s.push(values);
  if (s.length > HISTORY_POINTS) s.shift();
}

const CHARTS = [
  { id: "requests", title: "Requests per second", legend: ["gRPC and gateway", "REST API"], fmt: (v) => v.toFixed(1) },
  { id: "applied", title: "Writes applied per second", legend: ["Raft entries"], fmt: (v) => v.toFixed(1) },
  { id: "fsync", title: "WAL fsync duration", legend: ["p50", "p90", "p99"], fmt: (v) => (v * 1000).toFixed(2) + " ms" },
  { id: "commit", title: "Backend commit duration", legend: ["p50", "p90", "p99"], fmt: (v) => (v * 1000).toFixed(2) + " ms" },
  { id: "watchers", title: "Watchers", legend: ["live"], fmt: (v) => String(Math.round(v)) },
  { id: "dbsize", title: "Database size", legend: ["bytes"], fmt: fmtBytes },
];

async function scrapeMetrics() {
  let text;
  try {
    text = await (await rest("/metrics")).text();
  } catch (err) {
    if (!unauthorized(err)) banner(explain(err, "read /metrics"), true);
    return;
  }
  const cur = parseProm(text);
  const now = Date.now();
  const prev = metrics.prev;
  if (prev) {
    const dt = (now - prev.at) / 1000;
    const applied = ((scalar(cur, "etcd_server_proposals_applied_total") || 0) - (scalar(prev.data, "etcd_server_proposals_applied_total") || 0)) / dt;
    push("applied", [Math.max(0, applied)]);
    // Every series of a counter summed: calls of every method and code (etcd's names for gRPC,
    // where a gateway call counts as the method it maps to), requests of every REST route.
    const total = (p, name) => (p[name] || []).reduce((sum, x) => sum + x.value, 0);
    const rate = (name) => Math.max(0, (total(cur, name) - total(prev.data, name)) / dt);
    push("requests", [rate("grpc_server_started_total"), rate("mini_etcd_rest_requests_total")]);
    for (const [id, name] of [
      ["fsync", "etcd_disk_wal_fsync_duration_seconds"],
      ["commit", "etcd_disk_backend_commit_duration_seconds"],
    ]) {
      push(id, [0.5, 0.9, 0.99].map((q) => intervalQuantile(prev.data, cur, name, q)));
    }
  }
  push("watchers", [scalar(cur, "mini_etcd_watchers")]);
  push("dbsize", [scalar(cur, "etcd_mvcc_db_total_size_in_bytes")]);
  metrics.prev = { at: now, data: cur };
  drawCharts();
}

function drawCharts() {
  const host = $("charts");
  if (!host.children.length) {
    for (const c of CHARTS) {
      const legend = el("span", { class: "legend" }, ...c.legend.map((l, i) => el("span", { class: "s" + i }, " ■ " + l)));
      host.append(
        el(
          "figure",
          { class: "chart", id: "chart-" + c.id },
          el("figcaption", {}, c.title, " ", legend),
          el("div", {}),
          el("p", { class: "muted now", "aria-live": "off" }, "")
        )
      );
    }
  }
  for (const c of CHARTS) {
    const fig = $("chart-" + c.id);
    const data = metrics.series[c.id] || [];
    const W = 360;
    const H = 120;
    const all = data.flat().filter((v) => v !== null && isFinite(v));
    const max = Math.max(...all, 0) || 1;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", height: H, role: "img", "aria-label": c.title });
    s.append(svg("text", { x: 4, y: 12 }));
    s.lastChild.textContent = all.length ? "max " + c.fmt(max) : "no observations yet";
    for (let k = 0; k < c.legend.length; k++) {
      const pts = [];
      data.forEach((row, i) => {
        const v = row[k];
        if (v === null || v === undefined || !isFinite(v)) return;
        // A short history spreads over the width; a long one scrolls, five minutes wide.
        const span = Math.max(30, data.length) - 1;
        const x = W - (data.length - 1 - i) * (W / span);
        pts.push(x.toFixed(1) + "," + (H - 4 - (v / max) * (H - 20)).toFixed(1));
      });
      if (pts.length) s.append(svg("polyline", { points: pts.join(" "), class: "s" + k }));
    }
    fig.children[1].replaceChildren(s);
    const last = data[data.length - 1] || [];
    fig.querySelector(".now").textContent = "Now: " + c.legend.map((l, k) => l + " " + (last[k] === null || last[k] === undefined ? "–" : c.fmt(last[k]))).join(", ");
  }
}

// ---------------------------------------------------------------------------------------------
// Wiring.

function tabKeys(ev) {
  // Arrow keys move between tabs, as the ARIA tabs pattern has it.
  const i = VIEWS.indexOf(state.view);
  let next = null;
  if (ev.key === "ArrowRight") next = VIEWS[(i + 1) % VIEWS.length];
  if (ev.key === "ArrowLeft") next = VIEWS[(i + VIEWS.length - 1) % VIEWS.length];
  if (ev.key === "Home") next = VIEWS[0];
  if (ev.key === "End") next = VIEWS[VIEWS.length - 1];
  if (next) {
    ev.preventDefault();
    selectView(next);
    $("tab-" + next).focus();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const v of VIEWS) $("tab-" + v).addEventListener("click", () => selectView(v));
  document.querySelector("[role=tablist]").addEventListener("keydown", tabKeys);
  $("theme").addEventListener("click", () => {
    const cur = localStorage.getItem("mini-etcd-theme") || "auto";
    const next = THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length];
    localStorage.setItem("mini-etcd-theme", next);
    applyTheme(next);
  });
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => {
    setToken(null, null);
    keys.loaded = false;
    showLogin("Logged out.");
  });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    browse(enc.encode($("search-prefix").value));
  });
  $("tree-more").addEventListener("click", morePage);
  $("value-format").addEventListener("change", showValue);
  $("key-edit").addEventListener("click", editKey);
  $("edit-cancel").addEventListener("click", () => ($("edit-form").hidden = true));
  $("edit-form").addEventListener("submit", saveEdit);
  $("key-delete").addEventListener("click", deleteKey);
  $("key-history").addEventListener("click", showHistory);
  $("history-more").addEventListener("click", moreHistory);
  $("new-form").addEventListener("submit", newKey);
  $("watch-form").addEventListener("submit", startWatch);
  $("watch-stop").addEventListener("click", () => {
    stopWatch();
    $("watch-state").textContent = "Stopped.";
  });
  $("watch-pause").addEventListener("click", togglePause);
  $("watch-clear").addEventListener("click", () => {
    $("events").replaceChildren();
    live.held = [];
  });
  setInterval(tickSparkline, 1000);
  start();
});
