// unichat web client: one WebSocket for every room, protocol v1 (see the project's docs).
// Every piece of user text reaches the page through textContent, never as HTML.

const TOKEN_KEY = "unichat_token";
const HISTORY_PAGE = 50;
const PING_EVERY_MS = 25000;
const PONG_WAIT_MS = 10000;
const TYPING_SEND_EVERY_MS = 3000;
const TYPING_SHOW_MS = 7000;

const $ = (id) => document.getElementById(id);
const el = (tag, className, text) => {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
};

const state = {
  token: null,
  ws: null,
  me: null,
  attempt: 0,
  reconnectTimer: null,
  pingTimer: null,
  pongTimer: null,
  rooms: new Map(),       // room id -> room object (room_list + room_updated)
  current: null,          // open room id
  messages: new Map(),    // room id -> Map(message id -> message), loaded ones
  hasOlder: new Map(),    // room id -> bool
  loadingOlder: false,
  pending: new Map(),     // client_msg_id -> {roomId, content, replyTo, requestId, status}
  typing: new Map(),      // room id -> Map(user id -> {name, timer})
  reads: new Map(),       // room id -> Map(user id -> last read id)
  names: new Map(),       // user id -> username, as last seen in any frame
  replyTo: null,
  lastTypingSent: 0,
  requestSeq: 0,
  requests: new Map(),    // request_id -> kind, for replies that need context
};

// ---------------------------------------------------------------- sign-in

