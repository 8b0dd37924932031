// Types of sse-gateway.js, the browser client of the gateway's `/events`.

/** Where the stream is; "closed" is final (after close() or a failure it cannot fix). */
export type StreamState = "connecting" | "open" | "reconnecting" | "closed";

/** One published event, as the gateway's envelope carries it. */
export interface GatewayEvent<T = unknown> {
  channel: string;
  /** The published event type, or null for a plain one. */
  event: string | null;
  /** The event's id in its own channel. */
  id: string;
  /** The published JSON value, already parsed. */
  data: T;
}

/** A channel's position was lost: the stream goes on after `continues_after`. */
export interface GatewayReset {
  channel: string;
  reason: "history_expired" | "channel_restarted" | "unknown_position" | "invalid_last_event_id";
  /** The channel's id as the cursor knew it, or null. */
  last_event_id: string | null;
  continues_after: string;
}

/** Why a connection failed: the gateway's `{"error": {"code", "message"}}` and HTTP status
 * (0 when there was no answer). `retrying` is false when the stream closed for good. */
export interface GatewayFailure {
  status: number;
  code: string;
  message: string;
  retrying: boolean;
}

export interface ConnectOptions {
  /** The gateway's `/events`: a path on this origin or a full URL. Default "/events". */
  url?: string;
  /** 1 to 16 channel names (the gateway's SSE_GATEWAY_MAX_CHANNELS_PER_CONNECTION). */
  channels: readonly string[];
  /** A JWT, or a function giving one: called before the first connection and after a 401. */
  token?: string | (() => string | Promise<string>);
  /** A cursor to resume from (a `lastEventId` of an earlier stream on the same channels). */
  lastEventId?: string | null;
  /** Without a cursor, each channel starts this many events (0 to 1000) before its head,
   * so a page renders the last N and follows on from exactly there. Default 0. */
  rewind?: number;
  /** Send cookies cross-origin (the gateway's `sse_token` cookie). Default false. */
  withCredentials?: boolean;
  /** Delays before the reconnects the client makes itself: each attempt waits between half
   * and all of min(maxMs, initialMs × 2^attempt). Defaults 1000 and 30000. */
  backoff?: { initialMs?: number; maxMs?: number };
}

export interface GatewayStreamEventMap {
  message: CustomEvent<GatewayEvent>;
  reset: CustomEvent<GatewayReset>;
  state: CustomEvent<StreamState>;
  error: CustomEvent<GatewayFailure>;
}

type Listener<K extends keyof GatewayStreamEventMap> = (
  this: GatewayStream,
  event: GatewayStreamEventMap[K],
) => unknown;

export declare class GatewayStream extends EventTarget {
  constructor(options: ConnectOptions);
  readonly state: StreamState;
  /** The cursor of the newest event or reset delivered, or null before the first. */
  readonly lastEventId: string | null;
  /** The latest failure, or null. When `state` is "closed" by a failure, it says why. */
  readonly error: GatewayFailure | null;
  /** Stops for good: no further request, no further event but `state` "closed". */
  close(): void;
  addEventListener<K extends keyof GatewayStreamEventMap>(
    type: K,
    listener: Listener<K>,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof GatewayStreamEventMap>(
    type: K,
    listener: Listener<K>,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** Opens a stream of `channels`; the first request is made after the current task. */
export declare function connect(options: ConnectOptions): GatewayStream;

export interface HistoryOptions {
  /** The gateway's base URL (ending in "/" when it has a path). Default "/", this origin. */
  url?: string;
  /** At most this many events, 1 to 1000. Default 100. */
  limit?: number;
  /** The page ends right before this event id (a `next_before`, or an event's `id`). */
  before?: string | null;
  /** A JWT granting `subscribe` on the channel, or a function giving one. */
  token?: string | (() => string | Promise<string>);
  /** Send cookies cross-origin (the gateway's `sse_token` cookie). Default false. */
  withCredentials?: boolean;
}

export interface HistoryPage<T = unknown> {
  /** Oldest first; each as a stream's `message` carries it. */
  events: GatewayEvent<T>[];
  /** Pass as `before` for the page before this one; null once the retained log's start
   * is reached. */
  next_before: string | null;
}

/** Why history() failed, as a stream's `GatewayFailure` says (without `retrying`). */
export declare class HistoryError extends Error {
  readonly status: number;
  readonly code: string;
}

/** A page of `channel`'s retained events (`GET /channels/{channel}/history`); rejects with a
 * `HistoryError`. */
export declare function history<T = unknown>(
  channel: string,
  options?: HistoryOptions,
): Promise<HistoryPage<T>>;
