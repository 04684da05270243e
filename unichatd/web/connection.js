// The one WebSocket: session cookie, reconnects with backoff, heartbeat, request ids.
// It knows frames only as JSON; what they mean is the app's business.

const PING_EVERY_MS = 25000;
const PONG_WAIT_MS = 10000;
const RETRY_CAP_MS = 30000;

const RENEW_MARGIN_MS = 300000;  // renew this long before the token expires (sooner for short ones);
                                 // a background tab's timers may run a minute late
const RENEW_RETRY_MS = 5000;
const TIMER_MAX_MS = 86400000;   // setTimeout fires at once past 2^31 ms: long waits go a day at a time

const EXPIRED = "Your session has expired. Please sign in again.";
const REFUSED = "That token was not accepted. Please sign in again.";

export class Connection {
  // onFrame(frame, kind): every frame but pong; `kind` is what request() was told.
  // onStatus(state, text): "connecting" | "online" | "reconnecting".
  // onSignedOut(message): the token is no good; the user must sign in again.
  // onToken(token): the server renewed the token; keep it for the next page load.
  constructor(wsPath, { onFrame, onStatus, onSignedOut, onToken }) {
    this.wsPath = wsPath;
    this.onFrame = onFrame;
    this.onStatus = onStatus;
    this.onSignedOut = onSignedOut;
    this.onToken = onToken;
    this.token = null;
    this.ws = null;
    this.attempt = 0;
    this.timers = { reconnect: null, ping: null, pong: null, renew: null };
    this.clockOffset = 0;  // the server's clock minus ours: token times are the server's
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
    if (frame.type === "connection_established" || frame.type === "token_refreshed") {
      const serverNow = Date.parse(frame.timestamp);
      if (!Number.isNaN(serverNow)) this.clockOffset = serverNow - Date.now();
    }
    if (frame.type === "connection_established") {
      this.attempt = 0;
      this.onStatus("online", "online");
      this.startHeartbeat();
      this.scheduleRenewal(tokenExpiry(this.token));
    }
    if (kind === "renew") {
      this.renewed(frame);
      return;
    }
    this.onFrame(frame, kind);
  }

  // Sessions stay alive by asking the server for a fresh token (refresh_token without
  // a token) before this one expires. A refusal (the server does not renew, or the user
  // was revoked) is left to run out: the close at expiry brings the sign-in screen.
  scheduleRenewal(expiresAtMs) {
    clearTimeout(this.timers.renew);
    if (!expiresAtMs) return;
    const left = expiresAtMs - (Date.now() + this.clockOffset);
    const delay = Math.max(0, left > 4 * RENEW_MARGIN_MS ? left - RENEW_MARGIN_MS : left * 0.75);
    this.timers.renew = delay > TIMER_MAX_MS
      ? setTimeout(() => this.scheduleRenewal(expiresAtMs), TIMER_MAX_MS)
      : setTimeout(() => this.renew(), delay);
  }

  renew() {
    if (this.request({ type: "refresh_token" }, "renew") === null) {
      this.timers.renew = setTimeout(() => this.renew(), RENEW_RETRY_MS);
    }
  }

  renewed(frame) {
    if (frame.type !== "token_refreshed" || !frame.token) return;
    this.token = frame.token;
    this.onToken(frame.token);
    this.scheduleRenewal(Date.parse(frame.expires_at));
    // The cookie that downloads (and the next handshake) carry must hold the new token too.
    fetch("/session", {
      headers: { Authorization: `Bearer ${frame.token}` }, credentials: "same-origin", cache: "no-store",
    }).catch(() => {});
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
    clearTimeout(this.timers.renew);
    clearTimeout(this.timers.reconnect);
    clearInterval(this.timers.ping);
    clearTimeout(this.timers.pong);
  }
}

// The token's expiry (ms), read from its claims; null when it cannot be read.
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}