function takeTokenFromUrl() {
  // #token=... keeps the token out of server and proxy logs; drop it from the address bar.
  const match = location.hash.match(/[#&]token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function showSignIn(message) {
  clearTimers();
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  sessionStorage.removeItem(TOKEN_KEY);
  // The session cookie is HttpOnly: only the server can clear it.
  fetch("/session", { method: "DELETE", credentials: "same-origin" }).catch(() => {});
  state.token = null;
  $("signin-message").textContent = message || "";
  $("app").hidden = true;
  $("signin").hidden = false;
  $("token-input").focus();
}

function start(token) {
  state.token = token.trim();
  $("signin").hidden = true;
  $("app").hidden = false;
  connect();
}

// ---------------------------------------------------------------- connection

function wsUrl() {
  const path = document.querySelector('meta[name="unichat-ws-path"]').content || "/ws/chat/";
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}${path}`;
}

function setConnState(kind, text) {
  const node = $("conn-state");
  node.dataset.state = kind;
  node.textContent = text;
}

async function connect() {
  clearTimers();
  setConnState(state.attempt ? "reconnecting" : "connecting", state.attempt ? "reconnecting…" : "connecting…");
  // The server turns the token into an HttpOnly, SameSite=Strict cookie that the WebSocket
  // handshake then carries: the token never appears in a URL (or a proxy's log), and no
  // other site's page can send it.
  const token = state.token;
  let response;
  try {
    response = await fetch("/session", {
      headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin", cache: "no-store",
    });
  } catch {
    if (state.token === token) scheduleReconnect();
    return;
  }
  if (state.token !== token) return;  // signed out meanwhile
  if (response.status === 401) {
    const body = await response.json().catch(() => ({}));
    showSignIn(body.message === "token expired" ? "Your session has expired. Please sign in again."
                                                : "That token was not accepted. Please sign in again.");
    return;
  }
  if (!response.ok) { scheduleReconnect(); return; }
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onmessage = (event) => {
    let frame;
    try { frame = JSON.parse(event.data); } catch { return; }
    handle(frame);
  };
  ws.onclose = (event) => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearTimers();
    if (event.code === 4001) {
      showSignIn(event.reason === "token expired" ? "Your session has expired. Please sign in again."
                                                   : "That token was not accepted. Please sign in again.");
      return;
    }
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  // Exponential backoff with full jitter, capped at 30 s.
  const delay = Math.min(30000, 500 * 2 ** state.attempt) * (0.5 + Math.random() / 2);
  state.attempt += 1;
  setConnState("reconnecting", `offline — retrying in ${Math.ceil(delay / 1000)} s`);
  state.reconnectTimer = setTimeout(connect, delay);
}

function clearTimers() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.pingTimer);
  clearTimeout(state.pongTimer);
}

function send(frame) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(frame));
  return true;
}

function request(frame, kind) {
  const requestId = `r${++state.requestSeq}`;
  state.requests.set(requestId, kind);
  send({ ...frame, request_id: requestId });
  return requestId;
}

function startHeartbeat() {
  state.pingTimer = setInterval(() => {
    send({ type: "ping" });
    clearTimeout(state.pongTimer);
    state.pongTimer = setTimeout(() => state.ws && state.ws.close(), PONG_WAIT_MS);
  }, PING_EVERY_MS);
}

// ---------------------------------------------------------------- frames

function handle(frame) {
  const kind = state.requests.get(frame.request_id);
  if (frame.request_id !== undefined) state.requests.delete(frame.request_id);
  switch (frame.type) {
    case "connection_established": return onEstablished(frame);
    case "room_list": return onRoomList(frame.rooms);
    case "room_updated": return onRoomUpdated(frame.room_id, frame.updates);
    case "subscribed": return;
    case "history": return onHistory(frame, kind);
    case "new_message": return onMessage(frame.message);
    case "message_ack": return onAck(frame);
    case "typing": return onTyping(frame);
    case "message_read": return onRead(frame);
    case "read_marked": return;
    case "unsubscribed":
      if (frame.reason === "removed_from_room") removeRoom(frame.room_id);
      return;
    case "pong": clearTimeout(state.pongTimer); return;
    case "error": return onError(frame, kind);
  }
}

function onEstablished(frame) {
  state.me = { id: frame.user_id, username: frame.username };
  state.attempt = 0;
  setConnState("online", "online");
  $("me").textContent = frame.username;
  startHeartbeat();
  request({ type: "get_room_list" }, "rooms");
  if (state.current !== null) subscribe(state.current);
  // Sends that were never acknowledged go out again with the same client_msg_id:
  // the server stores each once, whatever happened to the first attempt.
  for (const [clientMsgId, item] of state.pending) {
    if (item.status !== "failed") transmit(clientMsgId, item);
  }
}

function learnName(userId, username) {
  if (username) state.names.set(userId, username);
}

function onRoomList(rooms) {
  state.rooms = new Map(rooms.map((room) => [room.id, room]));
  for (const room of rooms) for (const person of room.participants) learnName(person.id, person.username);
  renderRoomList();
}

function onRoomUpdated(roomId, updates) {
  const room = state.rooms.get(roomId);
  if (!room) { request({ type: "get_room_list" }, "rooms"); return; }  // a room we were just added to
  Object.assign(room, updates);
  if (roomId === state.current && isReading() && room.unread_count > 0) markRead();
  renderRoomList();
}

function roomMessages(roomId) {
  if (!state.messages.has(roomId)) state.messages.set(roomId, new Map());
  return state.messages.get(roomId);
}

function lastMessageId(roomId) {
  let last = 0;
  for (const id of roomMessages(roomId).keys()) if (id > last) last = id;
  return last;
}

function subscribe(roomId) {
  const last = lastMessageId(roomId);
  if (last > 0) {
    // Catch up on what we missed: history after our last message, then live, no gap.
    request({ type: "subscribe_room", room_id: roomId, last_message_id: last }, "subscribe");
  } else {
    request({ type: "subscribe_room", room_id: roomId }, "subscribe");
    request({ type: "get_history", room_id: roomId, limit: HISTORY_PAGE }, "latest");
  }
}

function onHistory(frame, kind) {
  const roomId = frame.room_id;
  const store = roomMessages(roomId);
  for (const message of frame.messages) {
    store.set(message.id, message);
    learnName(message.sender.id, message.sender.username);
  }
  if (kind === "latest" || kind === "older") state.hasOlder.set(roomId, frame.has_more);
  if (kind === undefined && frame.has_more && frame.messages.length) {
    // A catch-up longer than one frame: page on from the last one we got.
    const after = frame.messages[frame.messages.length - 1].id;
    request({ type: "get_history", room_id: roomId, after_id: after, limit: 100 }, "catchup");
  }
  if (kind === "catchup" && frame.has_more && frame.messages.length) {
    const after = frame.messages[frame.messages.length - 1].id;
    request({ type: "get_history", room_id: roomId, after_id: after, limit: 100 }, "catchup");
  }
  if (kind === "older") state.loadingOlder = false;
  if (roomId === state.current) {
    renderMessages(kind === "older" ? "keep" : "bottom");
    if (isReading()) markRead();
  }
}

function onMessage(message) {
  roomMessages(message.room_id).set(message.id, message);
  learnName(message.sender.id, message.sender.username);
  if (message.client_msg_id && state.pending.has(message.client_msg_id)) {
    state.pending.delete(message.client_msg_id);
  }
  const typers = state.typing.get(message.room_id);
  if (typers && typers.has(message.sender.id)) stopShowingTyping(message.room_id, message.sender.id);
  if (message.room_id === state.current) {
    renderMessages("bottom-if-near");
    if (isReading()) markRead();
  }
}

function onAck(frame) {
  const message = frame.message;
  roomMessages(message.room_id).set(message.id, message);
  state.pending.delete(frame.client_msg_id);
  if (message.room_id === state.current) renderMessages("bottom");
}

function onError(frame, kind) {
  if (kind && kind.startsWith("send:")) {
    const item = state.pending.get(kind.slice(5));
    if (item) {
      if (frame.code === "rate_limited") {
        setTimeout(() => transmit(kind.slice(5), item), frame.retry_after_ms || 1000);
      } else {
        item.status = "failed";
        item.error = frame.message;
      }
      renderMessages("keep");
    }
    return;
  }
  if (kind === "older") state.loadingOlder = false;
  if (frame.code === "access_denied" && frame.room_id !== undefined) removeRoom(frame.room_id);
}

function onTyping(frame) {
  learnName(frame.user_id, frame.username);
  if (frame.is_typing) {
    if (!state.typing.has(frame.room_id)) state.typing.set(frame.room_id, new Map());
    const typers = state.typing.get(frame.room_id);
    clearTimeout(typers.get(frame.user_id)?.timer);
    typers.set(frame.user_id, {
      name: frame.username,
      timer: setTimeout(() => stopShowingTyping(frame.room_id, frame.user_id), TYPING_SHOW_MS),
    });
  } else {
    stopShowingTyping(frame.room_id, frame.user_id);
    return;
  }
  renderTyping();
}

function stopShowingTyping(roomId, userId) {
  const typers = state.typing.get(roomId);
  if (!typers) return;
  clearTimeout(typers.get(userId)?.timer);
  typers.delete(userId);
  renderTyping();
}

function onRead(frame) {
  if (!state.reads.has(frame.room_id)) state.reads.set(frame.room_id, new Map());
  state.reads.get(frame.room_id).set(frame.user_id, frame.last_read_message_id);
  if (frame.room_id === state.current) renderMessages("keep");
}

function removeRoom(roomId) {
  state.rooms.delete(roomId);
  if (state.current === roomId) openRoom(null);
  renderRoomList();
}

// ---------------------------------------------------------------- actions

function openRoom(roomId) {
  if (state.current !== null && state.current !== roomId) {
    send({ type: "unsubscribe_room", room_id: state.current });
  }
  state.current = roomId;
  state.replyTo = null;
  $("reply-bar").hidden = true;
  $("app").classList.toggle("in-room", roomId !== null);
  $("composer").hidden = roomId === null;
  const room = state.rooms.get(roomId);
  $("room-title").textContent = room ? room.name : "Pick a room";
  renderRoomList();
  renderMessages("bottom");
  renderTyping();
  if (roomId !== null) {
    subscribe(roomId);
    $("input").focus();
  }
}

function isReading() {
  return state.current !== null && document.visibilityState === "visible" && document.hasFocus();
}

function markRead() {
  const room = state.rooms.get(state.current);
  if (room && room.unread_count > 0) {
    room.unread_count = 0;
    send({ type: "mark_read", room_id: state.current });
    renderRoomList();
  }
}

function transmit(clientMsgId, item) {
  item.status = "sending";
  const frame = { type: "send_message", room_id: item.roomId, content: item.content, client_msg_id: clientMsgId };
  if (item.replyTo) frame.reply_to = item.replyTo;
  request(frame, `send:${clientMsgId}`);
}

function sendComposer() {
  const input = $("input");
  const content = input.value;
  if (!content.trim() || state.current === null) return;
  const clientMsgId = crypto.randomUUID();
  const item = { roomId: state.current, content, replyTo: state.replyTo, status: "sending" };
  state.pending.set(clientMsgId, item);
  transmit(clientMsgId, item);
  input.value = "";
  state.replyTo = null;
  $("reply-bar").hidden = true;
  send({ type: "stop_typing", room_id: state.current });
  state.lastTypingSent = 0;
  renderMessages("bottom");
}

function loadOlder() {
  const roomId = state.current;
  if (roomId === null || state.loadingOlder || !state.hasOlder.get(roomId)) return;
  const ids = [...roomMessages(roomId).keys()];
  if (!ids.length) return;
  state.loadingOlder = true;
  $("older").hidden = false;
  request({ type: "get_history", room_id: roomId, before_id: Math.min(...ids), limit: HISTORY_PAGE }, "older");
}

// ---------------------------------------------------------------- rendering

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : date.toLocaleDateString();
}

function renderRoomList() {
  const list = $("room-list");
  const rooms = [...state.rooms.values()].sort((a, b) =>
    (b.last_message_time || "").localeCompare(a.last_message_time || "") || b.id - a.id);
  list.replaceChildren(...rooms.map((room) => {
    const item = el("li");
    item.tabIndex = 0;
    item.dataset.roomId = room.id;
    if (room.id === state.current) item.setAttribute("aria-current", "true");
    item.append(el("span", "room-name", room.name), el("span", "room-time", formatTime(room.last_message_time)),
                el("span", "room-preview", room.last_message_content || "No messages yet"));
    if (room.unread_count > 0 && room.id !== state.current) {
      item.append(el("span", "badge", String(room.unread_count)));
    }
    item.onclick = () => openRoom(room.id);
    item.onkeydown = (event) => { if (event.key === "Enter") openRoom(room.id); };
    return item;
  }));
}

function messageNode(message, mine, pendingItem) {
  const node = el("li", `message${mine ? " mine" : ""}`);
  const meta = el("div", "meta");
  meta.append(el("span", "author", mine ? "you" : message.sender.username));
  if (message.timestamp) meta.append(el("time", "", formatTime(message.timestamp)));
  if (message.id) {
    node.dataset.messageId = message.id;
    const reply = el("button", "link", "reply");
    reply.type = "button";
    reply.onclick = () => {
      state.replyTo = message.id;
      $("reply-text").textContent = `Replying to ${message.sender.username}: ${message.content.slice(0, 80)}`;
      $("reply-bar").hidden = false;
      $("input").focus();
    };
    meta.append(reply);
  }
  node.append(meta);
  if (message.reply_to) {
    const quoted = roomMessages(message.room_id).get(message.reply_to);
    node.append(el("div", "quote", quoted ? `${quoted.sender.username}: ${quoted.content}` : `message #${message.reply_to}`));
  }
  node.append(el("p", "text", message.content));
  if (pendingItem) {
    node.classList.add(pendingItem.status === "failed" ? "failed" : "sending");
    const status = el("span", "status", pendingItem.status === "failed" ? `not sent: ${pendingItem.error || ""} ` : "");
    node.append(status);
    if (pendingItem.status === "failed") {
      const retry = el("button", "link", "retry");
      retry.type = "button";
      retry.onclick = () => { transmit(message.client_msg_id, pendingItem); renderMessages("keep"); };
      status.append(retry);
    }
  }
  return node;
}

