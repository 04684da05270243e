// The connection's state (in the room list, and in the room's header on a phone, where
// the list is hidden: only one of the two is ever rendered, so it is announced once) and
// the tab's title with the unread count.

import { byId } from "../dom.js";

export class StatusView {
  constructor() {
    this.node = byId("conn-state");
    this.mirror = byId("room-conn");
  }

  set(kind, text) {
    for (const node of [this.node, this.mirror]) {
      node.dataset.state = kind;
      node.textContent = text;
    }
  }

  title(unread, roomName) {
    const base = roomName ? `${roomName} · unichat` : "unichat";
    document.title = unread > 0 ? `(${unread}) ${base}` : base;
  }
}
