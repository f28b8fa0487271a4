// Switchboard demo page: a chat over the WebSocket (PROTOCOL §4) beside the agent's
// live event feed over Server-Sent Events (PROTOCOL §3). Plain JS, no build step.
//
// Tokens come from `POST /v1/tokens` without an API key: the gateway accepts it because
// the browser sends this page's Origin, which the agent lists in its allowed origins.
// Tokens are single-use, so every (re)connection mints a fresh one.
(() => {
  "use strict";

  const params = new URLSearchParams(location.search);
  // `?agent=` wins; else the gateway names the first agent that allows this page's
  // origin (data-agent on <body>, filled in when it serves `/`).
  const AGENT = params.get("agent") || document.body.dataset.agent || "";
  const ANSWER = document.body.dataset.answer || "";
  const PING_MS = 25_000;
  const FEED_LIMIT = 200;
  const SESSION_KEY = `switchboard.demo.session.${AGENT}`;
  // Named SSE events must be listened to one by one (EventSource has no wildcard).
  const FEED_TYPES = [
    "session.started", "user.message", "bot.token", "bot.message", "message.status",
    "llm.toolCall", "llm.toolResult", "session.paused", "session.resumed", "session.idleWarning",
    "session.ended", "session.error", "session.context", "call.ringing", "call.interrupted",
    "call.dtmf", "call.forwarded", "agent.connected", "agent.disconnected",
  ];

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, text) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const backoff = (attempt) => Math.min(10_000, 500 * 2 ** attempt) * (0.8 + Math.random() * 0.4);
  const clip = (s, n = 90) => {
    const one = String(s ?? "").replace(/\s+/g, " ").trim();
    return one.length > n ? `${one.slice(0, n - 1)}…` : one;
  };
  const shortId = (id) => (id ? String(id).slice(-8) : "");

  function setStatus(node, state, text) {
    node.dataset.state = state;
    node.textContent = text;
  }

  class TokenError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // POST /v1/tokens with no key: same-origin, JSON body; the browser adds `Origin`.
  async function mint(channel, sessionId) {
    const body = { channel, agent: AGENT };
    if (sessionId) body.sessionId = sessionId;
    let res;
    try {
      res = await fetch("/v1/tokens", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        cache: "no-store",
      });
    } catch (err) {
      throw new TokenError(0, "network", `cannot reach the gateway (${err.message})`);
    }
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    if (!res.ok || !data || typeof data.token !== "string") {
      const e = (data && data.error) || {};
      throw new TokenError(res.status, e.code || "token_failed", e.message || `HTTP ${res.status}`);
    }
    return data.token;
  }

  // ---------------------------------------------------------------- chat

  const transcript = $("transcript");
  const chatStatus = document.querySelector("[data-testid=chat-status]");
  const sessionLabel = document.querySelector("[data-testid=session-id]");
  const form = $("composer");
  const input = $("message");
  const sendButton = $("send");

  const chat = {
    ws: null,
    sessionId: sessionStorage.getItem(SESSION_KEY),
    attempt: 0,
    generation: 0,
    retryTimer: null,
    pingTimer: null,
    bubbles: new Map(), // messageId -> <li> of an assistant reply
  };

  function scrollTranscript() {
    transcript.scrollTop = transcript.scrollHeight;
  }

  function addBubble(role, text, { messageId, source, streaming = false } = {}) {
    const who = role === "user" ? "You" : source === "human" ? "Human agent" : "Assistant";
    const li = el("li", {
      class: "msg", "data-testid": "msg", "data-role": role,
      "data-message-id": messageId, "data-source": source,
      "data-state": streaming ? "streaming" : "done",
    });
    li.append(el("span", { class: "who" }, who), el("span", { class: "text", "data-testid": "msg-text" }, text));
    transcript.append(li);
    if (messageId && role === "assistant") chat.bubbles.set(messageId, li);
    scrollTranscript();
    return li;
  }

  function addNotice(text) {
    transcript.append(el("li", { class: "msg notice", "data-testid": "notice" }, text));
    scrollTranscript();
  }

  function addError(code, message) {
    const li = el("li", { class: "msg error", "data-testid": "chat-error", "data-code": code, role: "alert" });
    li.append(el("strong", {}, `${code}: `), document.createTextNode(message || ""));
    transcript.append(li);
    scrollTranscript();
  }

  function setSession(id) {
    const changed = id !== chat.sessionId;
    chat.sessionId = id;
    if (id) sessionStorage.setItem(SESSION_KEY, id);
    else sessionStorage.removeItem(SESSION_KEY);
    sessionLabel.textContent = id || "—";
    // The feed follows this page's own conversation (an origin-minted stream token opens one session).
    if (id && (changed || (!feed.es && feed.sessionId !== id))) {
      if (feed.es) { feed.es.close(); feed.es = null; }
      if (feed.sessionId !== id) feed.lastSeq = null;
      connectFeed();
    }
  }

  function setConnected(open) {
    sendButton.disabled = !open;
    clearInterval(chat.pingTimer);
    chat.pingTimer = null;
    if (open) {
      chat.pingTimer = setInterval(() => {
        if (chat.ws && chat.ws.readyState === WebSocket.OPEN) chat.ws.send(JSON.stringify({ event: "ping" }));
      }, PING_MS);
    }
  }

  function renderHistory(history) {
    // A resumed session: the server's history replaces whatever this tab showed,
    // so a reconnect never duplicates messages.
    transcript.setAttribute("aria-busy", "true");
    transcript.replaceChildren();
    chat.bubbles.clear();
    for (const m of history) {
      if (m.role !== "user" && m.role !== "assistant") continue;
      addBubble(m.role, m.text, { messageId: m.messageId, source: m.source });
    }
    addNotice(`Resumed session · ${history.length} earlier message${history.length === 1 ? "" : "s"}`);
    transcript.removeAttribute("aria-busy");
  }

  function onChatFrame(f) {
    switch (f.event) {
      case "chat.started":
        chat.attempt = 0;
        setSession(f.sessionId);
        setStatus(chatStatus, "open", "connected");
        setConnected(true);
        if (Array.isArray(f.history)) renderHistory(f.history);
        break;
      case "chat.token": {
        let li = chat.bubbles.get(f.messageId);
        if (!li) li = addBubble("assistant", "", { messageId: f.messageId, streaming: true });
        if (li.dataset.state !== "streaming") break; // already final (e.g. from history)
        li.querySelector(".text").textContent += f.text;
        transcript.setAttribute("aria-busy", "true"); // announce the reply once, when done
        scrollTranscript();
        break;
      }
      case "chat.done": {
        let li = chat.bubbles.get(f.messageId);
        if (!li) li = addBubble("assistant", "", { messageId: f.messageId });
        li.querySelector(".text").textContent = f.text;
        li.dataset.state = "done";
        transcript.removeAttribute("aria-busy");
        scrollTranscript();
        break;
      }
      case "chat.message":
        addBubble("assistant", f.text, { messageId: f.messageId, source: f.source || "human" });
        break;
      case "chat.error":
        addError(f.code || "error", f.message);
        break;
      case "chat.idleWarning": {
        const secs = Math.max(0, Math.round(f.remainingSeconds ?? 0));
        const li = el("li", { class: "msg notice warning", "data-testid": "idle-warning", role: "status" },
          `Are you still there? This conversation ends in ${secs} s unless you write.`);
        transcript.append(li);
        scrollTranscript();
        break;
      }
      case "chat.timeout":
        addNotice(f.reason === "max_duration"
          ? "This conversation reached its time limit."
          : "This conversation ended after a period of silence.");
        break;
      case "chat.ended":
        addNotice(`Session ended (${f.reason || "closed"}). A new conversation starts.`);
        setSession(null);
        break;
      case "pong":
        chatStatus.title = `last pong ${new Date().toLocaleTimeString()}`;
        break;
      default:
        break;
    }
  }

  function scheduleChat() {
    clearTimeout(chat.retryTimer);
    const delay = backoff(chat.attempt++);
    setStatus(chatStatus, "reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    chat.retryTimer = setTimeout(connectChat, delay);
  }

  async function connectChat() {
    clearTimeout(chat.retryTimer);
    const gen = ++chat.generation;
    setStatus(chatStatus, chat.attempt ? "reconnecting" : "connecting", chat.attempt ? "reconnecting…" : "connecting…");
    let token;
    try {
      token = await mint("chat", chat.sessionId);
    } catch (err) {
      if (gen !== chat.generation) return;
      if (chat.sessionId && (err.status === 404 || err.status === 409)) {
        addNotice("The previous session is gone; starting a new one.");
        setSession(null);
        connectChat();
        return;
      }
      addError(err.code, `could not get a chat token: ${err.message}`);
      scheduleChat();
      return;
    }
    if (gen !== chat.generation) return;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/chat/ws?token=${encodeURIComponent(token)}`);
    chat.ws = ws;
    ws.onmessage = (e) => {
      if (chat.ws !== ws) return;
      let frame;
      try { frame = JSON.parse(e.data); } catch { return; }
      onChatFrame(frame);
    };
    ws.onclose = (e) => {
      if (chat.ws !== ws) return; // replaced on purpose
      chat.ws = null;
      setConnected(false);
      if (e.code === 4404 || e.code === 4409) {
        addNotice(`Session unavailable (${e.reason || e.code}); starting a new one.`);
        setSession(null);
      } else if (e.code >= 4000 && e.code !== 4000) {
        addError(`closed_${e.code}`, e.reason || "the gateway closed the chat");
      }
      scheduleChat();
    };
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    if (!chat.ws || chat.ws.readyState !== WebSocket.OPEN) {
      addError("not_connected", "the chat is reconnecting; try again in a moment");
      return;
    }
    chat.ws.send(JSON.stringify({ event: "message", text }));
    addBubble("user", text);
    input.value = "";
    input.focus();
  });

  $("new-session").addEventListener("click", () => {
    const old = chat.ws;
    chat.ws = null;
    if (old) old.close(1000, "new conversation");
    setConnected(false);
    setSession(null);
    transcript.replaceChildren();
    chat.bubbles.clear();
    chat.attempt = 0;
    connectChat();
    input.focus();
  });

  // ---------------------------------------------------------------- feed

  const events = $("events");
  const feedStatus = document.querySelector("[data-testid=feed-status]");
  const feed = {
    es: null,
    sessionId: null, // the conversation the feed shows (its stream token is for that session)
    lastSeq: null, // the resume point: `&lastEventId=` on the next connection
    attempt: 0,
    generation: 0,
    retryTimer: null,
    tokenGroups: new Map(), // messageId -> {li, count, text}: bot.token deltas, aggregated
  };

  function summarize(type, d) {
    switch (type) {
      case "user.message":
      case "bot.message":
        return `“${clip(d.text)}”${d.source === "human" ? " (human)" : ""}`;
      case "session.started":
        return `${d.channel || ""} session …${shortId(d.sessionId)}`;
      case "session.ended":
        return `reason: ${d.reason || "?"}`;
      case "session.error":
        return `${d.code || "error"}: ${clip(d.message, 70)}`;
      case "message.status":
        return `${d.status || ""} …${shortId(d.messageId)}`;
      case "llm.toolCall":
        return (d.toolCalls || []).map((c) => c.name).join(", ");
      case "llm.toolResult":
        return d.name || "";
      case "session.context":
        return clip(JSON.stringify(d.context ?? d.key ?? ""), 70);
      default:
        return d.sessionId ? `session …${shortId(d.sessionId)}` : "";
    }
  }

  function addEntry(type, seq, summary, d) {
    const li = el("li", {
      "data-testid": "feed-entry", "data-event": type, "data-seq": seq ?? "",
      "data-session": d.sessionId, "data-message-id": d.messageId,
    });
    li.append(
      el("span", { class: "type" }, type),
      el("span", { class: "seq" }, seq == null ? "—" : `#${seq}`),
      el("span", { class: "summary", title: summary }, summary),
    );
    events.prepend(li);
    while (events.childElementCount > FEED_LIMIT) events.lastElementChild.remove();
    return li;
  }

  function addMarker(text) {
    const li = el("li", { class: "marker", "data-testid": "feed-marker" }, text);
    events.prepend(li);
  }

  function onFeedEvent(type, raw) {
    let d;
    try { d = JSON.parse(raw); } catch { return; }
    const seq = typeof d.seq === "number" ? d.seq : null;
    if (seq !== null) {
      if (feed.lastSeq !== null && seq <= feed.lastSeq) return; // never show one twice
      feed.lastSeq = seq;
    }
    if (type === "bot.token") {
      const key = d.messageId || "?";
      let g = feed.tokenGroups.get(key);
      if (!g) {
        g = { li: addEntry(type, null, "", d), count: 0, text: "" };
        feed.tokenGroups.set(key, g);
        if (feed.tokenGroups.size > 50) feed.tokenGroups.delete(feed.tokenGroups.keys().next().value);
      }
      g.count += 1;
      g.text += d.text || "";
      const summary = `×${g.count} “${clip(g.text, 70)}”`;
      const cell = g.li.querySelector(".summary");
      cell.textContent = summary;
      cell.title = summary;
      g.li.dataset.count = String(g.count);
      return;
    }
    if (type === "bot.message" && d.messageId) feed.tokenGroups.delete(d.messageId);
    addEntry(type, seq, summarize(type, d), d);
  }

  function scheduleFeed() {
    clearTimeout(feed.retryTimer);
    const delay = backoff(feed.attempt++);
    setStatus(feedStatus, "reconnecting", `reconnecting in ${Math.ceil(delay / 1000)} s…`);
    feed.retryTimer = setTimeout(connectFeed, delay);
  }

  async function connectFeed() {
    clearTimeout(feed.retryTimer);
    const gen = ++feed.generation;
    setStatus(feedStatus, feed.attempt ? "reconnecting" : "connecting", feed.attempt ? "reconnecting…" : "connecting…");
    const sessionId = chat.sessionId;
    if (!sessionId) {
      setStatus(feedStatus, "connecting", "waiting for the conversation…");
      return;
    }
    feed.sessionId = sessionId;
    let token;
    try {
      token = await mint("stream", sessionId);
    } catch (err) {
      if (gen !== feed.generation) return;
      setStatus(feedStatus, "error", `token: ${err.message}`);
      scheduleFeed();
      return;
    }
    if (gen !== feed.generation) return;
    const q = new URLSearchParams({ token, tokens: "true" });
    const resuming = feed.lastSeq !== null;
    if (resuming) q.set("lastEventId", String(feed.lastSeq));
    const es = new EventSource(`/v1/agents/${encodeURIComponent(AGENT)}/events?${q}`);
    feed.es = es;
    es.onopen = () => {
      if (feed.es !== es) return;
      feed.attempt = 0;
      setStatus(feedStatus, "open", resuming ? `live (resumed after #${feed.lastSeq})` : "live");
    };
    // The token was single-use: the browser's own retry would be refused. Close,
    // mint a fresh token and resume from the last seq we saw.
    es.onerror = () => {
      if (feed.es !== es) return;
      es.close();
      feed.es = null;
      scheduleFeed();
    };
    for (const type of FEED_TYPES) {
      es.addEventListener(type, (e) => { if (feed.es === es) onFeedEvent(type, e.data); });
    }
    es.addEventListener("stream.caughtUp", (e) => {
      if (feed.es !== es) return;
      let d = {};
      try { d = JSON.parse(e.data); } catch { /* ignore */ }
      if (resuming) addMarker(`resumed · caught up at #${d.seq ?? feed.lastSeq}`);
    });
  }

  // ---------------------------------------------------------------- start

  const curlOrigin = $("curl-origin");
  if (curlOrigin && location.origin.startsWith("http")) curlOrigin.textContent = location.origin;

  sendButton.disabled = true;
  sessionLabel.textContent = chat.sessionId || "—";

  // Texts follow the agent: its id, and what answering it does.
  document.querySelector("[data-testid=agent-name]").textContent = AGENT || "none";
  input.placeholder = !AGENT ? "No agent for this page"
    : ANSWER === "echo" ? `Say something to ${AGENT}; it echoes it back…`
    : `Say something to ${AGENT}…`;
  if (!AGENT) {
    // Nothing to connect to: say why and what to do, instead of retrying forever.
    const origin = location.origin;
    addError("no_agent", `no agent allows this page's origin (${origin}): add "${origin}" (or a pattern `
      + `such as "${location.protocol}//${location.hostname}:*") to an agent's allowed_origins, `
      + "or open the page with ?agent=ID");
    setStatus(chatStatus, "error", "no agent");
    setStatus(feedStatus, "error", "no agent");
    return;
  }
  window.addEventListener("online", () => {
    if (!chat.ws) connectChat();
    if (!feed.es) connectFeed();
  });

  // Hooks for tests and for trying the reconnect paths from the console.
  window.switchboardDemo = {
    get sessionId() { return chat.sessionId; },
    get lastSeq() { return feed.lastSeq; },
    dropChat() { if (chat.ws) chat.ws.close(4000, "dropped on purpose"); },
    dropFeed() {
      if (!feed.es) return;
      feed.es.close();
      feed.es = null;
      scheduleFeed();
    },
  };

  connectFeed();
  connectChat();
})();
