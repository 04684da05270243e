// The open room's messages, as a log. Only what changed is touched: a new message adds
// one node, an acknowledgement swaps one, a read receipt moves one line. The page holds
// the room's window of messages (state.js) and no more; scrolling near either end asks
// for the next page, and the reading position stays put while pages come and go.

import { batched, byId, el, formatTime, fullTime, keepingFocus } from "../dom.js";
import { senderOf } from "../state.js";
import { attachmentsNode } from "./attachments.js";

const NEAR_PX = 300;    // this close to an end of the list, the next page is asked for
const PINNED_PX = 40;   // this close to the bottom, new messages keep the view at the bottom

export class MessagesView {
  // handlers: onOlder(), onNewer(), onRetry(clientMsgId), onJumpUnread(), onJumpLatest(),
  // onEscape(), and the message actions of messageNode below
  constructor(state, handlers) {
    this.state = state;
    this.handlers = handlers;
    this.box = byId("messages");
    this.list = byId("message-list");
    this.jumpUnread = byId("jump-unread");
    this.jumpLatest = byId("jump-latest");
    this.nodes = new Map();  // "m<id>" | "p<client_msg_id>" -> {node, source}
    this.divider = el("li", "divider");
    this.divider.append(el("span", "", "New messages"));
    this.receipt = el("div", "receipt");
    this.roomId = null;
    this.pinned = true;
    this.scrollTo = null;    // "bottom" | "divider", done at the next flush
    this.found = null;       // the id of a message opened from search: shown and focused once it is in
    this.dirty = false;      // the state changed since the last flush
    this.quiet = false;      // the next flush adds history, not news: keep screen readers quiet
    this.dividerSeen = false;
    this.newBelow = 0;       // live messages that arrived while the view was away from the bottom
    this.busyTimer = null;
    this.active = null;      // the message whose actions are in the Tab order
    this.flushSoon = batched(() => this.flush());
    this.box.addEventListener("scroll", () => this.onScroll(), { passive: true });
    this.box.addEventListener("keydown", (event) => this.onKey(event));
    this.list.addEventListener("focusin", (event) => this.activate(event.target.closest("li.message")));
    this.box.addEventListener("focusout", (event) => {
      if (!this.box.contains(event.relatedTarget)) this.activate(null);
    });
    // Whatever resizes the list's box (the reply bar, the counter, the keyboard on a
    // phone) must not hide the last message from someone reading at the bottom.
    new ResizeObserver(() => { if (this.pinned) this.toBottom(); }).observe(this.box);
    this.jumpLatest.addEventListener("click", () => this.jumpToLatest());
    this.jumpUnread.addEventListener("click", () => this.jumpToUnread());
  }

  // Show the message `id` once the page holding it is in.
  reveal(id) {
    this.found = id;
    this.changed({ quiet: true });
  }

  show(roomId) {
    this.roomId = roomId;
    this.found = null;
    this.list.replaceChildren();
    this.nodes.clear();
    this.active = null;
    this.pinned = true;
    this.dividerSeen = false;
    this.newBelow = 0;
    this.box.setAttribute("aria-label", roomId === null ? "Messages" : `Messages in ${this.state.rooms.get(roomId)?.name ?? "room"}`);
    this.changed({ scroll: "divider", quiet: true });
  }

  // A live message arrived in this room (shown or waiting beyond the window).
  noteLive() {
    if (!this.pinned) this.newBelow += 1;
  }

  changed({ scroll = null, quiet = false } = {}) {
    if (scroll === "bottom" || this.scrollTo === null) this.scrollTo = scroll;
    this.quiet ||= quiet;
    this.dirty = true;
    this.flushSoon();
  }

