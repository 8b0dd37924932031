"use client";
// useSSE(channels): the live events of some channels, on one connection to the
// gateway made by its browser client (@sse-gateway/client), which refreshes the
// token through the app's token route and resumes without loss or repeats.

import {
  connect,
  type GatewayEvent,
  type GatewayFailure,
  type GatewayReset,
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

export function useSSE(channels: readonly string[], { keep = 200 } = {}): SSE {
  const gateway = useContext(GatewayContext);
  if (gateway === null) throw new Error("useSSE needs an <SSEProvider> above it");
  // One string for the list (names hold no spaces), so a new array with the same
  // channels on each render does not reconnect.
  const key = channels.join(" ");
  const [sse, setSSE] = useState<SSE>(INITIAL);

  useEffect(() => {
    // Strict mode runs this, its cleanup and this again in one task: the client
    // connects only after the task, so the first stream closes before any request.
    const stream = connect({ url: gateway.url, channels: key.split(" "), token: gateway.token });
    const listening = new AbortController();
    const on = { signal: listening.signal };
    const update = (change: (sse: SSE) => Partial<SSE>) =>
      setSSE((sse) => ({ ...sse, ...change(sse) }));
    setSSE(INITIAL);
    stream.addEventListener(
      "message",
      (e) => update(({ events }) => ({ events: [...events, e.detail].slice(-keep) })),
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
  }, [gateway, key, keep]);

  return sse;
}
