// unichat web client: one WebSocket for every room (protocol v1.1, see docs/protocol.md).
// This module wires the connection, the state and the views together and decides what
// each frame and each user action does. Every piece of user text reaches the page
// through textContent, never as HTML.

import { Connection } from "./connection.js";
import { batched, byId } from "./dom.js";
import { ChatState, MAX_PAGE, PAGE, WINDOW, senderOf } from "./state.js";
import { Uploads } from "./uploads.js";
import { AttachmentTray } from "./views/attachments.js";
import { ComposerView } from "./views/composer.js";
import { MentionPicker } from "./views/mentions.js";
import { MessagesView } from "./views/messages.js";
import { MembersPanel, NewRoomDialog } from "./views/people.js";
import { RoomListView } from "./views/rooms.js";
import { SearchView } from "./views/search.js";
import { SignInView } from "./views/signin.js";
import { StatusView } from "./views/status.js";
import { ThreadView } from "./views/thread.js";
import { renderTyping } from "./views/typing.js";

const TOKEN_KEY = "unichat_token";
const MAX_ATTACHMENTS = 10;
const TYPING_SHOW_MS = 7000;
const PHONE = window.matchMedia("(max-width: 700px)");

const meta = (name) => document.querySelector(`meta[name="${name}"]`)?.content;

const state = new ChatState();
const status = new StatusView();
const connection = new Connection(meta("unichat-ws-path") || "/ws/chat/", {
  onFrame: handle,
  onStatus: (kind, text) => status.set(kind, text),
  onSignedOut: (message) => signOut(message),
  onToken: (token) => sessionStorage.setItem(TOKEN_KEY, token),
});
const signIn = new SignInView({
  onToken: (token) => { sessionStorage.setItem(TOKEN_KEY, token); start(token); },
});
const roomList = new RoomListView({ onOpen: openRoom });
const composer = new ComposerView(Number(meta("unichat-max-content-chars")) || 4000, {
  onSend: sendMessage,
  onEdit: editMessage,
  onTyping: () => state.current !== null && connection.send({ type: "typing", room_id: state.current }),
  onStopTyping: () => state.current !== null && connection.send({ type: "stop_typing", room_id: state.current }),
  onEscape: () => (PHONE.matches ? back() : roomList.focusRoom(state.current)),
  hasAttachments: () => tray.ready().length > 0,
});
const uploads = new Uploads(connection, {
  onChange: (item) => { if (!item.discarded) tray.show(item); },
});
const tray = new AttachmentTray({
  onFiles: (files) => {
    const room = MAX_ATTACHMENTS - tray.items.size;
    if (files.length > room) notice(`A message takes at most ${MAX_ATTACHMENTS} files.`);
    for (const file of files.slice(0, Math.max(0, room))) uploads.add(file);
  },
  onRemove: (item) => uploads.cancel(item),
});
const newRoom = new NewRoomDialog({
  onSearch: (query) => connection.request({ type: "get_users", query, limit: 50 }, "users:dialog"),
  onCreate: (name, memberIds) => {
    if (connection.request({ type: "create_room", name, member_ids: memberIds }, "create") === null) {
      newRoom.failed("Offline: try again once connected.");
      return false;
    }
    return true;
  },
  onMessage: (userId) => openDirect(userId),
});
const members = new MembersPanel({
  onMessage: (userId) => openDirect(userId),
  onRemove: (roomId, userId) => connection.request({ type: "remove_members", room_id: roomId, user_ids: [userId] }, "members"),
  onAdd: (roomId, userId) => connection.request({ type: "add_members", room_id: roomId, user_ids: [userId] }, "members"),
  onRename: (roomId, name) => connection.request({ type: "rename_room", room_id: roomId, name }, "rename"),
  onLeave: (roomId) => connection.request({ type: "leave_room", room_id: roomId }, "leave"),
  onSearch: (query) => connection.request({ type: "get_users", query, limit: 20 }, "users:members"),
  // Rooms too large to carry presence (rooms.presence_max_members) show it as of now.
  onToggle: (open) => {
    const room = state.rooms.get(state.current);
    if (open && room) {
      connection.request({ type: "get_presence", user_ids: room.participants.slice(0, 1000).map((p) => p.id) },
        "presence");
    }
  },
});
// What a message's own buttons do, in the list and in the thread panel alike.
const messageActions = {
  onReply: (message) => composer.startReply(message),
  onThread: openThread,
  onReact: (message, emoji, add) => connection.request(
    { type: add ? "add_reaction" : "remove_reaction", room_id: message.room_id, message_id: message.id, emoji },
    "react"),
  onEdit: (message) => composer.startEdit(message),
  onDelete: (message) => {
    // eslint-disable-next-line no-alert
    if (window.confirm("Delete this message for everyone?")) {
      connection.request({ type: "delete_message", room_id: message.room_id, message_id: message.id }, "delete");
    }
  },
};
const messages = new MessagesView(state, {
  ...messageActions,
  onOlder: () => loadOlder(PAGE),
  onNewer: loadNewer,
  onRetry: (clientMsgId) => retry(clientMsgId),
  onJumpUnread: jumpToUnread,
  onJumpLatest: () => { requestLatest(state.current, PAGE); messages.changed({ scroll: "bottom" }); },
  onEscape: () => composer.focus(),
});
const thread = new ThreadView(state, {
  ...messageActions,
  onSend: (content, replyTo) => sendMessage(content, replyTo, true),
  onClose: closeThread,
});
const search = new SearchView(state, {
  onSearch: (query) => {
    search.searching(query);
    if (connection.request({ type: "search_messages", query }, "search") === null) search.failed("Offline: try again once connected.");
  },
  onOpen: (message) => openAt(message.room_id, message.id),
  onClose: () => { search.close(); byId("search-input").focus(); },
});
new MentionPicker(byId("input"), byId("mention-list"), state);
new MentionPicker(byId("thread-input"), byId("thread-mention-list"), state);

