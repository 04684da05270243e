// Files over the chat socket (protocol §6.3): upload_file, the bytes in binary frames,
// upload_done. One upload at a time on a connection, so they queue; each reports its
// progress and ends as a stored file object or an error.

const HIGH_WATER = 256 * 1024;  // bytes waiting in the socket before the next chunk waits
const DEFAULT_CHUNK = 32 * 1024;

export class Uploads {
  // onChange(item): an item's status or progress moved (status: "queued" | "sending" |
  // "stored" | "failed"; item.file once stored; item.error once failed).
  constructor(connection, { onChange }) {
    this.connection = connection;
    this.onChange = onChange;
    this.queue = [];
    this.current = null;  // { item, requestId, uploadId }
    this.seq = 0;
  }

  add(file) {
    const item = { key: ++this.seq, name: file.name, size: file.size, type: file.type || "application/octet-stream",
      blob: file, sent: 0, status: "queued", file: null, error: null, discarded: false };
    this.queue.push(item);
    this.onChange(item);
    this.next();
    return item;
  }

  // Take an item back: a queued one never goes; one in flight finishes (the protocol has
  // no way to stop it) and is then left out of every message.
  cancel(item) {
    item.discarded = true;
    this.queue = this.queue.filter((queued) => queued !== item);
  }

  next() {
    if (this.current !== null || !this.queue.length || !this.connection.online) return;
    const item = this.queue.shift();
    const requestId = this.connection.request(
      { type: "upload_file", name: item.name, size: item.size, content_type: item.type }, "upload");
    if (requestId === null) { this.queue.unshift(item); return; }
    this.current = { item, requestId, uploadId: null };
    item.status = "sending";
    this.onChange(item);
  }

  // The connection dropped: what was in flight must start over (unless taken back).
  reset() {
    if (this.current !== null) {
      const { item } = this.current;
      this.current = null;
      if (item.discarded) return;
      item.sent = 0;
      item.status = "queued";
      this.queue.unshift(item);
      this.onChange(item);
    }
  }

  get busy() {
    return this.current !== null;
  }

  // Frames answering our requests: upload_ready, file_stored, or an error.
  handle(frame) {
    const current = this.current;
    if (current === null) return;
    if (frame.type === "upload_ready") {
      current.uploadId = frame.upload_id;
      this.pump(current, frame.chunk_bytes || DEFAULT_CHUNK);
    } else if (frame.type === "file_stored") {
      this.finish(current, "stored", frame.file, null);
    } else if (frame.type === "error") {
      this.finish(current, "failed", null, frame.message);
    }
  }

  async pump(current, chunkBytes) {
    const { item } = current;
    const chunk = Math.max(1024, chunkBytes - 64);
    while (item.sent < item.size) {
      if (this.current !== current) return;
      if (this.connection.buffered > HIGH_WATER) {
        await new Promise((resolve) => setTimeout(resolve, 15));
        continue;
      }
      const end = Math.min(item.size, item.sent + chunk);
      const bytes = await item.blob.slice(item.sent, end).arrayBuffer();
      if (this.current !== current || !this.connection.sendBytes(bytes)) return;
      item.sent = end;
      this.onChange(item);
    }
    if (this.current === current) this.connection.request({ type: "upload_done", upload_id: current.uploadId }, "upload");
  }

  finish(current, status, file, error) {
    const { item } = current;
    this.current = null;
    item.status = status;
    item.file = file;
    item.error = error;
    item.blob = null;
    this.onChange(item);
    this.next();
  }
}