  flush() {
    this.dirty = false;
    if (this.roomId === null) { this.list.replaceChildren(); this.nodes.clear(); this.updateJumps(); return; }
    const timeline = this.state.timeline(this.roomId);
    const anchor = this.pinned || this.scrollTo ? null : this.anchor();
    if (this.quiet) this.box.setAttribute("aria-busy", "true");
    keepingFocus(this.list, () => this.reconcile(timeline), this.box);
    this.placeReceipt();
    byId("older").hidden = !timeline.isLoading("older");
    const found = this.found === null ? null : this.nodes.get(`m${this.found}`)?.node;
    if (found) {
      this.found = null;
      this.scrollTo = null;
      this.pinned = false;
      found.classList.add("found");
      found.scrollIntoView({ block: "center" });
      found.focus({ preventScroll: true });
    } else if (this.scrollTo === "divider" && this.divider.isConnected && !this.dividerSeen) {
      this.divider.scrollIntoView({ block: "start" });
      this.pinned = this.distanceFromBottom() < PINNED_PX && timeline.attached;
    } else if (this.scrollTo === "bottom" || this.scrollTo === "divider" || this.pinned) {
      this.toBottom();
    } else if (anchor && anchor.node.isConnected) {
      this.box.scrollTop = anchor.node.offsetTop - anchor.offset;
    }
    if (timeline.loaded) this.scrollTo = null;
    if (this.quiet) {
      this.quiet = false;
      // Cleared once the change has reached the accessibility tree (a frame or two).
      clearTimeout(this.busyTimer);
      this.busyTimer = setTimeout(() => this.box.removeAttribute("aria-busy"), 250);
    }
    this.updateJumps();
    this.pageAtEdges();
  }

  // Make the list's children exactly: the window's messages (with the divider), then the
  // sends not yet acknowledged. Nodes that stay are neither rebuilt nor moved.
  reconcile(timeline) {
    const wanted = new Map();
    for (const message of timeline.messages) {
      if (message.id === timeline.dividerBefore) wanted.set("divider", null);
      wanted.set(`m${message.id}`, message);
    }
    for (const [clientMsgId, item] of this.state.pendingIn(this.roomId)) {
      wanted.set(`p${clientMsgId}`, { ...item, clientMsgId, signature: `${item.status}|${item.error || ""}` });
    }
    if (!wanted.has("divider")) this.divider.remove();
    for (const [key, entry] of this.nodes) {
      const source = wanted.get(key);
      if (source === undefined || !this.upToDate(entry, source)) {
        entry.node.remove();
        this.nodes.delete(key);
      }
    }
    let cursor = this.list.firstChild;
    for (const [key, source] of wanted) {
      let node;
      if (key === "divider") {
        node = this.divider;
      } else {
        let entry = this.nodes.get(key);
        if (!entry) {
          entry = { node: key[0] === "m" ? this.messageNode(source) : this.pendingNode(source), source };
          this.nodes.set(key, entry);
        }
        node = entry.node;
      }
      if (node === cursor) cursor = cursor.nextSibling;
      else this.list.insertBefore(node, cursor);
    }
  }

  // A pending send is redrawn when its status changes; a message when its object does.
  upToDate(entry, source) {
    return source.signature === undefined ? entry.source === source : entry.source.signature === source.signature;
  }

  messageNode(message) {
    return messageNode(message, this.state, this.handlers, (id) => this.quoteNode(id));
  }

  quoteNode(id) {
    const quoted = this.state.quotes.get(id);
    const quote = el("div", "quote");
    if (!quoted) {
      quote.textContent = `message #${id}`;
      return quote;
    }
    // The quoted text keeps its own direction, whatever the name's.
    const text = el("bdi", "", quoted.content);
    text.dir = "auto";
    quote.append(el("bdi", "", quoted.username), ": ", text);
    return quote;
  }

