// The composer: Enter sends, Shift+Enter breaks the line, Escape cancels a reply or an
// edit; a counter appears near the server's length limit, and a draft over it cannot be
// sent. Editing one's own message happens here too: the box takes its text.

import { byId, el } from "../dom.js";
import { senderOf } from "../state.js";

const TYPING_SEND_EVERY_MS = 3000;
const COUNTER_FROM = 0.9;  // show the counter past this share of the limit

export class ComposerView {
  // onSend(content, replyTo), onEdit(message, content), onTyping(), onStopTyping(),
  // onEscape() (nothing to cancel), hasAttachments() (files may go without text).
  constructor(maxChars, { onSend, onEdit, onTyping, onStopTyping, onEscape, hasAttachments = () => false }) {
    this.maxChars = maxChars;
    this.form = byId("composer");
    this.input = byId("input");
    this.counter = byId("counter");
    this.sendButton = byId("send");
    this.replyBar = byId("reply-bar");
    this.replyTo = null;
    this.editing = null;  // the message being edited
    this.draft = "";      // what the box held before the edit began, given back after it
    this.lastTypingSent = 0;
    this.onSend = onSend;
    this.onEdit = onEdit;
    this.hasAttachments = hasAttachments;
    this.form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    byId("reply-cancel").addEventListener("click", () => { this.cancel(); this.input.focus(); });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      } else if (event.key === "Escape") {
        event.preventDefault();
        if (this.editing !== null || this.replyTo !== null) this.cancel();
        else onEscape();
      }
    });
    this.input.addEventListener("input", () => {
      this.updateCounter();
      const now = Date.now();
      if (this.input.value && this.editing === null && now - this.lastTypingSent > TYPING_SEND_EVERY_MS) {
        this.lastTypingSent = now;
        onTyping();
      }
    });
    this.input.addEventListener("blur", () => {
      if (this.lastTypingSent) onStopTyping();
      this.lastTypingSent = 0;
    });
  }

  show(visible) {
    this.form.hidden = !visible;
    if (!visible) this.clearReply();
  }

  // Another room opens: an edit or a reply belongs to the room left.
  leaveRoom() {
    if (this.editing !== null) this.cancel();
    this.clearReply();
  }

  focus() {
    this.input.focus();
  }

  length() {
    // The server counts code points, as Python's len() does.
    let count = 0;
    for (const _ of this.input.value) count += 1;
    return count;
  }

  updateCounter() {
    const length = this.length();
    const over = length > this.maxChars;
    this.counter.hidden = length < this.maxChars * COUNTER_FROM;
    this.counter.textContent = over
      ? `${length} / ${this.maxChars} characters: ${length - this.maxChars} too many`
      : `${length} / ${this.maxChars} characters`;
    this.counter.classList.toggle("over", over);
    this.input.setAttribute("aria-invalid", String(over));
    this.sendButton.disabled = over;
  }

  submit() {
    const content = this.input.value;
    const editing = this.editing;
    if ((!content.trim() && (editing !== null || !this.hasAttachments())) || this.length() > this.maxChars) return;
    const sent = editing !== null ? this.onEdit(editing, content) : this.onSend(content, this.replyTo);
    if (sent === false) return;
    this.input.value = editing !== null ? this.draft : "";
    this.draft = "";
    this.lastTypingSent = 0;
    this.clearReply();
    this.updateCounter();
  }

  startReply(message) {
    if (this.editing !== null) this.cancel();
    this.replyTo = message.id;
    const quoted = el("bdi", "", message.content.slice(0, 80));
    quoted.dir = "auto";
    byId("reply-text").replaceChildren(`Replying to ${senderOf(message).username}: `, quoted);
    this.replyBar.hidden = false;
    this.input.focus();
  }

  startEdit(message) {
    if (this.editing === null) this.draft = this.input.value;
    this.replyTo = null;
    this.editing = message;
    byId("reply-text").replaceChildren("Editing your message (Escape cancels)");
    byId("reply-cancel").setAttribute("aria-label", "Cancel the edit");
    this.replyBar.hidden = false;
    this.input.value = message.content;
    this.updateCounter();
    this.input.focus();
  }

  // Cancel an edit (the draft comes back) or a reply.
  cancel() {
    if (this.editing !== null) {
      this.input.value = this.draft;
      this.draft = "";
      this.updateCounter();
    }
    this.clearReply();
  }

  clearReply() {
    this.replyTo = null;
    this.editing = null;
    this.replyBar.hidden = true;
    byId("reply-cancel").setAttribute("aria-label", "Cancel reply");
  }
}
