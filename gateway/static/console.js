// Switchboard operator console: every conversation across channels, live, with takeover.
// Plain JS, no build step, no external resources.
//
// - The API key is kept in this tab's sessionStorage only (never in a URL, never in
//   localStorage) and sent as `Authorization: Bearer …` on every request.
// - The live feed is `GET /v1/events?tokens=true` read with fetch() + a ReadableStream
//   (EventSource cannot send headers). Frames are parsed here; on reconnect the last
//   `seq` seen goes back as `Last-Event-ID`, so the gateway replays what was missed
//   (a restart included), then sends `stream.caughtUp`.
// - Every update is an idempotent upsert keyed by sessionId / messageId, so a replayed or
//   raced event never shows twice.
(() => {
  "use strict";

  const KEY_STORE = "switchboard.console.key";
  const STATE_STORE = "switchboard.console.state";
  const PAGE_SIZE = 100;
  const PREVIEW_FETCHES = 25; // sessions whose last message is fetched for the list preview
  const PREVIEW_CONCURRENCY = 3;
  const MAX_BACKOFF_MS = 5_000;
  const NARROW = window.matchMedia("(max-width: 760px)");

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : String(v));
    }
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  };
  const enc = encodeURIComponent;
  const backoff = (attempt) => Math.min(MAX_BACKOFF_MS, 250 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
  const clip = (s, n = 120) => {
    const one = String(s ?? "").replace(/\s+/g, " ").trim();
    return one.length > n ? `${one.slice(0, n - 1)}…` : one;
  };

  // ------------------------------------------------------------------ channels

  const SVG_NS = "http://www.w3.org/2000/svg";
  const CHANNELS = {
    whatsapp: {
      name: "WhatsApp", short: "WA",
      path: "M20 11.5a8.5 8.5 0 0 1-12.6 7.4L3.5 20l1.1-3.8A8.5 8.5 0 1 1 20 11.5z M9 8.5c0 3.5 2.5 6.5 6 6.5",
    },
    sms: { name: "SMS", short: "SMS", path: "M4 5h16v11H9l-5 4z M8.5 10.5h.01 M12 10.5h.01 M15.5 10.5h.01" },
    phone: {
      name: "Phone call", short: "Call",
      path: "M5 4h3l2 5-2.5 1.5a11 11 0 0 0 6 6L15 14l5 2v3a2 2 0 0 1-2 2A16 16 0 0 1 3 6a2 2 0 0 1 2-2z",
    },
    chat: { name: "Web chat", short: "Chat", path: "M3 5h12v8H7l-4 3z M9 16v1h8l4 3V9h-3" },
    api: {
      name: "HTTP API", short: "API",
      path: "M8 4H7a2 2 0 0 0-2 2v4l-2 2 2 2v4a2 2 0 0 0 2 2h1 M16 4h1a2 2 0 0 1 2 2v4l2 2-2 2v4a2 2 0 0 1-2 2h-1",
    },
  };

  function channelBadge(channel, inline = false) {
    const info = CHANNELS[channel] || { name: channel || "unknown", short: clip(channel || "?", 5), path: "M4 12h16" };
    const wrap = el("span", {
      class: inline ? "channel inline" : "channel", "data-channel": channel || "", "data-testid": "channel",
      title: info.name,
    });
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", info.path);
    svg.append(path);
    wrap.append(svg, el("span", { class: "label", "aria-hidden": "true" }, inline ? info.name : info.short));
    if (!inline) wrap.append(el("span", { class: "sr-only" }, `${info.name}: `));
    return wrap;
  }

  // ------------------------------------------------------------------ time

  function fmtTime(ms) {
    if (!ms) return "";
    const d = new Date(ms);
    const now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    return d.toLocaleDateString([], { month: "short", day: "numeric" });
  }
  const isoTime = (ms) => (ms ? new Date(ms).toISOString() : "");

  // ------------------------------------------------------------------ state

  const state = {
    key: null,
    signedIn: false,
    sessions: new Map(), // sessionId -> entry (see entryFrom)
    selected: null,
    query: "",
    searchHits: new Set(),
    filter: "all",
    nextCursor: null,
    fetching: new Set(), // sessionIds whose summary is being fetched
    previewTried: new Set(),
    tick: 0, // bumped by every live change; a fetch started before a change does not undo it
    renderPending: false,
    saveTimer: null,
  };

  const feed = {
    ctrl: null,
    gen: 0,
    attempt: 0,
    timer: null,
    lastSeq: null, // resume point, sent back as Last-Event-ID
    seen: new Set(), // recent seqs: never apply one twice
    seenOrder: [],
    resuming: false,
    connected: false,
  };

  // What a reload of this tab keeps (never the key's copy: that is KEY_STORE): the resume
  // point of the feed, unread messages and attention requests.
  function flushLocal() {
    clearTimeout(state.saveTimer);
    state.saveTimer = null;
    if (!state.signedIn) return;
    const unread = {};
    const attention = {};
    for (const s of state.sessions.values()) {
      if (s.unread.size) unread[s.sessionId] = [...s.unread].slice(-200);
      if (s.attention) attention[s.sessionId] = s.attention;
    }
    try {
      sessionStorage.setItem(STATE_STORE, JSON.stringify({ lastSeq: feed.lastSeq, unread, attention }));
    } catch { /* storage full or disabled: the console still works */ }
  }

  function saveLocal() {
    if (state.saveTimer === null) state.saveTimer = setTimeout(flushLocal, 150);
  }

  function loadLocal() {
    try {
      return JSON.parse(sessionStorage.getItem(STATE_STORE) || "{}") || {};
    } catch {
      return {};
    }
  }

  // ------------------------------------------------------------------ API

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const key = state.key;
    const headers = { authorization: `Bearer ${key}`, accept: "application/json" };
    if (body !== undefined) headers["content-type"] = "application/json";
    let res;
    try {
      res = await fetch(path, {
        method, headers, cache: "no-store", credentials: "omit",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (err) {
      throw new ApiError(0, "network", `cannot reach the gateway (${err.message})`);
    }
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (!res.ok) {
      const e = (data && data.error) || {};
      const err = new ApiError(res.status, e.code || `http_${res.status}`, e.message || `HTTP ${res.status}`);
      if (res.status === 401 && state.signedIn && key === state.key) authLost(err);
      throw err;
    }
    return data;
  }

  // ------------------------------------------------------------------ sessions

  const contactId = (c) => (c == null ? null : typeof c === "string" ? c : c.id ?? null);
  // A session without a contact (a web chat opened without a userId) is named by its
  // channel and the end of its id; the full id is shown once, in the conversation header.
  const displayName = (s) => (s.contact && (s.contact.name || s.contact.id))
    || `${(CHANNELS[s.channel] || { name: s.channel || "Session" }).name} …${String(s.sessionId).slice(-8)}`;

  function entryFrom(rec) {
    return {
      sessionId: rec.sessionId,
      agent: rec.agent || rec.agentId || "",
      channel: rec.channel || "",
      contact: rec.contact || null,
      direction: rec.direction || null,
      status: rec.status || "active",
      paused: Boolean(rec.paused),
      startedAt: rec.startedAt || 0,
      lastMessageAt: rec.lastMessageAt || rec.startedAt || 0,
      reason: rec.reason || null,
      preview: null, // {text, source}
      unread: new Set(), // messageIds of user messages not seen yet
      attention: null, // the reason, while a human is wanted
      touched: 0,
      li: null,
      dirty: true,
    };
  }

  function previewFrom(messages) {
    for (let i = messages.length - 1; i >= 0; i--) {
      const m = messages[i];
      if ((m.role === "user" || m.role === "assistant") && (m.text || m.type)) {
        return { text: m.text || `[${m.type}]`, source: m.source || (m.role === "user" ? "user" : "agent") };
      }
    }
    return null;
  }

  function attentionOf(rec) {
    const a = rec.attention ?? rec.attentionReason ?? rec.attentionRequested;
    if (!a) return null;
    if (typeof a === "string") return a;
    if (typeof a === "object" && a.reason) return String(a.reason);
    return "attention requested";
  }

  // Server data for a session; `since` = state.tick when the request was sent.
  function mergeServer(rec, since, messages) {
    if (!rec || !rec.sessionId) return null;
    let s = state.sessions.get(rec.sessionId);
    if (!s) {
      s = entryFrom(rec);
      state.sessions.set(s.sessionId, s);
    } else {
      s.agent = rec.agent || rec.agentId || s.agent;
      s.channel = rec.channel || s.channel;
      s.contact = rec.contact || s.contact;
      s.direction = rec.direction || s.direction;
      s.startedAt = rec.startedAt || s.startedAt;
      if (s.touched <= since) {
        s.status = rec.status || s.status;
        s.paused = Boolean(rec.paused);
        s.reason = rec.reason || s.reason;
        s.lastMessageAt = Math.max(s.lastMessageAt || 0, rec.lastMessageAt || 0);
      }
    }
    if (s.touched <= since) {
      const last = rec.lastMessage || rec.preview;
      if (last && typeof last === "object" && typeof last.text === "string") {
        s.preview = { text: last.text, source: last.source || (last.role === "user" ? "user" : "agent") };
      } else if (typeof last === "string") {
        s.preview = { text: last, source: "" };
      } else if (rec.lastMessage === null) {
        state.previewTried.add(s.sessionId); // no message yet: nothing to fetch
      } else if (messages) {
        s.preview = previewFrom(messages) || s.preview;
      }
      const attention = attentionOf(rec);
      if (attention) s.attention = attention;
    }
    s.dirty = true;
    return s;
  }

  function touch(s) {
    s.touched = ++state.tick;
    s.dirty = true;
  }

  function ensureSession(d, { fetch = true } = {}) {
    let s = state.sessions.get(d.sessionId);
    if (!s) {
      s = entryFrom({
        sessionId: d.sessionId, agent: d.agent, channel: d.channel, contact: d.contact || null,
        startedAt: d.ts, lastMessageAt: d.ts,
      });
      state.sessions.set(s.sessionId, s);
      if (fetch) fetchSummary(s.sessionId); // started before this console loaded: get the rest
    }
    return s;
  }

  async function fetchSummary(sessionId) {
    if (state.fetching.has(sessionId)) return;
    state.fetching.add(sessionId);
    const since = state.tick;
    try {
      const rec = await api(`/v1/sessions/${enc(sessionId)}`);
      mergeServer(rec, since, rec.messages || []);
      scheduleRender();
    } catch {
      /* the stub stays; its next event tries nothing more */
    } finally {
      state.fetching.delete(sessionId);
    }
  }

  async function loadSessions({ reset = false, more = false } = {}) {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (more && state.nextCursor) q.set("cursor", state.nextCursor);
    const since = state.tick;
    const data = await api(`/v1/sessions?${q}`);
    if (reset) {
      state.sessions.clear();
      sessionList.replaceChildren();
    }
    for (const rec of data.sessions || []) mergeServer(rec, since);
    if (!more || data.nextCursor !== undefined) state.nextCursor = data.nextCursor || null;
    scheduleRender();
    fillPreviews();
  }

  // Rows from older gateways have no `lastMessage`: fetch it for the first sessions shown.
  async function fillPreviews() {
    if (!state.signedIn) return;
    const todo = visibleSessions()
      .filter((s) => !s.preview && !state.previewTried.has(s.sessionId))
      .slice(0, PREVIEW_FETCHES);
    for (const s of todo) state.previewTried.add(s.sessionId);
    const worker = async () => {
      while (todo.length && state.signedIn) await fetchSummary(todo.shift().sessionId);
    };
    await Promise.all(Array.from({ length: PREVIEW_CONCURRENCY }, worker));
  }

  async function searchContact(q) {
    state.searchHits = new Set();
    listError.textContent = "";
    if (!q) {
      scheduleRender();
      return;
    }
    const since = state.tick;
    const results = await Promise.allSettled([
      api(`/v1/contacts/${enc(q)}/sessions`),
      api(`/v1/sessions?${new URLSearchParams({ contact: q, limit: String(PAGE_SIZE) })}`),
    ]);
    if (state.query !== q) return;
    let ok = false;
    for (const r of results) {
      if (r.status !== "fulfilled") continue;
      ok = true;
      for (const rec of r.value.sessions || []) {
        const s = mergeServer(rec, since);
        if (s) state.searchHits.add(s.sessionId);
      }
    }
    if (!ok) {
      const err = results[0].reason;
      if (err && err.status !== 404) listError.textContent = `Search failed: ${err.message}`;
    }
    scheduleRender();
    fillPreviews();
  }

  // ------------------------------------------------------------------ list rendering

  const app = $("app");
  const sessionList = $("session-list");
  const listEmpty = $("list-empty");
  const listError = $("list-error");
  const loadMore = $("load-more");
  const sessionCount = $("session-count");
  const searchInput = $("search");
  const filterSelect = $("filter");
  const announcer = $("announcer");

  function announce(text) {
    announcer.textContent = "";
    setTimeout(() => { announcer.textContent = text; }, 30);
  }

  const norm = (v) => String(v ?? "").toLowerCase().replace(/^\+/, "");

  function matchesQuery(s) {
    const q = norm(state.query.trim());
    if (!q) return true;
    if (state.searchHits.has(s.sessionId)) return true;
    const c = s.contact || {};
    return [c.id, c.name, s.sessionId].some((v) => norm(v).includes(q));
  }

  function matchesFilter(s) {
    switch (state.filter) {
      case "active": return s.status !== "ended";
      case "paused": return s.paused && s.status !== "ended";
      case "attention": return Boolean(s.attention);
      case "ended": return s.status === "ended";
      default: return true;
    }
  }

  // A web chat that was opened but never written in (every demo tab opens one) is not a
  // conversation yet: it joins the list with its first message. A search still finds it.
  function emptyChat(s) {
    return s.channel === "chat" && s.status !== "ended" && !s.preview && !s.attention
      && state.previewTried.has(s.sessionId) && state.selected !== s.sessionId
      && !state.query.trim();
  }

  function visibleSessions() {
    return [...state.sessions.values()]
      .filter((s) => matchesQuery(s) && matchesFilter(s) && !emptyChat(s))
      .sort((a, b) => {
        if (Boolean(a.attention) !== Boolean(b.attention)) return a.attention ? -1 : 1;
        return (b.lastMessageAt || b.startedAt || 0) - (a.lastMessageAt || a.startedAt || 0)
          || (a.sessionId < b.sessionId ? 1 : -1);
      });
  }

  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    setTimeout(() => {
      state.renderPending = false;
      renderList();
    }, 0);
  }

  function renderItem(s) {
    if (!s.li) {
      s.li = el("li", { "data-testid": "session-item" });
      const button = el("button", { type: "button", class: "session", "data-testid": "session-button" });
      button.addEventListener("click", () => openSession(s.sessionId, { fromList: true }));
      s.li.append(button);
    }
    const li = s.li;
    const unread = s.unread.size;
    Object.assign(li.dataset, {
      sessionId: s.sessionId, channel: s.channel, status: s.status,
      paused: String(s.paused), attention: String(Boolean(s.attention)), unread: String(unread),
    });
    const b = li.firstChild;
    b.dataset.status = s.status;
    b.dataset.attention = String(Boolean(s.attention));
    b.dataset.unread = String(unread > 0);
    b.setAttribute("aria-current", String(state.selected === s.sessionId));

    const name = el("span", { class: "name", "data-testid": "session-contact" }, displayName(s));
    const cid = contactId(s.contact);
    if (cid && s.contact && s.contact.name && s.contact.name !== cid) {
      name.append(" ", el("span", { class: "muted addr" }, cid));
    }
    const time = el("span", { class: "time" });
    time.append(el("time", { datetime: isoTime(s.lastMessageAt) }, fmtTime(s.lastMessageAt)));

    const preview = el("span", { class: "preview", "data-testid": "session-preview" });
    if (s.preview) {
      const who = s.preview.source === "human" ? "You (human): " : s.preview.source === "agent" ? "AI: " : "";
      preview.textContent = who + clip(s.preview.text, 140);
    } else {
      // An opened chat nobody has written in yet: say so rather than a bare "…".
      preview.textContent = s.status === "ended" ? "Ended" : "No messages yet";
    }

    const badges = el("span", { class: "badges" });
    if (s.status === "ended") badges.append(el("span", { class: "badge ended", "data-testid": "ended-badge" }, "Ended"));
    else if (s.paused) badges.append(el("span", { class: "badge paused", "data-testid": "paused-badge" }, "Paused"));
    if (unread) {
      badges.append(el("span", {
        class: "unread", "data-testid": "unread-count", "aria-label": `${unread} unread`,
        title: `${unread} new message${unread === 1 ? "" : "s"} from the contact`,
      }, unread > 99 ? "99+" : String(unread)));
    }

    const parts = [channelBadge(s.channel), name, time, preview, badges];
    if (s.attention) {
      parts.push(el("span", { class: "reason", "data-testid": "attention-reason" }, `⚠ Needs a human: ${s.attention}`));
    }
    parts[0].classList.add("icon");
    b.replaceChildren(...parts);
    s.dirty = false;
  }

  function renderList() {
    if (!state.signedIn) return;
    const rows = visibleSessions();
    for (const s of rows) if (s.dirty || !s.li) renderItem(s);
    const wanted = rows.map((s) => s.li);
    const current = [...sessionList.children];
    const same = wanted.length === current.length && wanted.every((li, i) => li === current[i]);
    if (!same) {
      const focused = document.activeElement;
      sessionList.replaceChildren(...wanted);
      if (focused && focused !== document.activeElement && document.contains(focused)) focused.focus();
    }
    const total = state.sessions.size;
    listEmpty.hidden = rows.length > 0;
    listEmpty.textContent = total ? "No conversation matches." : "No conversations yet.";
    sessionCount.textContent = rows.length === total ? `${total}` : `${rows.length} of ${total}`;
    loadMore.hidden = !state.nextCursor || Boolean(state.query);
    let unread = 0;
    for (const s of state.sessions.values()) unread += s.unread.size;
    document.title = `${unread ? `(${unread}) ` : ""}Switchboard — operator console`;
  }

  // Arrow keys move between conversations; Enter/Space open (native buttons).
  sessionList.addEventListener("keydown", (e) => {
    const buttons = [...sessionList.querySelectorAll("button.session")];
    const i = buttons.indexOf(document.activeElement);
    if (i < 0) return;
    let next = null;
    if (e.key === "ArrowDown") next = buttons[Math.min(buttons.length - 1, i + 1)];
    else if (e.key === "ArrowUp") next = buttons[Math.max(0, i - 1)];
    else if (e.key === "Home") next = buttons[0];
    else if (e.key === "End") next = buttons[buttons.length - 1];
    if (next) {
      e.preventDefault();
      next.focus();
    }
  });

  // ------------------------------------------------------------------ conversation view

  const transcript = $("transcript");
  const placeholder = $("placeholder");
  const convTitle = $("conversation-title");
  const convMeta = $("conversation-meta");
  const convPaused = $("conversation-paused");
  const convError = $("conversation-error");
  const attentionBanner = $("attention-banner");
  const takeOver = $("take-over");
  const handBack = $("hand-back");
  const hangUp = $("hang-up");
  const composer = $("composer");
  const composerText = $("composer-text");
  const composerError = $("composer-error");
  const sendButton = $("send");
  const backButton = $("back");

  const STATUS_RANK = { queued: 0, sent: 1, delivered: 2, read: 3, failed: 9 };
  const TICKS = { queued: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "! failed" };

  let view = null; // {sessionId, items: Map(messageId -> {li, m}), loading, queue}

  const isOpen = (sessionId) =>
    state.selected === sessionId && (!NARROW.matches || app.dataset.view === "conversation")
    && document.visibilityState !== "hidden";

  function nearBottom() {
    return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 80;
  }

  function scrollDown(force) {
    if (force || nearBottom()) transcript.scrollTop = transcript.scrollHeight;
    pinned = nearBottom();
  }

  // A transcript read at its end stays at its end when its box changes size (a phone
  // rotating, the composer growing, the window narrowing).
  let pinned = true;
  transcript.addEventListener("scroll", () => { pinned = nearBottom(); }, { passive: true });
  if (window.ResizeObserver) {
    new ResizeObserver(() => { if (pinned) transcript.scrollTop = transcript.scrollHeight; }).observe(transcript);
  }

  function whoLabel(m, s) {
    if (m.role === "user") return (s && s.contact && (s.contact.name || s.contact.id)) || "Contact";
    // A coexistence echo: the business wrote from the WhatsApp Business app on the same number.
    if (m.source === "human" && m.author === "whatsapp_business_app") return "Human · WhatsApp Business app";
    if (m.source === "human") return m.author ? `Human · ${m.author}` : "Human";
    return `AI${s && s.agent ? ` · ${s.agent}` : ""}`;
  }

  function renderTicks(item) {
    const foot = item.li.querySelector(".foot");
    let ticks = foot.querySelector(".ticks");
    const status = item.m.status;
    if (!status || item.m.role !== "assistant") {
      if (ticks) ticks.remove();
      return;
    }
    if (!ticks) {
      ticks = el("span", { class: "ticks", "data-testid": "ticks", role: "img" });
      foot.append(ticks);
    }
    ticks.dataset.status = status;
    ticks.textContent = TICKS[status] || status;
    ticks.setAttribute("aria-label", status);
    ticks.title = status;
    item.li.dataset.status = status;
  }

  function upsertMessage(m, { streaming = false } = {}) {
    if (!view || !m.messageId) return null;
    const s = state.sessions.get(view.sessionId);
    let item = view.items.get(m.messageId);
    if (!item) {
      const li = el("li", {
        class: "msg", "data-testid": "message", "data-message-id": m.messageId,
        "data-role": m.role, "data-source": m.source || (m.role === "user" ? "user" : "agent"),
      });
      li.append(
        el("span", { class: "who", "data-testid": "message-who" }, whoLabel(m, s)),
        el("span", { class: "text", "data-testid": "message-text" }),
        el("span", { class: "foot" }, ""),
      );
      li.lastChild.append(el("time", { datetime: isoTime(m.createdAt) }, fmtTime(m.createdAt || Date.now())));
      const stick = nearBottom();
      transcript.append(li);
      item = { li, m: { ...m, status: null } };
      view.items.set(m.messageId, item);
      scrollDown(stick);
    }
    const old = item.m;
    const text = m.text != null && m.text !== "" ? m.text : m.type && m.type !== "text" ? `[${m.type}]` : old.text || "";
    item.m = { ...old, ...m, text, status: old.status };
    if (m.source && m.source !== item.li.dataset.source) {
      item.li.dataset.source = m.source;
      item.li.querySelector(".who").textContent = whoLabel(item.m, s);
    } else if (m.author) {
      item.li.querySelector(".who").textContent = whoLabel(item.m, s);
    }
    if (!streaming || item.li.dataset.state !== "streaming") {
      item.li.querySelector(".text").textContent = text;
    }
    item.li.dataset.state = streaming ? "streaming" : "done";
    if (m.status) setStatus(item, m.status);
    if (!streaming) settleBusy();
    return item;
  }

  function setStatus(item, status) {
    const cur = item.m.status;
    if (cur && (STATUS_RANK[status] ?? 0) < (STATUS_RANK[cur] ?? 0)) return; // never backwards
    item.m.status = status;
    renderTicks(item);
  }

  function token(messageId, delta) {
    if (!view) return;
    let item = view.items.get(messageId);
    if (!item) {
      item = upsertMessage({ messageId, role: "assistant", source: "agent", text: "", createdAt: Date.now() }, { streaming: true });
      item.li.dataset.state = "streaming";
    }
    if (item.li.dataset.state !== "streaming") return; // already final
    const stick = nearBottom();
    item.li.querySelector(".text").textContent += delta;
    item.m.text = item.li.querySelector(".text").textContent;
    transcript.setAttribute("aria-busy", "true"); // announce the reply once, when it is complete
    scrollDown(stick);
  }

  // Replies that will never complete (cancelled by a takeover, an error, an interruption).
  function cutStreaming(exceptId) {
    if (!view) return;
    for (const [id, item] of view.items) {
      if (id !== exceptId && item.li.dataset.state === "streaming") {
        item.li.dataset.state = "interrupted";
        item.li.querySelector(".foot").prepend(el("span", { class: "cut" }, "(interrupted)"));
      }
    }
    settleBusy();
  }

  function settleBusy() {
    if (!view) return;
    const busy = [...view.items.values()].some((i) => i.li.dataset.state === "streaming");
    if (!busy) transcript.removeAttribute("aria-busy");
  }

  function notice(text, kind = "") {
    if (!view) return;
    const stick = nearBottom();
    transcript.append(el("li", { class: `msg notice ${kind}`.trim(), "data-testid": "notice" }, text));
    scrollDown(stick);
  }

  function renderHeader() {
    const s = state.selected && state.sessions.get(state.selected);
    if (!s) {
      convTitle.textContent = "No conversation selected";
      convMeta.replaceChildren();
      for (const n of [convPaused, takeOver, handBack, hangUp, composer, attentionBanner]) n.hidden = true;
      placeholder.hidden = false;
      return;
    }
    placeholder.hidden = true;
    convTitle.textContent = displayName(s);
    const meta = [channelBadge(s.channel, true)];
    const cid = contactId(s.contact);
    if (cid && cid !== displayName(s)) meta.push(el("span", { "data-testid": "conversation-contact" }, cid));
    if (s.agent) meta.push(el("span", {}, `agent ${s.agent}`));
    meta.push(el("code", { "data-testid": "conversation-session" }, s.sessionId));
    meta.push(el("span", { "data-testid": "conversation-status" },
      s.status === "ended" ? `ended${s.reason ? ` (${s.reason})` : ""}` : "active"));
    convMeta.replaceChildren(...meta);

    const ended = s.status === "ended";
    convPaused.hidden = !s.paused || ended;
    takeOver.hidden = ended || s.paused;
    handBack.hidden = ended || !s.paused;
    hangUp.hidden = ended || s.channel !== "phone";
    attentionBanner.hidden = !s.attention;
    attentionBanner.textContent = s.attention ? `⚠ The agent asked for a human: ${s.attention}` : "";
    composer.hidden = false;
    composerText.disabled = ended;
    sendButton.disabled = ended;
    composerText.placeholder = ended
      ? "This conversation has ended."
      : s.paused ? "You have the conversation: the AI stays quiet until you hand it back."
        : "Sent as a human; take over to keep the AI from answering.";
  }

  async function openSession(sessionId, { fromList = false, reload = false } = {}) {
    const s = state.sessions.get(sessionId);
    if (!s) return;
    const previous = state.selected;
    state.selected = sessionId;
    app.dataset.view = "conversation";
    if (previous && previous !== sessionId) {
      const p = state.sessions.get(previous);
      if (p) p.dirty = true;
    }
    s.unread.clear();
    s.dirty = true;
    saveLocal();
    scheduleRender();
    if (!reload) {
      convError.textContent = "";
      composerError.textContent = "";
      if (previous !== sessionId) composerText.value = "";
    }
    renderHeader();

    const v = { sessionId, items: new Map(), loading: true, queue: [] };
    view = v;
    transcript.replaceChildren();
    transcript.setAttribute("aria-busy", "true");
    if (fromList && NARROW.matches) convTitle.focus();

    const since = state.tick;
    let rec;
    try {
      rec = await api(`/v1/sessions/${enc(sessionId)}`);
    } catch (err) {
      if (view !== v) return;
      v.loading = false;
      transcript.removeAttribute("aria-busy");
      convError.textContent = `Could not load the conversation: ${err.message}`;
      return;
    }
    if (view !== v) return;
    mergeServer(rec, since, rec.messages || []);
    for (const m of rec.messages || []) {
      if ((m.role !== "user" && m.role !== "assistant") || (!m.text && (!m.type || m.type === "text"))) continue;
      upsertMessage(m);
    }
    if (!v.items.size) notice("No messages yet.");
    v.loading = false;
    for (const [type, d] of v.queue) applyToView(type, d);
    v.queue = [];
    settleBusy();
    transcript.removeAttribute("aria-busy");
    renderHeader();
    scheduleRender();
    scrollDown(true);
  }

  function closeConversation() {
    app.dataset.view = "list";
    const s = state.selected && state.sessions.get(state.selected);
    if (s && s.li) s.li.firstChild.focus();
  }

  backButton.addEventListener("click", closeConversation);
  $("conversation").addEventListener("keydown", (e) => {
    if (e.key === "Escape" && NARROW.matches && app.dataset.view === "conversation") {
      e.preventDefault();
      closeConversation();
    }
  });
  convTitle.setAttribute("tabindex", "-1");

  // A feed event for the session on screen.
  function applyToView(type, d) {
    if (!view || view.sessionId !== d.sessionId) return;
    if (view.loading) {
      view.queue.push([type, d]);
      return;
    }
    switch (type) {
      case "user.message":
        upsertMessage({ messageId: d.messageId, role: "user", source: "user", text: d.text, type: d.type, createdAt: d.ts });
        break;
      case "bot.token":
        token(d.messageId, d.text || "");
        break;
      case "bot.message":
        cutStreaming(d.messageId);
        upsertMessage({
          messageId: d.messageId, role: "assistant", source: d.source || "agent", author: d.author,
          text: d.text, createdAt: d.ts,
        });
        break;
      case "message.status": {
        const item = view.items.get(d.messageId);
        if (!item || !d.status) break;
        if (typeof d.parts === "number" && d.parts > 1 && d.status !== "failed") {
          // A long reply sent in parts: its status is that of its least advanced part.
          item.parts = item.parts || {};
          item.parts[d.part ?? 0] = d.status;
          const seen = Object.values(item.parts);
          if (seen.length < d.parts) break;
          setStatus(item, seen.reduce((a, b) => ((STATUS_RANK[a] ?? 0) <= (STATUS_RANK[b] ?? 0) ? a : b)));
        } else {
          setStatus(item, d.status);
        }
        break;
      }
      case "session.paused":
        cutStreaming();
        notice("A human took over: the AI will not answer until the conversation is handed back.");
        break;
      case "session.resumed":
        notice("Handed back to the AI.");
        break;
      case "session.attentionRequested":
        notice(`The agent asked for a human: ${d.reason || "no reason given"}`, "attention-note");
        break;
      case "session.error":
        cutStreaming();
        notice(`Agent error: ${d.code || "error"}${d.message ? ` — ${d.message}` : ""}`, "error-note");
        break;
      case "session.idleWarning":
        notice(`Idle: this conversation ends in ${d.remainingSeconds ?? "?"} s without a new message.`);
        break;
      case "call.interrupted": {
        // The caller talked over the agent: the transcript keeps only what was said.
        cutStreaming(d.messageId);
        const item = d.messageId ? view.items.get(d.messageId) : null;
        if (item) {
          upsertMessage({ messageId: d.messageId, role: "assistant", source: "agent", text: d.spoken || "…" });
          item.li.dataset.interrupted = "true";
        }
        notice(d.reason === "disconnected" ? "The call dropped mid-reply." : "The caller interrupted the agent.");
        break;
      }
      case "call.dtmf":
        notice(`The caller pressed ${d.digit}.`);
        break;
      case "call.forwarded":
        notice(`Call forwarded to ${d.to}.`);
        break;
      case "session.ended":
        cutStreaming();
        notice(`Conversation ended${d.reason ? ` (${d.reason})` : ""}.`);
        break;
      default:
        break;
    }
    if (type !== "bot.token" && type !== "message.status") renderHeader();
  }

  // ------------------------------------------------------------------ takeover and composer

  async function setPaused(paused) {
    const sessionId = state.selected;
    const s = sessionId && state.sessions.get(sessionId);
    if (!s) return;
    const button = paused ? takeOver : handBack;
    button.disabled = true;
    convError.textContent = "";
    try {
      const r = await api(`/v1/sessions/${enc(sessionId)}/${paused ? "pause" : "resume"}`, { method: "POST", body: {} });
      s.paused = r && typeof r.paused === "boolean" ? r.paused : paused;
      if (!s.paused) s.attention = null;
      touch(s);
      saveLocal();
      scheduleRender();
      if (state.selected === sessionId) {
        renderHeader();
        const other = s.paused ? handBack : takeOver;
        if (document.activeElement === button || document.activeElement === document.body) other.focus();
        if (s.paused) composerText.focus();
      }
    } catch (err) {
      if (state.selected === sessionId) {
        convError.dataset.code = err.code;
        convError.textContent = err.code === "session_ended"
          ? "This conversation has ended."
          : `Could not ${paused ? "take over" : "hand back"}: ${err.message}`;
      }
    } finally {
      button.disabled = false;
    }
  }

  async function hangUpCall() {
    const sessionId = state.selected;
    if (!sessionId) return;
    hangUp.disabled = true;
    convError.textContent = "";
    try {
      await api(`/v1/calls/${enc(sessionId)}/hangup`, { method: "POST", body: {} });
    } catch (err) {
      if (state.selected === sessionId) {
        convError.dataset.code = err.code;
        convError.textContent = `Could not hang up: ${err.message}`;
      }
    } finally {
      hangUp.disabled = false;
    }
  }

  hangUp.addEventListener("click", hangUpCall);
  takeOver.addEventListener("click", () => setPaused(true));
  handBack.addEventListener("click", () => setPaused(false));

  function sendError(err) {
    switch (err.code) {
      case "window_closed":
        return "Not sent: the 24-hour messaging window is closed. Only a template message can reach this contact now.";
      case "session_ended":
        return "Not sent: this conversation has ended.";
      case "network":
        return `Not sent: ${err.message}.`;
      default:
        return `Not sent: ${err.message}${err.code ? ` (${err.code})` : ""}.`;
    }
  }

  composer.addEventListener("submit", async (e) => {
    e.preventDefault();
    const sessionId = state.selected;
    const s = sessionId && state.sessions.get(sessionId);
    if (!s) return;
    const text = composerText.value.trim();
    composerError.textContent = "";
    delete composerError.dataset.code;
    if (!text) {
      composerError.dataset.code = "empty_text";
      composerError.textContent = "Type a message first.";
      composerText.focus();
      return;
    }
    sendButton.disabled = true;
    composer.setAttribute("aria-busy", "true");
    try {
      const r = await api(`/v1/sessions/${enc(sessionId)}/messages`, { method: "POST", body: { text } });
      if (composerText.value.trim() === text) composerText.value = "";
      s.preview = { text, source: "human" };
      s.lastMessageAt = Date.now();
      s.attention = null;
      touch(s);
      saveLocal();
      scheduleRender();
      if (view && view.sessionId === sessionId && !view.loading && r && r.messageId) {
        upsertMessage({ messageId: r.messageId, role: "assistant", source: "human", text, createdAt: Date.now() });
        scrollDown(true);
      }
    } catch (err) {
      if (state.selected === sessionId) {
        composerError.dataset.code = err.code;
        composerError.textContent = sendError(err);
      }
    } finally {
      composer.removeAttribute("aria-busy");
      if (state.selected === sessionId) {
        sendButton.disabled = s.status === "ended";
        renderHeader();
        composerText.focus();
      }
    }
  });

  composerText.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      composer.requestSubmit();
    }
  });

  // ------------------------------------------------------------------ feed events

  function affected(d) {
    if (Array.isArray(d.sessions)) {
      const ids = new Set(d.sessions);
      if (d.sessionId) ids.add(d.sessionId);
      return [...ids].map((id) => state.sessions.get(id)).filter(Boolean);
    }
    if (d.sessionId) {
      const s = state.sessions.get(d.sessionId);
      return s ? [s] : [];
    }
    const who = contactId(d.contact);
    return [...state.sessions.values()].filter(
      (s) => s.agent === d.agent && s.status !== "ended" && (!who || contactId(s.contact) === who),
    );
  }

  function applyEvent(type, d) {
    if (type === "session.paused" || type === "session.resumed") {
      const paused = type === "session.paused";
      for (const s of affected(d)) {
        s.paused = paused;
        if (!paused) s.attention = null;
        touch(s);
        if (view && view.sessionId === s.sessionId) applyToView(type, { ...d, sessionId: s.sessionId });
      }
      saveLocal();
      scheduleRender();
      return;
    }
    if (!d.sessionId) return; // agent.connected and the like
    if (type === "session.started") {
      const s = ensureSession(d, { fetch: false });
      if (d.contact) s.contact = d.contact;
      s.direction = d.direction || s.direction;
      touch(s);
      scheduleRender();
      return;
    }
    const known = state.sessions.has(d.sessionId);
    if (!known && !["user.message", "bot.message", "session.attentionRequested"].includes(type)) {
      applyToView(type, d);
      return;
    }
    const s = ensureSession(d);
    switch (type) {
      case "user.message":
        if (d.contact && !s.contact) s.contact = d.contact;
        s.preview = { text: d.text || `[${d.type || "message"}]`, source: "user" };
        s.lastMessageAt = Math.max(s.lastMessageAt || 0, d.ts || 0);
        if (typeof d.paused === "boolean") s.paused = d.paused;
        if (!isOpen(s.sessionId) && d.messageId) {
          const fresh = !s.unread.has(d.messageId);
          s.unread.add(d.messageId);
          if (fresh) announce(`New message from ${displayName(s)}`);
        }
        break;
      case "bot.message":
        s.preview = { text: d.text || "", source: d.source || "agent" };
        s.lastMessageAt = Math.max(s.lastMessageAt || 0, d.ts || 0);
        if (d.source === "human") s.attention = null;
        break;
      case "session.attentionRequested":
        s.attention = d.reason || "attention requested";
        announce(`${displayName(s)} needs a human: ${s.attention}`);
        break;
      case "session.ended":
        s.status = "ended";
        s.reason = d.reason || s.reason;
        break;
      default:
        break;
    }
    if (type !== "bot.token" && type !== "message.status") {
      touch(s);
      saveLocal();
      scheduleRender();
    }
    applyToView(type, d);
  }

  // ------------------------------------------------------------------ the feed (fetch + ReadableStream)

  const feedStatus = $("feed-status");

  function setFeedStatus(st, text) {
    feedStatus.dataset.state = st;
    feedStatus.textContent = text;
  }

  function rememberSeq(seq) {
    feed.seen.add(seq);
    feed.seenOrder.push(seq);
    if (feed.seenOrder.length > 5000) feed.seen.delete(feed.seenOrder.shift());
    if (feed.lastSeq === null || seq > feed.lastSeq) {
      feed.lastSeq = seq;
      saveLocal();
    }
  }

  function stopFeed() {
    feed.gen++;
    clearTimeout(feed.timer);
    feed.timer = null;
    if (feed.ctrl) feed.ctrl.abort();
    feed.ctrl = null;
    feed.connected = false;
  }

  function scheduleFeed(why) {
    if (!state.signedIn) return;
    clearTimeout(feed.timer);
    feed.connected = false;
    const delay = backoff(feed.attempt++);
    setFeedStatus("reconnecting", `${why}; reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    feed.timer = setTimeout(connectFeed, delay);
  }

  // After the gateway subscribed us (`: connected`), a feed without a resume point
  // reloads the list: nothing that happened before the subscription is missed.
  function onFeedConnected(gen, resumeFrom) {
    if (gen !== feed.gen || feed.connected) return;
    feed.connected = true;
    feed.attempt = 0;
    if (resumeFrom === null) {
      setFeedStatus("open", "live");
      resync();
    } else {
      feed.resuming = true;
      setFeedStatus("open", `catching up after #${resumeFrom}…`);
    }
  }

  async function resync() {
    try {
      await loadSessions();
      if (state.selected && view && !view.loading) openSession(state.selected, { reload: true });
    } catch (err) {
      if (err.status !== 401) listError.textContent = `Could not refresh the list: ${err.message}`;
    }
  }

  async function connectFeed() {
    if (!state.signedIn) return;
    stopFeed();
    const gen = feed.gen;
    const ctrl = new AbortController();
    feed.ctrl = ctrl;
    const resumeFrom = feed.lastSeq;
    setFeedStatus(feed.attempt ? "reconnecting" : "connecting", feed.attempt ? "reconnecting…" : "connecting…");
    const headers = { authorization: `Bearer ${state.key}`, accept: "text/event-stream" };
    if (resumeFrom !== null) headers["last-event-id"] = String(resumeFrom);
    let res;
    try {
      res = await fetch("/v1/events?tokens=true", { headers, signal: ctrl.signal, cache: "no-store", credentials: "omit" });
    } catch (err) {
      if (gen !== feed.gen) return;
      scheduleFeed("gateway unreachable");
      return;
    }
    if (gen !== feed.gen) return;
    if (!res.ok) {
      let data = null;
      try { data = await res.json(); } catch { /* not JSON */ }
      const e = (data && data.error) || {};
      if (res.status === 401) {
        authLost(new ApiError(401, e.code || "unauthorized", e.message || "unauthorized"));
        return;
      }
      if (e.code === "invalid_last_event_id") feed.lastSeq = null;
      scheduleFeed(`feed refused (${e.code || res.status})`);
      return;
    }
    try {
      await readStream(res.body, gen, resumeFrom);
    } catch (err) {
      if (gen !== feed.gen) return; // aborted on purpose
    }
    if (gen !== feed.gen) return;
    scheduleFeed("feed closed");
  }

  async function readStream(body, gen, resumeFrom) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let frame = { id: null, event: "", data: [] };
    const line = (text) => {
      if (text === "") {
        if (frame.data.length) dispatch(frame, gen, resumeFrom);
        frame = { id: null, event: "", data: [] };
        return;
      }
      if (text[0] === ":") {
        if (text.slice(1).trim() === "connected") onFeedConnected(gen, resumeFrom);
        return;
      }
      const i = text.indexOf(":");
      const field = i < 0 ? text : text.slice(0, i);
      let value = i < 0 ? "" : text.slice(i + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "data") frame.data.push(value);
      else if (field === "event") frame.event = value;
      else if (field === "id") frame.id = value;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (gen !== feed.gen) return;
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let start = 0;
        for (let i = 0; i < buf.length; i++) {
          const c = buf[i];
          if (c !== "\n" && c !== "\r") continue;
          if (c === "\r" && i === buf.length - 1) break; // maybe \r\n split across chunks
          line(buf.slice(start, i));
          if (c === "\r" && buf[i + 1] === "\n") i++;
          start = i + 1;
        }
        buf = buf.slice(start);
      }
    } finally {
      try { reader.releaseLock(); } catch { /* still reading: it was aborted */ }
    }
  }

  function dispatch(frame, gen, resumeFrom) {
    if (gen !== feed.gen) return;
    if (!feed.connected) onFeedConnected(gen, resumeFrom); // a gateway without `: connected`
    let d;
    try { d = JSON.parse(frame.data.join("\n")); } catch { return; }
    if (!d || typeof d !== "object") return;
    const type = frame.event || d.event || "message";
    if (type === "stream.caughtUp") {
      if (typeof d.seq === "number" && (feed.lastSeq === null || d.seq > feed.lastSeq)) {
        feed.lastSeq = d.seq;
        saveLocal();
      }
      feed.resuming = false;
      setFeedStatus("open", "live");
      return;
    }
    let seq = typeof d.seq === "number" ? d.seq : null;
    if (seq === null && frame.id && /^\d+$/.test(frame.id)) seq = Number(frame.id);
    if (seq !== null) {
      if (feed.seen.has(seq)) return;
      rememberSeq(seq);
    }
    try {
      applyEvent(type, d);
    } catch (err) {
      console.warn("console: could not apply", type, err); // eslint-disable-line no-console
    }
  }

  // ------------------------------------------------------------------ sign in / out

  const signInSection = $("sign-in");
  const signInForm = $("sign-in-form");
  const keyInput = $("api-key");
  const signInError = $("sign-in-error");
  const signInButton = $("sign-in-button");
  const topActions = $("top-actions");

  function showSignIn(message) {
    app.hidden = true;
    topActions.hidden = true;
    signInSection.hidden = false;
    signInError.textContent = message || "";
    keyInput.value = "";
    keyInput.focus();
  }

  function resetState() {
    stopFeed();
    state.signedIn = false;
    state.key = null;
    state.sessions.clear();
    state.selected = null;
    state.query = "";
    state.searchHits = new Set();
    state.nextCursor = null;
    state.previewTried.clear();
    feed.lastSeq = null;
    feed.seen.clear();
    feed.seenOrder = [];
    feed.attempt = 0;
    view = null;
    sessionList.replaceChildren();
    transcript.replaceChildren();
    composerText.value = "";
    searchInput.value = "";
    convError.textContent = "";
    composerError.textContent = "";
    listError.textContent = "";
    app.dataset.view = "list";
    renderHeader();
    setFeedStatus("idle", "offline");
    document.title = "Switchboard — operator console";
  }

  function signOut(message) {
    clearTimeout(state.saveTimer);
    state.saveTimer = null;
    sessionStorage.removeItem(KEY_STORE);
    sessionStorage.removeItem(STATE_STORE);
    resetState();
    showSignIn(message);
  }

  function authLost(err) {
    signOut(`Signed out: the gateway refused the API key (${err.message}).`);
  }

  async function signIn(key, { restoring = false } = {}) {
    state.key = key;
    const local = restoring ? loadLocal() : {};
    try {
      await loadSessions({ reset: true });
    } catch (err) {
      state.key = null;
      if (restoring && err.status === 401) sessionStorage.removeItem(KEY_STORE);
      throw err;
    }
    sessionStorage.setItem(KEY_STORE, key);
    state.signedIn = true;
    if (typeof local.lastSeq === "number") feed.lastSeq = local.lastSeq;
    for (const [sid, ids] of Object.entries(local.unread || {})) {
      const s = state.sessions.get(sid);
      if (s && Array.isArray(ids)) ids.forEach((id) => s.unread.add(id));
    }
    for (const [sid, reason] of Object.entries(local.attention || {})) {
      const s = state.sessions.get(sid);
      if (s && !s.attention) s.attention = String(reason);
    }
    for (const s of state.sessions.values()) s.dirty = true;
    signInSection.hidden = true;
    app.hidden = false;
    topActions.hidden = false;
    renderHeader();
    renderList();
    connectFeed();
    fillPreviews();
  }

  signInForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    signInError.textContent = "";
    if (!key) {
      signInError.textContent = "Enter an API key.";
      keyInput.focus();
      return;
    }
    signInButton.disabled = true;
    signInButton.textContent = "Signing in…";
    try {
      await signIn(key);
      keyInput.value = "";
      searchInput.focus();
    } catch (err) {
      signInError.textContent = err.status === 401
        ? "This API key was refused. Check it and try again."
        : `Could not sign in: ${err.message}`;
      keyInput.select();
      keyInput.focus();
    } finally {
      signInButton.disabled = false;
      signInButton.textContent = "Sign in";
    }
  });

  $("sign-out").addEventListener("click", () => signOut("Signed out."));

  // ------------------------------------------------------------------ search and filters

  $("search-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    state.query = searchInput.value.trim();
    try {
      await searchContact(state.query);
    } catch (err) {
      listError.textContent = `Search failed: ${err.message}`;
    }
  });
  searchInput.addEventListener("input", () => {
    state.query = searchInput.value.trim();
    state.searchHits = new Set();
    scheduleRender();
  });
  filterSelect.addEventListener("change", () => {
    state.filter = filterSelect.value;
    scheduleRender();
    fillPreviews();
  });
  loadMore.addEventListener("click", async () => {
    loadMore.disabled = true;
    try {
      await loadSessions({ more: true });
    } catch (err) {
      listError.textContent = `Could not load more: ${err.message}`;
    } finally {
      loadMore.disabled = false;
    }
  });

  // ------------------------------------------------------------------ start

  window.addEventListener("pagehide", flushLocal); // a reload resumes exactly where this left off
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") flushLocal();
    // Coming back to the tab counts as opening the conversation on screen.
    if (document.visibilityState === "visible" && state.selected && isOpen(state.selected)) {
      const s = state.sessions.get(state.selected);
      if (s && s.unread.size) {
        s.unread.clear();
        s.dirty = true;
        saveLocal();
        scheduleRender();
      }
    }
  });
  NARROW.addEventListener("change", () => {
    if (!NARROW.matches) app.dataset.view = state.selected ? "conversation" : "list";
  });
  window.addEventListener("online", () => {
    if (state.signedIn && !feed.connected) connectFeed();
  });

  // Hooks for tests and for trying the reconnect path by hand.
  window.switchboardConsole = {
    get lastSeq() { return feed.lastSeq; },
    get connected() { return feed.connected; },
    dropFeed() {
      if (!state.signedIn) return;
      stopFeed();
      scheduleFeed("dropped on purpose");
    },
  };

  renderHeader();
  const stored = sessionStorage.getItem(KEY_STORE);
  if (stored) {
    signInSection.hidden = true;
    signIn(stored, { restoring: true }).catch((err) => {
      showSignIn(err.status === 401 ? "Your stored API key was refused; sign in again." : `Could not sign in: ${err.message}`);
      if (err.status !== 401) keyInput.value = "";
    });
  } else {
    showSignIn();
  }
})();