  pendingNode(item) {
    const failed = item.status === "failed";
    const node = el("li", `message mine ${failed ? "failed" : "sending"}`);
    node.tabIndex = -1;
    const meta = el("div", "meta");
    meta.append(el("span", "author", "you"));
    node.append(meta);
    if (item.replyTo) node.append(this.quoteNode(item.replyTo));
    const text = el("p", "text", item.content);
    text.dir = "auto";
    const status = el("span", "status", failed ? `not sent: ${item.error || ""} ` : "");
    if (item.content || !item.attachments?.length) node.append(text);
    if (item.attachments?.length) node.append(attachmentsNode(item));
    node.append(status);
    if (failed) {
      const retry = el("button", "link action", "retry");
      retry.type = "button";
      retry.tabIndex = -1;
      retry.addEventListener("click", () => this.handlers.onRetry(item.clientMsgId));
      status.append(retry);
    }
    return node;
  }

  placeReceipt() {
    const { message, names } = this.state.readersOfMyLatest(this.roomId);
    const entry = message && names.length ? this.nodes.get(`m${message.id}`) : null;
    if (!entry) { this.receipt.remove(); return; }
    const text = `read by ${names.join(", ")}`;
    if (this.receipt.textContent !== text) this.receipt.textContent = text;
    if (this.receipt.parentNode !== entry.node) entry.node.append(this.receipt);
  }

  // -- scrolling ---------------------------------------------------------------------

  distanceFromBottom() {
    return this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight;
  }

  toBottom() {
    this.box.scrollTop = this.box.scrollHeight;
  }

  // The first message at least partly in view, and where it sits, to hold it there.
  anchor() {
    const top = this.box.scrollTop;
    for (const node of this.list.children) {
      if (node.offsetTop + node.offsetHeight > top) return { node, offset: node.offsetTop - top };
    }
    return null;
  }

  onScroll() {
    if (this.roomId === null) return;
    const timeline = this.state.timeline(this.roomId);
    const fromBottom = this.distanceFromBottom();
    this.pinned = fromBottom < PINNED_PX && timeline.attached;
    if (this.pinned) this.newBelow = 0;
    // While a flush is due, the list is behind the state: where the view sits says
    // nothing yet (the flush pages on itself if it must).
    if (!this.dirty) this.pageAtEdges();
    this.updateJumps();
  }

  // Near the top, ask for the page before; near the bottom of a window short of the
  // latest message, the page after.
  pageAtEdges() {
    if (this.roomId === null) return;
    const timeline = this.state.timeline(this.roomId);
    if (!timeline.loaded) return;
    if (this.box.scrollTop < NEAR_PX && timeline.hasOlder) this.handlers.onOlder();
    if (this.distanceFromBottom() < NEAR_PX && timeline.hasNewer) this.handlers.onNewer();
  }

  updateJumps() {
    const timeline = this.roomId === null ? null : this.state.timeline(this.roomId);
    const away = timeline !== null && timeline.loaded && !this.pinned
      && (timeline.hasNewer || this.newBelow > 0 || this.distanceFromBottom() > this.box.clientHeight);
    this.jumpLatest.hidden = !away;
    if (away) {
      this.jumpLatest.textContent = this.newBelow > 0
        ? `${this.newBelow} new message${this.newBelow === 1 ? "" : "s"} — jump to latest` : "Jump to latest";
    }
    let unreadAbove = false;
    if (timeline !== null && timeline.unreadOnOpen > 0 && !this.dividerSeen) {
      if (timeline.dividerBefore === null) unreadAbove = timeline.hasOlder;
      else if (this.divider.isConnected) {
        const seen = this.divider.offsetTop >= this.box.scrollTop;
        if (seen && this.divider.offsetTop <= this.box.scrollTop + this.box.clientHeight) this.dividerSeen = true;
        unreadAbove = !seen;
      }
    }
    this.jumpUnread.hidden = !unreadAbove;
    if (unreadAbove) this.jumpUnread.textContent = `${timeline.unreadOnOpen} unread — jump to the first`;
  }

