// The one WebSocket: session cookie, reconnects with backoff, heartbeat, request ids.
// It knows frames only as JSON; what they mean is the app's business.

const PING_EVERY_MS = 25000;
const PONG_WAIT_MS = 10000;
const RETRY_CAP_MS = 30000;

const EXPIRED = "Your session has expired. Please sign in again.";
const REFUSED = "That token was not accepted. Please sign in again.";

export class Connection {
  // onFrame(frame, kind): every frame but pong; `kind` is what request() was told.
  // onStatus(state, text): "connecting" | "online" | "reconnecting".
  // onSignedOut(message): the token is no good; the user must sign in again.
  constructor(wsPath, { onFrame, onStatus, onSignedOut }) {
    this.wsPath = wsPath;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.onSignedOut = onSignedOut;
    this.token = null;
    this.ws = null;
    this.attempt = 0;
    this.timers = { reconnect: null, ping: null, pong: null };
    this.requestSeq = 0;
    this.requests = new Map();  // request_id -> kind
  }

  get online() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start(token) {
    this.token = token;
    this.attempt = 0;
    this.connect();
  }

  stop() {
    this.clearTimers();
    this.token = null;
    if (this.ws) { this.ws.onclose = null; this.ws.close(); this.ws = null; }
    // The session cookie is HttpOnly: only the server can clear it.
    fetch("/session", { method: "DELETE", credentials: "same-origin" }).catch(() => {});
  }

  send(frame) {
    if (!this.online) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  // An upload's bytes (protocol §6.3); false when offline.
  sendBytes(data) {
    if (!this.online) return false;
    this.ws.send(data);
    return true;
  }

  // Bytes handed to send() and not yet on the wire: uploads pace themselves with it.
  get buffered() {
    return this.ws ? this.ws.bufferedAmount : 0;
  }

  // The request's id, or null when there is no connection to send it on.
  request(frame, kind) {
    if (!this.online) return null;
    const requestId = `r${++this.requestSeq}`;
    this.requests.set(requestId, kind);
    this.send({ ...frame, request_id: requestId });
    return requestId;
  }

  async connect() {
    this.clearTimers();
    this.onStatus(this.attempt ? "reconnecting" : "connecting", this.attempt ? "reconnecting…" : "connecting…");
    // The server turns the token into an HttpOnly, SameSite=Strict cookie that the
    // handshake then carries: the token never appears in a URL or a proxy's log.
    const token = this.token;
    let response;
    try {
      response = await fetch("/session", {
        headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin", cache: "no-store",
      });
    } catch {
      if (this.token === token) this.scheduleReconnect();
      return;
    }
    if (this.token !== token) return;  // signed out meanwhile
    if (response.status === 401) {
      const body = await response.json().catch(() => ({}));
      this.refused(body.message);
      return;
    }
    if (!response.ok) { this.scheduleReconnect(); return; }
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${this.wsPath}`);
    this.ws = ws;
    this.requests.clear();
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      this.receive(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.clearTimers();
      if (event.code === 4001) this.refused(event.reason);
      else this.scheduleReconnect();
    };
  }

  receive(frame) {
    const kind = this.requests.get(frame.request_id);
    if (frame.request_id !== undefined) this.requests.delete(frame.request_id);
    if (frame.type === "pong") { clearTimeout(this.timers.pong); return; }
    if (frame.type === "connection_established") {
      this.attempt = 0;
      this.onStatus("online", "online");
      this.startHeartbeat();
    }
    this.onFrame(frame, kind);
  }

  // The owner signs out, which stops this connection (and clears the cookie) once.
  refused(reason) {
    this.onSignedOut(reason === "token expired" ? EXPIRED : REFUSED);
  }

  scheduleReconnect() {
    // Exponential backoff with full jitter, capped.
    const delay = Math.min(RETRY_CAP_MS, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.onStatus("reconnecting", `offline — retrying in ${Math.ceil(delay / 1000)} s`);
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  startHeartbeat() {
    this.timers.ping = setInterval(() => {
      this.send({ type: "ping" });
      clearTimeout(this.timers.pong);
      this.timers.pong = setTimeout(() => this.ws && this.ws.close(), PONG_WAIT_MS);
    }, PING_EVERY_MS);
  }

  clearTimers() {
    clearTimeout(this.timers.reconnect);
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
  }
}
