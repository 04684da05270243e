// What the page knows, with no DOM: rooms, a bounded window of each room's messages,
// sends not yet acknowledged, who is typing, who has read what.

export const WINDOW = 250;  // messages kept per room, in memory and on the page
export const PAGE = 50;     // messages asked for at a time when paging
export const MAX_PAGE = 100;  // the most get_history returns

// A system message (posted by the host application) has no sender; it shows as "system".
const SYSTEM_SENDER = Object.freeze({ id: 0, username: "system", first_name: "" });

export function senderOf(message) {
  return message.sender ?? SYSTEM_SENDER;
}
const KEPT_WHEN_LEFT = PAGE;  // a room not on screen keeps only its latest page
const CHANGES_KEPT = 500;     // changes to messages outside the window, kept for pages on their way
const QUOTES_KEPT = 2000;

// One room's messages: a window of consecutive messages (no gaps), sorted by id. When it
// reaches the latest message it is "attached" and live messages extend it; otherwise
// (`hasNewer`) live messages wait in `ahead` until paging forward reaches them.
export class Timeline {
  constructor() {
    this.messages = [];
    this.ids = new Set();
    this.hasOlder = true;
    this.hasNewer = true;  // nothing loaded yet: live messages wait for the first page
    this.ahead = new Map();
    this.loaded = false;
    this.loading = null;  // {kind: "older" | "newer" | "latest", requestId} while a page is on its way
    this.dividerBefore = null;  // id of the first message unread when the room was opened
    this.unreadOnOpen = 0;
    this.unreadUpTo = null;  // the latest message when the room was opened: the unread count back from it
    this.target = null;  // a message to show once the page around it is in (a search result)
    this.changes = new Map();  // id -> the latest change seen to a message outside the window
  }

  isLoading(kind) { return this.loading !== null && this.loading.kind === kind; }

  get firstId() { return this.messages.length ? this.messages[0].id : null; }
  get lastId() { return this.messages.length ? this.messages[this.messages.length - 1].id : null; }
  get attached() { return this.loaded && !this.hasNewer; }

  // A live message; true when it joined the window.
  addLive(message) {
    if (this.hasNewer) {
      this.ahead.set(message.id, message);
      if (this.ahead.size > WINDOW) this.ahead.delete(this.ahead.keys().next().value);
      return false;
    }
    this.insert(message);
    this.trimOlder();
    return true;
  }

  // A page of history. "older" pages extend the window back, "newer" and "catchup" ones
  // forward; "latest" replaces it with the room's newest messages, "around" with the
  // messages up to one found by search (newer ones are paged in as the reader scrolls).
  addPage(messages, direction, hasMore) {
    if (direction === "latest" || direction === "around") {
      // Messages the page already shows keep their objects (and so their nodes).
      const known = new Map(this.messages.map((message) => [message.id, message]));
      this.messages = [];
      this.ids.clear();
      this.hasOlder = hasMore;
      for (const message of messages) this.insert(unchanged(known.get(message.id), message));
    } else {
      for (const message of messages) this.insert(message);
    }
    if (direction === "older") {
      this.hasOlder = hasMore;
      this.trimNewer();
    } else if (direction === "around") {
      this.hasNewer = true;
    } else {
      // The latest page reaches the live end by definition (its has_more speaks of
      // older messages); a newer page or a catch-up does when nothing more follows it.
      if (direction === "latest" || !hasMore) this.attach();
      this.trimOlder();
    }
    this.loaded = true;
  }

  // The room is no longer on screen (nor subscribed): keep its latest page, so that
  // re-opening it only catches up; a window away from the live end is dropped.
  leave() {
    this.loading = null;
    this.target = null;
    this.dividerBefore = null;
    this.unreadOnOpen = 0;
    this.unreadUpTo = null;
    if (!this.attached) {
      this.reset();
      return;
    }
    if (this.messages.length <= KEPT_WHEN_LEFT) return;
    for (const message of this.messages.splice(0, this.messages.length - KEPT_WHEN_LEFT)) this.ids.delete(message.id);
    this.hasOlder = true;
  }

  // Forget the window (to show another part of the room).
  reset() {
    this.messages = [];
    this.ids.clear();
    this.ahead.clear();
    this.hasOlder = true;
    this.hasNewer = true;
    this.loaded = false;
    this.loading = null;
  }

  // The message changed (edited, deleted, reacted to, replied to): the window and the
  // messages waiting ahead of it hold its new state.
  update(id, change) {
    const at = this.ids.has(id) ? this.indexOf(id) : -1;
    if (at >= 0) this.messages[at] = { ...this.messages[at], ...change };
    const waiting = this.ahead.get(id);
    if (waiting) this.ahead.set(id, { ...waiting, ...change });
    if (at < 0 && !waiting && change.revision !== undefined) this.remember(id, change);
    return at >= 0;
  }

  // A change to a message the window does not hold: a page already on its way may bring
  // the message as it was before the change, so the change is applied when it arrives.
  remember(id, change) {
    const known = this.changes.get(id);
    if (known && (known.revision ?? 0) >= change.revision) return;
    this.changes.delete(id);
    this.changes.set(id, { ...known, ...change });
    if (this.changes.size > CHANGES_KEPT) this.changes.delete(this.changes.keys().next().value);
  }

  // The largest revision the window holds: changes after it are what a catch-up must bring.
  latestRevision() {
    let latest = 0;
    for (const message of this.messages) latest = Math.max(latest, message.revision ?? 0);
    return latest;
  }

  find(id) {
    return this.ids.has(id) ? this.messages[this.indexOf(id)] : this.ahead.get(id);
  }