function renderRoomsNow() {
  roomList.render(state.sortedRooms(), state.current);
  status.title(state.totalUnread(), state.rooms.get(state.current)?.name);
}
const renderRooms = batched(renderRoomsNow);

let focusOnArrival = false;  // after signing in, focus goes to the room list once it comes
let seekingUnread = false;   // paging back until the "new messages" line can be placed

// ---------------------------------------------------------------- signing in and out

function takeTokenFromUrl() {
  // #token=... keeps the token out of server and proxy logs; drop it from the address bar.
  const match = location.hash.match(/[#&]token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function start(token) {
  signIn.hide();
  focusOnArrival = true;
  connection.start(token.trim());
}

function signOut(message) {
  connection.stop();
  discardAttachments();
  newRoom.close();
  sessionStorage.removeItem(TOKEN_KEY);
  openRoom(null);
  state.rooms.clear();
  state.timelines.clear();
  state.pending.clear();
  renderRooms();
  signIn.show(message);
}

// ---------------------------------------------------------------- frames

function handle(frame, kind) {
  switch (frame.type) {
    case "connection_established": return onEstablished(frame);
    case "room_list": return onRoomList(frame.rooms);
    case "room_updated": return onRoomUpdated(frame.room_id, frame.updates);
    case "history": return onHistory(frame, kind);
    case "new_message": return onMessage(frame.message);
    case "message_ack":
      state.pending.delete(frame.client_msg_id);
      return onMessage(frame.message);
    case "message_updated": return onChanged(frame.message);
    case "message_deleted":
      return onDeleted(frame);
    case "reactions_updated":
      return patch(frame.room_id, frame.message_id, { reactions: frame.reactions, revision: frame.revision });
    case "thread_updated":
      return patch(frame.room_id, frame.root_id,
        { reply_count: frame.reply_count, last_reply_at: frame.last_reply_at, revision: frame.revision });
    case "thread": return onThread(frame);
    case "search_results": return search.show(frame);
    case "changes": return onChanges(frame);
    case "typing": return onTyping(frame);
    case "message_read": return onRead(frame);
    case "unsubscribed":
      if (frame.reason === "removed_from_room" || frame.reason === "left_room") removeRoom(frame.room_id);
      return;
    case "presence": return onPresence(frame);
    case "room_created": return onRoomCreated(frame.room, kind);
    case "members_updated": return onMembers(frame.room_id, frame.participants);
    case "presence_list":
      if (learnPresence(frame.users)) renderRooms();
      return;
    case "users":
      if (kind === "users:dialog") newRoom.showUsers(frame.users);
      else if (kind === "users:members") members.showUsers(frame.users);
      return;
    case "upload_ready":
    case "file_stored":
      return uploads.handle(frame);
    case "error": return onError(frame, kind);
  }
}

function onEstablished(frame) {
  state.me = { id: frame.user_id, username: frame.username };
  newRoom.me = members.me = roomList.me = state.me;
  uploads.reset();
  uploads.next();
  // Pages asked for on the old connection will never be answered.
  for (const timeline of state.timelines.values()) timeline.loading = null;
  byId("me").textContent = frame.username;
  connection.request({ type: "get_room_list" }, "rooms");
  if (state.current !== null) subscribe(state.current);
  if (thread.rootId !== null) {  // replies may have come while the connection was down
    connection.request({ type: "get_thread", room_id: state.current, message_id: thread.rootId, limit: 100 },
      "thread");
  }
  // Sends never acknowledged go out again with the same client_msg_id: the server
  // stores each once, whatever happened to the first attempt.
  for (const [clientMsgId, item] of state.pending) if (item.status !== "failed") transmit(clientMsgId, item);
}

function onRoomList(rooms) {
  state.setRooms(rooms);
  if (state.current !== null && !state.rooms.has(state.current)) openRoom(null);
  if (state.current !== null) members.render(state.rooms.get(state.current));
  renderRoomsNow();
  if (focusOnArrival) {
    focusOnArrival = false;
    // Unless the user already went somewhere in the app (focus may still sit on the
    // hidden sign-in button, or on <body>).
    if (!byId("app").contains(document.activeElement)) {
      if (state.current !== null) composer.focus();
      else roomList.focusRoom(state.sortedRooms()[0]?.id);
    }
  }
}

function onRoomUpdated(roomId, updates) {
  const room = state.rooms.get(roomId);
  if (!room) { connection.request({ type: "get_room_list" }, "rooms"); return; }  // a room we were just added to
  Object.assign(room, updates);
  if (updates.participants) state.setRooms([...state.rooms.values()]);  // (their names)
  if (updates.name !== undefined && roomId === state.current) byId("room-title").textContent = room.name;
  if (roomId === state.current && (updates.participants || updates.name !== undefined)) members.render(room);
  if (roomId === state.current && room.unread_count > 0 && isReading()) markRead();
  renderRooms();
}

// Someone's presence changed: every room that lists them shows it.
function onPresence(frame) {
  if (learnPresence([frame])) renderRooms();
}

// Presence of some people (frames, or get_presence's answer); true when a room lists one.
function learnPresence(people) {
  const known = new Map(people.map((person) => [person.user_id ?? person.id, person]));
  let touched = false;
  let current = false;
  for (const room of state.rooms.values()) {
    for (const person of room.participants) {
      const news = known.get(person.id);
      if (news && (person.online !== news.online || person.last_seen !== news.last_seen)) {
        person.online = news.online;
        person.last_seen = news.last_seen;
        touched = true;
        if (room.id === state.current) current = true;
      }
    }
  }
  if (current) members.render(state.rooms.get(state.current));
  return touched;
}

function onRoomCreated(room, kind) {
  state.rooms.set(room.id, room);
  state.setRooms([...state.rooms.values()]);
  renderRoomsNow();
  if (kind === "create" || kind === "direct") {
    newRoom.close();
    openRoom(room.id);
  }
}

function onMembers(roomId, participants) {
  const room = state.rooms.get(roomId);
  if (!room) return;
  room.participants = participants;
  if (roomId === state.current) members.render(room);
}

function openDirect(userId) {
  if (connection.request({ type: "create_direct", user_id: userId }, "direct") === null) {
    if (newRoom.dialog.open) newRoom.failed("Offline: try again once connected.");
    else notice("Offline: try again once connected.");
  }
}

// Files picked for a room go with its next message, and with no other room's.
function discardAttachments() {
  for (const item of tray.items.values()) uploads.cancel(item.item);
  tray.clear();
}

function onHistory(frame, kind) {
  const roomId = frame.room_id;
  if (roomId !== state.current) return;  // a late answer for a room left meanwhile
  const timeline = state.timeline(roomId);
  for (const message of frame.messages) {
    state.learn(message);
    thread.take(message);
  }
  if (kind === undefined) {
    // The catch-up after subscribe_room with last_message_id.
    for (const changed of frame.changed ?? []) onChanged(changed);
    // The window is being replaced by the page around a search result: that page, and
    // paging on from it, bring what the catch-up would.
    if (timeline.isLoading("around")) return;
    // Longer than one frame: show the latest messages instead of paging through
    // everything missed.
    if (frame.has_more || frame.changed_has_more) { requestLatest(roomId, PAGE); return; }
    timeline.addPage(frame.messages, "catchup", false);
  } else if (kind === "latest" || kind === "older" || kind === "newer" || kind === "around") {
    if (timeline.loading?.requestId !== frame.request_id) return;  // superseded
    timeline.loading = null;
    timeline.addPage(frame.messages, kind, frame.has_more);
  } else {
    return;
  }
  if (kind === "around") {
    timeline.target = null;
    messages.changed({ quiet: true });
    return;
  }
  if (timeline.unreadUpTo === null && kind !== "older" && kind !== "newer") {
    timeline.unreadUpTo = frame.messages.length ? frame.messages[frame.messages.length - 1].id : timeline.lastId ?? 0;
  }
  if (timeline.attached) timeline.placeDivider(state.me?.id);
  if (seekingUnread) continueSeekingUnread(timeline);
  // History is not news: a screen reader should not read a page of it out.
  messages.changed({ quiet: true, scroll: kind === "latest" ? "divider" : null });
  if (isReading()) markRead();
}

function onMessage(message) {
  state.learn(message);
  if (message.client_msg_id) state.pending.delete(message.client_msg_id);
  const typers = state.typing.get(message.room_id);
  if (typers && typers.has(senderOf(message).id)) stopShowingTyping(message.room_id, senderOf(message).id);
  // Only the open room is subscribed: a late frame of one just left would leave a gap
  // behind it, so its catch-up starts from what came while it was open.
  if (message.room_id !== state.current) return;
  thread.take(message);
  state.timeline(message.room_id).addLive(message);
  messages.noteLive();
  messages.changed();
  if (isReading()) markRead();
}

// A message changed (an edit, or the current object of one changed while we were away).
function onChanged(message) {
  state.learn(message);
  if (message.room_id !== state.current) return;
  thread.take(message);
  const timeline = state.timeline(message.room_id);
  if (timeline.find(message.id)) timeline.update(message.id, message);
  else timeline.remember(message.id, message);
  requote(timeline, message.id);
  messages.changed();
}

function onDeleted(frame) {
  const quoted = state.quotes.get(frame.message_id);
  if (quoted) quoted.content = "message deleted";
  patch(frame.room_id, frame.message_id,
    { deleted: true, content: "", reactions: [], attachments: [], mentions: [], revision: frame.revision });
  if (frame.room_id === state.current) requote(state.timeline(frame.room_id), frame.message_id);
}

// Replies quote what they answer: redraw those that quote a message that changed.
function requote(timeline, messageId) {
  let touched = false;
  for (const message of timeline.messages) {
    if (message.reply_to === messageId) touched = timeline.update(message.id, {}) || touched;
  }
  if (touched) messages.changed();
}

function onThread(frame) {
  thread.load(frame.root, frame.messages);
  // A long thread comes a page at a time (on from this page: live replies may be past it).
  if (frame.has_more && frame.root.id === thread.rootId && frame.messages.length) {
    connection.request({ type: "get_thread", room_id: frame.room_id, message_id: frame.root.id,
      after_id: frame.messages[frame.messages.length - 1].id, limit: 100 }, "thread");
  }
}

// A change the user asked for was refused (the message was deleted meanwhile, say).
const FAILED_ACTION = {
  edit: "Could not edit the message", delete: "Could not delete the message",
  react: "Could not react to the message", thread: "Could not open the thread",
  direct: "Could not open the conversation", members: "Could not change the members",
  rename: "Could not rename the room", leave: "Could not leave the room",
};
let noticeTimer = null;
function notice(text) {
  const node = byId("room-notice");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { node.hidden = true; node.textContent = ""; }, 6000);
}

function patch(roomId, messageId, change) {
  if (roomId !== state.current) return;
  thread.update(messageId, change);
  if (state.timeline(roomId).update(messageId, change)) messages.changed();
}

function onError(frame, kind) {
  if (kind === "search") { search.failed(frame.message); return; }
  // An upload's own errors, and those the server sends about it unasked (bytes past the
  // announced size, a minute without progress, a write that failed).
  if (kind === "upload" || (frame.request_id === undefined && uploads.busy)) { uploads.handle(frame); return; }
  if (kind === "create" || kind === "users:dialog") { newRoom.failed(frame.message); return; }
  if (kind === "presence") return;  // (what the room list showed stays)
  if (kind === "direct" && newRoom.dialog.open) { newRoom.failed(frame.message); return; }
  if (kind in FAILED_ACTION) { notice(`${FAILED_ACTION[kind]}: ${frame.message}`); return; }
  if (kind && kind.startsWith("send:")) {
    const clientMsgId = kind.slice(5);
    const item = state.pending.get(clientMsgId);
    if (!item) return;
    if (frame.code === "rate_limited") {
      setTimeout(() => transmit(clientMsgId, item), frame.retry_after_ms || 1000);
    } else {
      item.status = "failed";
      item.error = frame.message;
    }
    if (item.roomId === state.current) messages.changed();
    return;
  }
  const timeline = state.timelines.get(frame.room_id);
  if (timeline && timeline.loading?.requestId === frame.request_id) timeline.loading = null;
  if (frame.code === "access_denied" && frame.room_id !== undefined) removeRoom(frame.room_id);
}

function onTyping(frame) {
  if (frame.username) state.names.set(frame.user_id, frame.username);
  if (!frame.is_typing) { stopShowingTyping(frame.room_id, frame.user_id); return; }
  if (!state.typing.has(frame.room_id)) state.typing.set(frame.room_id, new Map());
  const typers = state.typing.get(frame.room_id);
  clearTimeout(typers.get(frame.user_id)?.timer);
  typers.set(frame.user_id, {
    name: frame.username,
    timer: setTimeout(() => stopShowingTyping(frame.room_id, frame.user_id), TYPING_SHOW_MS),
  });
  if (frame.room_id === state.current) renderTyping(state.typers(state.current));
}

function stopShowingTyping(roomId, userId) {
  const typers = state.typing.get(roomId);
  if (!typers) return;
  clearTimeout(typers.get(userId)?.timer);
  typers.delete(userId);
  if (roomId === state.current) renderTyping(state.typers(roomId));
}

function onRead(frame) {
  // Our own reads come back too; they change no receipt we show.
  if (state.me && frame.user_id === state.me.id) return;
  if (!state.reads.has(frame.room_id)) state.reads.set(frame.room_id, new Map());
  state.reads.get(frame.room_id).set(frame.user_id, frame.last_read_message_id);
  if (frame.room_id === state.current) messages.changed();
}

function removeRoom(roomId) {
  state.rooms.delete(roomId);
  state.timelines.delete(roomId);
  if (state.current === roomId) {
    openRoom(null);
    roomList.focusRoom(state.sortedRooms()[0]?.id);
  }
  renderRooms();
}

// ---------------------------------------------------------------- paging

function subscribe(roomId) {
  const timeline = state.timeline(roomId);
  if (timeline.attached && timeline.lastId !== null) {
    // Catch up on what we missed: the messages after our last, then live, no gap.
    connection.request({ type: "subscribe_room", room_id: roomId, last_message_id: timeline.lastId,
      since_revision: timeline.latestRevision() }, "subscribe");
    return;
  }
  connection.request({ type: "subscribe_room", room_id: roomId }, "subscribe");
  if (timeline.loaded) {
    // A window away from the live end stays where the reader is (scrolling down pages
    // on); what changed in it meanwhile comes from get_changes.
    if (timeline.messages.length) requestChanges(roomId, timeline.latestRevision());
    return;
  }
  if (timeline.target !== null) {  // a search result, asked for before the connection dropped
    requestPage(roomId, "around", { before_id: timeline.target + 1, limit: PAGE });
    return;
  }
  const unread = state.rooms.get(roomId)?.unread_count || 0;
  requestLatest(roomId, Math.max(PAGE, unread + 10));
}

function requestChanges(roomId, sinceRevision) {
  connection.request({ type: "get_changes", room_id: roomId, since_revision: sinceRevision }, "changes");
}

function onChanges(frame) {
  for (const message of frame.messages) onChanged(message);
  if (frame.has_more && frame.messages.length && frame.room_id === state.current) {
    requestChanges(frame.room_id, frame.messages[frame.messages.length - 1].revision);
  }
}

// Ask for a page; the timeline remembers which request it waits for, so a late or
// repeated answer is never mistaken for it.
function requestPage(roomId, kind, frame) {
  const requestId = connection.request({ type: "get_history", room_id: roomId, ...frame }, kind);
  if (requestId === null) return false;  // offline: asked again after reconnecting
  state.timeline(roomId).loading = { kind, requestId };
  return true;
}

function requestLatest(roomId, limit) {
  state.timeline(roomId).detach();  // live messages wait until the page is in
  requestPage(roomId, "latest", { limit: Math.min(MAX_PAGE, limit) });
}

function loadOlder(limit) {
  const roomId = state.current;
  const timeline = roomId === null ? null : state.timeline(roomId);
  if (!timeline || timeline.loading || !timeline.hasOlder || timeline.firstId === null) return;
  if (requestPage(roomId, "older", { before_id: timeline.firstId, limit })) messages.changed();
}

function loadNewer() {
  const roomId = state.current;
  const timeline = roomId === null ? null : state.timeline(roomId);
  if (!timeline || timeline.loading || !timeline.hasNewer || timeline.lastId === null) return;
  requestPage(roomId, "newer", { after_id: timeline.lastId, limit: PAGE });
}

// The "new messages" line sits before the first message unread when the room opened.
// When that is further back than the window reaches, page back for it, as far as the
// window holds without letting go of the latest message; past that, the line goes at
// the window's top.
function jumpToUnread() {
  seekingUnread = true;
  continueSeekingUnread(state.timeline(state.current));
}

function continueSeekingUnread(timeline) {
  if (timeline.dividerBefore !== null) {
    seekingUnread = false;
    messages.changed({ scroll: "divider" });
    return;
  }
  const room = WINDOW - timeline.messages.length;
  if (!timeline.hasOlder || room <= 0) {
    // As far back as the window goes: the line goes at its top.
    timeline.dividerBefore = timeline.firstId;
    seekingUnread = false;
    messages.changed({ scroll: "divider" });
    return;
  }
  if (!timeline.loading) loadOlder(Math.min(MAX_PAGE, room));
}

// ---------------------------------------------------------------- actions

function openRoom(roomId) {
  const previous = state.current;
  if (previous !== null && previous !== roomId) {
    connection.send({ type: "unsubscribe_room", room_id: previous });
    state.timeline(previous).leave();
  }
  seekingUnread = false;
  if (previous !== roomId) {
    thread.close();
    composer.leaveRoom();
    discardAttachments();
  }
  state.current = roomId;
  composer.show(roomId !== null);
  byId("app").classList.toggle("in-room", roomId !== null);
  const room = state.rooms.get(roomId);
  byId("room-title").textContent = room ? room.name : "Pick a room";
  if (room && previous !== roomId) {
    // The line is placed once the catch-up or the latest page says where the room ends.
    const timeline = state.timeline(roomId);
    timeline.unreadOnOpen = room.unread_count || 0;
    timeline.dividerBefore = null;
    timeline.unreadUpTo = null;
  }
  messages.show(roomId);
  members.render(room ?? null);
  renderRooms();
  renderTyping(roomId === null ? [] : state.typers(roomId));
  if (roomId !== null && previous !== roomId) {
    subscribe(roomId);
    composer.focus();
  }
}

function openThread(message) {
  const rootId = message.thread_root_id ?? message.id;
  thread.open(rootId, rootId === message.id ? message : state.timeline(message.room_id).find(rootId));
  connection.request({ type: "get_thread", room_id: message.room_id, message_id: rootId, limit: 100 }, "thread");
}

function closeThread() {
  const rootId = thread.rootId;
  thread.close();
  const node = document.querySelector(`#message-list li[data-message-id="${rootId}"]`);
  (node ?? byId("input")).focus();
}

// Open a room at one message (a search result): the page of messages up to it, and
// newer ones as the reader scrolls down.
function openAt(roomId, messageId) {
  if (!state.rooms.has(roomId)) return;
  state.timeline(roomId).reset();
  if (state.current !== roomId) openRoom(roomId);
  if (PHONE.matches) search.close();
  const timeline = state.timeline(roomId);
  timeline.detach();
  timeline.target = messageId;
  messages.reveal(messageId);
  requestPage(roomId, "around", { before_id: messageId + 1, limit: PAGE });
}

function editMessage(message, content) {
  const requestId = connection.request(
    { type: "edit_message", room_id: message.room_id, message_id: message.id, content }, "edit");
  if (requestId === null) { notice("Offline: the edit was not sent."); return false; }
  return true;
}

function back() {
  const roomId = state.current;
  openRoom(null);
  roomList.focusRoom(roomId);
}

function isReading() {
  return state.current !== null && document.visibilityState === "visible" && document.hasFocus();
}

function markRead() {
  const room = state.rooms.get(state.current);
  if (!room || !(room.unread_count > 0)) return;
  room.unread_count = 0;
  connection.send({ type: "mark_read", room_id: state.current });
  renderRooms();
}

function newClientMsgId() {
  // randomUUID needs a secure context; a server reached over plain http on a LAN is not one.
  if (crypto.randomUUID) return crypto.randomUUID();
  return [...crypto.getRandomValues(new Uint8Array(16))].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function sendMessage(content, replyTo, fromThread = false) {
  if (state.current === null) return false;
  // Files go with the message from the room's composer (the thread has no tray).
  const attachments = fromThread ? [] : tray.ready();
  if (!fromThread && tray.busy()) { notice("Wait until the files are uploaded."); return false; }
  if (!fromThread && tray.failed()) { notice("A file could not be uploaded: remove it (×) or attach it again."); return false; }
  const clientMsgId = newClientMsgId();
  const item = { roomId: state.current, content, replyTo, status: "sending", attachments };
  if (!fromThread) tray.clear();
  state.pending.set(clientMsgId, item);
  transmit(clientMsgId, item);
  connection.send({ type: "stop_typing", room_id: state.current });
  const timeline = state.timeline(state.current);
  if (!timeline.attached) requestLatest(state.current, PAGE);  // show it where it will land
  messages.changed({ scroll: "bottom" });
  return true;
}

function transmit(clientMsgId, item) {
  item.status = "sending";
  const frame = { type: "send_message", room_id: item.roomId, content: item.content, client_msg_id: clientMsgId };
  if (item.replyTo) frame.reply_to = item.replyTo;
  if (item.attachments?.length) frame.attachments = item.attachments.map((file) => file.id);
  connection.request(frame, `send:${clientMsgId}`);
}

function retry(clientMsgId) {
  const item = state.pending.get(clientMsgId);
  if (!item) return;
  transmit(clientMsgId, item);
  messages.changed();
}

// ---------------------------------------------------------------- wiring

byId("signout").addEventListener("click", () => signOut("Signed out."));
byId("back").addEventListener("click", back);
document.addEventListener("keydown", (event) => {
  // Escape anywhere in a room on a phone goes back to the list (the composer, the message
  // list, the members panel and a dialog handle their own Escape first).
  if (event.key !== "Escape" || event.defaultPrevented || document.querySelector("dialog[open]")) return;
  if (PHONE.matches && state.current !== null) back();
});
const onAttention = () => { if (isReading()) markRead(); };
document.addEventListener("visibilitychange", onAttention);
window.addEventListener("focus", onAttention);

const token = takeTokenFromUrl();
if (token) start(token); else signIn.show("");
