// Files in messages and in the composer: images show inline as thumbnails (a click opens
// the full size), other files as a chip with name and size; the composer's tray shows
// what is being uploaded, with a progress bar, until the message goes.

import { byId, el } from "../dom.js";

const INLINE = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);

export function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10 * 1024 ? 1 : 0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function attachmentsNode(message) {
  const box = el("div", "attachments");
  for (const file of message.attachments) {
    const link = el("a", INLINE.has(file.content_type) ? "thumb" : "file-chip");
    link.href = file.url;
    link.target = "_blank";
    link.rel = "noopener";
    link.dataset.control = `file ${file.id}`;
    link.tabIndex = -1;  // in the Tab order only while its message is focused, as its buttons
    if (INLINE.has(file.content_type)) {
      const image = el("img");
      image.src = file.url;
      image.alt = file.name;
      image.loading = "lazy";
      image.decoding = "async";
      link.setAttribute("aria-label", `${file.name}, image, ${formatSize(file.size)}: open full size`);
      link.append(image);
    } else {
      const name = el("span", "file-name", file.name);
      name.dir = "auto";
      link.append(name, el("span", "file-size", formatSize(file.size)));
      link.download = file.name;
      link.setAttribute("aria-label", `Download ${file.name}, ${formatSize(file.size)}`);
    }
    box.append(link);
  }
  return box;
}

export class AttachmentTray {
  // onFiles(files): the user picked or dropped files; onRemove(item).
  constructor({ onFiles, onRemove }) {
    this.list = byId("attachment-tray");
    this.input = byId("file-input");
    this.items = new Map();  // item key -> { item, node, bar, state }
    this.onRemove = onRemove;
    byId("attach").addEventListener("click", () => this.input.click());
    this.input.addEventListener("change", () => {
      if (this.input.files.length) onFiles([...this.input.files]);
      this.input.value = "";
    });
    const zone = byId("room-view");
    zone.addEventListener("dragover", (event) => {
      if (!byId("composer").hidden && event.dataTransfer?.types.includes("Files")) {
        event.preventDefault();
        zone.classList.add("dropping");
      }
    });
    zone.addEventListener("dragleave", (event) => {
      if (!zone.contains(event.relatedTarget)) zone.classList.remove("dropping");
    });
    zone.addEventListener("drop", (event) => {
      zone.classList.remove("dropping");
      if (byId("composer").hidden || !event.dataTransfer?.files.length) return;
      event.preventDefault();
      onFiles([...event.dataTransfer.files]);
    });
  }

  show(item) {
    let parts = this.items.get(item.key);
    if (!parts) {
      const node = el("li", "upload");
      const name = el("span", "file-name", item.name);
      name.dir = "auto";
      const bar = el("progress");
      bar.max = item.size || 1;
      bar.setAttribute("aria-label", `Uploading ${item.name}`);
      const state = el("span", "upload-state");
      const remove = el("button", "link", "×");
      remove.type = "button";
      remove.setAttribute("aria-label", `Remove ${item.name}`);
      remove.addEventListener("click", () => { this.drop(item); this.onRemove(item); byId("input").focus(); });
      node.append(name, el("span", "file-size", formatSize(item.size)), bar, state, remove);
      parts = { item, node, bar, state };
      this.items.set(item.key, parts);
      this.list.append(node);
    }
    parts.bar.value = item.status === "stored" ? parts.bar.max : item.sent;
    parts.bar.hidden = item.status === "stored" || item.status === "failed";
    parts.state.textContent = item.status === "failed" ? `failed: ${item.error}`
      : item.status === "stored" ? "ready" : item.status === "queued" ? "waiting" : "";
    parts.node.classList.toggle("failed", item.status === "failed");
    this.list.hidden = this.items.size === 0;
  }

  drop(item) {
    const parts = this.items.get(item.key);
    if (parts) parts.node.remove();
    this.items.delete(item.key);
    this.list.hidden = this.items.size === 0;
  }

  busy() {
    return [...this.items.values()].some(({ item }) => item.status === "queued" || item.status === "sending");
  }

  failed() {
    return [...this.items.values()].some(({ item }) => item.status === "failed");
  }

  // The stored files to send with the message, in the order they were added.
  ready() {
    return [...this.items.values()].filter(({ item }) => item.status === "stored").map(({ item }) => item.file);
  }

  clear() {
    for (const { item } of [...this.items.values()]) this.drop(item);
  }
}
