// The sse-gateway browser client: one native EventSource on the gateway's
// multi-channel `/events`, which survives token expiry without losing or
// repeating an event. An ES module without dependencies; the gateway serves
// it at /sse-gateway.js. Types: sse-gateway.d.ts; guide: README.md.
//
// EventSource reconnects by itself after a session ends (`retry:`), sending the
// last cursor in Last-Event-ID. It gives up for good on any non-200 answer (a
// 401 once the token expired, a 403, a proxy's 502) without saying which, so
// when it does, this client asks the same URL once with fetch to learn the
// status: 401 gets a new token, 400/403 (and any other 4xx but 408/429) close
// the stream with the gateway's reason, anything else is tried again. Every
// connection this client opens itself waits an exponential, jittered,
// capped backoff first, and resumes at the last cursor it saw.

// A `last_event_id` that can never be a cursor (they use only [0-9A-Za-z._~-]).
// A first connection sends it instead of none: the gateway then answers every
// channel with a `reset` to its head, and that frame's id is the cursor of the
// moment the client connected. Without it the first cursor would be invisible
// (an id-only frame fires no event), and a token refreshed before the first
// event would resume at the head of a later moment, losing what came between.
const PROBE = "*";
const PROBE_RESET = "invalid_last_event_id";

const RETRYABLE_4XX = new Set([408, 429]);
const MAX_REWIND = 1000;

export class GatewayStream extends EventTarget {
  #url;
  #channels;
  #token;
  #withCredentials;
  #initialMs;
  #maxMs;
  #state = "connecting";
  #lastEventId;
  #error = null;
  #source = null;
  #timer = null;
  #diagnosis = null;
  #closed = false;
  #attempt = 0;
  #currentToken = null;
  #tokenUntried = false; // the token came from token() and no connection opened with it yet
  #freshRefused = 0; // tokens fresh from token() refused in a row
  #needsToken = true;
  #rewind;
  #probing = new Set(); // channels whose reset to PROBE this connection has yet to send