  jumpToLatest() {
    const timeline = this.state.timeline(this.roomId);
    this.newBelow = 0;
    this.dividerSeen = true;  // moved on: the latest page opens at its bottom, not at the line
    if (timeline.attached) {
      this.pinned = true;
      this.toBottom();
      this.updateJumps();
    } else {
      this.handlers.onJumpLatest();
    }
    this.box.focus();
  }

  jumpToUnread() {
    if (this.divider.isConnected) {
      this.divider.scrollIntoView({ block: "start" });
      this.dividerSeen = true;
      this.updateJumps();
    } else {
      this.handlers.onJumpUnread();
    }
    this.box.focus();
  }

  // -- keyboard ----------------------------------------------------------------------

  // Only the focused message's buttons are in the Tab order, so Tab goes from the list
  // to the composer in a step or two, not one per message.
  activate(node) {
    if (node === this.active) return;
    for (const control of this.active?.querySelectorAll("button, a[data-control]") ?? []) control.tabIndex = -1;
    this.active = node;
    for (const control of node?.querySelectorAll("button, a[data-control]") ?? []) control.tabIndex = 0;
  }

  onKey(event) {
    if (event.key === "Escape") { event.preventDefault(); this.handlers.onEscape(); return; }
    if (!["ArrowUp", "ArrowDown", "Home", "End"].includes(event.key)) return;
    const messages = [...this.list.querySelectorAll("li.message")];
    if (!messages.length) return;
    const from = document.activeElement.closest?.("li.message");
    if (!from && (event.key === "Home" || event.key === "End")) return;  // let the box scroll
    let at;
    if (!from) at = this.lastInView(messages);
    else if (event.key === "Home") at = 0;
    else if (event.key === "End") at = messages.length - 1;
    else at = messages.indexOf(from) + (event.key === "ArrowUp" ? -1 : 1);
    event.preventDefault();
    const target = messages[Math.max(0, Math.min(messages.length - 1, at))];
    target.focus({ preventScroll: true });
    target.scrollIntoView({ block: "nearest" });
  }

  lastInView(messages) {
    const bottom = this.box.scrollTop + this.box.clientHeight;
    for (let at = messages.length - 1; at >= 0; at -= 1) if (messages[at].offsetTop < bottom) return at;
    return messages.length - 1;
  }
}

const PALETTE = ["👍", "❤️", "😂", "🎉", "😮", "👀"];

// One message as the list and the thread panel show it: author, time, "edited", the
// quote of what it answers, the text (or "message deleted"), reactions, the thread's
// reply count, and its actions. handlers: onReply(message), onThread(message),
// onReact(message, emoji, add), onEdit(message), onDelete(message).
export function messageNode(message, state, handlers, quoteNode, { inThread = false } = {}) {
  const mine = state.isMine(message);
  let className = mine ? "message mine" : "message";
  if (message.deleted) className += " deleted";
  if (!message.deleted && state.mentionsMe(message)) className += " mentioned";
  const node = el("li", className);
  node.tabIndex = -1;
  node.dataset.messageId = message.id;
  const author = mine ? "you" : senderOf(message).username;
  const meta = el("div", "meta");
  const name = el("span", "author", author);
  name.dir = "auto";
  meta.append(name);
  if (message.timestamp) {
    const time = el("time", "", formatTime(message.timestamp));
    time.dateTime = message.timestamp;
    time.title = fullTime(message.timestamp);
    meta.append(time);
  }
  if (message.edited_at && !message.deleted) {
    const edited = el("span", "edited", "(edited)");
    edited.title = `edited ${fullTime(message.edited_at)}`;
    meta.append(edited);
  }
  node.append(meta);
  if (message.reply_to && !inThread) node.append(quoteNode(message.reply_to));
  if (message.deleted) {
    node.append(el("p", "text gone", "message deleted"));
  } else if (message.content || !message.attachments?.length) {
    const text = el("p", "text", message.content);
    text.dir = "auto";
    node.append(text);
  }
  if (!message.deleted && message.attachments?.length) node.append(attachmentsNode(message));
  if (message.reactions?.length) node.append(reactionsNode(message, state, handlers));
  if (message.reply_count > 0 && !inThread) {
    const count = message.reply_count;
    const link = button("link replies", `${count} ${count === 1 ? "reply" : "replies"}`, () => handlers.onThread(message),
      "replies");
    link.setAttribute("aria-label", `${count} ${count === 1 ? "reply" : "replies"} in thread`);
    node.append(link);
  }
  if (!message.deleted) node.append(actionsNode(message, mine, state, handlers, author, inThread));
  // A long press on a touch screen shows the actions, as hovering does with a mouse.
  let press = null;
  node.addEventListener("touchstart", () => {
    press = setTimeout(() => node.classList.add("show-actions"), 450);
  }, { passive: true });
  for (const end of ["touchend", "touchmove", "touchcancel"]) node.addEventListener(end, () => clearTimeout(press), { passive: true });
  return node;
}

