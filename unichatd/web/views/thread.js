// The thread panel: a root message, its replies oldest first, and a box to reply in
// the thread. It shows one thread at a time, of the open room; app.js keeps it live.

import { byId, el, keepingFocus } from "../dom.js";
import { messageNode } from "./messages.js";

export class ThreadView {
  // handlers: onSend(content, rootId), onClose(), and the message actions (messageNode)
  constructor(state, handlers) {
    this.state = state;
    this.handlers = handlers;
    this.panel = byId("thread");
    this.list = byId("thread-list");
    this.input = byId("thread-input");
    this.rootId = null;        // the thread shown (known before its root message arrives)
    this.root = null;          // the root message, once known
    this.replies = new Map();  // id -> message
    byId("thread-close").addEventListener("click", () => handlers.onClose());
    byId("thread-form").addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); this.submit(); }
      if (event.key === "Escape") { event.preventDefault(); handlers.onClose(); }
    });
  }

  // Show the thread `rootId`; `root` is its root message when the page holds it.
  open(rootId, root) {
    this.rootId = rootId;
    this.root = root ?? null;
    this.replies.clear();
    this.panel.hidden = false;
    byId("app").classList.add("with-thread");
    this.render();
    this.input.focus();
  }

  close() {
    this.rootId = null;
    this.root = null;
    this.replies.clear();
    this.panel.hidden = true;
    byId("app").classList.remove("with-thread");
  }

  // A page of the answer to get_thread.
  load(root, replies) {
    if (root.id !== this.rootId) return;
    this.root = root;
    for (const reply of replies) this.replies.set(reply.id, reply);
    this.render();
  }

  // A message of the room arrived or changed: the panel takes what belongs to its thread.
  take(message) {
    if (this.rootId === null) return;
    if (message.id === this.rootId) this.root = message;
    else if (message.thread_root_id === this.rootId) this.replies.set(message.id, message);
    else return;
    this.render();
  }

  update(id, change) {
    if (this.rootId === null) return;
    if (id === this.rootId && this.root) this.root = { ...this.root, ...change };
    else if (this.replies.has(id)) this.replies.set(id, { ...this.replies.get(id), ...change });
    else return;
    this.render();
  }

  render() {
    if (this.rootId === null) return;
    const quote = (id) => el("div", "quote", `message #${id}`);
    const options = { inThread: true };
    const nodes = [];
    if (this.root) {
      const root = messageNode(this.root, this.state, this.handlers, quote, options);
      root.classList.add("root");
      nodes.push(root);
    } else {
      nodes.push(el("li", "thread-count", "Loading the thread…"));
    }
    // The root's own count: replies not loaded (yet) are counted too.
    const count = Math.max(this.root?.reply_count ?? 0, this.replies.size);
    nodes.push(el("li", "thread-count", `${count} ${count === 1 ? "reply" : "replies"}`));
    for (const reply of [...this.replies.values()].sort((a, b) => a.id - b.id)) {
      nodes.push(messageNode(reply, this.state, this.handlers, quote, options));
    }
    keepingFocus(this.list, () => this.list.replaceChildren(...nodes), this.input);
    this.list.scrollTop = this.list.scrollHeight;
  }

  submit() {
    const content = this.input.value;
    if (!content.trim() || this.rootId === null) return;
    if (this.handlers.onSend(content, this.rootId) === false) return;
    this.input.value = "";
  }
}
