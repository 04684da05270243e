// The room list: one button per room, updated in place (never rebuilt, so focus stays),
// one Tab stop for the whole list, arrow keys to move within it.

import { byId, el, formatTime, keepingFocus } from "../dom.js";

export class RoomListView {
  constructor({ onOpen }) {
    this.list = byId("room-list");
    this.items = new Map();  // room id -> {item, button, name, time, preview, badge}
    this.onOpen = onOpen;
    this.me = null;
    this.list.addEventListener("keydown", (event) => this.onKey(event));
  }

  render(rooms, currentId) {
    keepingFocus(this.list, () => {
      const seen = new Set();
      let cursor = this.list.firstChild;
      for (const room of rooms) {
        seen.add(room.id);
        const parts = this.items.get(room.id) || this.create(room.id);
        this.fill(parts, room, currentId);
        if (parts.item === cursor) cursor = cursor.nextSibling;
        else this.list.insertBefore(parts.item, cursor);
      }
      for (const [id, parts] of this.items) {
        if (!seen.has(id)) { parts.item.remove(); this.items.delete(id); }
      }
    }, this.list);
    this.setTabStop(currentId);
  }

  create(roomId) {
    const item = el("li");
    const button = el("button", "room");
    button.type = "button";
    button.dataset.roomId = roomId;
    const name = el("span", "room-name");
    const time = el("span", "room-time");
    const preview = el("span", "room-preview");
    const badge = el("span", "badge");
    const mention = el("span", "mention-badge", "@");
    const dot = el("span", "dot");
    dot.setAttribute("aria-hidden", "true");
    name.dir = preview.dir = "auto";
    badge.setAttribute("aria-hidden", "true");
    mention.setAttribute("aria-hidden", "true");
    button.append(name, time, preview);
    button.addEventListener("click", () => this.onOpen(roomId));
    item.append(button);
    const parts = { item, button, name, time, preview, badge, mention, dot };
    this.items.set(roomId, parts);
    return parts;
  }

  fill(parts, room, currentId) {
    const unread = room.id === currentId ? 0 : room.unread_count || 0;
    // (a message of files alone has no text to preview)
    const preview = room.last_message_time ? room.last_message_content || "(files)" : "No messages yet";
    if (parts.name.textContent !== room.name) parts.name.textContent = room.name;
    // A direct room shows whether the other one is online.
    const other = room.room_type === "direct" ? room.participants.find((person) => person.id !== this.me?.id) : null;
    if (other) {
      parts.dot.className = other.online ? "dot online" : "dot";
      if (!parts.dot.isConnected) parts.name.prepend(parts.dot);
    } else {
      parts.dot.remove();
    }
    const time = formatTime(room.last_message_time);
    if (parts.time.textContent !== time) parts.time.textContent = time;
    if (parts.preview.textContent !== preview) parts.preview.textContent = preview;
    if (unread) {
      parts.badge.textContent = String(unread);
      if (!parts.badge.isConnected) parts.button.append(parts.badge);
    } else {
      parts.badge.remove();
    }
    const mentions = room.id === currentId ? 0 : room.mention_count || 0;
    if (mentions) {
      parts.mention.title = `${mentions} mention${mentions === 1 ? "" : "s"} of you`;
      if (!parts.mention.isConnected) parts.button.append(parts.mention);
    } else {
      parts.mention.remove();
    }
    // The button's name: the room, then what the badges show (a bare number says nothing).
    let label = unread ? `${room.name}, ${unread} unread` : room.name;
    if (other) label += other.online ? ", online" : ", offline";
    if (mentions) label += `, ${mentions} mention${mentions === 1 ? "" : "s"} of you`;
    parts.button.setAttribute("aria-label", label);
    if (room.id === currentId) parts.button.setAttribute("aria-current", "true");
    else parts.button.removeAttribute("aria-current");
  }

  buttons() {
    return [...this.list.querySelectorAll("button.room")];
  }

  setTabStop(currentId) {
    const buttons = this.buttons();
    const stop = buttons.find((b) => b === document.activeElement)
      || buttons.find((b) => Number(b.dataset.roomId) === currentId) || buttons[0];
    for (const button of buttons) button.tabIndex = button === stop ? 0 : -1;
  }

  focusRoom(roomId) {
    const parts = this.items.get(roomId);
    const target = parts ? parts.button : this.buttons()[0];
    if (!target) return false;
    for (const button of this.buttons()) button.tabIndex = button === target ? 0 : -1;
    target.focus();
    return true;
  }

  onKey(event) {
    const buttons = this.buttons();
    const at = buttons.indexOf(document.activeElement);
    if (at < 0) return;
    const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: buttons.length - 1 };
    if (event.key in moves) {
      event.preventDefault();
      const target = buttons[Math.max(0, Math.min(buttons.length - 1, moves[event.key]))];
      for (const button of buttons) button.tabIndex = button === target ? 0 : -1;
      target.focus();
    } else if (event.key === "Enter") {
      // Opening here, not on the click Enter would cause, keeps the key from reaching
      // the composer that the room focuses.
      event.preventDefault();
      this.onOpen(Number(document.activeElement.dataset.roomId));
    }
  }
}
