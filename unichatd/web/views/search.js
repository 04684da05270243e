// The search box over all of the user's rooms, and its results: each names its room
// and sender and shows the snippet with the matched words marked; choosing one opens
// the room at that message.

import { byId, el, formatTime } from "../dom.js";
import { senderOf } from "../state.js";

const MATCH = /\[([^\]]*)\]/g;

// "a [match] b" -> text and <mark> nodes (user text stays text).
export function markedSnippet(snippet) {
  const parts = [];
  let at = 0;
  for (const match of snippet.matchAll(MATCH)) {
    if (match.index > at) parts.push(snippet.slice(at, match.index));
    parts.push(el("mark", "", match[1]));
    at = match.index + match[0].length;
  }
  if (at < snippet.length) parts.push(snippet.slice(at));
  return parts;
}

export class SearchView {
  // onSearch(query), onOpen(message), onClose()
  constructor(state, { onSearch, onOpen, onClose }) {
    this.state = state;
    this.input = byId("search-input");
    this.panel = byId("search-results");
    this.list = byId("search-list");
    this.summary = byId("search-summary");
    this.onOpen = onOpen;
    byId("search").addEventListener("submit", (event) => {
      event.preventDefault();
      const query = this.input.value.trim();
      if (query) onSearch(query);
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !this.panel.hidden) { event.preventDefault(); onClose(); }
    });
    byId("search-close").addEventListener("click", () => onClose());
  }

  searching(query) {
    this.panel.hidden = false;
    this.summary.textContent = `Searching for “${query}”…`;
    this.list.replaceChildren();
  }

  show(frame) {
    const count = frame.messages.length;
    this.summary.textContent = count
      ? `${count}${frame.has_more ? "+" : ""} result${count === 1 ? "" : "s"} for “${frame.query}”`
      : `Nothing found for “${frame.query}”`;
    this.list.replaceChildren(...frame.messages.map((message) => this.resultNode(message)));
  }

  failed(message) {
    this.summary.textContent = message;
  }

  resultNode(message) {
    const item = el("li");
    const open = el("button", "result");
    open.type = "button";
    const room = this.state.rooms.get(message.room_id)?.name ?? `room ${message.room_id}`;
    const where = el("span", "where");
    const roomName = el("bdi", "", room);
    const author = el("bdi", "", senderOf(message).username);
    where.append(roomName, " · ", author, ` · ${formatTime(message.timestamp)}`);
    const snippet = el("span", "snippet");
    snippet.dir = "auto";
    snippet.append(...markedSnippet(message.snippet));
    open.append(where, snippet);
    open.addEventListener("click", () => this.onOpen(message));
    item.append(open);
    return item;
  }

  close() {
    this.panel.hidden = true;
    this.list.replaceChildren();
  }
}