  constructor(options) {
    super();
    const { url = "/events", channels, token, lastEventId = null, rewind = 0 } = options ?? {};
    if (!Array.isArray(channels) || channels.length === 0) {
      throw new TypeError("sse-gateway: connect() needs channels, a non-empty array of names");
    }
    if (token !== undefined && typeof token !== "string" && typeof token !== "function") {
      throw new TypeError("sse-gateway: token must be a string or a function returning one");
    }
    if (!Number.isInteger(rewind) || rewind < 0 || rewind > MAX_REWIND) {
      throw new TypeError(`sse-gateway: rewind must be a whole number from 0 to ${MAX_REWIND}`);
    }
    this.#rewind = rewind;
    this.#url = url;
    this.#channels = [...channels];
    this.#token = token;
    this.#lastEventId = lastEventId;
    this.#withCredentials = Boolean(options.withCredentials);
    this.#initialMs = options.backoff?.initialMs ?? 1000;
    this.#maxMs = options.backoff?.maxMs ?? 30000;
    // Opened after the current task, so close() right after connect() (React
    // strict mode's mount, unmount, mount) makes no request at all.
    queueMicrotask(() => {
      if (this.#closed) return;
      this.dispatchEvent(new CustomEvent("state", { detail: this.#state }));
      this.#open();
    });
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** The cursor of the newest event or reset seen: resume with it elsewhere. */
  get lastEventId() {
    return this.#lastEventId;
  }

  /** The latest failure ({status, code, message, retrying}), or null. */
  get error() {
    return this.#error;
  }

  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#source?.close();
    this.#source = null;
    clearTimeout(this.#timer);
    this.#diagnosis?.abort();
    this.#setState("closed");
  }

  async #open() {
    if (this.#closed) return;
    if (this.#needsToken && typeof this.#token === "function") {
      let token;
      try {
        token = await this.#token();
      } catch (err) {
        this.#fail({ status: 0, code: "token_failed", message: `token() failed: ${err}` }, true);
        return;
      }
      if (this.#closed) return;
      if (typeof token !== "string" || token === "") {
        const message = `token() must return a non-empty string, not ${JSON.stringify(token)}`;
        this.#fail({ status: 0, code: "token_failed", message }, false);
        return;
      }
      this.#currentToken = token;
      this.#tokenUntried = true;
    } else if (typeof this.#token === "string") {
      this.#currentToken = this.#token;
    }
    this.#needsToken = false;
    this.#probing = new Set(this.#lastEventId === null ? this.#channels : []);
    const url = this.#streamUrl();
    const source = new EventSource(url, { withCredentials: this.#withCredentials });
    this.#source = source;
    source.onopen = () => {
      if (source !== this.#source) return;
      this.#attempt = 0;
      this.#tokenUntried = false;
      this.#freshRefused = 0;
      this.#setState("open");
    };
    source.onmessage = (e) => this.#frame(source, e, "message");
    source.addEventListener("reset", (e) => this.#frame(source, e, "reset"));
    source.onerror = () => {
      if (source !== this.#source) return;
      if (source.readyState === EventSource.CONNECTING) {
        this.#setState("reconnecting"); // EventSource comes back by itself
      } else {
        source.close();
        this.#source = null;
        this.#diagnose(url);
      }
    };
  }

  #streamUrl() {
    const url = new URL(this.#url, globalThis.document?.baseURI ?? globalThis.location?.href);
    for (const channel of this.#channels) url.searchParams.append("channel", channel);
    if (this.#currentToken !== null) url.searchParams.set("token", this.#currentToken);
    url.searchParams.set("last_event_id", this.#lastEventId ?? PROBE);
    // Without a cursor of its own, each channel starts `rewind` events before its head
    // (the gateway ignores it once EventSource resumes with Last-Event-ID).
    if (this.#lastEventId === null && this.#rewind > 0) {
      url.searchParams.set("rewind", String(this.#rewind));
    }
    return url.href;
  }

  #frame(source, e, type) {
    if (source !== this.#source) return;
    if (e.lastEventId) this.#lastEventId = e.lastEventId;
    const detail = JSON.parse(e.data);
    // Each channel answers PROBE with one reset, before any of its events.
    const probed = this.#probing.delete(detail.channel);
    if (type === "reset" && probed && detail.reason === PROBE_RESET) return;
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // EventSource gave up: one fetch of the same URL tells why.
  async #diagnose(url) {
    const controller = new AbortController();
    this.#diagnosis = controller;
    let failure;
    try {
      const credentials = this.#withCredentials ? "include" : "same-origin";
      const response = await fetch(url, {
        signal: controller.signal,
        cache: "no-store",
        credentials,
      });
      failure = await describe(response, this.#url);
    } catch (err) {
      if (this.#closed) return;
      failure = { status: 0, code: "network_error", message: corsHint(new URL(url), err) };
    } finally {
      controller.abort(); // a 200 is a whole session the gateway would keep serving
      this.#diagnosis = null;
    }
    if (this.#closed) return;
    const { status } = failure;
    const refreshable = typeof this.#token === "function";
    if (status === 401 && refreshable && this.#tokenUntried) this.#freshRefused += 1;
    // One fresh token refused may have lapsed on its way (a token of a few seconds, a
    // slow page); two in a row are refused for a reason a third would share.
    if (status === 401 && refreshable && this.#freshRefused < 2) {
      this.#needsToken = true; // it expired: the next connection gets a new one
      this.#fail(failure, true);
    } else if (status === 401 && refreshable) {
      const message = `the gateway refused two new tokens from token(): ${failure.message}`;
      this.#fail({ ...failure, message }, false);
    } else {
      const final = status >= 400 && status < 500 && !RETRYABLE_4XX.has(status);
      this.#fail(failure, !final && failure.code !== "not_an_event_stream");
    }
  }

  #fail(failure, retrying) {
    this.#error = { ...failure, retrying };
    this.dispatchEvent(new CustomEvent("error", { detail: this.#error }));
    if (this.#closed) return; // a listener closed the stream
    if (!retrying) {
      this.close();
      return;
    }
    this.#setState("reconnecting");
    // Equal jitter: at least half the ceiling, so no reconnect comes at once.
    const ceiling = Math.min(this.#maxMs, this.#initialMs * 2 ** this.#attempt);
    this.#attempt += 1;
    this.#timer = setTimeout(() => this.#open(), ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  #setState(state) {
    if (state === this.#state) return;
    this.#state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }
}

// What an answer says of why the stream failed (`where` names it without the token).
async function describe(response, where) {
  const { status } = response;
  if (response.ok) {
    const type = response.headers.get("content-type") ?? "";
    if (!type.startsWith("text/event-stream")) {
      const what = type || "no content type";
      const message = `${where} answered ${what}, not text/event-stream`;
      return { status, code: "not_an_event_stream", message };
    }
    return { status, code: "stream_failed", message: "the stream failed, yet the URL answers" };
  }
  try {
    const { error } = await response.json();
    if (typeof error?.code === "string") {
      return { status, code: error.code, message: String(error.message) };
    }
  } catch {
    // not the gateway's JSON error: a proxy's or a load balancer's page
  }
  const message = `HTTP ${status} ${response.statusText}`.trim();
  return { status, code: `http_${status}`, message };
}

/** A page of `channel`'s history (`GET /channels/{channel}/history`): at most `limit`
 * events before the id `before` (or up to the head), oldest first; see sse-gateway.d.ts. */
export async function history(channel, options = {}) {
  const { url = "/", limit, before, token, withCredentials = false } = options;
  const where = new URL(
    `channels/${encodeURIComponent(channel)}/history`,
    new URL(url, globalThis.document?.baseURI ?? globalThis.location?.href),
  );
  if (limit !== undefined) where.searchParams.set("limit", String(limit));
  if (before !== undefined && before !== null) where.searchParams.set("before", before);
  const bearer = typeof token === "function" ? await token() : token;
  const headers = bearer ? { Authorization: `Bearer ${bearer}` } : {};
  let response;
  try {
    const credentials = withCredentials ? "include" : "same-origin";
    response = await fetch(where, { headers, credentials, cache: "no-store" });
  } catch (err) {
    throw new HistoryError({ status: 0, code: "network_error", message: corsHint(where, err) });
  }
  if (!response.ok) throw new HistoryError(await describe(response, where.pathname));
  const page = await response.json();
  return {
    events: page.events.map((e) => ({ channel, event: e.event, id: e.id, data: e.data })),
    next_before: page.next_before,
  };
}

/** Why history() failed: `status`, `code` and `message` as for a stream's failure. */
export class HistoryError extends Error {
  constructor({ status, code, message }) {
    super(message);
    this.name = "HistoryError";
    this.status = status;
    this.code = code;
  }
}

// A fetch that fails without an answer, cross-origin, is most often CORS: say what to set.
function corsHint(where, err) {
  const origin = globalThis.location?.origin;
  if (origin && where.origin !== origin) {
    return (
      `${err} (${where.origin} did not answer ${origin}: if the gateway runs, add ` +
      `${origin} to its SSE_GATEWAY_CORS_ALLOWED_ORIGINS; localhost and 127.0.0.1 are ` +
      "different origins)"
    );
  }
  return String(err);
}

/** Opens a stream of `channels` on the gateway's `/events`; see sse-gateway.d.ts. */
export function connect(options) {
  return new GatewayStream(options);
}
