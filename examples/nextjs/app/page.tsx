import { SSEProvider } from "@/lib/use-sse";
import { channelsOf, currentUser } from "@/lib/session";
import { LiveChannels } from "./live-channels";

// The gateway's address is read when the page is requested, not baked into the build.
export const dynamic = "force-dynamic";

export default async function Page() {
  const user = await currentUser();
  if (user === null) return <main>Sign in to see your live updates.</main>;
  const gateway = process.env.SSE_GATEWAY_URL;
  if (!gateway) {
    throw new Error("set SSE_GATEWAY_URL to the gateway's address as browsers reach it");
  }
  return (
    <main>
      <h1>Live updates for {user.name}</h1>
      <SSEProvider url={new URL("/events", gateway).href} tokenUrl="/api/sse-token">
        <LiveChannels channels={channelsOf(user)} />
      </SSEProvider>
    </main>
  );
}