function renderMessages(scroll) {
  const box = $("messages");
  const list = $("message-list");
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const previousHeight = box.scrollHeight;
  $("older").hidden = !state.loadingOlder;
  if (state.current === null) { list.replaceChildren(); return; }
  const roomId = state.current;
  const messages = [...roomMessages(roomId).values()].sort((a, b) => a.id - b.id);
  const nodes = messages.map((m) => messageNode(m, state.me && m.sender.id === state.me.id, null));
  // Read receipts under our own latest message.
  const reads = state.reads.get(roomId);
  const mine = messages.filter((m) => state.me && m.sender.id === state.me.id);
  if (reads && mine.length) {
    const last = mine[mine.length - 1];
    const readers = [...reads.entries()].filter(([uid, upTo]) => uid !== state.me.id && upTo >= last.id)
      .map(([uid]) => nameOf(uid));
    if (readers.length) nodes[messages.indexOf(last)].append(el("div", "receipt", `read by ${readers.join(", ")}`));
  }
  for (const [clientMsgId, item] of state.pending) {
    if (item.roomId !== roomId) continue;
    const draft = { id: 0, room_id: roomId, content: item.content, reply_to: item.replyTo || null,
                    sender: state.me || { id: 0, username: "you" }, client_msg_id: clientMsgId, timestamp: null };
    nodes.push(messageNode(draft, true, item));
  }
  list.replaceChildren(...nodes);
  if (scroll === "bottom" || (scroll === "bottom-if-near" && nearBottom)) box.scrollTop = box.scrollHeight;
  else if (scroll === "keep") box.scrollTop += box.scrollHeight - previousHeight;
}

