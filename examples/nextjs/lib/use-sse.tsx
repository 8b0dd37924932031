"use client";
// useSSE(channels): the live events of some channels, on one connection to the
// gateway made by its browser client (@sse-gateway/client), which refreshes the
// token through the app's token route and resumes without loss or repeats.
// With `initial` (the last events, rendered by the server) and `rewind`, the stream
// starts `rewind` events back and follows on from the newest initial event: what
// both hold is listed once, and what came between the two that the rewind does not
// reach is read with history().

import {
  connect,
  history,
  type GatewayEvent,
  type GatewayFailure,
  type GatewayReset,
  type HistoryPage,
  type StreamState,
} from "@sse-gateway/client";
import { createContext, useContext, useEffect, useMemo, useState, type ReactNode } from "react";

interface Gateway {
  url: string;
  token: () => Promise<string>;
}

const GatewayContext = createContext<Gateway | null>(null);

/** Where useSSE connects: `url` is the gateway's /events, which the browser reaches
 * directly; `tokenUrl` is this app's route that mints tokens for the signed-in user. */
export function SSEProvider(props: { url: string; tokenUrl: string; children: ReactNode }) {
  const { url, tokenUrl } = props;
  const gateway = useMemo(() => ({ url, token: () => fetchToken(tokenUrl) }), [url, tokenUrl]);
  return <GatewayContext.Provider value={gateway}>{props.children}</GatewayContext.Provider>;
}

async function fetchToken(tokenUrl: string): Promise<string> {
  const response = await fetch(tokenUrl, { cache: "no-store" });
  if (!response.ok) throw new Error(`${tokenUrl} answered ${response.status}`);
  const { token } = (await response.json()) as { token: string };
  return token;
}

/** Whether `next` comes right after `last` (or at or before it) in one epoch. */
function follows(last: string, next: string): boolean {
  const [epoch, seq] = position(last);
  const [nextEpoch, nextSeq] = position(next);
  return nextEpoch !== epoch || nextSeq <= seq + 1;
}

/** `events` with `missed` just before `event` (where it still is). */
function insertBefore(events: GatewayEvent[], event: GatewayEvent, missed: GatewayEvent[]) {
  const at = events.findIndex((e) => e.channel === event.channel && e.id === event.id);
  return at < 0 ? events : [...events.slice(0, at), ...missed, ...events.slice(at)];
}

function historyFailed(err: unknown): GatewayFailure {
  return { status: 0, code: "history_failed", message: String(err), retrying: false };
}

export interface SSE {
  /** The newest `keep` events of all the channels, oldest first. */
  events: GatewayEvent[];
  /** Positions the gateway could not resume (events were lost before the stream went on). */
  resets: GatewayReset[];
  state: StreamState;
  /** Why the stream is reconnecting or closed, or null. */
  error: GatewayFailure | null;
}

const INITIAL: SSE = { events: [], resets: [], state: "connecting", error: null };
const NONE: GatewayEvent[] = [];

interface Options {
  /** How many events to list, the newest. Default 200. */
  keep?: number;
  /** The events the page was rendered with, oldest first. */
  initial?: GatewayEvent[];
  /** How many events before its head each channel's stream starts. Default 0. */
  rewind?: number;
}

/** An id's epoch and seq (`<epoch>-<seq>`). */
function position(id: string): [string, number] {
  const [epoch, seq] = id.split("-");
  return [epoch, Number(seq)];
}

/** The events of `channel` after `after` and before `until` (ids of one epoch). */
async function between(
  channel: string,
  after: string,
  until: string,
  options: { url: string; token: () => Promise<string> },
): Promise<GatewayEvent[]> {
  const [epoch, seq] = position(after);
  const found: GatewayEvent[] = [];
  let before: string | null = until;
  while (before !== null) {
    const page: HistoryPage = await history(channel, { ...options, before, limit: 1000 });
    const newer = page.events.filter((e: GatewayEvent) => {
      const [other, otherSeq] = position(e.id);
      return other === epoch && otherSeq > seq;
    });
    found.unshift(...newer);
    before = newer.length === page.events.length ? page.next_before : null;
  }
  return found;
}

export function useSSE(
  channels: readonly string[],
  { keep = 200, initial = NONE, rewind = 0 }: Options = {},
): SSE {
  const gateway = useContext(GatewayContext);
  if (gateway === null) throw new Error("useSSE needs an <SSEProvider> above it");
  // One string for the list (names hold no spaces), so a new array with the same
  // channels on each render does not reconnect.
  const key = channels.join(" ");
  const [sse, setSSE] = useState<SSE>({ ...INITIAL, events: initial });

  useEffect(() => {
    // Strict mode runs this, its cleanup and this again in one task: the client
    // connects only after the task, so the first stream closes before any request.
    const stream = connect({
      url: gateway.url,
      channels: key.split(" "),
      token: gateway.token,
      rewind,
    });
    const listening = new AbortController();
    const on = { signal: listening.signal };
    const update = (change: (sse: SSE) => Partial<SSE>) =>
      setSSE((sse) => ({ ...sse, ...change(sse) }));
    setSSE({ ...INITIAL, events: initial });
    // Per channel, the newest event the page was rendered with, until the stream's first.
    const rendered = new Map(initial.map((e) => [e.channel, e.id]));
    const shown = new Set(initial.map((e) => `${e.channel} ${e.id}`));
    stream.addEventListener(
      "message",
      (e) => {
        const event = e.detail;
        if (shown.has(`${event.channel} ${event.id}`)) return; // rendered, and rewound to
        const last = rendered.get(event.channel);
        rendered.delete(event.channel);
        if (last !== undefined && !follows(last, event.id)) {
          // More came between the render and the stream than it rewound: read them.
          const base = new URL("/", gateway.url).href;
          between(event.channel, last, event.id, { url: base, token: gateway.token }).then(
            (missed) => {
              if (listening.signal.aborted) return;
              update(({ events }) => ({ events: insertBefore(events, event, missed).slice(-keep) }));
            },
            (err) => listening.signal.aborted || update(() => ({ error: historyFailed(err) })),
          );
        }
        update(({ events }) => ({ events: [...events, event].slice(-keep) }));
      },
      on,
    );
    stream.addEventListener(
      "reset",
      (e) => update(({ resets }) => ({ resets: [...resets, e.detail] })),
      on,
    );
    stream.addEventListener("error", (e) => update(() => ({ error: e.detail })), on);
    // An open stream has nothing wrong with it: forget why it was reconnecting.
    const stateOf = (state: StreamState, error: GatewayFailure | null) =>
      ({ state, error: state === "open" ? null : error });
    stream.addEventListener("state", (e) => update(({ error }) => stateOf(e.detail, error)), on);
    return () => {
      listening.abort(); // an unmounted component hears nothing more
      stream.close();
    };
    // initial is the server's render, fixed for the page's life: not a dependency.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [gateway, key, keep, rewind]);

  return sse;
}
