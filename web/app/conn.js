// The WebSocket link to the gateway: requests as promises, pushes to a callback, and automatic
// reconnection with back-off (0.5 s doubling to 30 s, with jitter) and session resume.

/** How long a request made while the socket is still connecting waits for it to open. */
const CONNECTING_WAIT_MS = 5000;

export class Conn {
  constructor({ onPush, onState, onOpen }) {
    this.onPush = onPush;
    this.onState = onState;
    this.onOpen = onOpen;
    this.pending = new Map();
    this.nextId = 1;
    this.backoff = 500;
    this.ws = null;
    this.closed = false;
    // Requests made while the socket was connecting: sent once it is open and the session
    // resumed (a login clicked the moment the page appears is not refused).
    this.waiting = new Set();
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/ws`;
  }

  connect() {
    this.closed = false;
    this.onState("connecting");
    const ws = new WebSocket(this.url());
    this.ws = ws;
    ws.onopen = async () => {
      this.backoff = 500;
      this.onState("online");
      try {
        await this.onOpen();
      } catch (e) {
        console.warn("after connect:", e);
      }
      for (const go of this.waiting) go();
      this.waiting.clear();
    };
    ws.onmessage = (m) => {
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return;
      }
      if (msg.requestId != null && this.pending.has(msg.requestId)) {
        const { resolve, reject, timer } = this.pending.get(msg.requestId);
        clearTimeout(timer);
        this.pending.delete(msg.requestId);
        if (msg.code === 0) resolve(msg.data);
        else reject(Object.assign(new Error(msg.msg || `error ${msg.code}`), { code: msg.code, data: msg.data }));
      } else if (msg.service?.startsWith("push.")) {
        this.onPush(msg.service, msg.data);
      }
    };
    ws.onclose = () => {
      for (const { reject, timer } of this.pending.values()) {
        clearTimeout(timer);
        reject(Object.assign(new Error("connection lost"), { code: -1 }));
      }
      this.pending.clear();
      if (this.closed) return;
      const wait = Math.round(this.backoff * (0.8 + Math.random() * 0.4));
      this.backoff = Math.min(this.backoff * 2, 30000);
      this.onState("offline", wait);
      setTimeout(() => this.connect(), wait);
    };
  }

  close() {
    this.closed = true;
    if (this.ws) this.ws.close();
  }

  /** Resolves once the socket is open; while it is connecting, waits up to `ms` for that. */
  open(ms) {
    if (this.ws?.readyState === WebSocket.OPEN) return Promise.resolve();
    const notConnected = () => Object.assign(new Error("not connected"), { code: -1 });
    if (this.ws?.readyState !== WebSocket.CONNECTING) return Promise.reject(notConnected());
    return new Promise((resolve, reject) => {
      const go = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiting.delete(go);
        reject(notConnected());
      }, ms);
      this.waiting.add(go);
    });
  }

  /** One request; resolves with `data`, rejects with an Error carrying `code`. */
  async call(service, params = {}, timeoutMs = 15000) {
    await this.open(Math.min(timeoutMs, CONNECTING_WAIT_MS));
    return new Promise((resolve, reject) => {
      if (this.ws?.readyState !== WebSocket.OPEN) {
        reject(Object.assign(new Error("not connected"), { code: -1 }));
        return;
      }
      const requestId = String(this.nextId++);
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(Object.assign(new Error("no answer"), { code: -1 }));
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ requestId, service, params }));
    });
  }
}
