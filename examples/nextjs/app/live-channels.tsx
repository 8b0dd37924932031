"use client";

import type { GatewayEvent } from "@sse-gateway/client";
import { useSSE } from "@/lib/use-sse";

export function LiveChannels(props: {
  channels: string[];
  initial: GatewayEvent[];
  rewind: number;
}) {
  const { channels, initial, rewind } = props;
  const { events, resets, state, error } = useSSE(channels, { initial, rewind });
  return (
    <>
      <p className={`state ${state}`} data-testid="state">
        {state}
        {error && state !== "open" ? `: ${error.message}` : ""}
      </p>
      <div className="columns">
        {channels.map((channel) => (
          <section key={channel}>
            <h2>{channel}</h2>
            <ol>
              {events
                .filter((e) => e.channel === channel)
                .map((e) => (
                  <li key={e.id} data-channel={e.channel} data-id={e.id}>
                    <code>{e.event ?? "message"}</code>
                    <span className="data">{JSON.stringify(e.data)}</span>
                  </li>
                ))}
            </ol>
          </section>
        ))}
      </div>
      {resets.length > 0 && (
        <ul className="resets">
          {resets.map((r) => (
            <li key={`${r.channel} ${r.continues_after}`}>
              {r.channel}: events lost ({r.reason}), going on after {r.continues_after}
            </li>
          ))}
        </ul>
      )}
    </>
  );
}
