import { lastEvents } from "@/lib/history";
import { channelsOf, currentUser } from "@/lib/session";
import { SSEProvider } from "@/lib/use-sse";
import { LiveChannels } from "./live-channels";

// The gateway's address is read when the page is requested, not baked into the build.
export const dynamic = "force-dynamic";

const SHOWN_ON_LOAD = 20; // per channel, rendered by the server

export default async function Page() {
  const user = await currentUser();
  if (user === null) return <main>Sign in to see your live updates.</main>;
  const gateway = process.env.SSE_GATEWAY_URL;
  if (!gateway) {
    throw new Error("set SSE_GATEWAY_URL to the gateway's address as browsers reach it");
  }
  const channels = channelsOf(user);
  // SSE_GATEWAY_URL serves this server too: set it to an address both reach.
  const initial = await lastEvents(gateway, user, channels, SHOWN_ON_LOAD);
  return (
    <main>
      <h1>Live updates for {user.name}</h1>
      <SSEProvider url={new URL("/events", gateway).href} tokenUrl="/api/sse-token">
        <LiveChannels channels={channels} initial={initial} rewind={SHOWN_ON_LOAD} />
      </SSEProvider>
    </main>
  );
}