  // The window no longer reaches the latest message (a catch-up longer than one page).
  detach() {
    this.hasNewer = true;
  }

  attach() {
    this.hasNewer = false;
    const last = this.lastId ?? 0;
    for (const [id, message] of this.ahead) if (id > last) this.insert(message);
    this.ahead.clear();
  }

  insert(message) {
    const change = this.changes.get(message.id);
    if (change && (change.revision ?? 0) > (message.revision ?? 0)) message = { ...message, ...change };
    if (this.ids.has(message.id)) {
      // The same message again (its ack and its broadcast, a catch-up overlapping a
      // page): keep the object the page already shows unless the message changed.
      const at = this.indexOf(message.id);
      this.messages[at] = unchanged(this.messages[at], message);
      return;
    }
    this.ids.add(message.id);
    let at = this.messages.length;
    while (at > 0 && this.messages[at - 1].id > message.id) at -= 1;
    this.messages.splice(at, 0, message);
  }

  indexOf(id) {
    for (let at = this.messages.length - 1; at >= 0; at -= 1) if (this.messages[at].id === id) return at;
    return -1;
  }

  trimOlder() {
    if (this.messages.length <= WINDOW) return;
    for (const message of this.messages.splice(0, this.messages.length - WINDOW)) this.ids.delete(message.id);
    this.hasOlder = true;
  }

  trimNewer() {
    if (this.messages.length <= WINDOW) return;
    for (const message of this.messages.splice(WINDOW)) this.ids.delete(message.id);
    this.hasNewer = true;
  }

  // Place the "new messages" line before the `unreadOnOpen`-th message of others,
  // counting back from the latest one when the room was opened.
  placeDivider(myId) {
    if (!this.unreadOnOpen || this.dividerBefore !== null || this.unreadUpTo === null) return;
    let left = this.unreadOnOpen;
    for (let at = this.messages.length - 1; at >= 0; at -= 1) {
      if (senderOf(this.messages[at]).id === myId || this.messages[at].id > this.unreadUpTo) continue;
      left -= 1;
      if (left === 0) { this.dividerBefore = this.messages[at].id; return; }
    }
    if (!this.hasOlder && this.messages.length) this.dividerBefore = this.messages[0].id;
  }
}

// The message already held when `fresh` is the same message unchanged, else `fresh`.
function unchanged(known, fresh) {
  if (known === undefined) return fresh;
  return known.content === fresh.content && known.revision === fresh.revision ? known : fresh;
}

export class ChatState {
  constructor() {
    this.me = null;
    this.rooms = new Map();       // room id -> room object (room_list, then room_updated)
    this.current = null;          // the open room's id
    this.timelines = new Map();   // room id -> Timeline
    this.pending = new Map();     // client_msg_id -> {roomId, content, replyTo, status, error}
    this.typing = new Map();      // room id -> Map(user id -> {name, timer})
    this.reads = new Map();       // room id -> Map(user id -> last read message id)
    this.names = new Map();       // user id -> username, as last seen
    this.quotes = new Map();      // message id -> {username, content}, for replies
  }

  timeline(roomId) {
    let timeline = this.timelines.get(roomId);
    if (!timeline) this.timelines.set(roomId, timeline = new Timeline());
    return timeline;
  }

  isMine(message) {
    return this.me !== null && senderOf(message).id === this.me.id;
  }

  learn(message) {
    if (message.sender?.username) this.names.set(message.sender.id, message.sender.username);
    this.quotes.delete(message.id);
    const content = message.deleted ? "message deleted" : message.content.slice(0, 200);
    this.quotes.set(message.id, { username: senderOf(message).username, content });
    if (this.quotes.size > QUOTES_KEPT) this.quotes.delete(this.quotes.keys().next().value);
  }

  nameOf(userId) {
    return this.names.get(userId) || `user ${userId}`;
  }

  setRooms(rooms) {
    this.rooms = new Map(rooms.map((room) => [room.id, room]));
    for (const room of rooms) {
      for (const person of room.participants) if (person.username) this.names.set(person.id, person.username);
    }
  }

  // The open room's participants other than me whose name starts with `prefix`.
  mentionable(prefix) {
    const room = this.rooms.get(this.current);
    const wanted = prefix.toLowerCase();
    return (room?.participants ?? []).filter((person) => person.id !== this.me?.id
      && person.username.toLowerCase().startsWith(wanted));
  }

  mentionsMe(message) {
    return this.me !== null && (message.mentions ?? []).includes(this.me.id);
  }

  totalUnread() {
    let total = 0;
    for (const room of this.rooms.values()) total += room.unread_count || 0;
    return total;
  }

  sortedRooms() {
    return [...this.rooms.values()].sort((a, b) =>
      (b.last_message_time || "").localeCompare(a.last_message_time || "") || b.id - a.id);
  }

  pendingIn(roomId) {
    return [...this.pending].filter(([, item]) => item.roomId === roomId);
  }

  // Who (besides me) has read up to my latest message in the window, and that message.
  readersOfMyLatest(roomId) {
    const messages = this.timeline(roomId).messages;
    let last = null;
    for (let at = messages.length - 1; at >= 0; at -= 1) {
      if (this.isMine(messages[at])) { last = messages[at]; break; }
    }
    const reads = this.reads.get(roomId);
    if (!last || !reads) return { message: last, names: [] };
    const names = [...reads].filter(([userId, upTo]) => userId !== this.me.id && upTo >= last.id)
      .map(([userId]) => this.nameOf(userId));
    return { message: last, names };
  }

  typers(roomId) {
    const typers = this.typing.get(roomId);
    return typers ? [...typers.values()].map((typer) => typer.name) : [];
  }
}