// `control` names the button within its message, so focus can find it again when the
// message is redrawn (dom.keepingFocus).
function button(className, text, onClick, control) {
  const node = el("button", className, text);
  node.type = "button";
  node.dataset.control = control;
  node.tabIndex = -1;  // in the Tab order only while its message is focused (MessagesView.activate)
  node.addEventListener("click", onClick);
  return node;
}

function reactionsNode(message, state, handlers) {
  const row = el("div", "reactions");
  for (const reaction of message.reactions) {
    const mine = state.me !== null && reaction.user_ids.includes(state.me.id);
    const chip = button(mine ? "reaction mine" : "reaction", `${reaction.emoji} ${reaction.count}`,
      () => handlers.onReact(message, reaction.emoji, !mine), `chip ${reaction.emoji}`);
    chip.setAttribute("aria-pressed", String(mine));
    const who = reaction.user_ids.map((id) => (id === state.me?.id ? "you" : state.nameOf(id))).join(", ");
    chip.title = who;
    chip.setAttribute("aria-label", `${reaction.emoji} ${reaction.count}: ${who}`);
    row.append(chip);
  }
  return row;
}

function actionsNode(message, mine, state, handlers, author, inThread) {
  const actions = el("div", "actions");
  const palette = el("div", "palette");
  palette.hidden = true;
  for (const emoji of PALETTE) {
    const pick = button("emoji", emoji, () => {
      palette.hidden = true;
      react.setAttribute("aria-expanded", "false");
      const had = (message.reactions ?? []).some((r) => r.emoji === emoji && r.user_ids.includes(state.me?.id));
      handlers.onReact(message, emoji, !had);
    }, `chip ${emoji}`);
    pick.setAttribute("aria-label", `React with ${emoji}`);
    palette.append(pick);
  }
  const react = button("link action", "react", () => {
    palette.hidden = !palette.hidden;
    react.setAttribute("aria-expanded", String(!palette.hidden));
    if (!palette.hidden) palette.querySelector("button").focus();
  }, "react");
  react.setAttribute("aria-label", `React to ${author}`);
  react.setAttribute("aria-expanded", "false");
  actions.append(react);
  if (!inThread) {
    const reply = button("link action", "reply", () => handlers.onReply(message), "reply");
    reply.setAttribute("aria-label", `Reply to ${author}`);
    const thread = button("link action", "thread", () => handlers.onThread(message), "thread");
    thread.setAttribute("aria-label", `Reply in thread to ${author}`);
    actions.append(reply, thread);
  }
  if (mine) {
    const edit = button("link action", "edit", () => handlers.onEdit(message), "edit");
    edit.setAttribute("aria-label", "Edit your message");
    const remove = button("link action", "delete", () => handlers.onDelete(message), "delete");
    remove.setAttribute("aria-label", "Delete your message");
    actions.append(edit, remove);
  }
  actions.append(palette);
  return actions;
}
