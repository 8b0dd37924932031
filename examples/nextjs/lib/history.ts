// The last events of the user's channels, read by the Next.js server while it renders
// the page (GET /channels/{channel}/history on the gateway, with a token minted here),
// so the page arrives with them; useSSE then follows on from exactly there.
// Server code only: it mints a token with the gateway's secret.
import { history, type GatewayEvent } from "@sse-gateway/client";
import type { User } from "./session";
import { mintToken } from "./token";

export async function lastEvents(
  gatewayUrl: string,
  user: User,
  channels: string[],
  limit: number,
): Promise<GatewayEvent[]> {
  const token = mintToken(user.id, { subscribe: channels }, 60);
  try {
    const pages = await Promise.all(
      channels.map((channel) => history(channel, { url: gatewayUrl, limit, token })),
    );
    return pages.flatMap((page) => page.events);
  } catch (err) {
    // The page still works without them: the browser's stream rewinds as far.
    console.error(`history from ${gatewayUrl} failed, rendering without it: ${err}`);
    return [];
  }
}