function nameOf(userId) {
  return state.names.get(userId) || `user ${userId}`;
}

function renderTyping() {
  const typers = state.current !== null ? state.typing.get(state.current) : null;
  const names = typers ? [...typers.values()].map((t) => t.name) : [];
  $("typing").textContent = names.length === 0 ? "" :
    names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("signin-form").onsubmit = (event) => {
    event.preventDefault();
    const token = $("token-input").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token-input").value = "";
    start(token);
  };
  $("signout").onclick = () => showSignIn("Signed out.");
  $("back").onclick = () => openRoom(null);
  $("composer").onsubmit = (event) => { event.preventDefault(); sendComposer(); };
  $("reply-cancel").onclick = () => { state.replyTo = null; $("reply-bar").hidden = true; };
  const input = $("input");
  input.onkeydown = (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendComposer();
    }
  };
  input.oninput = () => {
    const now = Date.now();
    if (state.current !== null && input.value && now - state.lastTypingSent > TYPING_SEND_EVERY_MS) {
      state.lastTypingSent = now;
      send({ type: "typing", room_id: state.current });
    }
  };
  input.onblur = () => {
    if (state.current !== null && state.lastTypingSent) send({ type: "stop_typing", room_id: state.current });
    state.lastTypingSent = 0;
  };
  $("messages").onscroll = () => { if ($("messages").scrollTop < 40) loadOlder(); };
  const onAttention = () => { if (isReading()) markRead(); };
  document.addEventListener("visibilitychange", onAttention);
  window.addEventListener("focus", onAttention);
}

wire();
const token = takeTokenFromUrl();
if (token) start(token); else showSignIn("");
